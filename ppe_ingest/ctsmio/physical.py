"""What a CTSM quantity can physically be, whatever a parameter table or a calibration explored.

One home for physical validity: by name (the hydrology parameters and fsurdat fields), by name
pattern (``PCT_*``, ``*_sf``, C:N ratios), then by units. The parameter table, the CTSM file
writers and the surface-dataset checks all ask `physical_range` / `check_physical_values`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ppe_ingest.base.errors import UserError


@dataclass(frozen=True)
class Physical:
    """The values a quantity can physically take: ``lo``..``hi``, either end open or absent.

    Unlike a table's bounds (the range a PPE or a calibration explored, which a deliberate
    experiment may leave with ``--allow-outside-table``), a value outside this range is never
    written: CTSM would reject it or compute nonsense (a negative rate, a fraction above one).
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded (> lo rather than >= lo)
    hi_open: bool = False
    why: str = ""

    def ok(self, values) -> np.ndarray:
        """Elementwise: finite and within the range."""
        v = np.asarray(values, dtype=float)
        good = np.isfinite(v)
        with np.errstate(invalid="ignore"):
            if self.lo is not None:
                good &= (v > self.lo) if self.lo_open else (v >= self.lo)
            if self.hi is not None:
                good &= (v < self.hi) if self.hi_open else (v <= self.hi)
        return good

    def text(self) -> str:
        """The rule in words, e.g. ``within 0..1``, ``> 0``."""
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            rule = f"within {self.lo:g}..{self.hi:g}"
        else:
            parts = []
            if self.lo is not None:
                parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
            if self.hi is not None:
                parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
            rule = " and ".join(parts) or "finite"
        return f"{rule} ({self.why})" if self.why else rule


_FRACTION = Physical(0.0, 1.0, why="a fraction")
_PERCENT_RANGE = Physical(0.0, 100.0, why="a percentage")
_POSITIVE = Physical(0.0, lo_open=True)
_NON_NEGATIVE = Physical(0.0)

# Named rules: the hydrology parameters of our tables and the fsurdat fields write-ctsm sets (CTSM
# names, case as CTSM spells them). Where a name has no rule, `physical_range` falls back on the
# name's pattern and then on its units (paramfile `units` attribute or the table's units column).
PHYSICAL: dict[str, Physical] = {
    "FMAX": Physical(0.0, 1.0, why="maximum saturated fraction"),
    "fff": Physical(0.0, lo_open=True, why="decay factor of the saturated fraction, 1/m"),
    "zbedrock": Physical(0.0, lo_open=True, why="depth to bedrock, m"),
    "ORGANIC": Physical(0.0, why="organic matter density, kg/m3"),
    "SLOPE": Physical(0.0, why="mean topographic slope"),
    "STD_ELEV": Physical(0.0, why="standard deviation of elevation, m"),
    "baseflow_scalar": Physical(0.0, why="a drainage rate scale"),
    "perched_baseflow_scalar": Physical(0.0, why="a drainage rate scale"),
    "n_baseflow": Physical(0.0, lo_open=True, why="drainage power-law exponent"),
    "d_max": Physical(0.0, lo_open=True, why="dry surface layer thickness, mm"),
    "frac_sat_soil_dsl_init": _FRACTION,
    "medlynslope": Physical(0.0, why="stomatal slope"),
    "medlynintercept": Physical(0.0, why="stomatal intercept"),
    "mbbopt": Physical(0.0, why="stomatal slope"),
    "liq_canopy_storage_scalar": Physical(0.0, why="a storage capacity, kg/m2"),
    "snow_canopy_storage_scalar": Physical(0.0, why="a storage capacity, kg/m2"),
    "accum_factor": Physical(0.0, why="snow-cover growth constant"),
    "n_melt_coef": Physical(0.0, lo_open=True, why="snow depletion curve shape"),
    "interception_fraction": _FRACTION,
    "maximum_leaf_wetted_fraction": _FRACTION,
    "e_ice": Physical(0.0, why="ice impedance factor"),
    "wimp": _FRACTION,
    "ssi": _FRACTION,
    "aq_sp_yield_min": _FRACTION,
    "slatop": Physical(0.0, why="specific leaf area"),
    "om_frac_sf": _POSITIVE,
    "precip_repartition_nonglc_all_rain_t": Physical(why="a temperature, degC"),
}
# Units (lower case) that imply a rule, for names without one of their own.
PHYSICAL_BY_UNITS: dict[str, Physical] = {
    **{u: _FRACTION for u in ("fraction", "0 to 1", "proportion", "logical flag")},
    **{u: Physical(0.0, why=f"a rate or amount in {u}") for u in (
        "1/day", "1/s", "1/year", "m/s", "mol/m3-w/s", "w/m/k", "j/k/m3", "kg/m3", "kg m-3", "days", "seconds",
        "years", "hr", "m", "meters", "m2", "number m-2", "kg/m2", "j/mol")},
    # carbon per area or volume: the PPE's KCN group (kc_nonmyc ... ekn_active, N-uptake costs), minfuel
    **{u: Physical(0.0, why="an amount of carbon per area or volume") for u in ("gc/m2", "gc/m3")},
    "k": Physical(0.0, lo_open=True, why="a temperature in K"),
}


def physical_range(name: str, units: str = "") -> Physical | None:
    """The physically valid range of a CTSM quantity by name, name pattern or units; None when none is known.

    Patterns: ``PCT_*`` percentages are within 0..100; ``*_sf`` scale factors and ``*_adjustfactor``
    multipliers are > 0; C:N ratios (``*cn``, ``*cn_max``, ``*cn_min``, ``cn_s*``) are >= 0.
    """
    if name in PHYSICAL:
        return PHYSICAL[name]
    low = {k.lower(): v for k, v in PHYSICAL.items()}
    if name.lower() in low:
        return low[name.lower()]
    if name.upper().startswith("PCT_"):
        return _PERCENT_RANGE
    if name.endswith("_sf") or name.endswith("_adjustfactor"):
        return Physical(0.0, lo_open=True, why="a scale factor")
    if re.search(r"cn(_max|_min)?$", name) or name.startswith("cn_s"):
        return Physical(0.0, why="a C:N ratio")
    return PHYSICAL_BY_UNITS.get(str(units or "").strip().lower())


def check_physical_values(name: str, values, units: str = "", where: str = "") -> None:
    """Refuse values of `name` that are not finite or outside its physical range (`physical_range`).

    `where` prefixes the message (a file, ``--set``, a gridcell); the first bad element is named
    with its index when `values` is an array.
    """
    v = np.asarray(values, dtype=float)
    rule = physical_range(name, units)
    good = rule.ok(v) if rule is not None else np.isfinite(v)
    if good.all():
        return
    idx = tuple(int(i) for i in np.argwhere(~good)[0]) if v.ndim else ()
    at = f" at index {idx[0] if len(idx) == 1 else idx}" if idx else ""
    need = rule.text() if rule is not None else "finite"
    raise UserError(f"{where + ': ' if where else ''}{name} = {v[idx]:.6g}{at} is not physically valid: "
                    f"it must be {need}")
