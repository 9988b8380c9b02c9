"""The emulator as a component: state carried between steps; output on a target grid."""
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from coupler import grids
from coupler.component import EmulatorComponent
from esm_emu.forward import SimulatorForward
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import FORCING


def _grid():
    g = grids.from_bounds(np.array([30.0, 32.0, 34.0]), np.array([-100.0, -98.0, -96.0, -94.0]))
    mask = np.ones(g.n, bool)
    mask[5] = False  # one inactive cell
    return g.with_mask(mask)


def _forcing(g, days=365, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    season = np.sin(2 * np.pi * (t - 100) / 365)[:, None, None]
    shape = (days, *g.shape)
    data = {
        "RAIN": np.clip(rng.gamma(0.6, 5e-5, shape) * (rng.random(shape) < 0.4), 0, None),
        "SNOW": np.clip(rng.gamma(0.5, 2e-5, shape) * (season < -0.5), 0, None),
        "TBOT": 283.0 + 12.0 * season + rng.normal(0, 2, shape),
        "FSDS": 180.0 + 100.0 * season + rng.normal(0, 10, shape).clip(-50, 50),
        "FLDS": 300.0 + 30.0 * season,
        "QBOT": 0.006 + 0.003 * season + 0 * rng.random(shape),
        "PBOT": np.full(shape, 95000.0),
        "WIND": 3.0 + rng.random(shape),
    }
    time = pd.date_range("2001-01-01", periods=days, freq="D")
    return xr.Dataset({k: (("time", "lat", "lon"), np.broadcast_to(v, shape).copy()) for k, v in data.items()},
                      coords={"time": time})


def _static(g):
    rng = np.random.default_rng(1)
    return xr.Dataset({
        "PCT_SAND": (("lat", "lon"), rng.uniform(20, 70, g.shape)),
        "PCT_CLAY": (("lat", "lon"), rng.uniform(10, 40, g.shape)),
        "ORGANIC": 20.0, "FMAX": (("lat", "lon"), rng.uniform(0.2, 0.5, g.shape)),
        "zbedrock": 2.0, "SLOPE": 2.0, "STD_ELEV": 50.0, "LAI_MAX": 4.0, "LAI_MIN": 1.0,
    })


def _months(ds):
    return [ds.sel(time=ds.time.dt.month == m) for m in range(1, 13)]


def test_year_in_monthly_steps_equals_one_call_with_the_simulator():
    g = _grid()
    forcing, static = _forcing(g), _static(g)
    theta = {"fff": 0.5, "baseflow_scalar": np.linspace(5e-4, 2e-3, g.n)}
    model = SimulatorForward(("fff", "baseflow_scalar"), ("QRUNOFF", "QOVER", "QDRAI", "EFLX_LH_TOT"))
    whole = EmulatorComponent(model).initialize(g, static, theta).step(forcing)
    comp = EmulatorComponent(model).initialize(g, static, theta)
    parts = xr.concat([comp.step(f) for f in _months(forcing)], dim="time")
    assert comp.steps == 12
    for v in model.response_names:
        np.testing.assert_allclose(parts[v].values, whole[v].values, rtol=1e-12, atol=0)
    assert np.isnan(whole.QRUNOFF.values.reshape(365, -1)[:, 5]).all()  # inactive cell
    assert np.isfinite(whole.QRUNOFF.values.reshape(365, -1)[:, [0, 1, 2, 3, 4]]).all()
    # a fresh start differs: the state really is carried
    cold = EmulatorComponent(model).initialize(g, static, theta).step(_months(forcing)[6])
    assert not np.allclose(cold.H2OSNO.values if "H2OSNO" in cold else cold.QDRAI.values,
                           parts.sel(time=parts.time.dt.month == 7).QDRAI.values)


class TinyLSTM(torch.nn.Module):
    forcing_names = list(FORCING)
    static_names = ["PCT_SAND", "FMAX"]
    param_names = ["fff"]
    response_names = ["QRUNOFF", "EFLX_LH_TOT"]

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = torch.nn.LSTM(len(FORCING) + 3, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 2)
        self.double()

    def forward(self, forcing, static, theta, state=None, return_state=False):
        cond = torch.cat([static / 50.0, theta], -1)[:, None].expand(-1, forcing.shape[1], -1)
        x = torch.cat([(forcing - 200.0) / 100.0, cond], -1)
        h, state = self.lstm(x, state)
        y = self.head(h)
        return (y, state) if return_state else y


def test_torch_model_component_regrids_to_target_conservatively():
    g = _grid().with_mask(None)
    target = grids.from_bounds(np.array([30.0, 31.0, 32.0, 33.0, 34.0]), np.array([-100.0, -97.0, -94.0]))
    forcing, static = _forcing(g, days=60), _static(g)
    comp = EmulatorComponent(TinyLSTM()).initialize(g, static, {"fff": 0.5}, target_grid=target)
    a = comp.step(forcing.isel(time=slice(0, 31)))
    b = comp.step(forcing.isel(time=slice(31, 60)))
    assert a.QRUNOFF.dims == ("time", "lat", "lon") and a.QRUNOFF.shape == (31, 4, 2)
    wcomp = EmulatorComponent(TinyLSTM()).initialize(g, static, {"fff": 0.5}, target_grid=target)
    whole = wcomp.step(forcing)
    np.testing.assert_allclose(xr.concat([a, b], "time").QRUNOFF.values, whole.QRUNOFF.values, rtol=1e-12)
    native = EmulatorComponent(TinyLSTM()).initialize(g, static, {"fff": 0.5}).step(forcing)
    # ESMF's conservation measure: the regional grids' great-circle outlines differ slightly (frac_b < 1)
    w = wcomp.regridder.weights
    ia = (native.QRUNOFF.values.reshape(60, -1) * w.area_a * w.frac_a).sum(1)
    ib = (whole.QRUNOFF.values.reshape(60, -1) * w.area_b * w.frac_b).sum(1)
    np.testing.assert_allclose(ib, ia, rtol=1e-10)


def test_component_input_errors_name_the_variable():
    g = _grid()
    comp = EmulatorComponent(TinyLSTM())
    with pytest.raises(UserError, match="before initialize"):
        comp.step(_forcing(g, days=3))
    with pytest.raises(UserError, match="'FMAX'"):
        comp.initialize(g, _static(g).drop_vars("FMAX"), {"fff": 0.5})
    comp.initialize(g, _static(g), {"fff": 0.5})
    with pytest.raises(UserError, match="'WIND'"):
        comp.step(_forcing(g, days=3).drop_vars("WIND"))
    with pytest.raises(UserError, match="emulator contract"):
        EmulatorComponent(lambda *a: None)
