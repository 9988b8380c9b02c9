"""The whole chain on one config, as a twin experiment: `esm-emu run CONFIG --out DIR` and
`esm-emu quickstart --out DIR` (the same on the shipped quickstart.yaml).

simulate a PPE with the built-in simulator (a CTSM stand-in) -> ingest -> train the emulator ->
read the synthetic observations at a subset of gridcells -> invert through the frozen emulator ->
write CTSM files -> report. Each stage calls the library function its own command calls; a
finished stage is recorded in DIR/stages.json so a rerun after a kill continues where it stopped.
A simulator run big enough to compile its daily step runs in a child process
(`ppe_ingest.base.child.in_child`), so the memory the compiled step keeps is returned before
training starts: the pipeline's peak is its largest stage's.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.config import output_folder, split_sets
from ppe_ingest.base.errors import UserError, user_error_from_os
from ppe_ingest.base.memory import release_memory

STAGES = ("simulate", "ingest", "train", "observations", "invert", "write-ctsm", "report")
SECTIONS = ("simulate", "ingest", "emulator", "inverse")


def default_config() -> Path:
    """The shipped quickstart.yaml (package data)."""
    from ppe_ingest import configs

    return configs.path("quickstart.yaml")


class _Stages:
    """Completed stages and their wall times, kept in DIR/stages.json."""

    def __init__(self, out: Path, restart: bool):
        self.path = out / "stages.json"
        self.done = {} if restart or not self.path.exists() else self._read()

    def _read(self) -> dict:
        """The finished stages recorded by an earlier run, or one line saying the record is unusable."""
        try:
            done = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as e:
            raise user_error_from_os(e) from None
        except ValueError:  # not JSON, or not text at all
            done = None
        ok = isinstance(done, dict) and all((k in STAGES or k.startswith("wave-")) and isinstance(v, dict)
                                            for k, v in done.items())
        if not ok:
            raise UserError(f"{self.path}: not the record of finished stages this pipeline writes (corrupt?); "
                            "rerun with --restart to run every stage again (or remove the file)")
        return done

    def start(self, name: str) -> float | None:
        """The start time of a stage to run, or None (with a line saying so) when it is done."""
        if name in self.done:
            print(f"[{name}] already done (recorded in {self.path.name}); skipping")
            return None
        print(f"[{name}]", flush=True)
        return time.perf_counter()

    def record(self, name: str, t0: float, **info) -> None:
        release_memory()  # what the stage freed goes back to the system before the next one starts
        self.done[name] = {"wall_s": round(time.perf_counter() - t0, 2), **info}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.done, indent=2))


def run_pipeline(config: str | Path, out: str | Path, seed: int | None = None, sets: Sequence[str] = (),
                 restart: bool = False, progress: bool = True, stop_after: str | None = None) -> dict:
    """Run every stage of `config` into `out`; return the report also written to out/report/metrics.json.

    `stop_after` ends the run after that stage (e.g. simulate and ingest on CPU nodes, train on a
    GPU node, invert back on CPUs: each call continues where the last stopped) and returns the
    finished stages instead of the report.
    `seed` overrides the seed of every stage; `sets` are ``SECTION.KEY=VALUE`` overrides. The
    pipeline sets the paths between stages itself (ingest.ppe_dir/out/catalog, emulator.store/run_dir,
    inverse.store/observations/truth/forward/out).
    """
    from esm_emu.inverse.config import load_inverse_config
    from esm_emu.training.config import load_emulator_config
    from ppe_ingest.ingest.config import load_ingest_config
    from ppe_ingest.simulator.config import load_simulate_config

    if stop_after is not None and stop_after not in STAGES:
        raise UserError(f"--stop-after: {str(stop_after)[:40]!r} is not a stage ({', '.join(STAGES)})")
    cfg_path = Path(config)
    out = Path(out).resolve()
    ppe, store, run_dir = out / "ppe", out / "store.nc", out / "emulator"
    obs_path, inv_dir, ctsm_dir = out / "observations" / "observations.nc", out / "inverse", out / "ctsm"
    loaders = {"simulate": load_simulate_config, "ingest": load_ingest_config,
               "emulator": load_emulator_config, "inverse": load_inverse_config}
    sets_of = split_sets(sets, SECTIONS)
    wiring = {  # the files that pass from stage to stage
        "simulate": {"seed": seed},
        "ingest": {"seed": seed, "ppe_dir": str(ppe), "out": str(store), "catalog": str(out / "catalog.json")},
        "emulator": {"store": str(store), "run_dir": str(run_dir), "train.seed": seed},
        "inverse": {"seed": seed, "store": str(store), "observations": [str(obs_path)], "out": str(inv_dir),
                    "truth": str(ppe / "truth" / "parameter_map.nc"),
                    "forward.kind": "emulator", "forward.checkpoint": str(run_dir / "best.pt")},
    }

    def section(name: str, check_files: bool = True):
        return loaders[name](cfg_path, sets_of[name], wiring[name], check_files=check_files)

    # Real basins (grid camels, no truth set): observed USGS streamflow instead of a twin's truth.
    real = _real_basin_wiring(section("simulate", check_files=False), wiring,
                              loaders["inverse"](cfg_path, sets_of["inverse"], {}, check_files=False))
    # Every key of every section is checked before any work starts; input files once they exist.
    early = {name: section(name, check_files=False) for name in SECTIONS}
    if not early["simulate"].truth and not real:
        raise UserError(f"{cfg_path.name}: simulate.truth: the run pipeline needs the truth set (observations)")
    check_periods_in_run(early["simulate"], early["inverse"], cfg_path.name)

    output_folder(out)
    stages = _Stages(out, restart)

    # 1. The PPE and the twin-experiment truth from the built-in simulator.
    t0 = stages.start("simulate")
    if t0 is not None:
        if ppe.exists():  # a partial PPE from a killed run: start it over
            shutil.rmtree(ppe)
        from ppe_ingest.simulator.ppe import simulate

        sim = section("simulate")
        _run_simulator(sim, sim["n_members"], simulate, sim, ppe, quiet=not progress)
        stages.record("simulate", t0)
    if stop_after == "simulate":
        return stages.done

    # 2. Catalog and training store.
    t0 = stages.start("ingest")
    if t0 is not None:
        from ppe_ingest.ingest.pipeline import ingest_ppe

        ingest_ppe(section("ingest"), progress=progress)
        stages.record("ingest", t0)
    if stop_after == "ingest":
        return stages.done

    # 3. The emulator (resumes from its own checkpoint when a run was killed mid-training).
    t0 = stages.start("train")
    if t0 is not None:
        from esm_emu.training.job import train_job

        summary, evaluation = train_job(section("emulator"), resume=True, progress=progress, plots=True)
        if summary["stop"] == "sigterm":  # an unfinished emulator: never invert with it
            from esm_emu.training.job import STOPPED_EXIT

            print(f"stopped by SIGTERM during training after writing its checkpoint; run the same command "
                  f"to resume (exit status {STOPPED_EXIT})", flush=True)
            raise SystemExit(STOPPED_EXIT)
        for line in (evaluation or {}).get("summary_lines", []):
            print("  " + line)
        stages.record("train", t0, steps=summary["steps"], stop=summary["stop"],
                      train_wall_s=round(summary["wall_s"], 2))
    if stop_after == "train":
        return stages.done

    # 4. Synthetic observations, read back through the real CAMELS / PLUMBER2 / ISMN readers.
    t0 = stages.start("observations")
    if t0 is not None:
        from ppe_ingest.obs.io import write_obs
        from ppe_ingest.simulator.truth import read_observations

        if real:  # the basins' USGS streamflow (QRUNOFF, mm/s over the basin area)
            from ppe_ingest.obs.camels import read_camels_streamflow

            sim = early["simulate"]
            write_obs(read_camels_streamflow(Path(sim.camels_attributes).parent / "usgs_streamflow",
                                             list(sim.basins)), obs_path)
        else:
            write_obs(read_observations(ppe / "truth", early["inverse"].variables), obs_path)
        stages.record("observations", t0)
    if stop_after == "observations":
        return stages.done
    inv_cfg = section("inverse")

    # 5. Inversion through the frozen emulator.
    t0 = stages.start("invert")
    if t0 is not None:
        from esm_emu.inverse.pipeline import run_from_config

        run_from_config(inv_cfg, progress=progress, spinup_years=early["simulate"].spinup_years)
        stages.record("invert", t0)
    if stop_after == "invert":
        return stages.done

    # 5b. PPE waves: members from the posterior region, simulated, appended, emulator fine-tuned, inverted again.
    for k in range(1, inv_cfg.waves.count + 1):
        t0 = stages.start(f"wave-{k}")
        if t0 is not None:
            info = run_wave(k, out, section, wiring, inv_cfg, progress)
            stages.record(f"wave-{k}", t0, **info)
    final_inv = out / "waves" / str(inv_cfg.waves.count) / "inverse" if inv_cfg.waves.count else inv_dir

    # 6. CTSM files from the inferred parameter map.
    t0 = stages.start("write-ctsm")
    if t0 is not None:
        from esm_emu.writers import write_ctsm_files
        from ppe_ingest.param_table import load_param_table

        table = load_param_table(ppe / "params.csv")
        fsurdat = next(iter(sorted(ppe.glob("surfdata_*.nc"))), None)
        # spatially varying paramfile parameters: one paramfile per k-means cluster when the
        # inversion made clusters (inverse.clusters), else the median
        # user_nl: the PPE has none, so a new user_nl_clm takes the namelist parameters
        files = write_ctsm_files(ctsm_dir, fsurdat=fsurdat, paramfile=ppe / "paramfile_default.nc",
                                 user_nl=ppe / "user_nl_clm", values=final_inv / "parameter_map.nc", table=table,
                                 per_cluster_paramfiles=inv_cfg.clusters > 0)
        stages.record("write-ctsm", t0, files={k: [str(p) for p in v] for k, v in files.items()})
    if stop_after == "write-ctsm":
        return stages.done

    # 7. The report a person looks at.
    t0 = time.perf_counter()
    report = write_report(out, stages.done, inv_cfg, final_inv, real_basins=early["simulate"] if real else None)
    stages.record("report", t0)
    return report


def _run_simulator(sim, n_members: int, fn, *args, **kwargs):
    """fn(*args) in a child process when the run is big enough for the simulator to compile its daily
    step (physics.COMPILE_MIN_WORK gridcell-days): what the compiled step keeps resident (inductor,
    ~250 MB) then leaves with the child instead of adding to training's peak. Smaller runs stay eager
    and in this process (a child costs a few seconds of imports)."""
    from ppe_ingest.base.child import in_child
    from ppe_ingest.simulator.physics import COMPILE_MIN_WORK

    gridcells = sim.get("n_gridcells") or len(sim.get("basins") or ()) or 1
    work = n_members * gridcells * 365 * (sim["n_years"] + sim["spinup_years"])
    return (in_child if work >= COMPILE_MIN_WORK else _call)(fn, *args, **kwargs)


def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def simulate_members(sim_cfg, seed: int, wave_dir: Path, progress: bool = False) -> int:
    """History files for the members of a wave (its design.csv), run by the built-in simulator on the
    first PPE's gridcells and weather: what running them as CTSM cases gives (hist/ in the wave)."""
    import pandas as pd

    from ppe_ingest.ctsmio.history import hist_filename, write_history
    from ppe_ingest.ctsmio.vocabulary import FORCING, RESPONSES
    from ppe_ingest.simulator.ppe import SOURCE, make_forcing, make_sites, run_batches

    design = pd.read_csv(wave_dir / "design.csv", index_col=0)
    sites = make_sites(sim_cfg, seed)
    weather = make_forcing(sim_cfg, sites, seed)
    mp = {str(p): design[p].to_numpy(float) for p in design.columns}
    ny, start, case = sim_cfg["n_years"], sim_cfg["start_year"], sim_cfg["case"]
    (wave_dir / "hist").mkdir(exist_ok=True)
    forcing = {k: weather[k].values for k in FORCING}
    lat, lon = sites.grid1d_lat.values, sites.grid1d_lon.values
    members = [str(m) for m in design.index]
    # one batch of members at a time, sized by simulate.batch_memory_mb as `esm-emu simulate` does
    for msl, res in run_batches(weather, sites, mp, sim_cfg["spinup_years"], sim_cfg["batch_memory_mb"],
                                sim_cfg.get("members_per_batch"), physics_options=sim_cfg.get("physics")):
        for i, m in enumerate(members[msl]):
            for y0 in range(ny):
                sl = slice(365 * y0, 365 * (y0 + 1))
                data = {k: v[:, sl] for k, v in forcing.items()}
                data.update({k: res[k][i, :, sl] for k in RESPONSES})
                write_history(wave_dir / "hist" / hist_filename(case, m, 1, start + y0), data, lat, lon, start,
                              case, SOURCE, paramfile=f"paramfiles/{m}.nc", day0=365 * y0,
                              compress=sim_cfg["compress"], extra_attrs={"esm_emu_member": m})
        del res
    return len(design)


def run_wave(k: int, out: Path, section, wiring: dict, inv_cfg, progress: bool) -> dict:
    """Wave k: propose members from wave k-1's parameter map, simulate them, append them to the
    store, fine-tune the emulator on the grown store, invert again; returns what stages.json keeps."""
    import xarray as xr

    from esm_emu.inverse.pipeline import run_from_config
    from esm_emu.inverse.warm import STATE_FILE
    from esm_emu.propose import propose_wave
    from esm_emu.training.job import train_job
    from ppe_ingest.ingest.append import append_wave

    wdir = out / "waves" / str(k)
    prev_inv = Path(inv_cfg.out) if k == 1 else out / "waves" / str(k - 1) / "inverse"
    prev_emu = out / "emulator" if k == 1 else out / "waves" / str(k - 1) / "emulator"
    ppe, store = wdir / "ppe", Path(wiring["ingest"]["out"])
    sim = section("simulate")
    seed = int(sim.seed) + 100 * k
    with xr.open_dataset(store) as st:
        have = [str(m) for m in st["member"].values]
    prefix = "W" + "ABCDEFGHIJKLMNOPQRST"[k - 1]
    if not any(m.startswith(prefix) for m in have):  # else appended before a kill: fine-tune and invert again
        if ppe.exists():  # a partial wave from a killed run: start it over (the store is appended at its end)
            shutil.rmtree(ppe)
        propose_wave(prev_inv / "parameter_map.nc", inv_cfg.waves.members, ppe, table=out / "ppe" / "params.csv",
                     base_paramfile=out / "ppe" / "paramfile_default.nc", prefix=prefix, seed=seed)
        # the first PPE's seed: its gridcells and weather
        _run_simulator(sim, inv_cfg.waves.members, simulate_members, sim, int(sim.seed), ppe, progress)
        append_wave(ppe, store, seed=seed, progress=progress)
    with xr.open_dataset(store) as st:
        appended = {"members": st.sizes["member"]}
    release_memory()  # the append's buffers go back before fine-tuning loads the grown store
    emu = section("emulator").override({"run_dir": str(wdir / "emulator"),
                                        "train.init_from": str(prev_emu / "best.pt"),
                                        "train.max_steps": inv_cfg.waves.train_steps,
                                        "train.warmup_steps": 0,
                                        # the grown store is read from the file batch by batch: a wave's
                                        # members add to the disk, not to the resident memory
                                        "data.reading": "stream"})
    summary, _ = train_job(emu, resume=True, progress=progress, plots=False)
    release_memory()
    inv = section("inverse").override({"out": str(wdir / "inverse"), "ablation": inv_cfg.waves.ablation,
                                       "forward.checkpoint": str(wdir / "emulator" / "best.pt")})
    warm = prev_inv / STATE_FILE  # absent where the previous inversion was no dPL (per-site calibration)
    run_from_config(inv, progress=progress, spinup_years=sim.spinup_years,
                    warm_from=warm if inv_cfg.waves.dpl_steps and warm.exists() else None,
                    warm_steps=inv_cfg.waves.dpl_steps, held_out_prefix=prefix)
    return {"store_members": appended["members"], "train_steps": summary["steps"]}


def run_quickstart(out: str | Path, seed: int | None = None, config: str | Path | None = None,
                   sets: Sequence[str] = (), restart: bool = False, progress: bool = True) -> dict:
    """`run_pipeline` on the shipped quickstart.yaml (or `config`)."""
    return run_pipeline(config or default_config(), out, seed=seed, sets=sets, restart=restart, progress=progress)


def _median_skill(emu_metrics: dict) -> dict:
    """Median daily NSE/KGE per variable on each held-out group, from the emulator evaluation (and the
    ensemble's spread where the emulator is an ensemble, with its held-out band coverage before and
    after the calibration, esm_emu/spread.py)."""
    return {group: {"n_series": g.get("n_series"),
                    **{k: g[k] for k in ("ensemble_members", "spread_calibration") if k in g},
                    **{v: {"NSE_median": d.get("NSE_median"), "KGE_median": d.get("KGE_median"),
                           **{k: d[k] for k in ("spread_median", "coverage_2sd", "coverage", "calibrated_spread_median")
                              if k in d}}  # ensemble spread
                       for v, d in (g.get("variables") or {}).items()}}
            for group, g in (emu_metrics.get("groups") or {}).items()}


def _skill_rows(rows: dict) -> dict:
    return {param: {v: {"nse_median": d.get("nse_median"), "kge_median": d.get("kge_median")}
                    for v, d in (rows.get(param) or {}).items()} for param in rows}


def inversion_summary(inv_metrics: dict) -> dict:
    """The report's view of one inversion: recovery, held-out-year skill of default, inferred and
    true parameters (through the forward model; and through the twin's true model, the built-in
    simulator, with the calibration's share of the reachable gain), identifiability, trust region."""
    rows = dict(inv_metrics.get("skill_test_period") or {})
    if inv_metrics.get("skill_test_period_truth"):
        rows["truth"] = inv_metrics["skill_test_period_truth"]
    out = {"parameter_recovery": inv_metrics.get("recovery"), "skill_held_out_years": _skill_rows(rows)}
    if inv_metrics.get("reachable_gain_share"):
        out["skill_held_out_years"]["reachable_gain_share"] = inv_metrics["reachable_gain_share"]
    if inv_metrics.get("skill_test_period_true_model"):
        out["skill_held_out_years_true_model"] = {
            **_skill_rows(inv_metrics["skill_test_period_true_model"]),
            "reachable_gain_share": inv_metrics.get("reachable_gain_share_true_model"),
            "what": "the same parameters run through the twin's true model (the built-in simulator, spun up "
                    "as the PPE); truth: the best any calibration can do with these noisy observations"}
    if inv_metrics.get("identifiability"):
        out["identifiability"] = inv_metrics["identifiability"]
    for key in ("trust_region", "forward_model_held_out_rmse", "uncertainty_parts_unit_sd_median"):
        if inv_metrics.get(key) is not None:
            out[key] = inv_metrics[key]
    return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_report(out: Path, stages: dict, inv_cfg, final_inv: Path | None = None, real_basins=None) -> dict:
    """Gather the stages' metrics and plots into out/report (metrics.json + PNGs).

    With PPE waves, ``waves/<k>/...`` holds each wave's recovery and skill (0: the first PPE) and
    the top level describes the final wave (``final_inv``, its emulator)."""
    rep_dir = out / "report"
    rep_dir.mkdir(exist_ok=True)
    n_waves = inv_cfg.waves.count
    emu_eval = (out / "waves" / str(n_waves) / "emulator" if n_waves else out / "emulator") / "eval"
    inv_dir = Path(final_inv or inv_cfg.out)
    emu_metrics = json.loads((emu_eval / "metrics.json").read_text()) if (emu_eval / "metrics.json").exists() else {}
    inv_metrics = json.loads((inv_dir / "metrics.json").read_text()) if (inv_dir / "metrics.json").exists() else {}
    report = {
        "what": "twin experiment on the esm-emu built-in land simulator (a CTSM stand-in, not CTSM)",
        "emulator": _median_skill(emu_metrics),
        **inversion_summary(inv_metrics),
        "ablation": inv_metrics.get("ablation"),
        "inverse_method": inv_metrics.get("method"),
        "n_gridcells": inv_metrics.get("n_entities"), "n_observed": inv_metrics.get("n_observed"),
        "wall_s": {k: v.get("wall_s") for k, v in stages.items()},
        "ctsm_files": (stages.get("write-ctsm") or {}).get("files"),
    }
    if n_waves:
        report["waves"] = {}
        first = (stages.get("wave-1") or {}).get("store_members")
        for k in range(n_waves + 1):
            d = Path(inv_cfg.out) if k == 0 else out / "waves" / str(k) / "inverse"
            e = (out / "emulator" if k == 0 else out / "waves" / str(k) / "emulator") / "eval" / "metrics.json"
            report["waves"][str(k)] = {**inversion_summary(_read_json(d / "metrics.json")),
                                       "emulator": _median_skill(_read_json(e)),
                                       "ppe_members": (stages.get(f"wave-{k}") or {}).get("store_members") if k
                                       else first and first - inv_cfg.waves.members}  # each wave adds its members
    report.update(_per_site_report(out, inv_dir, inv_metrics, real_basins))
    report["wall_s"]["total"] = round(sum(v for v in report["wall_s"].values() if v), 2)
    copies = [(src, rep_dir / f"emulator_{src.name}") for src in sorted(emu_eval.glob("*.png"))]
    copies += [(src, rep_dir / src.name) for src in sorted(inv_dir.glob("*.png"))]
    for src, dst in copies:  # atomic, with the umask's mode (copy2 would copy the source's)
        with atomic_path(dst, inputs=[src]) as tmp:
            shutil.copyfile(src, tmp)
    with atomic_path(rep_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    return report


def _f(x) -> str:
    return "n/a" if not isinstance(x, (int, float)) or x != x else f"{x:.3f}"


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal: recovery at unobserved gridcells, held-out-year skill, wall time."""
    lines = []
    rec = (report.get("parameter_recovery") or {}).get("unobserved") or {}
    for p, d in rec.items():
        if isinstance(d, dict) and "r" in d:
            # r is undefined (None) where the estimate is one value everywhere (a parameter back at its prior mean)
            c = d.get("coverage")
            cov = f", 90% interval holds {c:.0%} of true values" if isinstance(c, (int, float)) and c == c else ""
            lines.append(f"  {p:26s} r(true, inferred) at unobserved gridcells {_f(d['r'])}{cov}")
    ident = report.get("identifiability") or {}
    for p, d in ident.items():
        if not p.startswith("_"):
            emu = d.get("emulator_error_to_prior_variance")
            lines.append(f"  {p:26s} {'identified' if d['identified'] else 'NOT identified'} (posterior/prior "
                         f"variance {d['posterior_to_prior_variance']:.2f}" + (f" + emulator {emu:.2f}" if emu else "")
                         + (f"; trades off with {', '.join(d['trades_off_with'])})" if d["trades_off_with"] else ")"))
    for key, label in (("skill_held_out_years", "emulator"), ("skill_held_out_years_true_model", "true model")):
        sk = report.get(key) or {}
        for v, d in (sk.get("inferred") or {}).items():
            dflt = (sk.get("default") or {}).get(v, {}).get("nse_median")
            tru = (sk.get("truth") or {}).get(v, {}).get("nse_median")
            share = (sk.get("reachable_gain_share") or {}).get(v)
            lines.append(f"  {v} held-out-year median NSE ({label}): default {_f(dflt)} -> inferred "
                         f"{_f(d['nse_median'])}" + (f" (truth {_f(tru)}; share of reachable gain {_f(share)})"
                                                     if tru is not None else ""))
    waves = report.get("waves") or {}
    if len(waves) > 1:  # what each PPE wave bought: the fit through the true model and recovery after it
        for k, w in sorted(waves.items(), key=lambda kv: int(kv[0])):
            sk = (w.get("skill_held_out_years_true_model") or w.get("skill_held_out_years") or {})
            q = (sk.get("inferred") or {}).get("QRUNOFF", {}).get("nse_median")
            share = (sk.get("reachable_gain_share") or {}).get("QRUNOFF")
            rec = (w.get("parameter_recovery") or {}).get("unobserved") or {}
            rs = " ".join(f"{p} {_f(d['r'])}" for p, d in rec.items() if isinstance(d, dict) and "r" in d)
            lines.append(f"  wave {k} ({w.get('ppe_members') or '?'} PPE members): QRUNOFF held-out NSE {_f(q)}"
                         + (f" (share {_f(share)})" if share is not None else "")
                         + (f"; r unobserved: {rs}" if rs else ""))
    lines.append(f"  wall time {report['wall_s']['total']:.0f} s")
    return lines


def _real_basin_wiring(sim, wiring: dict, inv) -> bool:
    """For real basins (simulate.grid camels, no truth set, simulate.basins listed) fill in the
    CAMELS paths the config leaves out (from $ESM_EMU_SHARED_DATA or ../shared/data), take no truth,
    and pass inverse.forward.kind simulator and the simulator's physics options through. True for real basins."""
    if sim.grid != "camels" or sim.truth is not None:
        return False
    if not sim.basins:
        raise UserError("simulate.basins: list the CAMELS gauge ids to simulate and calibrate (no truth set: "
                        "the observations are their USGS streamflow)")
    from ppe_ingest.obs.camels import camels_data_root

    root = None
    if not sim.camels_attributes or not sim.forcing_dir:
        root = camels_data_root()
    if not sim.camels_attributes:
        wiring["simulate"]["camels_attributes"] = str(root / "camels_attributes_v2.0")
    if not sim.forcing_dir:
        wiring["simulate"]["forcing_dir"] = str(root / "basin_mean_forcing" / "daymet")
    wiring["simulate"]["forcing"] = "camels"
    wiring["inverse"].pop("truth", None)
    if inv.forward.kind == "simulator":  # calibrate through the simulator itself (a few basins: affordable)
        wiring["inverse"]["forward.kind"] = "simulator"
        wiring["inverse"].pop("forward.checkpoint", None)
        for k, v in sim.physics.items():
            wiring["inverse"][f"forward.physics.{k}"] = bool(v)
    return True


def check_periods_in_run(sim, inv, name: str) -> None:
    """inverse.train_period and inverse.test_period lie inside the simulated years: one line naming the
    key otherwise, before any stage runs."""
    from esm_emu.inverse.config import period_keys

    first, last = sim.start_year * 10000 + 101, (sim.start_year + sim.n_years - 1) * 10000 + 1231
    for key in ("train_period", "test_period"):
        start, end = period_keys(inv[key], f"inverse.{key}")
        if (start is not None and not first <= start <= last) or (end is not None and not first <= end <= last):
            raise UserError(f"{name}: inverse.{key}: {inv[key].get('start')}..{inv[key].get('end')} is outside the "
                            f"simulated years {sim.start_year}-{sim.start_year + sim.n_years - 1} "
                            "(simulate.start_year, simulate.n_years)")


def _per_site_report(out: Path, inv_dir: Path, inv_metrics: dict, real_basins=None) -> dict:
    """per_site/<site>/<default|inferred>/<variable>/{nse, kge, bias} in the held-out period; for real
    CAMELS basins (`real_basins`: their simulate section) also the inferred soil properties against
    the CAMELS soil attributes and the calibrated routing."""
    import xarray as xr

    from esm_emu.inverse.per_site import per_site_skill, site_names
    from esm_emu.inverse.problem import unit_position

    pmap_path, obs_path = inv_dir / "parameter_map.nc", out / "observations" / "observations.nc"
    if not pmap_path.exists():
        return {}
    with xr.open_dataset(pmap_path) as ds:
        pmap = ds.load()
    obs = None
    if obs_path.exists():
        with xr.open_dataset(obs_path) as ds:
            obs = ds.load()
    names = site_names(pmap, obs)
    rep = {"per_site": per_site_skill(inv_metrics, names)}
    if real_basins is not None:
        from ppe_ingest.simulator.sites import camels_soil_comparison

        rep["what"] = ("real CAMELS basins: the esm-emu built-in land simulator (a CTSM stand-in, not CTSM) "
                       "calibrated against USGS streamflow")
        dim = pmap["theta"].dims[0]
        ids = [names.get(str(e), str(e)) for e in pmap[dim].values]
        params = [str(p) for p in pmap["param"].values]
        sf = {p: pmap["theta"].sel(param=p).values for p in ("hksat_sf", "watsat_sf", "bsw_sf", "sucsat_sf")
              if p in params}
        soil = camels_soil_comparison(real_basins.camels_attributes, ids, sf)
        rep["soil_vs_camels"] = {d.pop("basin"): d for d in soil}
        lo, hi = pmap["param_min"].values.astype(float), pmap["param_max"].values.astype(float)
        # maps written before inverse.scale existed were searched on the log scale
        u, u_sd = unit_position(pmap["theta"].values, pmap["theta_std"].values, lo[None], hi[None],
                                str(pmap.attrs.get("parameter_scale", "log")))
        local = pmap.get("posterior_to_prior_variance_local")
        ratio = None if local is None else local.values
        limit = 0.1 if local is None else float(local.attrs.get("identified_at_most", 0.1))

        def entry(k, j):
            # range shares on the scale the calibration searches (inverse.scale); on a
            # bound: within 1% of it (the per-site logits approach, never reach, it)
            return {"value": float(pmap["theta"].values[k, j]), "std": float(pmap["theta_std"].values[k, j]),
                    "lower": float(lo[j]), "upper": float(hi[j]), "on_bound": bool(min(u[k, j], 1 - u[k, j]) <= 0.01),
                    "std_share_of_range": float(u_sd[k, j]),
                    "posterior_to_prior_variance": None if ratio is None else float(ratio[k, j]),
                    "data_constrain_here": None if ratio is None else bool(ratio[k, j] <= limit)}

        rep["calibrated_parameters"] = {i: {p: entry(k, j) for j, p in enumerate(params)} for k, i in enumerate(ids)}
    return rep
