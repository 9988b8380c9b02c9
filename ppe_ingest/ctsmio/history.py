"""CTSM history files (1-D `gridcell` output, as the CLM5 PPE writes them with hist_dov2xy=.false.).

CTSM's own names, long_names, units and `cell_methods` for the forcing and response fields,
its global attributes, its file naming `<case>_<member>.clm2.h<N>.<YYYY-MM-DD-SSSSS>.nc`, and
its time axis: `time` in `days since YYYY-01-01 00:00:00` on the `noleap` calendar stamped at the
END of each averaging interval, with `time_bounds(time, hist_interval)` giving the interval and
`mcdate`/`mcsec` the date of the stamp (so day 1 of a daily file has time = 1, bounds [0, 1]).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import netCDF4
import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.netcdf import history_line

from .vocabulary import HIST_FIELDS

FILL = np.float32(1.0e36)  # CTSM spval



def hist_filename(case: str, member: str, tape: int, year: int, month: int = 1, day: int = 1, sec: int = 0) -> str:
    """`<case>_<member>.clm2.h<tape>.<YYYY-MM-DD-SSSSS>.nc` (the date the file's first interval starts)."""
    return f"{case}_{member}.clm2.h{int(tape)}.{year:04d}-{month:02d}-{day:02d}-{sec:05d}.nc"


def ctsm_global_attrs(case: str, source: str, surfdata: str = "", paramfile: str = "",
                      freq: str = "day_1") -> dict[str, str]:
    """Global attributes as a CTSM history file carries them."""
    return {
        "title": "CLM History file information",
        "comment": "NOTE: None of the variables are weighted by land fraction!",
        "Conventions": "CF-1.0",
        "source": source,
        "case_id": case,
        "hostname": "esm-emu",
        "Surface_dataset": surfdata,
        "Initial_conditions_dataset": "arbitrary initialization (spin-up)",
        "PFT_physiological_constants_dataset": paramfile,
        "ltype_vegetated_or_bare_soil": 1,
        "time_period_freq": freq,
    }


def write_history(path: os.PathLike | str, data: Mapping[str, np.ndarray], lat: Sequence[float],
                  lon: Sequence[float], start_year: int, case: str, source: str, surfdata: str = "",
                  paramfile: str = "", day0: int = 0, extra_attrs: Mapping | None = None,
                  compress: bool = True) -> Path:
    """Write a daily 1-D history file; `data[name]` is (gridcell, time) in CTSM units.

    `day0` is the index (days since Jan 1 of `start_year`, noleap) of the first day in the file.
    Variables are float32 with CTSM's fill value, `cell_methods = 'time: mean'`.
    """
    path = Path(path)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    n = lat.size
    unknown = [k for k in data if k not in HIST_FIELDS]
    if unknown:
        raise UserError(f"{path.name}: {unknown[0]} is not a known CTSM history field ({', '.join(HIST_FIELDS)})")
    nt = None
    for k, v in data.items():
        if v.ndim != 2 or v.shape[0] != n or (nt is not None and v.shape[1] != nt):
            raise UserError(f"{path.name}: {k} has shape {v.shape}, expected (gridcell={n}, time)")
        nt = v.shape[1]
    nt = nt or 0
    units = f"days since {start_year:04d}-01-01 00:00:00"
    tb = np.stack([np.arange(day0, day0 + nt), np.arange(day0 + 1, day0 + nt + 1)], 1).astype(np.float64)
    stamps = netCDF4.num2date(tb[:, 1], units, calendar="noleap")
    mcdate = np.array([d.year * 10000 + d.month * 100 + d.day for d in stamps], dtype=np.int32)
    fmt = "NETCDF4_CLASSIC" if compress else "NETCDF3_64BIT_OFFSET"
    with atomic_path(path) as tmp:
        with netCDF4.Dataset(tmp, "w", format=fmt) as ds:
            ds.createDimension("time", None)
            ds.createDimension("gridcell", n)
            ds.createDimension("hist_interval", 2)
            attrs = ctsm_global_attrs(case, source, surfdata, paramfile)
            attrs["history"] = history_line(f"esm-emu simulate: {path.name}")
            attrs.update(dict(extra_attrs or {}))
            for k, v in attrs.items():
                ds.setncattr(k, v)
            t = ds.createVariable("time", "f8", ("time",))
            t.setncatts({"long_name": "time", "units": units, "calendar": "noleap", "bounds": "time_bounds"})
            t[:] = tb[:, 1]
            b = ds.createVariable("time_bounds", "f8", ("time", "hist_interval"))
            b.setncatts({"long_name": "history time interval endpoints"})
            b[:] = tb
            v = ds.createVariable("mcdate", "i4", ("time",))
            v.setncatts({"long_name": "current date (YYYYMMDD)"})
            v[:] = mcdate
            v = ds.createVariable("mcsec", "i4", ("time",))
            v.setncatts({"long_name": "current seconds of current date", "units": "s"})
            v[:] = np.zeros(nt, np.int32)
            for name, vals, ln, un in (("grid1d_lon", lon, "gridcell longitude", "degrees_east"),
                                       ("grid1d_lat", lat, "gridcell latitude", "degrees_north")):
                v = ds.createVariable(name, "f8", ("gridcell",))
                v.setncatts({"long_name": ln, "units": un})
                v[:] = vals
            for name, vals, ln in (("grid1d_ixy", np.arange(1, n + 1), "2d longitude index of corresponding gridcell"),
                                   ("grid1d_jxy", np.ones(n), "2d latitude index of corresponding gridcell")):
                v = ds.createVariable(name, "i4", ("gridcell",))
                v.setncatts({"long_name": ln})
                v[:] = vals.astype(np.int32)
            for name in data:
                ln, un = HIST_FIELDS[name]
                kw = dict(zlib=True, complevel=1, shuffle=True, chunksizes=(min(max(nt, 1), 365), n)) if compress else {}
                v = ds.createVariable(name, "f4", ("time", "gridcell"), fill_value=FILL, **kw)
                v.setncatts({"long_name": ln, "units": un, "cell_methods": "time: mean", "missing_value": FILL})
                v[:] = np.asarray(data[name], dtype=np.float32).T
    return path


def read_history(path: os.PathLike | str, variables: Sequence[str] | None = None):
    """Open a history file as an xarray Dataset (gridcell, time) with cftime noleap times."""
    import xarray as xr

    ds = xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    if variables is not None:
        missing = [v for v in variables if v not in ds]
        if missing:
            ds.close()
            raise UserError(f"{path}: variable {missing[0]} is not in this history file")
    return ds
