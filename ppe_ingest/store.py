"""The training-store contract: names, dims, split codes, variable groups, normalisation statistics.

A training store is one chunked netCDF4/HDF5 file (written by `ppe_ingest.ingest.writer`) with

- dims ``member``, ``gridcell``, ``time``, ``param``, ``field``, ``norm_var``;
- forcing (vocabulary.FORCING) as (gridcell, time) when identical across members (global attr
  ``forcing_shared_across_members = 1``), else (member, gridcell, time);
- responses (vocabulary.RESPONSES) as (member, gridcell, time) float32, NaN = missing, CTSM units;
- ``theta(member, param)`` with ``theta_min/theta_max/param_location/theta_reduction(param)``;
- ``static(gridcell, field)`` (vocabulary.ALL_STATIC_FIELDS present in the surfdata);
- ``grid1d_lat/grid1d_lon(gridcell)``;
- ``split_member/split_gridcell/split_time`` with codes TRAIN, VAL, TEST;
- ``norm_mean/norm_std(norm_var)`` over the train split with ``norm_group(norm_var)`` in
  NORM_GROUPS (a static field and a parameter may share a name, e.g. FMAX), on the log scale
  ``log(max(x, 0) + log_eps)`` for the variables in the ``log_transform_vars`` attribute.

Writers, training, evaluation, the inverse problem and the DA hook all go through this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import FORCING, RESPONSES

# dims
MEMBER, GRIDCELL, TIME, PARAM, FIELD, NORM_VAR = "member", "gridcell", "time", "param", "field", "norm_var"
LAT, LON = "grid1d_lat", "grid1d_lon"

# split codes (flag_values / flag_meanings of the split_* variables)
TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
SPLIT_ATTRS = {"flag_values": np.array([TRAIN, VAL, TEST], dtype="i1"), "flag_meanings": "train val test"}
SPLIT_MEMBER, SPLIT_GRIDCELL, SPLIT_TIME = "split_member", "split_gridcell", "split_time"

# variables
THETA, THETA_MIN, THETA_MAX = "theta", "theta_min", "theta_max"
PARAM_LOCATION, THETA_REDUCTION = "param_location", "theta_reduction"
STATIC = "static"
NORM_MEAN, NORM_STD, NORM_GROUP = "norm_mean", "norm_std", "norm_group"

# variable groups (norm_group values)
GROUP_VARIABLE, GROUP_STATIC, GROUP_PARAM = "variable", "static", "param"
NORM_GROUPS = (GROUP_VARIABLE, GROUP_STATIC, GROUP_PARAM)

# global attributes
ATTR_FORCING_SHARED = "forcing_shared_across_members"
ATTR_LOG_VARS = "log_transform_vars"
ATTR_LOG_EPS = "log_eps"
ATTR_WARMUP = "warmup_days"
ATTR_LOG_CLIP_MIN = "log_clip_min"
ATTR_SPLIT_SEED = "split_seed"
ATTR_TITLE, ATTR_HISTORY = "title", "history"
ATTR_SOURCE_PPE = "source_ppe"
ATTR_CATALOG = "catalog"
ATTR_VERSION = "esm_emu_version"
ATTR_LAYOUT = "layout"                    # the PPE's folder layout (ingest.discover)
ATTR_SKIPPED = "skipped"                  # JSON list of the skipped members/files and why
ATTR_HISTORY_TAPES = "history_tapes"      # "VAR:tape ..." the tape each variable was read from
# attributes of the static variable
ATTR_SOIL_LAYER_REDUCTION = "soil_layer_reduction"
ATTR_LAI_DERIVATION = "lai_derivation"
DEFAULT_LOG_EPS = 1e-8

REQUIRED = (THETA, STATIC, SPLIT_MEMBER, SPLIT_GRIDCELL, SPLIT_TIME, NORM_MEAN, NORM_STD)


def log_transform(x: np.ndarray, eps: float) -> np.ndarray:
    """The store's log scale: log(max(x, 0) + eps) (CTSM runoff can be slightly negative)."""
    return np.log(np.maximum(x, 0) + eps)


@dataclass(frozen=True)
class NormStats:
    """Train-split statistics keyed by (group, name), with the log-transformed variable names."""

    mean: dict
    std: dict
    log_vars: frozenset
    log_eps: float

    def lookup(self, names, group: str) -> tuple[list[float], list[float], list[bool]]:
        """(means, stds, is_log) of `names` in `group`; UserError naming the first missing one."""
        keys = [(group, n) for n in names]
        missing = [k[1] for k in keys if k not in self.mean]
        if missing:
            raise UserError(f"training store: norm_var has no {group} statistics for {missing[0]!r}")
        return [self.mean[k] for k in keys], [self.std[k] for k in keys], [n in self.log_vars for n in names]


def norm_stats(ds) -> NormStats:
    """The normalisation statistics of an opened store (stores from before norm_group: group by kind)."""
    for v in (NORM_MEAN, NORM_STD):
        if v not in ds:
            raise UserError(f"training store: variable {v!r} is missing (normalisation statistics)")
    names = [str(x) for x in ds[NORM_VAR].values]
    if NORM_GROUP in ds:
        groups = [str(x) for x in ds[NORM_GROUP].values]
    else:  # older stores: variables first, then fields, then params, names unique
        fields = {str(f) for f in ds[FIELD].values} if FIELD in ds.coords or FIELD in ds else set()
        params = {str(p) for p in ds[PARAM].values} if PARAM in ds.coords or PARAM in ds else set()
        groups = [GROUP_PARAM if n in params else GROUP_STATIC if n in fields else GROUP_VARIABLE for n in names]
    keys = list(zip(groups, names))
    mean = dict(zip(keys, np.asarray(ds[NORM_MEAN].values, dtype=np.float64)))
    std = dict(zip(keys, np.asarray(ds[NORM_STD].values, dtype=np.float64)))
    logs = frozenset(str(ds.attrs.get(ATTR_LOG_VARS, "")).split())
    return NormStats(mean, std, logs, float(ds.attrs.get(ATTR_LOG_EPS, DEFAULT_LOG_EPS)))


def open_store(path, chunks: dict | None = None, required=REQUIRED):
    """Open a training store lazily (xarray, dask chunks) and check it follows this contract."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: training store not found (write it with `esm-emu ingest`)")
    try:
        ds = xr.open_dataset(path, chunks={} if chunks is None else chunks)
    except Exception as e:  # any reader failure is a bad file for the user
        raise UserError(f"{path}: cannot open as a training store ({type(e).__name__}: {e})") from None
    validate_store(ds, path, required)
    return ds


def validate_store(ds, path, required=REQUIRED) -> None:
    """UserError naming the first contract violation of an opened store."""
    for v in required:
        if v not in ds:
            raise UserError(f"{path}: variable {v!r} is missing (not a training store from `esm-emu ingest`?)")
    for v in response_names(ds):
        if ds[v].dims != (MEMBER, GRIDCELL, TIME):
            raise UserError(f"{path}: response {v} has dims {ds[v].dims}, expected (member, gridcell, time)")
    fdims = {ds[v].dims for v in forcing_names(ds)}
    if len(fdims) > 1:
        raise UserError(f"{path}: forcing variables have different dims: {sorted(fdims)}")


def forcing_names(ds) -> list[str]:
    """CTSM forcing variables in the store, in vocabulary order."""
    return [v for v in FORCING if v in ds.data_vars]


def response_names(ds) -> list[str]:
    """CTSM response variables in the store, in vocabulary order."""
    return [v for v in RESPONSES if v in ds.data_vars]


def param_names(ds) -> list[str]:
    return [str(p) for p in ds[PARAM].values] if PARAM in ds.variables else []


def static_names(ds) -> list[str]:
    return [str(f) for f in ds[FIELD].values] if FIELD in ds.variables else []


def forcing_shared(ds) -> bool:
    """True when forcing is stored once for all members, (gridcell, time)."""
    names = forcing_names(ds)
    return bool(names) and MEMBER not in ds[names[0]].dims


def static_values(ds, names) -> np.ndarray:
    """static(gridcell, field) columns for `names`, as float (gridcell, len(names))."""
    have = static_names(ds)
    missing = [n for n in names if n not in have]
    if missing:
        raise UserError(f"training store: static field {missing[0]!r} is missing (has: {', '.join(have) or 'none'})")
    return ds[STATIC].sel({FIELD: list(names)}).transpose(GRIDCELL, FIELD).values


def entities_view(ds):
    """The member-free part of a store: shared forcing, static fields and coordinates per gridcell.

    This is the view the inverse problem and the DA hook take of a store (forcing of member 0
    where forcing is stored per member).
    """
    import xarray as xr

    keep = {}
    for v in ds.data_vars:
        da = ds[v]
        if MEMBER in da.dims:
            if v in FORCING:
                keep[v] = da.isel({MEMBER: 0}, drop=True)
        else:
            keep[v] = da
    return xr.Dataset(keep, coords={k: c for k, c in ds.coords.items() if MEMBER not in c.dims}, attrs=ds.attrs)
