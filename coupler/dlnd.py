"""Emulator runoff as the land-to-river coupler history that DLND reads in `rof_forcing` mode.

Files follow CMEPS's auxiliary history files (med_phases_history_mod):
``<case>.cpl.hx.<auxname>.<YYYY-MM-DD-SSSSS>.nc`` (time stamp: end of the first interval in
the file), variables ``lndImp_Flrl_rofsur/rofsub/rofgwl/rofi`` (kg m-2 s-1, float) on dims
``(time, lndImp_ny, lndImp_nx)``, time in ``days since <start>`` with ``time_bnds``. The case
settings (`./xmlchange DLND_CPLHIST_*` and `user_nl_dlnd_streams` lines) are returned as text.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ppe_ingest.base.errors import UserError

from .grids import Grid

# CMEPS lnd->rof fields and the CTSM history variables (mm/s == kg m-2 s-1) that fill them.
LND2ROF = {
    "Flrl_rofsur": ("QOVER", "Water flux from land (liquid surface)"),
    "Flrl_rofsub": ("QDRAI", "Water flux from land (liquid subsurface)"),
    "Flrl_rofgwl": ("QRGWL", "Water flux from land (liquid glacier, wetland, and lake)"),
    "Flrl_rofi": ("QRUNOFF_ICE", "Water flux from land (frozen)"),
}
PREFIX = "lndImp"


def _time_info(time, calendar: str):
    import cftime

    vals = np.asarray(time.values)
    if vals.size == 0:
        raise UserError("runoff: the time axis is empty")
    if np.issubdtype(vals.dtype, np.datetime64):
        import pandas as pd

        ts = pd.to_datetime(vals)
        dates = [cftime.datetime(t.year, t.month, t.day, t.hour, t.minute, t.second, calendar=calendar) for t in ts]
    elif isinstance(vals.flat[0], cftime.datetime):
        dates = [cftime.datetime(d.year, d.month, d.day, d.hour, d.minute, d.second, calendar=calendar) for d in vals]
    else:
        raise UserError("runoff: time must be decoded dates (datetime64 or cftime)")
    return dates


def write_lnd2rof(runoff, grid: Grid, out_dir: os.PathLike | str, case: str, auxname: str = "l2r",
                  mapping: dict | None = None, interval_days: float | None = None,
                  calendar: str = "noleap") -> list[Path]:
    """Write one coupler-history file per year from CTSM-named runoff (mm/s) on `grid`.

    runoff: Dataset with dims (time, *grid.dims) holding the CTSM variables named in `mapping`
    (default QOVER -> Flrl_rofsur, QDRAI -> Flrl_rofsub, QRGWL -> Flrl_rofgwl,
    QRUNOFF_ICE -> Flrl_rofi); an absent source variable writes zeros and is listed in the
    file's `note`. Each time sample is the average over the interval that ends at the next one.
    """
    import cftime
    import xarray as xr

    from ppe_ingest.base.atomic import atomic_path

    mapping = dict(mapping or {k: v[0] for k, v in LND2ROF.items()})
    unknown = set(mapping) - set(LND2ROF)
    if unknown:
        raise UserError(f"lnd2rof field '{sorted(unknown)[0]}': expected one of {', '.join(LND2ROF)}")
    if not any(src in runoff for src in mapping.values()):
        raise UserError(f"runoff: none of {', '.join(mapping.values())} found (CTSM runoff variables in mm/s)")
    gdims = tuple(grid.dims)
    dates = _time_info(runoff["time"], calendar)
    if interval_days is None:
        if len(dates) > 1:
            interval_days = float(np.median(np.diff(cftime.date2num(dates, "days since 0001-01-01", calendar))))
        else:
            interval_days = 1.0
    ny, nx = (grid.shape if len(grid.shape) == 2 else (1, grid.n))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    years = sorted({d.year for d in dates})
    start = dates[0]
    units = f"days since {start.year:04d}-{start.month:02d}-{start.day:02d} 00:00:00"
    written, zeros = [], [f for f, src in mapping.items() if src not in runoff]
    lon = grid.lon.reshape(ny, nx)
    lat = grid.lat.reshape(ny, nx)
    for y in years:
        idx = [i for i, d in enumerate(dates) if d.year == y]
        t0 = cftime.date2num([dates[i] for i in idx], units, calendar)
        bnds = np.stack([t0, t0 + interval_days], -1)
        tval = bnds.mean(-1)
        first_end = cftime.num2date(bnds[0, 1], units, calendar)
        seconds = first_end.hour * 3600 + first_end.minute * 60 + first_end.second
        stamp = f"{first_end.year:04d}-{first_end.month:02d}-{first_end.day:02d}-{seconds:05d}"
        vars_ = {
            "time": (("time",), tval,
                     {"long_name": "time", "units": units, "calendar": calendar, "bounds": "time_bnds"}),
            "time_bnds": (("time", "ntb"), bnds),
            f"{PREFIX}_lon": ((f"{PREFIX}_ny", f"{PREFIX}_nx"), lon,
                              {"long_name": "longitude", "units": "degrees_east"}),
            f"{PREFIX}_lat": ((f"{PREFIX}_ny", f"{PREFIX}_nx"), lat,
                              {"long_name": "latitude", "units": "degrees_north"}),
        }
        for fld, src in mapping.items():
            if src in runoff:
                da = runoff[src]
                if not all(d in da.dims for d in gdims):
                    raise UserError(f"runoff: '{src}' must have dims (time, {', '.join(gdims)}), has {da.dims}")
                v = da.isel(time=idx).transpose("time", *gdims).values.reshape(len(idx), ny, nx)
            else:
                v = np.zeros((len(idx), ny, nx))
            v = np.where(np.isfinite(v), v, 0.0).astype(np.float32)
            vars_[f"{PREFIX}_{fld}"] = (("time", f"{PREFIX}_ny", f"{PREFIX}_nx"), v,
                                        {"long_name": LND2ROF[fld][1], "units": "kg m-2 s-1",
                                         "standard_name": fld, "source": src if src in runoff else "zero (absent)"})
        ds = xr.Dataset(vars_, attrs={
            "title": "lnd2rof coupler history written by esm-emu from emulator runoff (CMEPS aux history layout)",
            "case": case, "note": ("fields written as zero: " + ", ".join(zeros)) if zeros else "",
        })
        enc = {k: {"_FillValue": None} for k in ds.variables}
        enc["time"].update({"dtype": "float64"})
        path = out_dir / f"{case}.cpl.hx.{auxname}.{stamp}.nc"
        with atomic_path(path) as tmp:
            ds.to_netcdf(tmp, encoding=enc, unlimited_dims=["time"])
        written.append(path)
    return written


def case_settings(files: list[Path], case: str, mesh: os.PathLike | str, stream: str = "rof_forcing",
                  year_align: int = 1) -> str:
    """The `./xmlchange` commands and `user_nl_dlnd_streams` lines that point DLND at `files`.

    `stream` is the DLND stream name for rof_forcing mode in the case's dlnd.streams.xml
    (check with ./preview_namelists); `mesh` is the ESMF mesh of the land grid.
    """
    if not files:
        raise UserError("no coupler-history files to point DLND at")
    files = sorted(Path(f).resolve() for f in files)
    years = sorted({int(f.name.split(".")[-2][:4]) for f in files})
    d = files[0].parent
    datavars = ",".join(f"{PREFIX}_{fld} {fld}" for fld in LND2ROF)
    lines = [
        "# in the case directory (DLND + a river model, DLND_MODE rof_forcing):",
        f"./xmlchange DLND_CPLHIST_CASE={case}",
        f"./xmlchange DLND_CPLHIST_DIR={d}",
        f"./xmlchange DLND_CPLHIST_YR_START={years[0]}",
        f"./xmlchange DLND_CPLHIST_YR_END={years[-1]}",
        f"./xmlchange DLND_CPLHIST_YR_ALIGN={year_align}",
        "",
        "# append to user_nl_dlnd_streams:",
        f"{stream}:meshfile = {Path(mesh).resolve()}",
        f"{stream}:datafiles = {','.join(str(f) for f in files)}",
        f"{stream}:datavars = {datavars}",
        f"{stream}:year_first = {years[0]}",
        f"{stream}:year_last = {years[-1]}",
        f"{stream}:year_align = {year_align}",
        f"{stream}:taxmode = cycle",
        f"{stream}:tintalgo = lower",
        f"{stream}:mapalgo = bilinear",
    ]
    return "\n".join(lines) + "\n"
