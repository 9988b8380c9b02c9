"""A land component stepped on forcing chunks: initialise once, then step a forward model.

The model is any `esm_emu.forward.ForwardModel` (the emulator through `EmulatorForward`, the
built-in simulator through `SimulatorForward`), or a bare module with the emulator's contract
``m(forcing (B,T,F), static (B,S), theta (B,P), state=None, return_state=True) -> (y (B,T,R), state)``
and ``forcing_names``, ``static_names``, ``param_names``, ``response_names``, which is wrapped in
`EmulatorForward`. The state is carried between `step` calls, so a year in twelve monthly steps
equals one twelve-month call.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ppe_ingest.base.errors import UserError

from .grids import Grid


def _table(obj, names, grid: Grid, what: str, B_idx: np.ndarray) -> np.ndarray:
    """(B, len(names)) values for the active cells from a Dataset / mapping of per-cell or scalar values."""
    cols = []
    for n in names:
        if n not in obj:
            raise UserError(f"{what}: variable '{n}' is missing (the model needs {', '.join(names)})")
        v = obj[n]
        v = np.asarray(getattr(v, "values", v), dtype=np.float64)
        if v.size == 1:
            cols.append(np.full(B_idx.size, float(v.ravel()[0])))
        elif v.size == grid.n:
            cols.append(v.ravel()[B_idx])
        else:
            raise UserError(f"{what}: '{n}' has {v.size} values; expected 1 or one per gridcell ({grid.n})")
    return np.stack(cols, -1) if cols else np.zeros((B_idx.size, 0))


class EmulatorComponent:
    """A land component driven by a forward model, optionally regridding its output.

    comp = EmulatorComponent(model)
    comp.initialize(grid, static, theta, target_grid=rof_grid)   # or regridder=Regridder(...)
    fields = comp.step(forcing)   # forcing: Dataset (time, *grid.dims) -> Dataset on target grid
    """

    def __init__(self, model):
        from esm_emu.forward import EmulatorForward, ForwardModel

        if not isinstance(model, ForwardModel):
            for a in ("forcing_names", "static_names", "param_names", "response_names"):
                if not hasattr(model, a):
                    raise UserError(f"the model lacks the attribute '{a}' of the emulator contract")
            model = EmulatorForward(model)
        self.model = model
        self.grid: Grid | None = None
        self.state = None
        self.regridder = None
        self.steps = 0

    def initialize(self, grid: Grid, static, theta, target_grid: Grid | None = None,
                   regridder=None, method: str = "conserve") -> EmulatorComponent:
        """Fix the emulator's grid, static fields and parameters; reset the state."""
        import torch

        self.grid = grid
        self.active = np.flatnonzero(grid.mask)
        dtype = next((p.dtype for p in getattr(self.model, "parameters", lambda: iter(()))()), torch.float64)
        self.dtype = dtype
        static_table = _table(static, self.model.static_names, grid, "static", self.active)
        self._static = torch.as_tensor(static_table, dtype=dtype)
        if isinstance(theta, Mapping) or hasattr(theta, "data_vars"):
            th = _table(theta, self.model.param_names, grid, "theta", self.active)
        else:  # DataArray theta(gridcell|scalar, param)
            th = np.stack([np.broadcast_to(np.asarray(theta.sel(param=p).values, float).ravel(), (grid.n,))[self.active]
                           if np.asarray(theta.sel(param=p).values).size == grid.n else
                           np.full(self.active.size, float(np.asarray(theta.sel(param=p).values).ravel()[0]))
                           for p in self.model.param_names], -1)
        self._theta = torch.as_tensor(th, dtype=dtype)
        if regridder is None and target_grid is not None:
            from .regridder import Regridder

            regridder = Regridder(grid, target_grid, method)
        self.regridder = regridder
        self.state = None
        self.steps = 0
        return self

    def step(self, forcing):
        """Advance over the forcing's time steps; return the responses (on the target grid if set)."""
        import torch
        import xarray as xr

        if self.grid is None:
            raise UserError("EmulatorComponent.step called before initialize")
        gdims = tuple(self.grid.dims)
        cols = []
        for n in self.model.forcing_names:
            if n not in forcing:
                raise UserError(f"forcing: variable '{n}' is missing")
            da = forcing[n]
            if "time" not in da.dims or not all(d in da.dims for d in gdims):
                raise UserError(f"forcing: '{n}' must have dims (time, {', '.join(gdims)}), has {da.dims}")
            v = da.transpose("time", *gdims).values.reshape(da.sizes["time"], -1)
            cols.append(v[:, self.active].T)
        f = torch.as_tensor(np.stack(cols, -1), dtype=self.dtype)
        with torch.no_grad():
            y, self.state = self.model(f, self._static, self._theta, state=self.state, return_state=True)
        y = y.detach().cpu().numpy().astype(np.float64)
        T = f.shape[1]
        full = np.full((T, self.grid.n, y.shape[-1]), np.nan)
        full[:, self.active] = np.transpose(y, (1, 0, 2))
        time = forcing["time"]
        out = xr.Dataset(
            {r: (("time", *gdims), full[..., k].reshape(T, *self.grid.shape))
             for k, r in enumerate(self.model.response_names)},
            coords={"time": time, **self.grid.coords()})
        self.steps += 1
        if self.regridder is not None:
            out = self.regridder(out)
        return out
