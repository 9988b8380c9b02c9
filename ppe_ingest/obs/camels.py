"""CAMELS-US readers: basin-mean forcing files, USGS streamflow (cfs -> QRUNOFF mm/s over the
basin area) and the `;`-separated attribute tables (gauge ids keep their leading zero).

The layouts read are the CAMELS-US distribution's (Newman et al. 2015; Addor et al. 2017):
``basin_mean_forcing/<daymet|nldas|maurer>/[<huc02>/]<gauge>_lump_<cida|nldas|maurer>_forcing_leap.txt``,
``usgs_streamflow/[<huc02>/]<gauge>_streamflow_qc.txt`` and ``camels_attributes_v2.0/camels_*.txt``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import xarray as xr

from ppe_ingest.base.errors import UserError

from .forcing import daily_basin_to_ctsm
from .schema import make_obs

CFS_TO_M3S = 0.0283168466  # m3/s per ft3/s (1 ft = 0.3048 m exactly)
MISSING = -999.0

# forcing-file column -> (canonical name, accepted units), case-insensitive
FORCING_COLUMNS = {
    "year": ("year", ("",)), "mnth": ("month", ("",)), "day": ("day", ("",)), "hr": ("hour", ("",)),
    "dayl": ("dayl", ("s",)), "prcp": ("prcp", ("mm/day",)), "srad": ("srad", ("w/m2",)),
    "swe": ("swe", ("mm",)), "tmax": ("tmax", ("c",)), "tmin": ("tmin", ("c",)), "vp": ("vp", ("pa",)),
}
FORCING_SOURCES = {"cida": "daymet", "daymet": "daymet", "nldas": "nldas", "maurer": "maurer"}


def gauge_id(basin) -> str:
    """The 8-character USGS gauge id (CTSM_calibration tables drop the leading zero: 1022500)."""
    s = str(basin).strip()
    if s.endswith(".0"):
        s = s[:-2]
    if not s.isdigit() or len(s) > 8:
        raise UserError(f"basin id {basin!r}: expected a USGS gauge id of up to 8 digits")
    return s.zfill(8)


def _find(root: os.PathLike | str, pattern: str, what: str, required: bool = True) -> Path | None:
    """`root` itself when it is a file, else the one file under it (recursively) matching `pattern`."""
    root = Path(root)
    if root.is_file():
        return root
    if not root.is_dir():
        if required:
            raise UserError(f"{root}: {what}: no such file or folder")
        return None
    hits = sorted(root.rglob(pattern))
    if not hits:
        if required:
            raise UserError(f"{root}: {what}: no file matching {pattern!r}")
        return None
    if len(hits) > 1 and required:
        raise UserError(f"{root}: {what}: {len(hits)} files match {pattern!r}; pass the file itself")
    return hits[0]


# --------------------------------------------------------------------------- forcing
def _parse_forcing_columns(line: str, path: Path) -> list[str]:
    names = []
    for tok in line.split():
        m = re.fullmatch(r"([A-Za-z]+)(?:\(([^)]*)\))?", tok)
        key = m.group(1).lower() if m else None
        if key not in FORCING_COLUMNS:
            raise UserError(f"{path}: line 4: unknown forcing column {tok!r} "
                            f"(expected CAMELS columns {', '.join(FORCING_COLUMNS)})")
        name, ok = FORCING_COLUMNS[key]
        unit = (m.group(2) or "").lower()
        if unit not in ok:
            raise UserError(f"{path}: {tok}: units {m.group(2)!r}, expected {ok[0]!r}")
        names.append(name)
    for need in ("year", "month", "day", "dayl", "prcp", "srad", "tmax", "tmin", "vp"):
        if need not in names:
            raise UserError(f"{path}: line 4: column {need!r} is missing")
    return names


def read_camels_forcing_table(path: os.PathLike | str) -> tuple[pd.DataFrame, dict]:
    """The raw forcing table (canonical lower-case columns, DatetimeIndex) and its header."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: CAMELS forcing file not found")
    with open(path, encoding="ascii", errors="replace") as f:
        head = [f.readline() for _ in range(4)]
    try:
        lat, elev, area = (float(head[i].strip()) for i in range(3))
    except ValueError:
        raise UserError(f"{path}: header lines 1-3 must hold latitude, elevation (m) and area (m2)") from None
    if not (-90 <= lat <= 90) or not area > 0:
        raise UserError(f"{path}: header: latitude {lat} or area {area} m2 out of range")
    names = _parse_forcing_columns(head[3], path)
    try:
        df = pd.read_csv(path, sep=r"\s+", skiprows=4, header=None, names=names, dtype=float)
    except (ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{path}: cannot parse the forcing table: {str(e).splitlines()[0]}") from None
    if df.isnull().any().any():
        bad = df.columns[df.isnull().any()].tolist()
        raise UserError(f"{path}: missing or non-numeric values in columns {bad}")
    try:
        idx = pd.to_datetime(dict(year=df.year.astype(int), month=df.month.astype(int), day=df.day.astype(int)))
    except ValueError as e:
        raise UserError(f"{path}: bad date: {e}") from None
    df.index = pd.DatetimeIndex(idx, name="time")
    if df.index.has_duplicates or not df.index.is_monotonic_increasing:
        raise UserError(f"{path}: dates are not unique and increasing")
    m = re.match(r"(\d{7,8})_lump_([a-z]+)_forcing", path.name)
    header = {"basin": gauge_id(m.group(1)) if m else None, "lat": lat, "elevation": elev,
              "area_m2": area, "area_km2": area / 1e6,
              "source": FORCING_SOURCES.get(m.group(2)) if m else None, "path": str(path)}
    return df, header


def read_camels_forcing(path: os.PathLike | str, source: str | None = None, *,
                        wind: float = 2.0, longwave: str = "idso", clouds: bool = True,
                        all_snow_t: float = 0.0, all_rain_t: float = 2.0) -> tuple[xr.Dataset, dict]:
    """CTSM forcing (time) from a CAMELS basin-mean forcing file, and its header.

    Header: ``{basin, lat, elevation (m), area_m2, area_km2, source, path}``; `source`
    ("daymet", "nldas", "maurer") defaults to what the file name says.  Srad in these files is
    the daylight-period average, so FSDS = srad*dayl/86400.  The CAMELS NLDAS files carry the
    daily mean temperature in both Tmax and Tmin; TBOT = (tmax+tmin)/2 is right for both.
    FLDS is the clear-sky formula raised by the cloud that srad implies at the header's latitude
    (`clouds=False`: clear sky only; under-counts a cloudy winter's longwave by tens of W/m2).
    """
    df, header = read_camels_forcing_table(path)
    src = source or header["source"] or "daymet"
    header["source"] = src
    ds = daily_basin_to_ctsm(df.prcp.values, df.srad.values, df.tmax.values, df.tmin.values,
                             df.vp.values, df.dayl.values, header["elevation"], df.index.values,
                             wind=wind, longwave=longwave, all_snow_t=all_snow_t, all_rain_t=all_rain_t,
                             source=f"CAMELS {src}", latitude=header["lat"] if clouds else None)
    ds.attrs.update({"source": f"CAMELS {src} basin-mean forcing", "basin": header["basin"] or "",
                     "lat": header["lat"], "elevation": header["elevation"], "area_km2": header["area_km2"],
                     "input_file": header["path"]})
    return ds, header


def find_forcing_file(forcing_dir: os.PathLike | str, basin) -> Path:
    """The forcing file of `basin` under `forcing_dir` (one source folder, or a file)."""
    return _find(forcing_dir, f"{gauge_id(basin)}_lump_*_forcing*.txt", f"forcing of basin {gauge_id(basin)}")


# --------------------------------------------------------------------------- attributes
def read_camels_attribute_dictionary(path: os.PathLike | str) -> pd.DataFrame:
    """CTSM_calibration's ``camels_attributes_table.csv``: description, unit and data source of
    each attribute, indexed by the name used in the ``camels_*.txt`` tables (``Attribute_text``)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, encoding="utf-8-sig")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the attribute dictionary: {e}") from None
    for col in ("Attribute_text", "Description", "Unit"):
        if col not in df.columns:
            raise UserError(f"{path}: column {col!r} is missing (not a CAMELS attribute dictionary)")
    return df.set_index("Attribute_text")


def _read_attr_txt(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=";", dtype={"gauge_id": str, "huc_02": str}, skipinitialspace=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the attribute table: {e}") from None
    if "gauge_id" not in df.columns:
        raise UserError(f"{path}: column 'gauge_id' is missing (CAMELS tables are ';'-separated)")
    df["gauge_id"] = [gauge_id(g) for g in df["gauge_id"]]
    if df["gauge_id"].duplicated().any():
        raise UserError(f"{path}: gauge_id: duplicate ids {df.gauge_id[df.gauge_id.duplicated()].tolist()[:5]}")
    for c in df.columns:
        if pd.api.types.is_object_dtype(df[c]):
            df[c] = df[c].str.strip()
    return df.set_index("gauge_id")


def read_camels_attributes(dir_or_file: os.PathLike | str, basins: Iterable | None = None,
                           dictionary: os.PathLike | str | None = None) -> pd.DataFrame:
    """CAMELS attributes indexed by the 8-character gauge_id, merging every ``camels_*.txt`` table
    in a folder (or reading one table).  `basins` selects rows (ints lose no leading zero here).
    With `dictionary` (``camels_attributes_table.csv``) units and descriptions go to
    ``df.attrs["units"]`` / ``df.attrs["description"]``.
    """
    p = Path(dir_or_file)
    if p.is_dir():
        files = sorted(f for f in p.glob("camels_*.txt"))
        if not files:
            raise UserError(f"{p}: no camels_*.txt attribute tables in this folder")
    elif p.is_file():
        files = [p]
    else:
        raise UserError(f"{p}: CAMELS attributes: no such file or folder")
    df = None
    for f in files:
        t = _read_attr_txt(f)
        if df is None:
            df = t
            continue
        dup = sorted(set(t.columns) & set(df.columns))
        if dup:
            raise UserError(f"{f}: column {dup[0]!r} also appears in another camels_*.txt table")
        df = df.join(t, how="outer")
    df = df.sort_index()
    if basins is not None:
        ids = [gauge_id(b) for b in basins]
        absent = [b for b in ids if b not in df.index]
        if absent:
            raise UserError(f"{p}: basins not in the attribute tables: {', '.join(absent[:10])}")
        df = df.loc[ids]
    if dictionary is not None:
        d = read_camels_attribute_dictionary(dictionary)
        df.attrs["units"] = {c: str(d.at[c, "Unit"]) for c in df.columns if c in d.index}
        df.attrs["description"] = {c: str(d.at[c, "Description"]) for c in df.columns if c in d.index}
    return df


# --------------------------------------------------------------------------- streamflow
def read_streamflow_table(path: os.PathLike | str, basin=None) -> pd.DataFrame:
    """The raw ``<gauge>_streamflow_qc.txt`` table: DatetimeIndex, ``q_cfs`` (NaN where missing)
    and ``flag`` (USGS: A approved, P provisional, e estimated, M missing)."""
    path = Path(path)
    rows, dates = [], []
    with open(path, encoding="ascii", errors="replace") as f:
        for i, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (5, 6):
                raise UserError(f"{path}: line {i}: expected 'gauge year month day Q(cfs) flag', got {line.strip()!r}")
            gid = gauge_id(parts[0])
            if basin is not None and gid != gauge_id(basin):
                raise UserError(f"{path}: line {i}: gauge {gid} but basin {gauge_id(basin)} was asked for")
            try:
                y, m, d = int(parts[1]), int(parts[2]), int(parts[3])
                q = float(parts[4])
            except ValueError:
                raise UserError(f"{path}: line {i}: non-numeric date or flow: {line.strip()!r}") from None
            flag = parts[5] if len(parts) == 6 else ""
            dates.append((y, m, d))
            rows.append((q, flag))
    if not rows:
        raise UserError(f"{path}: no streamflow records")
    try:
        idx = pd.to_datetime(pd.DataFrame(dates, columns=["year", "month", "day"]))
    except ValueError as e:
        raise UserError(f"{path}: bad date: {e}") from None
    df = pd.DataFrame(rows, columns=["q_cfs", "flag"], index=pd.DatetimeIndex(idx, name="time"))
    if df.index.has_duplicates or not df.index.is_monotonic_increasing:
        raise UserError(f"{path}: dates are not unique and increasing")
    # CAMELS marks missing days with -999 (flag M); no real discharge is negative
    missing = (df.q_cfs < 0) | df.flag.str.contains("M")
    df.loc[missing, "q_cfs"] = np.nan
    return df


def _camels_root(path: Path) -> Path | None:
    """The CAMELS root folder above a ``usgs_streamflow`` path, if the standard layout is there."""
    for parent in [path, *path.parents]:
        if parent.name == "usgs_streamflow":
            return parent.parent
    return None


def cfs_to_mm_per_s(q_cfs, area_km2):
    """Q[ft3/s] * 0.0283168466 m3/ft3 / (area_km2 * 1e6 m2) * 1000 mm/m."""
    return np.asarray(q_cfs, dtype=float) * CFS_TO_M3S / (np.asarray(area_km2, dtype=float) * 1e6) * 1000.0


def read_camels_streamflow(path_or_dir: os.PathLike | str, basin_id, area_km2=None,
                           forcing_dir: os.PathLike | str | None = None, *,
                           attributes: os.PathLike | str | pd.DataFrame | None = None,
                           mask_estimated: bool = False) -> xr.Dataset:
    """USGS streamflow of one or more basins as observations ``QRUNOFF(site, time)`` in mm/s.

    Area per basin, first found: `area_km2`; the forcing-file header (m2) under `forcing_dir`
    (default: ``basin_mean_forcing/daymet`` beside ``usgs_streamflow``); CAMELS ``area_gages2``.
    The choice is recorded in the coordinate ``area_source``.  -999 and flag M become NaN;
    estimated days (``A:e``) are kept unless `mask_estimated`.  ``site_lat/site_lon`` are the gauge
    location from ``camels_topo.txt`` when the attribute tables are found, else the forcing-file
    basin-centroid latitude and NaN longitude.
    """
    basins = [gauge_id(b) for b in (basin_id if isinstance(basin_id, (list, tuple, np.ndarray, pd.Index))
                                    else [basin_id])]
    root = Path(path_or_dir)
    camels_root = _camels_root(root.resolve())
    if forcing_dir is None and camels_root is not None:
        cand = camels_root / "basin_mean_forcing" / "daymet"
        forcing_dir = cand if cand.is_dir() else None
    attrs_df = None
    if isinstance(attributes, pd.DataFrame):
        attrs_df = attributes
    elif attributes is not None:
        attrs_df = read_camels_attributes(attributes)
    elif camels_root is not None and (camels_root / "camels_attributes_v2.0").is_dir():
        attrs_df = read_camels_attributes(camels_root / "camels_attributes_v2.0")
    if area_km2 is not None:
        areas_in = np.broadcast_to(np.asarray(area_km2, dtype=float), (len(basins),))
    series, lats, lons, areas, area_src, files = [], [], [], [], [], []
    for k, b in enumerate(basins):
        if len(basins) > 1 and root.is_file():
            raise UserError(f"{root}: a single streamflow file cannot hold {len(basins)} basins; pass the folder")
        f = _find(root, f"{b}_streamflow_qc.txt", f"streamflow of basin {b}")
        df = read_streamflow_table(f, b)
        header = None
        if forcing_dir is not None:
            ff = _find(forcing_dir, f"{b}_lump_*_forcing*.txt", f"forcing of basin {b}", required=False)
            if ff is not None:
                _, header = read_camels_forcing_table(ff)
        arow = attrs_df.loc[b] if attrs_df is not None and b in attrs_df.index else None
        if area_km2 is not None:
            a, src = float(areas_in[k]), "argument area_km2"
        elif header is not None:
            a, src = header["area_km2"], f"forcing file header ({Path(header['path']).name})"
        elif arow is not None and np.isfinite(arow.get("area_gages2", np.nan)):
            a, src = float(arow["area_gages2"]), "CAMELS camels_topo area_gages2"
        else:
            raise UserError(f"{f}: basin {b}: no area: pass area_km2, or forcing_dir holding its forcing file")
        if not a > 0:
            raise UserError(f"{f}: basin {b}: area {a} km2 must be > 0")
        if arow is not None and "gauge_lat" in arow:
            lat, lon = float(arow["gauge_lat"]), float(arow["gauge_lon"])
        elif header is not None:
            lat, lon = header["lat"], np.nan
        else:
            lat, lon = np.nan, np.nan
        # make gaps in the record explicit: one row per day
        full = pd.date_range(df.index[0], df.index[-1], freq="D")
        df = df.reindex(full)
        good = df.q_cfs.notna()
        if mask_estimated:
            good &= ~df.flag.fillna("").str.contains("e")
        series.append((cfs_to_mm_per_s(df.q_cfs.values, a), good.values, full))
        lats.append(lat), lons.append(lon), areas.append(a), area_src.append(src), files.append(str(f))
    time = series[0][2]
    for _, _, t in series[1:]:
        time = time.union(t)
    vals = np.full((len(basins), len(time)), np.nan)
    qc = np.zeros((len(basins), len(time)), dtype=bool)
    for i, (v, g, t) in enumerate(series):
        pos = time.get_indexer(t)
        vals[i, pos], qc[i, pos] = v, g
    rule = "missing (-999 / flag M)" + (" and estimated (flag e)" if mask_estimated else "") + " days masked"
    ds = make_obs(vals, "QRUNOFF", "mm/s", basins, lats, lons, area=areas, qc=qc, source="CAMELS-US usgs_streamflow",
                  time=time, attrs={"conversion": "Q[ft3/s]*0.0283168466/(area_km2*1e6)*1000",
                                    "mask_rule": rule},
                  site_coords={"area_source": np.array(area_src, dtype=object),
                               "input_file": np.array(files, dtype=object)})
    return ds


# Where the shared CAMELS sample lives below the shared-data root ($ESM_EMU_SHARED_DATA or ../shared/data).
CAMELS_SAMPLE = ("camels_us", "neuralhydrology_test_data", "camels_us")


def camels_data_root(root: os.PathLike | str | None = None) -> Path:
    """The CAMELS-US folder (camels_attributes_v2.0/, basin_mean_forcing/, usgs_streamflow/).

    `root` if given; else ``$ESM_EMU_SHARED_DATA/camels_us/neuralhydrology_test_data/camels_us``
    when that variable is set; else the same below ``../shared/data`` from the working directory
    or from this source tree. One line naming where it looked when none holds the data.
    """
    if root is not None:
        cands = [Path(root)]
    elif os.environ.get("ESM_EMU_SHARED_DATA"):
        cands = [Path(os.environ["ESM_EMU_SHARED_DATA"]).joinpath(*CAMELS_SAMPLE)]
    else:
        here = Path(__file__).resolve().parents[2]
        cands = [Path.cwd().parent.joinpath("shared", "data", *CAMELS_SAMPLE),
                 here.parent.joinpath("shared", "data", *CAMELS_SAMPLE)]
    for c in cands:
        if (c / "camels_attributes_v2.0").is_dir() and (c / "usgs_streamflow").is_dir():
            return c
    where = "ESM_EMU_SHARED_DATA" if root is None and os.environ.get("ESM_EMU_SHARED_DATA") else "looked in"
    raise UserError(f"CAMELS data not found ({where} {cands[0]}): set ESM_EMU_SHARED_DATA to the shared data "
                    "folder (holding camels_us/) or give simulate.camels_attributes and simulate.forcing_dir")
