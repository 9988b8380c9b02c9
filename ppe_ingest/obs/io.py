"""Observations on disk (netCDF, written atomically), the merge of several sources on ``site``, and
their pairing with a model's daily gridcell output."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.geometry import nearest_gridcell

from .schema import MASK_SUFFIX, SCHEMA_VERSION, obs_vars, validate_obs


def write_obs(ds: xr.Dataset, path: os.PathLike | str, inputs: Sequence = ()) -> Path:
    """Validate `ds` and write it to `path` (temporary name, then rename; never over an input)."""
    path = Path(path)
    ds = validate_obs(ds.copy(), str(path))
    enc = {v: {"zlib": True, "complevel": 4, "_FillValue": np.nan} for v in obs_vars(ds)}
    for v in obs_vars(ds):
        enc[v + MASK_SUFFIX] = {"zlib": True, "complevel": 4}
    enc["time"] = {"units": "days since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian", "dtype": "float64"}
    with atomic_path(path, inputs) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=enc)
    return path


def read_obs(path: os.PathLike | str) -> xr.Dataset:
    """Read and validate an observations file written by `write_obs` (or any file in the schema)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: observations file not found")
    try:
        with xr.open_dataset(path, engine="netcdf4") as f:
            ds = f.load()
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read as netCDF ({str(e).splitlines()[0]})") from None
    # strings come back as str or bytes arrays; keep them as Python str objects like the readers
    for v in list(ds.coords) + list(ds.data_vars):
        if ds[v].dtype.kind in "OSU":
            vals = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in ds[v].values.ravel()],
                            dtype=object).reshape(ds[v].shape)
            if v in ds.coords:
                ds = ds.assign_coords({v: (ds[v].dims, vals, ds[v].attrs)})
            else:
                ds[v] = (ds[v].dims, vals, ds[v].attrs)
    return validate_obs(ds, str(path))


def _site_coord_names(ds: xr.Dataset) -> list[str]:
    return [c for c in ds.coords if c != "site" and ds[c].dims == ("site",)]


def merge_obs(datasets: Sequence[xr.Dataset], source: str = "merge") -> xr.Dataset:
    """Merge observation Datasets on ``site`` and ``time`` (outer join).

    A site may appear in several inputs when they carry different variables and agree on its
    coordinates; the same (site, variable) from two inputs, or disagreeing coordinates, is an error.
    """
    if not datasets:
        raise UserError(f"{source}: nothing to merge")
    dss = [validate_obs(d.copy(), f"{source} input {i}") for i, d in enumerate(datasets)]
    sites = pd.Index([])
    times = pd.DatetimeIndex([])
    for d in dss:
        sites = sites.append(pd.Index(d["site"].values.astype(str)).difference(sites, sort=False))
        times = times.union(pd.DatetimeIndex(d["time"].values))
    sites = pd.Index(list(dict.fromkeys(sites)))
    ns, nt = len(sites), len(times)
    data, attrs = {}, {}
    coords: dict[str, np.ndarray] = {}
    cattrs: dict[str, dict] = {}
    for d in dss:
        si = sites.get_indexer(d["site"].values.astype(str))
        ti = times.get_indexer(pd.DatetimeIndex(d["time"].values))
        for c in _site_coord_names(d):
            vals = d[c].values
            if c not in coords:
                coords[c] = np.full(ns, np.nan) if vals.dtype.kind in "fiu" else np.full(ns, None, dtype=object)
                cattrs[c] = dict(d[c].attrs)
            cur = coords[c]
            for k, s in enumerate(si):
                new, old = vals[k], cur[s]
                if cur.dtype == object:
                    if old is None or old == "":
                        cur[s] = new
                    elif c == "site_source" and str(new) not in str(old).split(" + "):
                        cur[s] = f"{old} + {new}"
                    elif old != new and c != "site_source":
                        raise UserError(f"{source}: site {sites[s]}: {c} differs between inputs ({old!r}, {new!r})")
                else:
                    new = float(new)
                    if np.isnan(old):
                        cur[s] = new
                    elif np.isfinite(new) and not np.isclose(old, new, rtol=0, atol=1e-4):
                        raise UserError(f"{source}: site {sites[s]}: {c} differs between inputs ({old}, {new})")
        for v in obs_vars(d):
            if v not in data:
                data[v] = (np.full((ns, nt), np.nan), np.zeros((ns, nt), bool), np.zeros(ns, bool))
                attrs[v] = dict(d[v].attrs)
            elif d[v].attrs.get("units") != attrs[v].get("units"):
                raise UserError(f"{source}: {v}: units differ between inputs")
            vals, mask, taken = data[v]
            dup = taken[si]
            if dup.any():
                raise UserError(f"{source}: site {sites[si[dup.argmax()]]}: {v} comes from two inputs")
            taken[si] = True
            vals[np.ix_(si, ti)] = d[v].values
            mask[np.ix_(si, ti)] = d[v + MASK_SUFFIX].values
            for k, a in d[v].attrs.items():  # keep per-source attrs only where all inputs agree
                if attrs[v].get(k) != a:
                    attrs[v].pop(k, None)
            attrs[v]["units"] = d[v].attrs["units"]
    out = xr.Dataset(coords={"site": ("site", np.array(list(sites), dtype=object)), "time": times.values})
    for c, vals in coords.items():
        if vals.dtype == object:
            vals = np.array(["" if x is None else str(x) for x in vals], dtype=object)
        out = out.assign_coords({c: ("site", vals, cattrs[c])})
    for v, (vals, mask, _) in data.items():
        out[v] = (("site", "time"), vals, attrs[v])
        out[v + MASK_SUFFIX] = (("site", "time"), mask, {"long_name": f"{v} quality mask (True = usable)"})
    out.attrs = {"obs_schema_version": SCHEMA_VERSION,
                 "source": " + ".join(dict.fromkeys(d.attrs.get("source", "unknown") for d in dss))}
    return validate_obs(out, source)


def read_observations(path: os.PathLike | str, variable: str, mask: str | None = None):
    """Observations of `variable` from `path` and their usable-value mask (site, time): the file's
    quality mask (`mask`, default `<variable>_mask`) where it has one, and finite values."""
    ds = read_obs(path)
    if variable not in ds.data_vars:
        raise UserError(f"{path}: observations have no variable {variable}")
    name = mask or variable + MASK_SUFFIX
    values = ds[variable].values
    usable = ds[name].values.astype(bool) if name in ds.variables else np.isfinite(values)
    return ds, usable & np.isfinite(values)


def values_on_days(obs: xr.Dataset, usable: np.ndarray, variable: str, days: Sequence[str]) -> np.ndarray:
    """(site, day) observed values on the 'YYYY-MM-DD' `days` (a model's day labels), NaN where the
    value is unusable or the day is not observed."""
    obs_days = np.array([str(d)[:10] for d in obs["time"].values.astype("datetime64[D]")])
    pos = {d: i for i, d in enumerate(obs_days)}
    values = obs[variable].values
    y = np.full((values.shape[0], len(days)), np.nan)
    for j, d in enumerate(days):
        i = pos.get(d)
        if i is not None:
            y[:, j] = np.where(usable[:, i], values[:, i], np.nan)
    return y


def paired_with_gridcells(obs: xr.Dataset, usable: np.ndarray, variable: str, days: Sequence[str],
                          model: np.ndarray, grid_lat, grid_lon, max_deg: float):
    """Each site's observations beside the model at its nearest gridcell (great-circle, within
    `max_deg` degrees). `model` is (day, gridcell) on the 'YYYY-MM-DD' `days`.

    Returns (gridcell of each site, -1 when none is near enough; observed (site, day) with NaN where
    unusable or unmatched; model (site, day))."""
    cell, dist = nearest_gridcell(obs["site_lat"].values, obs["site_lon"].values, grid_lat, grid_lon, max_deg)
    cell[~np.isfinite(dist)] = -1  # sites without a location
    y_obs = values_on_days(obs, usable, variable, days)
    y_obs[cell < 0] = np.nan
    return cell, y_obs, np.asarray(model)[:, np.maximum(cell, 0)].T
