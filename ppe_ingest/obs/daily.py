"""Sub-daily in-situ series -> daily means with a coverage threshold (one rule for every source)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ppe_ingest.base.errors import UserError


def steps_per_day(time: pd.DatetimeIndex, source: str) -> int:
    """Number of records per day implied by the median spacing of `time` (1 for daily data)."""
    if len(time) < 2:
        return 1
    dt = float(np.median(np.diff(time.values).astype("timedelta64[s]").astype(float)))
    if dt <= 0 or dt > 86400:
        raise UserError(f"{source}: time: median step {dt:g} s; need daily or finer records")
    return max(1, int(round(86400.0 / dt)))


def to_daily(time, values, good, min_fraction: float, source: str, *, average: str = "all"):
    """Daily means of a sub-daily series.

    `good` marks usable records.  ``average="all"`` averages every finite record (gap-filled
    flux products, whose QC only grades the gap-filling); ``"good"`` averages only good records.
    A day whose finite records cover less than `min_fraction` of the day is NaN (not a daily
    mean); a day is usable (mask True) when its good records cover at least `min_fraction`.
    Returns (days, value, mask, good_fraction) over every calendar day from first to last.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise UserError(f"{source}: min_fraction {min_fraction} must lie in 0..1")
    time = pd.DatetimeIndex(time)
    v = np.asarray(values, dtype=float)
    g = np.asarray(good, dtype=bool) & np.isfinite(v)
    n = steps_per_day(time, source)
    day = time.floor("D")
    df = pd.DataFrame({"v": v, "vg": np.where(g, v, np.nan), "f": np.isfinite(v), "g": g}, index=day)
    grp = df.groupby(level=0)
    mean = grp["vg" if average == "good" else "v"].mean()
    cover = grp["f"].sum() / n
    gfrac = grp["g"].sum() / n
    days = pd.date_range(day.min(), day.max(), freq="D")
    mean, cover, gfrac = (s.reindex(days) for s in (mean, cover, gfrac))
    cover, gfrac = cover.fillna(0.0).clip(upper=1.0), gfrac.fillna(0.0).clip(upper=1.0)
    value = mean.where(cover >= min_fraction).values
    mask = (gfrac >= min_fraction).values & np.isfinite(value)
    return days, value, mask, gfrac.values
