"""CTSM history files: the writer (1-D `gridcell` output, as the CLM5 PPE writes them with
hist_dov2xy=.false.) and the one reader, which also takes lat/lon output.

CTSM's own names, long_names, units and `cell_methods` for the forcing and response fields,
its global attributes, its file naming `<case>[_<member>].clm2.h<N>.<YYYY-MM-DD-SSSSS>.nc`, and
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
from ppe_ingest.base.netcdf import history_line, open_xarray

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
                chunks = (min(max(nt, 1), 365), n)
                kw = dict(zlib=True, complevel=1, shuffle=True, chunksizes=chunks) if compress else {}
                v = ds.createVariable(name, "f4", ("time", "gridcell"), fill_value=FILL, **kw)
                v.setncatts({"long_name": ln, "units": un, "cell_methods": "time: mean", "missing_value": FILL})
                v[:] = np.asarray(data[name], dtype=np.float32).T
    return path


def history_files(rundir: os.PathLike | str, case: str, tape: str) -> list[Path]:
    """A case's history files of one tape in `rundir`, `<case>.clm2.<tape>.*.nc`, in time order
    (the names sort by date)."""
    rundir = Path(rundir)
    pattern = f"{case}.clm2.{tape}.*.nc"
    files = sorted(rundir.glob(pattern))
    if not files:
        raise UserError(f"{rundir}: no CTSM history files {pattern} (is {tape} written? "
                        "set hist_fincl/hist_nhtfrq in user_nl_clm)")
    return files


def read_history(files: os.PathLike | str | Sequence[os.PathLike | str], variables: Sequence[str],
                 after: str | None = None) -> dict:
    """Daily means of `variables` per gridcell from one or more history files, for the days after
    `after` ('YYYY-MM-DD'; None for all).

    Returns ``{"days": 'YYYY-MM-DD' labels (D,), "lat", "lon": gridcell centres (G,),
    "data": {name: (D, G)}, "units": {name: units}}``; lat/lon output is flattened to gridcells
    row by row. A day is labelled by the start of its averaging interval, and steps sharing a
    label (sub-daily tapes) are averaged.
    """
    files = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    days, data, lat, lon, units = [], {v: [] for v in variables}, None, None, {}
    for path in files:
        with open_xarray(path, decode_times=_time_coder()) as ds:
            glat, glon, form = _gridcell_coords(ds, path)
            if lat is None:
                lat, lon = glat, glon
            elif glat.shape != lat.shape or not np.allclose(glat, lat):
                raise UserError(f"{path}: gridcells differ from {files[0].name}")
            label = _day_labels(ds)
            keep = label > after if after else np.ones(label.size, bool)
            if not keep.any():
                continue
            days.append(label[keep])
            for v in variables:
                data[v].append(_flat(ds, v, form, path)[keep])
                units.setdefault(v, ds[v].attrs.get("units", ""))
    if not days:
        return {"days": np.array([], dtype=str), "lat": lat, "lon": lon, "data": {}, "units": units}
    label = np.concatenate(days)
    uniq, inv = np.unique(label, return_inverse=True)
    out = {}
    for v in variables:
        a = np.concatenate(data[v])
        sums = np.zeros((uniq.size, a.shape[1]))
        np.add.at(sums, inv, a)
        out[v] = sums / np.bincount(inv)[:, None]
    return {"days": uniq, "lat": lat, "lon": lon, "data": out, "units": units}


def _time_coder():
    """Decode CTSM's noleap times as cftime dates (the keyword moved in newer xarray)."""
    import xarray as xr

    coders = getattr(xr, "coders", None)
    return coders.CFDatetimeCoder(use_cftime=True) if coders is not None else True


def _day_labels(ds) -> np.ndarray:
    """'YYYY-MM-DD' of each time step: the start of its averaging interval when CTSM gives bounds
    (CTSM stamps averages at the interval's end), else the time itself."""
    bounds = next((ds[b] for b in ("time_bounds", "time_bnds") if b in ds.variables), None)
    t = bounds.isel({bounds.dims[-1]: 0}).values if bounds is not None else ds["time"].values
    return np.array([_iso(x)[:10] for x in np.ravel(t)])


def _iso(x) -> str:
    if isinstance(x, np.datetime64):
        return str(np.datetime_as_string(x, unit="s"))
    return x.isoformat() if hasattr(x, "isoformat") else str(x)


def _gridcell_coords(ds, path: Path):
    """Gridcell centres (lat, lon) and the output form: 1-D `gridcell` or a flattened lat/lon grid."""
    if "grid1d_lat" in ds.variables and "grid1d_lon" in ds.variables:
        return np.asarray(ds["grid1d_lat"].values, float), np.asarray(ds["grid1d_lon"].values, float), "gridcell"
    if "lat" in ds.variables and "lon" in ds.variables:
        lat2, lon2 = np.meshgrid(ds["lat"].values, ds["lon"].values, indexing="ij")
        return lat2.ravel().astype(float), lon2.ravel().astype(float), "latlon"
    raise UserError(f"{path}: no gridcell coordinates (grid1d_lat/grid1d_lon or lat/lon)")


def _flat(ds, var: str, form: str, path: Path) -> np.ndarray:
    """(time, gridcell) values of a history variable, either output form."""
    if var not in ds.variables:
        raise UserError(f"{path}: variable {var} not in the history file (add it to hist_fincl in user_nl_clm)")
    a = ds[var]
    if form == "gridcell":
        if a.dims != ("time", "gridcell"):
            raise UserError(f"{path}: {var} has dims {a.dims}, expected (time, gridcell)")
        return np.asarray(a.values, float)
    if a.dims != ("time", "lat", "lon"):
        raise UserError(f"{path}: {var} has dims {a.dims}, expected (time, lat, lon)")
    return np.asarray(a.values, float).reshape(a.shape[0], -1)
