"""FLUXNET2015 FULLSET CSV (daily ``DD``; half-hourly ``HH``/``HR`` are averaged to days):
``LE_F_MDS`` -> ``EFLX_LH_TOT`` W/m^2 with its ``_QC``; -9999 is missing."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ppe_ingest.base.errors import UserError

from .daily import to_daily
from .io import merge_obs
from .schema import make_obs
from .sites import locate

# FLUXNET2015 column -> CTSM history name (W/m2)
FLUXNET_VARS = {"LE_F_MDS": "EFLX_LH_TOT", "LE_CORR": "EFLX_LH_TOT", "H_F_MDS": "FSH", "H_CORR": "FSH"}
MISSING = -9999


def read_fluxnet_daily(path: os.PathLike | str, variables=("LE_F_MDS",), lat=None, lon=None, sites=None,
                       min_good_fraction: float = 0.8):
    """Daily observations from a FLUXNET2015 FULLSET CSV.

    DD files: the day is usable when ``<col>_QC`` (fraction of measured and good-quality
    gap-filled half-hours) >= `min_good_fraction`; columns without QC (``LE_CORR``) count finite
    days as good.  HH/HR files: half-hours with ``_QC`` 0 or 1 must cover `min_good_fraction`.
    The CSV has no coordinates: `lat`/`lon`, or `sites` (a Site/Lat/Lon table such as CTSM's
    ``PLUMBER2_sites.csv``), else NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: FLUXNET file not found")
    try:
        df = pd.read_csv(path, na_values=[MISSING, str(MISSING), "-9999.0"])
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the FLUXNET CSV: {e}") from None
    m = re.match(r"FLX_([A-Z]{2}-[A-Za-z0-9]{3})_", path.name)
    site = m.group(1) if m else path.stem
    if "TIMESTAMP" in df.columns:
        time = pd.to_datetime(df["TIMESTAMP"].astype("Int64").astype(str), format="%Y%m%d", errors="coerce")
        daily = True
    elif "TIMESTAMP_START" in df.columns:
        time = pd.to_datetime(df["TIMESTAMP_START"].astype("Int64").astype(str), format="%Y%m%d%H%M", errors="coerce")
        daily = False
    else:
        raise UserError(f"{path}: column TIMESTAMP (DD) or TIMESTAMP_START (HH) is missing")
    if time.isna().any():
        raise UserError(f"{path}: TIMESTAMP: {int(time.isna().sum())} values are not dates")
    time = pd.DatetimeIndex(time)
    if daily and (time.has_duplicates or not time.is_monotonic_increasing):
        raise UserError(f"{path}: TIMESTAMP: dates are not unique and increasing")
    lat_, lon_, how = locate(site, lat, lon, sites, str(path))
    parts = []
    seen = {}
    for col in variables:
        if col not in FLUXNET_VARS:
            raise UserError(f"{path}: {col}: not a supported column (choose from {', '.join(FLUXNET_VARS)})")
        if col not in df.columns:
            raise UserError(f"{path}: column {col!r} is missing")
        ctsm = FLUXNET_VARS[col]
        if ctsm in seen:
            raise UserError(f"{path}: {seen[ctsm]} and {col} both map to {ctsm}; choose one")
        seen[ctsm] = col
        v = df[col].to_numpy(dtype=float)
        qcol = col + "_QC"
        qc = df[qcol].to_numpy(dtype=float) if qcol in df.columns else None
        if daily:
            days = pd.date_range(time[0], time[-1], freq="D")
            pos = days.get_indexer(time)
            value = np.full(len(days), np.nan)
            value[pos] = v
            good = np.zeros(len(days), bool)
            good[pos] = (qc >= min_good_fraction) if qc is not None else np.isfinite(v)
            rule = (f"{qcol} >= {min_good_fraction:g}" if qc is not None else "finite values (no QC column)")
        else:
            g = np.isin(qc, (0, 1)) if qc is not None else np.isfinite(v)
            days, value, good, _ = to_daily(time, v, g, min_good_fraction, f"{path}: {col}")
            rule = f"{qcol} in (0, 1) covering >= {min_good_fraction:g} of the day"
        ds = make_obs(value, ctsm, "W/m2", [site], lat_, lon_, qc=good, time=days,
                      source=f"FLUXNET2015 {path.name}",
                      attrs={"source_variable": col, "mask_rule": rule, "location": how})
        parts.append(ds)
    return parts[0] if len(parts) == 1 else merge_obs(parts, source=str(path))
