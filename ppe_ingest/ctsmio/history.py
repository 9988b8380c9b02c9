"""CTSM history files: the writer (1-D `gridcell` output, as the CLM5 PPE writes them with
hist_dov2xy=.false.), the one reader, which also takes `lndgrid` and lat/lon output, and
`record_days`, the one answer to "which day does this record describe".

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
    row by row. A step is labelled by the day it describes (`record_days`: CTSM stamps averages
    at the interval's end), and steps sharing a label (sub-daily tapes) are averaged.
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


def record_days(time, bounds=None) -> np.ndarray:
    """The day each history record describes: the day holding the middle of its averaging
    interval. This is the one definition every consumer uses (the DA and POSTRUN hooks through
    `read_history`, the inverse pipeline through `interval_start`, the store's held-out years
    through the ingest writer's `interval_years`).

    CTSM stamps an average at the END of its interval (the mean of Jan 1 at Jan 2 00:00, bounds
    [Jan 1, Jan 2]; the first record of a run, nstep 0, has bounds [-dt/2, 0]) while observations
    are dated by the day they describe. `time` is (T,) decoded times (cftime or datetime64);
    `bounds` (T, 2) the interval endpoints where the file has them (`time_bounds`/`time_bnds`).
    Without bounds the interval is taken to end at the stamp and last the median spacing of the
    stamps (one day for a single record), so end stamps (the store's time axis) and midpoint
    stamps both give the day they average. Returns the days' starts (00:00), same kind as `time`.
    """
    import datetime

    t = np.ravel(np.asarray(time))
    if not t.size:
        return t
    native = np.issubdtype(t.dtype, np.datetime64)
    b = None if bounds is None else np.asarray(bounds)
    if b is not None and (b.ndim != 2 or b.shape[0] != t.size or b.shape[1] != 2):
        b = None
    if b is not None and native and not np.isnat(b).any():
        b = b.astype("datetime64[ns]")
        mid = b[:, 0] + (b[:, 1] - b[:, 0]) / 2
    elif b is not None and not native and all(x is not None for x in b.ravel()):
        mid = np.array([s + (e - s) / 2 for s, e in b], dtype=object)
    elif native:
        t = t.astype("datetime64[ns]")
        step = np.median(np.diff(t).astype("i8")) if t.size > 1 else 86_400 * 10**9
        mid = t - np.timedelta64(int(step // 2), "ns")
    else:
        step = (sorted(np.diff(t))[(t.size - 1) // 2] if t.size > 1 else datetime.timedelta(days=1))
        mid = np.array([x - step / 2 for x in t], dtype=object)
    if native:
        return mid.astype("datetime64[D]")
    return np.array([x.replace(hour=0, minute=0, second=0, microsecond=0) for x in mid], dtype=object)


def interval_start(ds):
    """`ds` (an xarray Dataset whose `time` holds CTSM history stamps, e.g. a training store's
    time axis) relabelled with the day each record describes (`record_days`), so it meets
    observations (dated by their day) and periods (years) on the right day."""
    t = ds["time"].values
    if not len(t):
        return ds
    return ds.assign_coords(time=ds["time"].copy(data=record_days(t, _time_bounds(ds))))


def _time_bounds(ds) -> np.ndarray | None:
    """The (time, 2) interval endpoints of a decoded dataset as times (decoded here with the time
    axis' units and calendar when the file's `time` does not name them as its bounds), or None."""
    name = next((b for b in (ds["time"].attrs.get("bounds"), ds["time"].encoding.get("bounds"),
                             "time_bounds", "time_bnds") if b and b in ds.variables), None)
    if name is None:
        return None
    b = ds[name].values
    if np.issubdtype(b.dtype, np.number):
        units, calendar = ds["time"].encoding.get("units"), ds["time"].encoding.get("calendar", "standard")
        if not units:
            return None
        import cftime

        b = cftime.num2date(b, units, calendar)
        if not np.issubdtype(np.asarray(ds["time"].values).dtype, np.datetime64):
            return np.asarray(b, dtype=object)
        return np.asarray([np.datetime64(x.isoformat()) for x in np.ravel(b)]).reshape(b.shape)
    return b


def _day_labels(ds) -> np.ndarray:
    """'YYYY-MM-DD' of the day each time step describes (`record_days`)."""
    return np.array([_iso(x)[:10] for x in record_days(ds["time"].values, _time_bounds(ds))])


def _iso(x) -> str:
    if isinstance(x, np.datetime64):
        return str(np.datetime_as_string(x, unit="s"))
    return x.isoformat() if hasattr(x, "isoformat") else str(x)


def _gridcell_coords(ds, path: Path):
    """Gridcell centres (lat, lon) and the output form: the (time, ...) dims a field has. 1-D
    `gridcell` output (hist_dov2xy=.false.), CTSM's `lndgrid` output (single-point and
    unstructured grids: lat(lndgrid), lon(lndgrid)), or a lat/lon grid flattened row by row."""
    if "grid1d_lat" in ds.variables and "grid1d_lon" in ds.variables:
        return (np.asarray(ds["grid1d_lat"].values, float), np.asarray(ds["grid1d_lon"].values, float),
                ("time", "gridcell"))
    if "lat" in ds.variables and "lon" in ds.variables:
        la, lo = ds["lat"], ds["lon"]
        if la.ndim == 1 and la.dims == lo.dims and la.dims[0] not in ("lat", "lon"):  # (lndgrid,)
            return np.asarray(la.values, float), np.asarray(lo.values, float), ("time", la.dims[0])
        lat2, lon2 = np.meshgrid(la.values, lo.values, indexing="ij")
        return lat2.ravel().astype(float), lon2.ravel().astype(float), ("time", "lat", "lon")
    raise UserError(f"{path}: no gridcell coordinates (grid1d_lat/grid1d_lon or lat/lon)")


def _flat(ds, var: str, form: tuple[str, ...], path: Path) -> np.ndarray:
    """(time, gridcell) values of a history variable, any output form."""
    if var not in ds.variables:
        raise UserError(f"{path}: variable {var} not in the history file (add it to hist_fincl in user_nl_clm)")
    a = ds[var]
    if a.dims != form:
        raise UserError(f"{path}: {var} has dims {a.dims}, expected {form}")
    return np.asarray(a.values, float).reshape(a.shape[0], -1)
