"""AmeriFlux BASE half-hourly CSV (two ``#`` comment lines, TIMESTAMP_START/END in local standard
time, -9999 missing, not gap-filled) -> daily observations with a coverage threshold."""
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

# BASE variable -> (CTSM history name, CTSM units, factor from BASE units)
BASE_VARS = {"LE": ("EFLX_LH_TOT", "W/m2", 1.0), "H": ("FSH", "W/m2", 1.0),
             "SWC": ("H2OSOI", "mm3/mm3", 0.01)}  # BASE SWC is volumetric percent


def _pick_column(columns, base: str):
    """``LE`` itself, else its first qualified column (``LE_1_1_1``, ``SWC_1_1_1`` ...)."""
    if base in columns:
        return base
    qual = sorted(c for c in columns if re.fullmatch(rf"{base}(_\d+)+", c))
    return qual[0] if qual else None


def read_ameriflux_base(path: os.PathLike | str, variables=("LE", "SWC"), lat=None, lon=None, sites=None,
                        min_coverage: float = 0.8):
    """Daily means of AmeriFlux BASE variables: LE -> EFLX_LH_TOT (W/m^2), H -> FSH,
    SWC (%) -> H2OSOI (mm3/mm3; sensor depth is in the site's BADM, not the CSV: NaN here).

    A day is a value, and usable, when non-missing half-hours cover at least `min_coverage` of it
    (BASE is not gap-filled, so a partial day is not a daily mean).  Variables absent from the
    file are skipped unless none is present.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: AmeriFlux file not found")
    site = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("#"):
                break
            m = re.match(r"#\s*Site:\s*([A-Za-z]{2}-[A-Za-z0-9]{3})", line)
            if m:
                site = m.group(1)
    if site is None:
        m = re.match(r"AMF_([A-Za-z]{2}-[A-Za-z0-9]{3})_", path.name)
        site = m.group(1) if m else path.stem
    try:
        df = pd.read_csv(path, comment="#", na_values=[-9999, "-9999"])
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the AmeriFlux CSV: {e}") from None
    if "TIMESTAMP_START" not in df.columns:
        raise UserError(f"{path}: column TIMESTAMP_START is missing")
    time = pd.to_datetime(df["TIMESTAMP_START"].astype("Int64").astype(str), format="%Y%m%d%H%M", errors="coerce")
    if time.isna().any():
        raise UserError(f"{path}: TIMESTAMP_START: {int(time.isna().sum())} values are not YYYYMMDDHHMM")
    lat_, lon_, how = locate(site, lat, lon, sites, str(path))
    parts = []
    for base in variables:
        if base not in BASE_VARS:
            raise UserError(f"{path}: {base}: not a supported variable (choose from {', '.join(BASE_VARS)})")
        col = _pick_column(df.columns, base)
        if col is None:
            continue
        ctsm, units, factor = BASE_VARS[base]
        v = df[col].to_numpy(dtype=float) * factor
        days, value, mask, _ = to_daily(time, v, np.isfinite(v), min_coverage, f"{path}: {col}")
        extra = {}
        if ctsm == "H2OSOI":
            extra = {"depth_from": (np.nan, {"units": "m"}), "depth_to": (np.nan, {"units": "m"})}
        ds = make_obs(value, ctsm, units, [site], lat_, lon_, qc=mask, time=days,
                      source=f"AmeriFlux BASE {path.name}", site_coords=extra,
                      attrs={"source_variable": col, "location": how,
                             "mask_rule": f"non-missing half-hours covering >= {min_coverage:g} of the day",
                             "cell_methods": "time: mean (local standard time days)"})
        parts.append(ds)
    if not parts:
        raise UserError(f"{path}: none of the columns {', '.join(variables)} is present")
    return parts[0] if len(parts) == 1 else merge_obs(parts, source=str(path))
