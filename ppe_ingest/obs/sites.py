"""Site locations for sources whose files carry none (FLUXNET/AmeriFlux CSV): given, or looked up
in a site table such as CTSM's ``PLUMBER2_sites.csv`` / ``neon_sites_dompft.csv`` (Site, Lat, Lon)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ppe_ingest.base.errors import UserError


def read_site_table(path: os.PathLike | str) -> pd.DataFrame:
    """A site table (``#`` comment lines allowed) indexed by ``Site`` with ``Lat``/``Lon`` columns."""
    path = Path(path)
    try:
        df = pd.read_csv(path, comment="#", skipinitialspace=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the site table: {e}") from None
    cols = {c.strip().lower(): c for c in df.columns}
    for need in ("site", "lat", "lon"):
        if need not in cols:
            raise UserError(f"{path}: column {need!r} is missing (need Site, Lat, Lon)")
    out = pd.DataFrame({"Lat": pd.to_numeric(df[cols["lat"]], errors="coerce").values,
                        "Lon": pd.to_numeric(df[cols["lon"]], errors="coerce").values},
                       index=df[cols["site"]].astype(str).str.strip())
    return out


def locate(site: str, lat=None, lon=None, sites=None, source: str = "") -> tuple[float, float, str]:
    """(lat, lon, how): the given coordinates, else the site table's, else NaN (said in `how`)."""
    if lat is not None and lon is not None:
        return float(lat), float(lon), "given"
    if sites is not None:
        table = sites if isinstance(sites, pd.DataFrame) else read_site_table(sites)
        if site in table.index:
            row = table.loc[site]
            name = "" if isinstance(sites, pd.DataFrame) else f" {Path(sites).name}"
            return float(row["Lat"]), float(row["Lon"]), f"site table{name}"
        raise UserError(f"{source}: site {site} is not in the site table {sites}")
    return np.nan, np.nan, "unknown: the file carries no location (pass lat/lon or a site table)"
