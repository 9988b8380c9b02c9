"""ISMN soil moisture in the "header+values" ``.stm`` format -> daily volumetric soil water.

File name: ``<CSE>_<network>_<station>_sm_<depth_from>_<depth_to>_<sensor>_<start>_<end>.stm``
(depths in m); first line ``CSE network station lat lon elevation depth_from depth_to sensor``;
then ``YYYY/MM/DD HH:MM value ismn_flag provider_flag`` (m3/m3).  Some files use CR-only line ends.
"""
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

_HEADER = re.compile(r"^\s*(\S+)\s+(\S+)\s+(.+?)\s+(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)"
                     r"\s+(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)\s*(.*)$")
_NAME_DEPTH = re.compile(r"_sm_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)_")
# ISMN quality flags: G good, C exceeds plausible range, D dubious, M missing, U not checked
REJECT_FLAGS = ("C", "D", "M")
TOP_10CM = 0.10  # m


def depth_from_name(path: os.PathLike | str) -> tuple[float, float] | None:
    """Sensor depth range (m) from an ISMN file name, or None when the name has none."""
    m = _NAME_DEPTH.search(Path(path).name)
    return (float(m.group(1)), float(m.group(2))) if m else None


def read_ismn_stm(path: os.PathLike | str, min_coverage: float = 0.5,
                  reject_flags=REJECT_FLAGS):
    """Daily observations from an ISMN ``.stm`` soil-moisture file.

    ``H2OSOI`` (mm3/mm3) is the daily mean of records whose ISMN flags (comma-separated) start
    with none of `reject_flags`; a day is usable when such records cover `min_coverage` of it.
    Depth comes from the file name (checked against the header).  When the sensed layer lies
    within the top 10 cm (depth_to <= 0.10 m) the file also gives ``SOILWATER_10CM`` (kg/m2)
    = theta * 0.1 m * 1000 kg/m3, assuming theta uniform over 0-10 cm; sensors see liquid water
    only, so frozen days under-read CTSM's liquid + ice.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ISMN file not found")
    with open(path, encoding="utf-8", errors="replace") as f:  # universal newlines: CR, LF, CRLF
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise UserError(f"{path}: no ISMN records")
    h = _HEADER.match(lines[0])
    if not h:
        raise UserError(f"{path}: line 1: not an ISMN header+values header: {lines[0].strip()!r}")
    network, station = h.group(2), h.group(3).strip()
    lat, lon, elev = float(h.group(4)), float(h.group(5)), float(h.group(6))
    hdr_depth = (float(h.group(7)), float(h.group(8)))
    depth = depth_from_name(path)
    if depth is None:
        depth = hdr_depth
    elif not np.allclose(depth, hdr_depth, atol=1e-3):
        raise UserError(f"{path}: depth {depth} m in the file name differs from {hdr_depth} m in the header")
    stamps, vals, good = [], [], []
    for i, ln in enumerate(lines[1:], 2):
        parts = ln.split()
        if len(parts) < 3:
            raise UserError(f"{path}: line {i}: expected 'YYYY/MM/DD HH:MM value flag', got {ln.strip()!r}")
        try:
            val = float(parts[2])
        except ValueError:
            raise UserError(f"{path}: line {i}: value {parts[2]!r} is not a number") from None
        flags = parts[3].split(",") if len(parts) > 3 else []
        stamps.append(parts[0] + " " + parts[1])
        vals.append(val)
        good.append(not any(fl.startswith(tuple(reject_flags)) for fl in flags))
    time = pd.to_datetime(pd.Series(stamps), format="%Y/%m/%d %H:%M", errors="coerce")
    if time.isna().any():
        raise UserError(f"{path}: line {int(time.isna().values.argmax()) + 2}: bad date/time")
    time = pd.DatetimeIndex(time)
    if time.has_duplicates or not time.is_monotonic_increasing:
        raise UserError(f"{path}: times are not unique and increasing")
    days, value, mask, _ = to_daily(time, np.array(vals), np.array(good), min_coverage, str(path), average="good")
    site = f"{network}.{station}.{depth[0]:g}-{depth[1]:g}m"
    coords = {"depth_from": (depth[0], {"units": "m", "long_name": "sensor depth, top"}),
              "depth_to": (depth[1], {"units": "m", "long_name": "sensor depth, bottom"}),
              "site_elevation": (elev, {"units": "m"})}
    src = f"ISMN {path.name}"
    common = {"mask_rule": f"records flagged none of {','.join(reject_flags)} covering >= {min_coverage:g} of the day",
              "sensor": h.group(9).strip(), "cell_methods": "time: mean (days in the file's time stamps, UTC)"}
    ds = make_obs(value, "H2OSOI", "mm3/mm3", [site], lat, lon, qc=mask, time=days, source=src,
                  site_coords=coords, attrs=dict(common, depth=f"{depth[0]:g}-{depth[1]:g} m"))
    if depth[1] <= TOP_10CM:
        sw = make_obs(value * TOP_10CM * 1000.0, "SOILWATER_10CM", "kg/m2", [site], lat, lon, qc=mask,
                      time=days, source=src, site_coords=coords,
                      attrs=dict(common, derived="H2OSOI * 0.1 m * 1000 kg/m3 (theta taken as uniform over 0-10 cm; "
                                                 "liquid water only)"))
        ds = merge_obs([ds, sw], source=src)
    return ds
