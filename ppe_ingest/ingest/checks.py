"""Bad-input bookkeeping for the ingest: CTSM units of the ingested variables and the problem report.

A problem is raised as a one-line UserError naming the file and what is wrong, unless the user
asked for ``--skip-bad``: then the member is left out and the problem is recorded in the store's
``skipped`` attribute and printed. Nothing is dropped without an entry here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import HIST_FIELDS

# Units CTSM writes on its history files (histFileMod / the hist_addfld calls); a few common
# spellings of the same unit are accepted.
CTSM_UNITS = {name: u for name, (_, u) in HIST_FIELDS.items()}
_SAME_UNIT = [{"w/m^2", "w/m2", "w m-2"}, {"kg/m2", "kg/m^2", "kg m-2", "mm"},
              {"mm/s", "mm s-1", "kg/m2/s", "kg m-2 s-1"}, {"m/s", "m s-1"}]


def _norm_unit(u: str) -> str:
    u = u.strip().lower().replace(" ", "")
    for group in _SAME_UNIT:
        if u in {g.replace(" ", "") for g in group}:
            return sorted(group)[0]
    return u


def units_ok(var: str, units: str | None) -> bool:
    """True when `units` is the CTSM unit of `var` (or `var` has no known CTSM unit)."""
    want = CTSM_UNITS.get(var)
    if want is None:
        return True
    if units is None:
        return False
    # H2OSNO/TWS are 'mm' and SOILWATER_10CM 'kg/m2': the same quantity for water, but keep each
    # variable to its own spelling family.
    return _norm_unit(units) == _norm_unit(want)


@dataclass
class Problem:
    """One bad input: the file, the member it belongs to, and what is wrong with it."""

    file: str
    member: str
    reason: str

    def line(self) -> str:
        who = f" (member {self.member})" if self.member else ""
        return f"{self.file}{who}: {self.reason}"


class Report:
    """Problems found while ingesting; raises on the first one unless skipping bad members."""

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.problems: list[Problem] = []

    def add(self, file, member: str, reason: str) -> None:
        p = Problem(str(file), member or "", reason)
        if not self.skip_bad:
            raise UserError(p.line() + " (use --skip-bad to leave such members out and record them)")
        if p not in self.problems:
            self.problems.append(p)

    def bad_members(self) -> set[str]:
        return {p.member for p in self.problems if p.member}

    def to_json(self) -> str:
        return json.dumps([asdict(p) for p in self.problems])

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]


def nan_count(values: np.ndarray) -> int:
    """Number of NaN values (the history files' fill values are NaN once decoded)."""
    return int(np.isnan(values).sum()) if values.dtype.kind == "f" else 0
