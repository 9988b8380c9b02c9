"""PLUMBER2 (FluxnetLSM / ALMA) flux and met netCDF: one site, ``(time, y, x)`` with y = x = 1,
time in local standard time.  Flux -> observations (daily), met -> CTSM forcing (daily)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ppe_ingest.base.errors import UserError

from .daily import to_daily
from .forcing import plumber_met_to_ctsm
from .schema import make_obs

# PLUMBER2 flux name -> CTSM history name (both W/m2)
FLUX_VARS = {"Qle": "EFLX_LH_TOT", "Qle_cor": "EFLX_LH_TOT", "Qh": "FSH", "Qh_cor": "FSH"}
GOOD_QC = (0, 1)  # FLUXNET QC: 0 measured, 1 good-quality gap-fill, 2 medium, 3 poor, 4 ERA, 5 statistical


def _open(path, what: str) -> xr.Dataset:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        with xr.open_dataset(path) as ds:
            return ds.load()
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read as netCDF ({str(e).splitlines()[0]})") from None


def _series(ds: xr.Dataset, name: str, path) -> np.ndarray:
    da = ds[name]
    extra = [d for d in da.dims if d != "time"]
    if any(ds.sizes[d] != 1 for d in extra):
        raise UserError(f"{path}: {name}: dims {da.dims}; a PLUMBER2 file holds one site (y = x = 1)")
    return da.squeeze([d for d in extra]).values.astype(float)


def _site(ds: xr.Dataset, path) -> tuple[str, float, float]:
    site = str(ds.attrs.get("site_code") or Path(path).name.split("_")[0])
    try:
        lat = float(np.asarray(ds["latitude"]).ravel()[0])
        lon = float(np.asarray(ds["longitude"]).ravel()[0])
    except KeyError:
        raise UserError(f"{path}: latitude/longitude variables are missing") from None
    return site, lat, lon


def _time(ds: xr.Dataset, path) -> pd.DatetimeIndex:
    if "time" not in ds.coords:
        raise UserError(f"{path}: no time coordinate")
    t = ds["time"].values
    if not np.issubdtype(t.dtype, np.datetime64):
        try:
            t = ds.indexes["time"].to_datetimeindex(unsafe=True, time_unit="ns")
        except (AttributeError, ValueError, TypeError):
            raise UserError(f"{path}: time: cannot decode to dates ({ds['time'].attrs.get('units')})") from None
    return pd.DatetimeIndex(t)


def read_plumber_flux(path, var: str = "Qle", min_good_fraction: float = 0.8) -> xr.Dataset:
    """Daily observations from a PLUMBER2 flux file (or a list of them, one site each, merged on
    ``site``): ``Qle`` -> ``EFLX_LH_TOT`` W/m^2 (``Qh`` -> FSH).

    The daily value is the mean of all (gap-filled) records of the local day; the day is usable
    when records with ``<var>_qc`` 0 or 1 (measured or good gap-fill) cover at least
    `min_good_fraction` of it (the FLUXNET2015 daily ``*_QC`` definition).  Without a QC variable
    every finite record counts as good.
    """
    if isinstance(path, (list, tuple)):
        from .io import merge_obs
        return merge_obs([read_plumber_flux(p, var, min_good_fraction) for p in path], source="PLUMBER2 flux files")
    ds = _open(path, "PLUMBER2 flux")
    if var not in FLUX_VARS:
        raise UserError(f"{path}: {var}: not a supported flux (choose from {', '.join(FLUX_VARS)})")
    if var not in ds:
        raise UserError(f"{path}: variable {var!r} is missing")
    ctsm = FLUX_VARS[var]
    units = ds[var].attrs.get("units", "")
    v = _series(ds, var, path)
    qc_name = var + "_qc"
    if qc_name in ds:
        qc = _series(ds, qc_name, path)
        good = np.isin(qc, GOOD_QC)
        rule = f"{qc_name} in {GOOD_QC} covering >= {min_good_fraction:g} of the day"
    else:
        good = np.isfinite(v)
        rule = f"no {qc_name} in file: finite records covering >= {min_good_fraction:g} of the day"
    site, lat, lon = _site(ds, path)
    days, value, mask, frac = to_daily(_time(ds, path), v, good, min_good_fraction, f"{path}: {var}")
    src = f"PLUMBER2 {Path(path).name}"
    return make_obs(value, ctsm, units, [site], lat, lon, qc=mask, time=days, source=src,
                    attrs={"source_variable": var, "mask_rule": rule,
                           "cell_methods": "time: mean (local standard time days)"})


def read_plumber_met(path: os.PathLike | str, freq: str | None = "D") -> xr.Dataset:
    """CTSM forcing ``(site, time)`` from a PLUMBER2 met file (Rainf/Snowf or Precip, Tair, SWdown,
    LWdown, Qair, Psurf, Wind), daily means by default (`freq=None` keeps the native step)."""
    ds = _open(path, "PLUMBER2 met")
    site, lat, lon = _site(ds, path)
    time = _time(ds, path)
    names = [n for n in ("Tair", "SWdown", "LWdown", "Qair", "Psurf", "Wind", "Rainf", "Snowf", "Precip") if n in ds]
    flat = xr.Dataset({n: ("time", _series(ds, n, path), ds[n].attrs) for n in names}, coords={"time": time.values})
    out = plumber_met_to_ctsm(flat, source=f"{path}")
    if freq is not None:
        attrs = {v: out[v].attrs for v in out.data_vars}
        out = out.resample(time=freq).mean()
        for v, a in attrs.items():
            out[v].attrs = dict(a, cell_methods=f"time: mean ({freq}, local standard time)")
    out = out.expand_dims(site=[site])
    out = out.assign_coords(site_lat=("site", [lat], {"units": "degrees_north"}),
                            site_lon=("site", [lon], {"units": "degrees_east"}))
    out.attrs.update({"source": f"PLUMBER2 met {Path(path).name}", "site": site})
    return out
