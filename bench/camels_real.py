"""Real data: the four CAMELS basins in the shared data (real Daymet forcing, USGS streamflow).

A built-in-simulator PPE (a CTSM stand-in, not CTSM) is driven by the basins' real forcing, a
small emulator is trained on it, parameters are inferred against observed streamflow in the
calibration years, and the held-out year is scored with default and inferred parameters, both
through the emulator and by re-running the simulator. Inferred soil properties (Cosby hksat and
watsat times the inferred scale factors) are compared with the CAMELS soil attributes.

    python bench/camels_real.py            # data from $ESM_EMU_SHARED_DATA or ../shared/data
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._record import record

PARAMS = ["fff", "FMAX", "zbedrock", "hksat_sf", "watsat_sf", "baseflow_scalar", "n_baseflow", "medlynslope"]
BASINS = ["01022500", "01547700", "02064000", "03015500"]


def camels_root() -> Path:
    env = os.environ.get("ESM_EMU_SHARED_DATA")
    base = Path(env) if env else REPO.parent / "shared" / "data"
    return base / "camels_us" / "neuralhydrology_test_data" / "camels_us"


def build(root: Path, n_years: int = 3, per_basin: int = 48, emu_steps: int = 300, seed: int = 0,
          params=None, physics=None):
    """Entities, observations, simulator, trained emulator and parameter table for the 4 basins."""
    from esm_emu.emulator import Emulator
    from esm_emu.forward import EmulatorForward, SimulatorForward
    from esm_emu.inverse.problem import bounds_from_table, log_scaled
    from esm_emu.normalize import Normalizer, Scaler
    from ppe_ingest.obs.camels import read_camels_streamflow
    from ppe_ingest.param_table import default_table_path, load_param_table
    from ppe_ingest.simulator.sites import camels_sites
    from ppe_ingest.simulator.weather import camels_forcing

    global PARAMS
    PARAMS = list(params or PARAMS)
    torch.manual_seed(seed)
    sites = camels_sites(root / "camels_attributes_v2.0", basins=BASINS)
    weather = camels_forcing(sites, root / "basin_mean_forcing" / "daymet", 2000, n_years)
    entities = xr.merge([sites, weather])
    obs = read_camels_streamflow(root / "usgs_streamflow", BASINS)
    table = load_param_table(default_table_path())
    lo, hi, dflt = bounds_from_table(table, PARAMS)
    sim = SimulatorForward.for_entities(entities, PARAMS, ["QRUNOFF"])
    sim.physics = dict(physics or {})
    f = torch.as_tensor(np.stack([weather[n].values for n in sim.forcing_names], -1), dtype=torch.float32)
    s = torch.as_tensor(np.stack([sites[n].values for n in sim.static_names], -1), dtype=torch.float32)
    rng = np.random.default_rng([seed, 3])
    n = len(BASINS) * per_basin
    # Latin hypercube, log-uniform for the wide scale factors (the inversion is told so: inverse.scale log)
    u = (np.stack([rng.permutation(n) for _ in PARAMS], 1) + rng.random((n, len(PARAMS)))) / n
    logp = log_scaled(lo, hi)
    theta = np.where(logp, lo * (hi / lo) ** u, lo + (hi - lo) * u)
    ent = np.repeat(np.arange(len(BASINS)), per_basin)
    t = time.perf_counter()
    y = sim.chunked(f[ent], s[ent], torch.as_tensor(theta, dtype=torch.float32), batch=1024)
    ppe_s = time.perf_counter() - t
    ylog = torch.log(y.clamp_min(0) + 1e-8)
    fl = f.numpy().reshape(-1, f.shape[-1])
    th = torch.as_tensor(theta, dtype=torch.float32)
    thn = np.log(theta)
    norm = Normalizer(Scaler(fl.mean(0), fl.std(0), [False] * fl.shape[1], 1e-6),
                      Scaler(s.numpy().mean(0), s.numpy().std(0), [False] * s.shape[1], 1e-6),
                      Scaler(np.where(logp, thn.mean(0), theta.mean(0)), np.where(logp, thn.std(0), theta.std(0)),
                             list(logp), 1e-12),
                      Scaler([float(ylog.mean())], [float(ylog.std())], [True], 1e-8))
    emu = Emulator.build({"name": "lstm", "hidden": 64, "embed": 16, "layers": 1, "dropout": 0.0, "ea_gate": False},
                         norm, sim.forcing_names, sim.static_names, PARAMS, ["QRUNOFF"])
    opt = torch.optim.Adam(emu.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, emu_steps)
    target = norm.response(y)
    t = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    for _ in range(emu_steps):
        b = torch.randint(0, n, (32,), generator=g)
        pred, _ = emu.forward_normalized(norm.forcing(f[ent[b.numpy()]]), emu.conditioning(s[ent[b.numpy()]], th[b]))
        loss = ((pred[:, 180:] - target[b, 180:]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    emu_s = time.perf_counter() - t
    return dict(entities=entities, obs=obs, table=table, sim=sim, forward=EmulatorForward(emu), sites=sites,
                forcing=f, static=s, ppe_s=ppe_s, emu_s=emu_s, emu_loss=float(loss.detach()), n_ppe=n)


def soil_comparison(sites, theta: np.ndarray, root: Path) -> list[str]:
    """Inferred effective ksat / porosity vs the CAMELS soil attributes, per basin."""
    from ppe_ingest.ctsmio.vocabulary import SOIL_FIELDS
    from ppe_ingest.obs.camels import read_camels_attributes
    from ppe_ingest.simulator.physics import soil_properties

    attrs = read_camels_attributes(root / "camels_attributes_v2.0", basins=BASINS)
    st = {k: torch.as_tensor(sites[k].values, dtype=torch.float64) for k in SOIL_FIELDS}
    one = torch.ones(len(BASINS), dtype=torch.float64)
    base = soil_properties(st, {"watsat_sf": one, "bsw_sf": one, "sucsat_sf": one, "hksat_sf": one})
    inf = soil_properties(st, {"watsat_sf": torch.as_tensor(theta[:, PARAMS.index("watsat_sf")], dtype=torch.float64),
                               "bsw_sf": one, "sucsat_sf": one,
                               "hksat_sf": torch.as_tensor(theta[:, PARAMS.index("hksat_sf")], dtype=torch.float64)})
    out = []
    for i, b in enumerate(BASINS):
        ks_c = float(attrs.loc[b, "soil_conductivity"])  # cm/hr
        # mm/s -> cm/hr: * 0.1 cm/mm * 3600 s/hr
        ks_d, ks_i = float(base["hksat"][i]) * 360.0, float(inf["hksat"][i]) * 360.0
        out.append(f"{b}: ksat CAMELS {ks_c:.2f} cm/h, Cosby default {ks_d:.2f}, inferred {ks_i:.2f}; "
                   f"porosity CAMELS {float(attrs.loc[b, 'soil_porosity']):.3f}, "
                   f"default {float(base['watsat'][i]):.3f}, "
                   f"inferred {float(inf['watsat'][i]):.3f}")
    return out


def diagnose(root: Path, physics_variants: list[str]) -> list[str]:
    """Per basin with default parameters (2 spin-up years, 2000-2002): volume (P, Q, ET, runoff ratio
    against CAMELS), timing (correlation, month of the peak), snow, frozen soil, baseflow share."""
    from esm_emu.metrics import kge, nse
    from ppe_ingest.obs.camels import read_camels_attributes, read_camels_streamflow
    from ppe_ingest.simulator import physics
    from ppe_ingest.simulator.sites import camels_sites, static_tensors
    from ppe_ingest.simulator.weather import camels_forcing, forcing_tensors

    sites = camels_sites(root / "camels_attributes_v2.0", basins=BASINS)
    w = camels_forcing(sites, root / "basin_mean_forcing" / "daymet", 2000, 3)
    obs = read_camels_streamflow(root / "usgs_streamflow", BASINS)
    attrs = read_camels_attributes(root / "camels_attributes_v2.0", basins=BASINS)
    t = obs["time"].to_index()
    qo = obs["QRUNOFF"].values[:, ~((t.month == 2) & (t.day == 29))] * 86400
    f, st = forcing_tensors(w), static_tensors(sites)
    P = ((f["RAIN"] + f["SNOW"]) * 86400).numpy()
    month = w["time"].dt.month.values
    lines = ["diagnosis with default parameters, 2000-2002 (2 spin-up years), per basin: volume mm/yr, runoff ratio "
             "(observed here / CAMELS long-term / simulated), ET vs CAMELS PET, peak month (mean monthly Q), "
             "baseflow index (CAMELS / simulated), snow, daily NSE/KGE of the 3 years"]
    for variant in physics_variants:
        opts = {k: True for k in variant.split(",") if k}
        state = physics.spin_up(f, st, {}, n_years=2, physics=opts)
        out = {k: v.numpy() for k, v in physics.run_land(f, st, {}, state=state, physics=opts).items()}
        qs, et = out["QRUNOFF"] * 86400, out["EFLX_LH_TOT"] / 2.501e6 * 86400
        lines.append(f"physics: {variant or 'none (quickstart default)'}")
        for i, b in enumerate(BASINS):
            a = attrs.loc[b]
            mo = [qo[i][month == m].mean() for m in range(1, 13)]
            ms = [qs[i][month == m].mean() for m in range(1, 13)]
            lines.append(
                f"  {b}: P {P[i].mean() * 365:.0f}, Q obs {qo[i].mean() * 365:.0f} sim {qs[i].mean() * 365:.0f} "
                f"(surface {out['QOVER'][i].mean() * 86400 * 365:.0f}), ET {et[i].mean() * 365:.0f} vs PET "
                f"{a['pet_mean'] * 365:.0f}; RR {qo[i].mean() / P[i].mean():.2f}/{a['runoff_ratio']:.2f}/"
                f"{qs[i].mean() / P[i].mean():.2f}, aridity {a['aridity']:.2f}; "
                f"peak month obs {int(np.argmax(mo)) + 1} "
                f"sim {int(np.argmax(ms)) + 1}; BFI {a['baseflow_index']:.2f}/"
                f"{out['QDRAI'][i].mean() / out['QRUNOFF'][i].mean():.2f}; snow {a['frac_snow']:.2f} of P, "
                f"max SWE {out['H2OSNO'][i].max():.0f} mm; Jan-Mar Q obs {np.mean(mo[:3]):.2f} "
                f"sim {np.mean(ms[:3]):.2f} mm/d; NSE {float(nse(qs[i], qo[i])):.2f} "
                f"KGE {float(kge(qs[i], qo[i])):.2f}")
    return lines


def summarize_runs(dirs: list[str]) -> list[str]:
    """Per basin default -> calibrated held-out NSE/KGE/bias, the medians, the pinned parameters and the
    wall times of `esm-emu run configs/camels_basins.yaml` output folders (their report/metrics.json)."""
    import json

    lines = []
    for d in dirs:
        rep = json.loads((Path(d) / "report" / "metrics.json").read_text())
        stages = json.loads((Path(d) / "stages.json").read_text())
        cfg = ""
        log = Path(d).with_suffix(".log")
        sk = rep["skill_held_out_years"]
        lines.append(f"{Path(d).name}: held-out median NSE {sk['default']['QRUNOFF']['nse_median']:.3f} -> "
                     f"{sk['inferred']['QRUNOFF']['nse_median']:.3f}, KGE {sk['default']['QRUNOFF']['kge_median']:.3f}"
                     f" -> {sk['inferred']['QRUNOFF']['kge_median']:.3f}; wall "
                     + ", ".join(f"{k} {v.get('wall_s', 0):.0f} s" for k, v in stages.items()) + cfg
                     + (f" ({log.name})" if log.exists() else ""))
        beats = True
        for b, v in rep["per_site"].items():
            dq, iq = v["default"]["QRUNOFF"], v["inferred"]["QRUNOFF"]
            beats &= iq["nse"] > dq["nse"]
            lines.append(f"  {b}: NSE {dq['nse']:.3f} -> {iq['nse']:.3f}, KGE {dq['kge']:.3f} -> {iq['kge']:.3f}, "
                         f"bias {dq['bias']:+.2f} -> {iq['bias']:+.2f}")
        pinned, bound = [], []
        for b, ps in (rep.get("calibrated_parameters") or {}).items():
            for name, pv in ps.items():
                if pv["std"] == 0 or pv["std"] < 1e-6 * max(abs(pv["value"]), 1e-12):
                    pinned.append(f"{name}@{b}")
                share = pv.get("std_share_of_range")
                if pv.get("on_bound") and share is not None and share < 0.01:  # issue 12's CAMELS criterion
                    bound.append(f"{name}@{b} (std {share:.2%} of range, posterior/prior variance "
                                 f"{pv.get('posterior_to_prior_variance', float('nan')):.3g}: "
                                 f"{'the data push it there' if pv.get('data_constrain_here') else 'NOT constrained'})")
        lines.append(f"  calibrated beats default on every basin: {beats}; parameters with (near) zero std: "
                     f"{', '.join(pinned) or 'none'}; on a bound with std < 1% of the range: "
                     f"{', '.join(bound) or 'none'}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-basin", type=int, default=48, help="simulator PPE runs per basin")
    ap.add_argument("--emu-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300, help="calibration steps (dPL or per-site)")
    ap.add_argument("--ensemble", type=int, default=3)
    ap.add_argument("--method", default="per_site", choices=("per_site", "g_A", "auto"))
    ap.add_argument("--routing", default="gamma", choices=("gamma", "none"))
    ap.add_argument("--test-year", default="all", help="2000, 2001, 2002 or all (each in turn)")
    ap.add_argument("--params", default=",".join(PARAMS))
    ap.add_argument("--physics", default=None,
                    help="simulator physics options, e.g. canopy_longwave,frozen_soil ('' = none; "
                         "default: those configs/camels_basins.yaml turns on)")
    ap.add_argument("--warmup-days", type=int, default=180)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="label of this variant in RESULTS.md")
    ap.add_argument("--dry", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--forward", default="simulator", choices=("simulator", "emulator"),
                    help="the forward model calibrated through (the simulator re-run scores both)")
    ap.add_argument("--screen", type=int, default=512, help="per-site screening candidates")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--diagnose", default=None,
                    help="only the default-parameter diagnosis, for ';'-separated physics variants ('' = none)")
    ap.add_argument("--summarize", nargs="+", default=None,
                    help="only summarise these esm-emu run output folders (configs/camels_basins.yaml)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    root = camels_root()
    if not root.is_dir():
        print(f"CAMELS data not found at {root}; set ESM_EMU_SHARED_DATA")
        return 1
    if a.summarize:
        record("Real data: CAMELS basins, esm-emu run configs/camels_basins.yaml (per test year and variant)",
               summarize_runs(a.summarize))
        return 0
    if a.diagnose is not None:
        lines = diagnose(root, a.diagnose.split(";"))
        if a.dry:
            print("\n".join(lines))
        else:
            record("Real data: CAMELS basins, diagnosis of the simulator (default parameters)", lines)
        return 0
    from esm_emu.inverse.inversion import run_inversion, skill
    from esm_emu.inverse.problem import build_problem
    from esm_emu.routing import with_routing

    if a.physics is None:
        from ppe_ingest.simulator.config import load_simulate_config
        cfg = Path(__file__).resolve().parents[1] / "configs" / "camels_basins.yaml"
        a.physics = ",".join(k for k, on in load_simulate_config(cfg, check_files=False).physics.items() if on)
    physics = {k: True for k in a.physics.split(",") if k}
    t0 = time.perf_counter()
    d = build(root, per_basin=a.per_basin, emu_steps=a.emu_steps if a.forward == "emulator" else 1, seed=a.seed,
              params=a.params.split(","), physics=physics)
    forward = d["forward"] if a.forward == "emulator" else d["sim"]
    years = [2000, 2001, 2002] if a.test_year == "all" else [int(a.test_year)]
    lines = [f"4 CAMELS basins ({', '.join(BASINS)}), Daymet forcing 2000-2002; {a.tag or 'variant'}: "
             f"forward {a.forward}, method {a.method}, routing {a.routing}, physics {a.physics or 'none'}, "
             f"params {', '.join(PARAMS)}",
             f"simulator PPE {d['n_ppe']} runs in {d['ppe_s']:.0f} s; emulator LSTM {a.emu_steps} steps "
             f"({d['emu_s']:.0f} s, final normalised MSE {d['emu_loss']:.3f}); calibration {a.screen} screened, "
             f"{a.steps} steps x "
             f"{a.ensemble} members; warm-up {a.warmup_days} days unscored (a test year 2000 is scored after it)",
             "held-out-year NSE / KGE per basin, simulator re-run (+ routing): default -> inferred"]
    summary = []
    for ty in years:
        train = [y for y in (2000, 2001, 2002) if y != ty]
        # calibration days: 2000-2002 without the test year (build_problem drops it from the train period)
        cfg = {"params": PARAMS, "method": a.method, "seed": a.seed, "routing": {"QRUNOFF": a.routing}, "scale": "log",
               "train_period": {"start": 2000, "end": 2002}, "test_period": {"start": ty, "end": ty},
               "per_site": {"steps": a.steps, "screen": a.screen, "lr": a.lr},
               "dpl": {"steps": a.steps, "warmup_days": a.warmup_days, "dropout": 0.0},
               "uncertainty": {"ensemble": a.ensemble, "mc_samples": 0}}
        obs = d["obs"]
        t = time.perf_counter()
        pmap, m = run_inversion(cfg, d["entities"], obs, forward, d["table"], progress=False,
                                sources=["CAMELS-US USGS streamflow (neuralhydrology test data)"])
        inv_s = time.perf_counter() - t
        names = [str(x) for x in pmap["param"].values]
        theta = pmap["theta"].values
        # the real check: re-run the simulator itself (with the same routing) at default and inferred values
        sim, _ = with_routing(d["sim"], {"QRUNOFF": a.routing}, ["QRUNOFF"], PARAMS)
        p = build_problem(d["entities"], d["obs"], sim, d["table"], names, ["QRUNOFF"],
                          train_period={"start": 2000, "end": 2002}, test_period={"start": ty, "end": ty})
        from esm_emu.inverse.dpl import score_mask

        period = score_mask(p, p.test_time, a.warmup_days).numpy()
        idx = np.arange(len(BASINS))
        sk_def = skill(p, sim, p.default.expand(len(idx), -1), idx, period)["QRUNOFF"]
        sk_inf = skill(p, sim, torch.as_tensor(theta, dtype=torch.float32), idx, period)["QRUNOFF"]
        e = m["skill_test_period"]
        lines.append(f"test {ty} (calibrate {', '.join(map(str, train))}; inversion {inv_s:.0f} s, method "
                     f"{m['method']}):")
        for i, b in enumerate(sk_def["entity"]):
            lines.append(f"  {b}: NSE {sk_def['nse'][i]:.3f} -> {sk_inf['nse'][i]:.3f}, "
                         f"KGE {sk_def['kge'][i]:.3f} -> {sk_inf['kge'][i]:.3f}")
        lines.append(f"  median simulator: NSE {sk_def['nse_median']:.3f} -> {sk_inf['nse_median']:.3f}, "
                     f"KGE {sk_def['kge_median']:.3f} -> {sk_inf['kge_median']:.3f}; through the emulator: NSE "
                     f"{e['default']['QRUNOFF']['nse_median']:.3f} -> {e['inferred']['QRUNOFF']['nse_median']:.3f}")
        lines.append("  inferred theta (" + ", ".join(names) + "):")
        std = pmap["theta_std"].values
        for i, b in enumerate(BASINS):
            lines.append(f"    {b}: " + ", ".join(f"{v:.3g}+-{s_:.2g}" for v, s_ in zip(theta[i], std[i])))
        pinned = _pinned(p, theta, std)
        lines.append(f"  pinned to a bound with vanishing uncertainty: {', '.join(pinned) or 'none'}")
        summary.append((ty, sk_def, sk_inf, pinned))
        if ty == years[-1]:
            lines += ["  soil properties vs CAMELS attributes:"] + \
                ["    " + x for x in soil_comparison(d["sites"], theta, root)]
    wins = all(all(i > df for i, df in zip(si["nse"], sd["nse"])) for _, sd, si, _ in summary)
    lines.append("goals per test year (NSE beats default on every basin; median KGE >= 0.44; median NSE >= 0.5; "
                 "nothing pinned): " + "; ".join(
                     f"{ty}: {all(i > df for i, df in zip(si['nse'], sd['nse']))}, {si['kge_median']:.2f}, "
                     f"{si['nse_median']:.2f}, {not pin}" for ty, sd, si, pin in summary) + f"; all beat: {wins}")
    lines.append(f"total {time.perf_counter() - t0:.0f} s (2 cores shared with other agents' jobs: noisy)")
    if a.dry:
        print("\n".join(lines))
    else:
        record(f"Real data: CAMELS basins, per-site calibration with routing ({a.tag or 'variant'})", lines)
    return 0


def _pinned(p, theta, std) -> list[str]:
    """Parameters within 1 % of the range from a bound with a std under 1 % of the range."""
    th = torch.as_tensor(theta, dtype=torch.float32)
    u = p.to_unit(th).numpy()
    # std in unit space by the local slope of the (log or linear) map
    du = (p.to_unit(th + torch.as_tensor(std, dtype=torch.float32)) - p.to_unit(th)).abs().numpy()
    near = (np.minimum(u, 1 - u) < 0.01) & (du < 0.01)
    return sorted({f"{p.param_names[j]}@{p.entity[i]}" for i, j in zip(*np.nonzero(near))})


if __name__ == "__main__":
    sys.exit(main())
