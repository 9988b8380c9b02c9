"""The one observation schema every in-situ reader returns, and its checks.

An observations Dataset has dims ``site`` (str ids) and ``time`` (datetime64, daily), one or more
response variables ``VAR(site, time)`` named and unitised as in CTSM history (``QRUNOFF`` mm/s,
``EFLX_LH_TOT`` W/m^2, ``H2OSOI`` mm3/mm3, ``SOILWATER_10CM`` kg/m2, ...), each with a boolean
quality mask ``VAR_mask(site, time)`` (True = usable), and site coordinates ``site_lat``,
``site_lon`` (degrees; NaN only where the source file has no location), optional ``area`` (km2,
basins) and ``site_source``.  Missing values are NaN and always masked.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ppe_ingest.base.errors import UserError

SCHEMA_VERSION = "1"
MASK_SUFFIX = "_mask"

# CTSM history units, accepted spellings, long names and a plausible range for observed values.
# The range catches unit mistakes (cfs or mm/day labelled mm/s, percent labelled m3/m3, ...):
# ``min_abs_max`` is the smallest largest-|value| a real series of >= 10 values can have in
# these units (e.g. latent heat that never exceeds 1 W/m2 is in kg/m2/s, not W/m2).
KNOWN_VARS: dict[str, dict] = {
    "QRUNOFF": dict(units="mm/s", aliases=("mm/s", "mm s-1", "kg/m2/s", "kg m-2 s-1"),
                    long_name="total liquid runoff not including correction for land use change",
                    min=0.0, max=0.02, hint="0.02 mm/s = 1728 mm/day; mm/day or cfs given as mm/s?"),
    "QOVER": dict(units="mm/s", aliases=("mm/s", "mm s-1", "kg/m2/s"), long_name="total surface runoff",
                  min=0.0, max=0.02, hint="mm/day given as mm/s?"),
    "QDRAI": dict(units="mm/s", aliases=("mm/s", "mm s-1", "kg/m2/s"), long_name="sub-surface drainage",
                  min=0.0, max=0.02, hint="mm/day given as mm/s?"),
    "EFLX_LH_TOT": dict(units="W/m^2", aliases=("W/m^2", "W/m2", "W m-2", "W m^-2"),
                        long_name="total latent heat flux [+ to atm]", min=-400.0, max=1200.0,
                        min_abs_max=1.0, hint="kg/m2/s or mm/s given as W/m2?"),
    "FSH": dict(units="W/m^2", aliases=("W/m^2", "W/m2", "W m-2"), long_name="sensible heat",
                min=-600.0, max=1200.0, min_abs_max=1.0, hint="wrong units?"),
    "H2OSOI": dict(units="mm3/mm3", aliases=("mm3/mm3", "m3/m3", "m3 m-3", "m^3/m^3", "m^3*m^-3"),
                   long_name="volumetric soil water", min=0.0, max=1.0, hint="percent given as m3/m3?"),
    "SOILWATER_10CM": dict(units="kg/m2", aliases=("kg/m2", "kg m-2", "mm"),
                           long_name="soil liquid water + ice in top 10cm of soil", min=0.0, max=100.0,
                           min_abs_max=1.0, hint="m3/m3 given as kg/m2?"),
    "H2OSNO": dict(units="mm", aliases=("mm", "kg/m2"), long_name="snow depth (liquid water)",
                   min=0.0, max=2.0e4, hint="wrong units?"),
    "TWS": dict(units="mm", aliases=("mm", "kg/m2"), long_name="total water storage",
                min=-1.0e5, max=1.0e5, hint="wrong units?"),
}


def obs_vars(ds: xr.Dataset) -> list[str]:
    """Names of the observed variables (``(site, time)`` data, not masks) in an observations Dataset."""
    return [v for v in ds.data_vars
            if ds[v].dims == ("site", "time") and not v.endswith(MASK_SUFFIX)]


def canonical_units(var: str, units: str, source: str) -> str:
    """CTSM's spelling of `units` for `var`; UserError when they are not CTSM's units for it."""
    units = (units or "").strip()
    if not units:
        raise UserError(f"{source}: {var}: units are missing")
    info = KNOWN_VARS.get(var)
    if info is None:
        return units
    if units not in info["aliases"]:
        raise UserError(f"{source}: {var}: units {units!r} are not CTSM's {info['units']!r}; "
                        "convert before building observations")
    return info["units"]


def check_range(var: str, values: np.ndarray, units: str, source: str) -> None:
    """Reject values outside the plausible range of `var` in CTSM units (a unit mix-up)."""
    info = KNOWN_VARS.get(var)
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if info is None or v.size == 0:
        return
    lo, hi = float(v.min()), float(v.max())
    if lo < info["min"] or hi > info["max"]:
        raise UserError(f"{source}: {var}: values {lo:.4g}..{hi:.4g} lie outside the plausible range "
                        f"{info['min']:g}..{info['max']:g} {units} ({info['hint']})")
    floor = info.get("min_abs_max")
    if floor is not None and v.size >= 10 and float(np.abs(v).max()) < floor:
        raise UserError(f"{source}: {var}: all |values| < {floor:g} {units} ({info['hint']})")


def make_obs(values, var: str, units: str, site_ids: Sequence, lat, lon, area=None, qc=None,
             source: str = "", time=None, attrs: Mapping | None = None,
             site_coords: Mapping[str, Sequence] | None = None) -> xr.Dataset:
    """Build and validate an observations Dataset for one variable.

    `values` is ``(site, time)``: a DataArray with a ``time`` coordinate, or an array with `time`
    given.  `qc` is a same-shaped boolean mask (True = usable) or None (all finite values usable);
    NaN values are always masked.  `area` is in km2.  `site_coords` adds other per-site
    coordinates (e.g. sensor depths).
    """
    where = source or "observations"
    if isinstance(values, xr.DataArray):
        if time is None:
            time = values["time"].values
        values = values.values
    arr = np.asarray(values, dtype=np.float64)
    site_ids = [str(s) for s in np.atleast_1d(site_ids)]
    if arr.ndim == 1 and len(site_ids) == 1:
        arr = arr[None, :]
    if time is None:
        raise UserError(f"{where}: {var}: no time coordinate given")
    time = pd.DatetimeIndex(pd.to_datetime(np.asarray(time)))
    if arr.shape != (len(site_ids), len(time)):
        raise UserError(f"{where}: {var}: values have shape {arr.shape}, expected "
                        f"(site={len(site_ids)}, time={len(time)})")
    units = canonical_units(var, units, where)
    mask = np.isfinite(arr)
    if qc is not None:
        q = np.asarray(qc.values if isinstance(qc, xr.DataArray) else qc)
        if q.ndim == 1 and len(site_ids) == 1:
            q = q[None, :]
        if q.shape != arr.shape:
            raise UserError(f"{where}: {var}: quality mask has shape {q.shape}, values {arr.shape}")
        mask &= q.astype(bool)
    info = KNOWN_VARS.get(var, {})
    var_attrs = {"units": units, "long_name": info.get("long_name", var),
                 "ancillary_variables": var + MASK_SUFFIX}
    var_attrs.update(dict(attrs or {}))
    coords = {
        "site": ("site", np.array(site_ids, dtype=object)),
        "time": ("time", time.values.astype("datetime64[ns]")),
        "site_lat": ("site", np.broadcast_to(np.asarray(lat, dtype=float), (len(site_ids),)).copy(),
                     {"units": "degrees_north", "long_name": "site latitude"}),
        "site_lon": ("site", np.broadcast_to(np.asarray(lon, dtype=float), (len(site_ids),)).copy(),
                     {"units": "degrees_east", "long_name": "site longitude"}),
        "site_source": ("site", np.array([source or "unknown"] * len(site_ids), dtype=object)),
    }
    if area is not None:
        coords["area"] = ("site", np.broadcast_to(np.asarray(area, dtype=float), (len(site_ids),)).copy(),
                          {"units": "km^2", "long_name": "basin area"})
    for name, vals in (site_coords or {}).items():
        if isinstance(vals, tuple):
            vals, cattrs = vals
        else:
            cattrs = {}
        coords[name] = ("site", np.broadcast_to(np.asarray(vals), (len(site_ids),)).copy(), dict(cattrs))
    ds = xr.Dataset(
        {var: (("site", "time"), arr, var_attrs),
         var + MASK_SUFFIX: (("site", "time"), mask,
                             {"long_name": f"{var} quality mask (True = usable)"})},
        coords=coords,
        attrs={"obs_schema_version": SCHEMA_VERSION, "source": source or "unknown"},
    )
    return validate_obs(ds, where)


def validate_obs(ds: xr.Dataset, source: str = "observations") -> xr.Dataset:
    """Check `ds` against the observations schema; return it (units spelled as CTSM's).

    Raises UserError naming `source` and the offending variable for: missing dims/coords,
    duplicate sites or times, coordinates out of range, unknown or wrong units, values outside
    the plausible range of the variable (unit mix-ups), a missing or misshaped quality mask.
    """
    for dim in ("site", "time"):
        if dim not in ds.dims:
            raise UserError(f"{source}: dimension {dim!r} is missing (observations are (site, time))")
    for c in ("site_lat", "site_lon"):
        if c not in ds.coords and c not in ds.data_vars:
            raise UserError(f"{source}: coordinate {c!r} is missing")
        if ds[c].dims != ("site",):
            raise UserError(f"{source}: {c}: dims {ds[c].dims}, expected ('site',)")
    sites = pd.Index(ds["site"].values.astype(str))
    if sites.has_duplicates:
        raise UserError(f"{source}: site: duplicate site ids {sorted(set(sites[sites.duplicated()]))[:5]}")
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise UserError(f"{source}: time: expected datetime64 values, got {ds['time'].dtype}")
    t = pd.DatetimeIndex(ds["time"].values)
    if t.has_duplicates or not t.is_monotonic_increasing:
        raise UserError(f"{source}: time: values must be unique and increasing")
    lat, lon = ds["site_lat"].values.astype(float), ds["site_lon"].values.astype(float)
    if np.any(np.abs(lat[np.isfinite(lat)]) > 90):
        raise UserError(f"{source}: site_lat: values outside -90..90")
    if np.any((lon[np.isfinite(lon)] < -180) | (lon[np.isfinite(lon)] > 360)):
        raise UserError(f"{source}: site_lon: values outside -180..360")
    if "area" in ds.coords or "area" in ds.data_vars:
        a = ds["area"].values.astype(float)
        if np.any(a[np.isfinite(a)] <= 0):
            raise UserError(f"{source}: area: basin areas must be > 0 km^2")
    names = obs_vars(ds)
    if not names:
        raise UserError(f"{source}: no observed (site, time) variable found")
    for var in names:
        da = ds[var]
        units = canonical_units(var, da.attrs.get("units", ""), source)
        if units != da.attrs.get("units"):
            ds[var].attrs["units"] = units
        check_range(var, da.values, units, source)
        m = var + MASK_SUFFIX
        if m not in ds:
            raise UserError(f"{source}: {var}: quality mask variable {m!r} is missing")
        if ds[m].dims != ("site", "time"):
            raise UserError(f"{source}: {m}: dims {ds[m].dims}, expected ('site', 'time')")
        if ds[m].dtype != bool:
            ds[m] = ds[m].astype(bool)
        if bool((ds[m] & da.isnull()).any()):
            # a missing value is never usable
            ds[m] = ds[m] & da.notnull()
    return ds


def good(ds: xr.Dataset, var: str) -> xr.DataArray:
    """`var` with every value its quality mask rejects set to NaN."""
    return ds[var].where(ds[var + MASK_SUFFIX])
