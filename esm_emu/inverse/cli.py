"""`esm-emu invert CONFIG`: infer parameters from observations through a frozen forward model."""
from __future__ import annotations

import argparse
from pathlib import Path

from ppe_ingest.base.errors import UserError

from ppe_ingest.store import MEMBER, entities_view


def load_entities(cfg: dict):
    """(gridcell|site, time) forcing and static fields from ``entities`` or the training ``store``."""
    import xarray as xr

    path = cfg.get("entities") or cfg.get("store")
    if path is None:
        raise UserError("inverse: give entities (forcing + static netCDF) or store (training store)")
    try:
        ds = xr.open_zarr(path) if str(path).endswith(".zarr") else xr.open_dataset(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot open ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if MEMBER in ds.dims:  # a training store: its member-free view (forcing is shared by the PPE)
        ds = entities_view(ds)
    return ds.load()


def load_observations(paths):
    """Observation files (the observation schema) merged into one Dataset."""
    from ppe_ingest.obs.io import merge_obs, read_obs

    if not paths:
        raise UserError("inverse.observations: list at least one observation netCDF file")
    dss = [read_obs(p) for p in paths]
    return dss[0] if len(dss) == 1 else merge_obs(dss, source="inverse.observations")


def run_from_config(cfg: dict, config_path=None, progress: bool = True):
    """Load everything a validated ``inverse:`` config names, invert, write outputs; return (map, metrics)."""
    import xarray as xr

    from ppe_ingest.param_table import default_table_path, load_param_table

    from ..forward import load_forward
    from .inversion import run_inversion

    base = Path(config_path).resolve().parent if config_path else Path.cwd()
    obs_paths = []
    for p in cfg.get("observations") or []:
        q = Path(p).expanduser()
        q = q if q.is_absolute() else base / q
        if not q.is_file():
            raise UserError(f"inverse.observations: file not found: {q}")
        obs_paths.append(q)
    table = load_param_table(cfg.get("param_table") or default_table_path())
    entities = load_entities(cfg)
    observations = load_observations(obs_paths)
    fwd = cfg["forward"]
    forward = load_forward(fwd["kind"], fwd.get("checkpoint"), cfg.get("params"), cfg.get("variables"), entities)
    truth = xr.load_dataset(cfg["truth"]) if cfg.get("truth") else None
    return run_inversion(cfg, entities, observations, forward, table, out_dir=cfg["out"], truth=truth,
                         progress=progress, sources=[str(p) for p in obs_paths])


def _handler(args) -> int:
    from .config import load_inverse_config

    cfg = load_inverse_config(args.config)
    if args.out:
        cfg["out"] = str(Path(args.out).resolve())
    if args.seed is not None:
        cfg["seed"] = args.seed
    pmap, metrics = run_from_config(cfg, args.config, progress=not args.quiet)
    out = Path(cfg["out"])
    print(f"parameter map: {out / 'parameter_map.nc'}")
    print(f"metrics: {out / 'metrics.json'}")
    sk = metrics["skill_test_period"]
    for v in metrics["variables"]:
        print(f"{v} test-period median NSE: default {sk['default'][v]['nse_median']:.3f}, "
              f"inferred {sk['inferred'][v]['nse_median']:.3f}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "invert", help="infer soil/hydrologic parameters from observations through the emulator",
        description="Infer spatially varying parameters theta(gridcell|site, param) from observations "
                    "(KGSSL embedding + dPL through the frozen emulator or the built-in simulator). "
                    "Writes parameter_map.nc, metrics.json and PNG plots in the output folder; "
                    "then `esm-emu write-ctsm --values OUT/parameter_map.nc` writes CTSM files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", help="YAML file with an `inverse:` section (see configs/inverse.yaml)")
    p.add_argument("--out", help="output folder (overrides inverse.out)")
    p.add_argument("--seed", type=int, help="random seed (overrides inverse.seed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_handler)
