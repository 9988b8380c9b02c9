"""Inversion as a library: a validated ``inverse:`` section in, a parameter map and metrics out.

`run_from_config` loads what the section names (parameter table, entities, observations, forward
model, truth), runs the inversion and writes its outputs; `esm-emu invert` and the run pipeline
both call it.
"""
from __future__ import annotations

from collections.abc import Mapping

from ppe_ingest.base.errors import UserError
from ppe_ingest.store import MEMBER, entities_view

from .config import InverseConfig


def load_entities(cfg: Mapping):
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


def run_from_config(cfg: InverseConfig, progress: bool = True):
    """Load everything a validated ``inverse:`` section names, invert, write outputs; return (map, metrics).

    Its paths (observations included) are already resolved and checked by the validation.
    """
    import xarray as xr

    from ppe_ingest.param_table import default_table_path, load_param_table

    from ..forward import load_forward
    from .inversion import run_inversion

    table = load_param_table(cfg.param_table or default_table_path())
    entities = load_entities(cfg)
    observations = load_observations(cfg.observations)
    forward = load_forward(cfg.forward.kind, cfg.forward.checkpoint, cfg.params, cfg.variables, entities)
    truth = xr.load_dataset(cfg.truth) if cfg.truth else None
    return run_inversion(cfg, entities, observations, forward, table, out_dir=cfg.out, truth=truth,
                         progress=progress, sources=list(cfg.observations))
