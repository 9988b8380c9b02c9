"""Inversion as a library: a validated ``inverse:`` section in, a parameter map and metrics out.

`run_from_config` loads what the section names (parameter table, entities, observations, forward
model, truth), runs the inversion and writes its outputs; `esm-emu invert` and the run pipeline
both call it.
"""
from __future__ import annotations

from collections.abc import Mapping

from ppe_ingest.base.errors import UserError

from .config import InverseConfig


def check_inputs(cfg: Mapping) -> None:
    """Every input file the section names is there and of the right kind: one line naming the key
    and file otherwise. Cheap (no torch, no xarray), so a bad input is refused at once."""
    from ppe_ingest.base.netcdf import require_netcdf

    for key in ("entities", "store", "truth"):
        path = cfg.get(key)
        if path and not str(path).endswith(".zarr"):
            require_netcdf(path, f"inverse.{key}")
    if not cfg.get("entities") and not cfg.get("store"):
        raise UserError("inverse: give entities (forcing + static netCDF) or store (training store)")
    if not cfg.get("observations"):
        raise UserError("inverse.observations: list at least one observation netCDF file")
    for path in cfg["observations"]:
        require_netcdf(path, "inverse.observations")
    forward = cfg.get("forward") or {}
    if forward.get("kind") == "emulator":
        from pathlib import Path

        ckpt = forward.get("checkpoint")
        if not ckpt:
            raise UserError("inverse.forward.checkpoint: give the emulator checkpoint (.pt) or training run "
                            "folder (forward.kind is emulator)")
        path = Path(ckpt) / "best.pt" if Path(ckpt).is_dir() else Path(ckpt)
        if not path.is_file():
            raise UserError(f"inverse.forward.checkpoint: {path}: emulator checkpoint not found")


def load_entities(cfg: Mapping):
    """(gridcell|site, time) forcing and static fields from ``entities`` or the training ``store``."""
    from ppe_ingest.base.netcdf import open_xarray
    from ppe_ingest.store import MEMBER, entities_view

    path = cfg.get("entities") or cfg.get("store")
    if path is None:
        raise UserError("inverse: give entities (forcing + static netCDF) or store (training store)")
    ds = open_xarray(path, "inverse.entities" if cfg.get("entities") else "inverse.store")
    if MEMBER in ds.dims:  # a training store: its member-free view (forcing is shared by the PPE)
        ds = entities_view(ds)
    return ds.load()


def load_observations(paths):
    """Observation files (the observation schema) merged into one Dataset."""
    from ppe_ingest.base.netcdf import require_netcdf
    from ppe_ingest.obs.io import merge_obs, read_obs

    if not paths:
        raise UserError("inverse.observations: list at least one observation netCDF file")
    dss = [read_obs(require_netcdf(p, "inverse.observations")) for p in paths]
    return dss[0] if len(dss) == 1 else merge_obs(dss, source="inverse.observations")


def run_from_config(cfg: InverseConfig, progress: bool = True):
    """Load everything a validated ``inverse:`` section names, invert, write outputs; return (map, metrics).

    Its paths (observations included) are already resolved and checked by the validation; their
    kinds are checked here before anything heavy is imported.
    """
    check_inputs(cfg)

    from ppe_ingest.base.netcdf import open_xarray
    from ppe_ingest.param_table import default_table_path, load_param_table

    from ..forward import load_forward
    from .inversion import run_inversion

    if cfg.forward.kind == "emulator":  # a file that is no emulator is refused before the data are read
        from pathlib import Path

        from ..checkpoint import emulator_entry, read_torch_file

        ckpt = Path(cfg.forward.checkpoint)
        ckpt = ckpt / "best.pt" if ckpt.is_dir() else ckpt
        emulator_entry(read_torch_file(ckpt, what="emulator checkpoint"), ckpt)
    table = load_param_table(cfg.param_table or default_table_path())
    entities = load_entities(cfg)
    observations = load_observations(cfg.observations)
    forward = load_forward(cfg.forward.kind, cfg.forward.checkpoint, cfg.params, cfg.variables, entities)
    truth = open_xarray(cfg.truth, "inverse.truth", load=True) if cfg.truth else None
    return run_inversion(cfg, entities, observations, forward, table, out_dir=cfg.out, truth=truth,
                         progress=progress, sources=list(cfg.observations))
