"""The input files of a write plan, each opened once for all the parameters that go into it."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ppe_ingest.base.netcdf import open_dataset
from ppe_ingest.ctsmio.paramfile import paramfile_changes, paramfile_values
from ppe_ingest.ctsmio.surfdata import (
    resolve_gridcells,
    surfdata_changes,
    surfdata_field,
    surfdata_grid,
)


class SurfdataInput:
    """An open surface dataset: its variables and gridcells, fields read on demand."""

    def __init__(self, ds, path: Path):
        self.ds, self.path = ds, path
        self.variables = set(ds.variables)
        self.lat, self.lon = surfdata_grid(ds, path)

    def field(self, name: str) -> np.ndarray:
        """A field as float64 (..., gridcell)."""
        return surfdata_field(self.ds, name, self.path)

    def cells(self, pairs, tol_deg: float) -> np.ndarray:
        """Gridcell indices of (lat, lon) pairs (nearest within `tol_deg`)."""
        return resolve_gridcells(pairs, self.lat, self.lon, self.path, tol_deg)

    def changes(self, fields: Mapping[str, np.ndarray]) -> dict[str, tuple]:
        """Whole new fields as checked (physics, dtype) updates for `copy_and_modify`."""
        return surfdata_changes(self.ds, self.path, fields)


class ParamfileInput:
    """An open paramfile: its variables, base values read once each on demand."""

    def __init__(self, ds, path: Path):
        self.ds, self.path = ds, path
        self.variables = set(ds.variables)
        self._base: dict[str, np.ndarray] = {}

    def base(self, name: str) -> np.ndarray:
        """The variable's current value (scalars 0-d)."""
        if name not in self._base:
            self._base[name] = paramfile_values(self.ds, self.path, [name])[name]
        return self._base[name]

    def changes(self, values: Mapping) -> dict[str, tuple]:
        """Values as `write_paramfile` takes them, as checked updates for `copy_and_modify`."""
        return paramfile_changes(self.ds, self.path, values)


@contextlib.contextmanager
def open_inputs(fsurdat, paramfile) -> Iterator[tuple[SurfdataInput | None, ParamfileInput | None]]:
    """The given surface dataset and paramfile, open for the duration of the block."""
    with contextlib.ExitStack() as stack:
        fs = pf = None
        if fsurdat is not None:
            fs = SurfdataInput(stack.enter_context(open_dataset(fsurdat)), Path(fsurdat))
        if paramfile is not None:
            pf = ParamfileInput(stack.enter_context(open_dataset(paramfile)), Path(paramfile))
        yield fs, pf
