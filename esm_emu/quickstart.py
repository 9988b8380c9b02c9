"""`esm-emu quickstart --out DIR`: the whole chain on the embedded default, as a twin experiment.

simulate a PPE with the built-in simulator (a CTSM stand-in) -> ingest -> train the emulator ->
read the synthetic observations at a subset of gridcells -> invert through the frozen emulator ->
write CTSM files -> report. Each stage is the same function its own subcommand runs; a finished
stage is recorded in DIR/stages.json so a rerun after a kill continues where it stopped.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

STAGES = ("simulate", "ingest", "train", "observations", "invert", "write-ctsm", "report")


def default_config() -> Path:
    """configs/quickstart.yaml of this checkout."""
    return Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _section(raw: dict, name: str, schema: dict, cfg_path: Path, overrides: dict | None = None) -> dict:
    from ppe_ingest.base.config import validate

    data = dict(raw.get(name) or {})
    data.update(overrides or {})
    return validate(data, schema, source=cfg_path.name, base_dir=cfg_path.parent, _prefix=f"{name}.")


class _Stages:
    """Completed stages and their wall times, kept in DIR/stages.json."""

    def __init__(self, out: Path, restart: bool):
        self.path = out / "stages.json"
        self.done = {} if restart or not self.path.exists() else json.loads(self.path.read_text())

    def finished(self, name: str) -> bool:
        return name in self.done

    def record(self, name: str, wall: float, **info) -> None:
        self.done[name] = {"wall_s": round(wall, 2), **info}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.done, indent=2))


def run_quickstart(out: str | Path, seed: int | None = None, config: str | Path | None = None,
                   restart: bool = False, progress: bool = True) -> dict:
    """Run every stage into `out`; return the report dict also written to out/report/metrics.json."""
    from ppe_ingest.base.config import read_yaml

    cfg_path = Path(config) if config else default_config()
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: quickstart config not found (pass --config)")
    raw = read_yaml(cfg_path) or {}
    for name in ("simulate", "ingest", "emulator", "inverse"):
        if name not in raw:
            raise UserError(f"{cfg_path.name}: {name}: required section is missing")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out, restart)
    ppe, store, run_dir = out / "ppe", out / "store.nc", out / "emulator"
    obs_path, inv_dir, ctsm_dir = out / "observations" / "observations.nc", out / "inverse", out / "ctsm"

    def stage(name: str):
        if stages.finished(name):
            print(f"[{name}] already done (recorded in {stages.path.name}); skipping")
            return None
        print(f"[{name}]", flush=True)
        return time.perf_counter()

    # 1. The PPE and the twin-experiment truth from the built-in simulator.
    from ppe_ingest.simulator.config import SCHEMA as SIM_SCHEMA

    sim_cfg = _section(raw, "simulate", SIM_SCHEMA, cfg_path, {"seed": seed} if seed is not None else None)
    if not sim_cfg.get("truth"):
        raise UserError(f"{cfg_path.name}: simulate.truth: the quickstart needs the truth set (observations)")
    t0 = stage("simulate")
    if t0 is not None:
        if ppe.exists():  # a partial PPE from a killed run: start it over
            shutil.rmtree(ppe)
        from ppe_ingest.simulator.ppe import simulate

        simulate(sim_cfg, ppe, quiet=not progress)
        stages.record("simulate", time.perf_counter() - t0)

    # 2. Catalog and training store.
    from ppe_ingest.ingest.cli import ingest_ppe
    from ppe_ingest.ingest.config import INGEST_SCHEMA

    t0 = stage("ingest")
    if t0 is not None:
        ing_cfg = _section(raw, "ingest", INGEST_SCHEMA, cfg_path, {"seed": seed} if seed is not None else None)
        ingest_ppe(ppe, store, ing_cfg, catalog=out / "catalog.json", progress=progress)
        stages.record("ingest", time.perf_counter() - t0)

    # 3. The emulator (resumes from its own checkpoint when a run was killed mid-training).
    from esm_emu.training.config import SCHEMA as EMU_SCHEMA

    emu_over = {"store": str(store), "run_dir": str(run_dir)}
    if seed is not None:
        emu_over["train"] = {**(raw["emulator"].get("train") or {}), "seed": seed}
    emu_cfg = _section(raw, "emulator", EMU_SCHEMA, cfg_path, emu_over)
    t0 = stage("train")
    if t0 is not None:
        from esm_emu.distributed import Distributed
        from esm_emu.evaluate import evaluate_run
        from esm_emu.training.loop import train

        dist = Distributed()
        summary = train(emu_cfg, dist, resume=True, progress=progress)
        ev = evaluate_run(run_dir, out_dir=run_dir / "eval", plots=True, progress=progress)
        for line in ev["summary_lines"]:
            print("  " + line)
        stages.record("train", time.perf_counter() - t0, steps=summary["steps"], stop=summary["stop"],
                      train_wall_s=round(summary["wall_s"], 2))

    # 4. Synthetic observations, read back through the real CAMELS / PLUMBER2 / ISMN readers.
    from esm_emu.inverse.config import SCHEMA as INV_SCHEMA

    inv_over = {"store": str(store), "observations": [str(obs_path)], "out": str(inv_dir),
                "truth": str(ppe / "truth" / "parameter_map.nc"),
                "forward": {"kind": "emulator", "checkpoint": str(run_dir / "best.pt")}}
    if seed is not None:
        inv_over["seed"] = seed
    t0 = stage("observations")
    if t0 is not None:
        from ppe_ingest.obs.io import write_obs
        from ppe_ingest.simulator.truth import read_observations

        variables = (raw["inverse"].get("variables") or ["QRUNOFF"])
        write_obs(read_observations(ppe / "truth", variables), obs_path)
        stages.record("observations", time.perf_counter() - t0)
    # validated only now: its paths (checkpoint, observations) exist once the stages above ran
    inv_cfg = _section(raw, "inverse", INV_SCHEMA, cfg_path, inv_over)

    # 5. Inversion through the frozen emulator.
    t0 = stage("invert")
    if t0 is not None:
        from esm_emu.inverse.cli import run_from_config

        run_from_config(inv_cfg, cfg_path, progress=progress)
        stages.record("invert", time.perf_counter() - t0)

    # 6. CTSM files from the inferred parameter map.
    t0 = stage("write-ctsm")
    if t0 is not None:
        from esm_emu.writers import write_ctsm_files
        from ppe_ingest.param_table import load_param_table

        table = load_param_table(ppe / "params.csv")
        fsurdat = next(iter(sorted(ppe.glob("surfdata_*.nc"))), None)
        # spatially varying paramfile parameters: one paramfile per k-means cluster when the
        # inversion made clusters (inverse.clusters), else the median
        # user_nl: the PPE has none, so a new user_nl_clm takes the namelist parameters
        files = write_ctsm_files(ctsm_dir, fsurdat=fsurdat, paramfile=ppe / "paramfile_default.nc",
                                 user_nl=ppe / "user_nl_clm", values=inv_dir / "parameter_map.nc", table=table,
                                 per_cluster_paramfiles=bool(inv_cfg.get("clusters")))
        stages.record("write-ctsm", time.perf_counter() - t0,
                      files={k: [str(p) for p in v] for k, v in files.items()})

    # 7. The report a person looks at.
    t0 = time.perf_counter()
    report = write_report(out, stages.done, inv_cfg)
    stages.record("report", time.perf_counter() - t0)
    return report


def _median_skill(emu_metrics: dict) -> dict:
    """Median daily NSE/KGE per variable on each held-out group, from the emulator evaluation."""
    return {group: {"n_series": g.get("n_series"),
                    **{v: {"NSE_median": d.get("NSE_median"), "KGE_median": d.get("KGE_median")}
                       for v, d in (g.get("variables") or {}).items()}}
            for group, g in (emu_metrics.get("groups") or {}).items()}


def write_report(out: Path, stages: dict, inv_cfg: dict) -> dict:
    """Gather the stages' metrics and plots into out/report (metrics.json + PNGs)."""
    rep_dir = out / "report"
    rep_dir.mkdir(exist_ok=True)
    emu_eval = out / "emulator" / "eval"
    inv_dir = Path(inv_cfg["out"])
    emu_metrics = json.loads((emu_eval / "metrics.json").read_text()) if (emu_eval / "metrics.json").exists() else {}
    inv_metrics = json.loads((inv_dir / "metrics.json").read_text()) if (inv_dir / "metrics.json").exists() else {}
    report = {
        "what": "twin experiment on the esm-emu built-in land simulator (a CTSM stand-in, not CTSM)",
        "emulator": _median_skill(emu_metrics),
        "parameter_recovery": inv_metrics.get("recovery"),
        "skill_held_out_years": {
            param: {v: {"nse_median": d.get("nse_median"), "kge_median": d.get("kge_median")}
                    for v, d in (inv_metrics.get("skill_test_period", {}).get(param) or {}).items()}
            for param in ("default", "inferred")},
        "ablation": inv_metrics.get("ablation"),
        "inverse_method": inv_metrics.get("method"),
        "n_gridcells": inv_metrics.get("n_entities"), "n_observed": inv_metrics.get("n_observed"),
        "wall_s": {k: v.get("wall_s") for k, v in stages.items()},
        "ctsm_files": (stages.get("write-ctsm") or {}).get("files"),
    }
    report["wall_s"]["total"] = round(sum(v for v in report["wall_s"].values() if v), 2)
    for src in sorted(emu_eval.glob("*.png")):
        shutil.copy2(src, rep_dir / f"emulator_{src.name}")
    for src in sorted(inv_dir.glob("*.png")):
        shutil.copy2(src, rep_dir / src.name)
    with atomic_path(rep_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    return report


def _summary_lines(report: dict) -> list[str]:
    lines = []
    rec = (report.get("parameter_recovery") or {}).get("unobserved") or {}
    for p, d in rec.items():
        if isinstance(d, dict) and "r" in d:
            lines.append(f"  {p:26s} r(true, inferred) at unobserved gridcells {d['r']:.3f}")
    sk = report.get("skill_held_out_years") or {}
    for v, d in (sk.get("inferred") or {}).items():
        dflt = (sk.get("default") or {}).get(v, {}).get("nse_median")
        lines.append(f"  {v} held-out-year median NSE: default {dflt:.3f} -> inferred {d['nse_median']:.3f}")
    lines.append(f"  wall time {report['wall_s']['total']:.0f} s")
    return lines


def _handler(args) -> int:
    report = run_quickstart(args.out, seed=args.seed, config=args.config, restart=args.restart,
                            progress=not args.quiet)
    print(f"report: {Path(args.out) / 'report' / 'metrics.json'}")
    for line in _summary_lines(report):
        print(line)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="the whole chain on the built-in simulator: PPE, emulator, inversion, CTSM files, report",
        description="Twin experiment on the embedded default: simulate a PPE with the built-in land "
                    "simulator (a CTSM stand-in), ingest it, train the emulator, invert synthetic "
                    "observations, write calibrated CTSM files and DIR/report/metrics.json with plots. "
                    "Rerunning with the same --out continues after the last finished stage.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, help="seed for every stage (default: the config's)")
    p.add_argument("--config", help="quickstart YAML (default: configs/quickstart.yaml)")
    p.add_argument("--restart", action="store_true", help="run every stage again")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_handler)
