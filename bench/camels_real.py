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

PARAMS = ["fff", "FMAX", "hksat_sf", "watsat_sf", "baseflow_scalar", "medlynslope"]
BASINS = ["01022500", "01547700", "02064000", "03015500"]


def camels_root() -> Path:
    env = os.environ.get("ESM_EMU_SHARED_DATA")
    base = Path(env) if env else REPO.parent / "shared" / "data"
    return base / "camels_us" / "neuralhydrology_test_data" / "camels_us"


def build(root: Path, n_years: int = 3, per_basin: int = 48, emu_steps: int = 300, seed: int = 0):
    """Entities, observations, simulator, trained emulator and parameter table for the 4 basins."""
    from esm_emu.emulator import Emulator
    from esm_emu.forward import EmulatorForward, SimulatorForward
    from esm_emu.inverse.problem import bounds_from_table
    from esm_emu.normalize import Normalizer, Scaler
    from ppe_ingest.obs.camels import read_camels_streamflow
    from ppe_ingest.param_table import default_table_path, load_param_table
    from ppe_ingest.simulator.sites import camels_sites
    from ppe_ingest.simulator.weather import camels_forcing

    torch.manual_seed(seed)
    sites = camels_sites(root / "camels_attributes_v2.0", basins=BASINS)
    weather = camels_forcing(sites, root / "basin_mean_forcing" / "daymet", 2000, n_years)
    entities = xr.merge([sites, weather])
    obs = read_camels_streamflow(root / "usgs_streamflow", BASINS)
    table = load_param_table(default_table_path())
    lo, hi, dflt = bounds_from_table(table, PARAMS)
    sim = SimulatorForward.for_entities(entities, PARAMS, ["QRUNOFF"])
    f = torch.as_tensor(np.stack([weather[n].values for n in sim.forcing_names], -1), dtype=torch.float32)
    s = torch.as_tensor(np.stack([sites[n].values for n in sim.static_names], -1), dtype=torch.float32)
    rng = np.random.default_rng([seed, 3])
    n = len(BASINS) * per_basin
    # Latin hypercube, log-uniform for the wide scale factors (as the inversion maps them)
    u = (np.stack([rng.permutation(n) for _ in PARAMS], 1) + rng.random((n, len(PARAMS)))) / n
    logp = (lo > 0) & (hi / lo >= 20)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-basin", type=int, default=48, help="simulator PPE runs per basin")
    ap.add_argument("--emu-steps", type=int, default=300)
    ap.add_argument("--dpl-steps", type=int, default=300)
    ap.add_argument("--ensemble", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    root = camels_root()
    if not root.is_dir():
        print(f"CAMELS data not found at {root}; set ESM_EMU_SHARED_DATA")
        return 1
    from esm_emu.inverse.config import inverse_config
    from esm_emu.inverse.inversion import run_inversion, skill

    t0 = time.perf_counter()
    d = build(root, per_basin=a.per_basin, emu_steps=a.emu_steps, seed=a.seed)
    cfg = inverse_config({"params": PARAMS, "method": "g_A", "seed": a.seed,
                          "train_period": {"start": 2000, "end": 2001}, "test_period": {"start": 2002, "end": 2002},
                          "dpl": {"steps": a.dpl_steps, "warmup_days": 180, "dropout": 0.0},
                          "uncertainty": {"ensemble": a.ensemble, "mc_samples": 0}})
    t = time.perf_counter()
    pmap, m = run_inversion(cfg, d["entities"], d["obs"], d["forward"], d["table"], progress=False,
                            sources=["CAMELS-US USGS streamflow (neuralhydrology test data)"])
    inv_s = time.perf_counter() - t
    theta = pmap["theta"].values
    # the real check: re-run the simulator itself with default and inferred parameters
    from esm_emu.inverse.problem import build_problem

    p = build_problem(d["entities"], d["obs"], d["sim"], d["table"], PARAMS, ["QRUNOFF"],
                      train_period={"start": 2000, "end": 2001}, test_period={"start": 2002, "end": 2002})
    period = p.test_time
    idx = np.arange(len(BASINS))
    sk_def = skill(p, d["sim"], p.default.expand(len(idx), -1), idx, period)["QRUNOFF"]
    sk_inf = skill(p, d["sim"], torch.as_tensor(theta, dtype=torch.float32), idx, period)["QRUNOFF"]
    e = m["skill_test_period"]
    lines = [f"4 CAMELS basins ({', '.join(BASINS)}), Daymet forcing 2000-2002, calibrate 2000-2001, held-out 2002",
             f"simulator PPE {d['n_ppe']} runs in {d['ppe_s']:.0f} s; emulator LSTM {a.emu_steps} steps "
             f"({d['emu_s']:.0f} s, final normalised MSE {d['emu_loss']:.3f}); inversion g_A x{a.ensemble} seeds, "
             f"{a.dpl_steps} steps: {inv_s:.0f} s; total {time.perf_counter() - t0:.0f} s",
             "held-out-year NSE / KGE per basin, simulator re-run: default -> inferred"]
    for i, b in enumerate(sk_def["entity"]):
        lines.append(f"  {b}: NSE {sk_def['nse'][i]:.3f} -> {sk_inf['nse'][i]:.3f}, "
                     f"KGE {sk_def['kge'][i]:.3f} -> {sk_inf['kge'][i]:.3f}")
    lines.append(f"median NSE simulator: default {sk_def['nse_median']:.3f}, inferred {sk_inf['nse_median']:.3f}; "
                 f"through the emulator: default {e['default']['QRUNOFF']['nse_median']:.3f}, "
                 f"inferred {e['inferred']['QRUNOFF']['nse_median']:.3f}")
    lines.append("inferred theta (" + ", ".join(PARAMS) + "):")
    for i, b in enumerate(BASINS):
        lines.append(f"  {b}: " + ", ".join(f"{v:.3g}+-{s_:.2g}"
                                            for v, s_ in zip(theta[i], pmap['theta_std'].values[i])))
    lines += ["soil properties vs CAMELS attributes:"] + ["  " + x for x in soil_comparison(d["sites"], theta, root)]
    record("Real data: CAMELS basins, inversion against observed streamflow", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
