"""A small twin experiment for the inverse tests: built-in-simulator gridcells and weather, true
parameter maps smooth in the attributes, a simulator PPE, and a small LSTM emulator trained on it.

Observations are produced by the frozen emulator itself at the true parameters (a perfect-model
twin), so the tests check the inversion rather than the emulator's skill.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import xarray as xr

from esm_emu.emulator import Emulator
from esm_emu.forward import EmulatorForward, SimulatorForward
from esm_emu.inverse.problem import bounds_from_table
from esm_emu.normalize import Normalizer, Scaler
from ppe_ingest.param_table import default_table_path, load_param_table
from ppe_ingest.simulator.sites import builtin_sites
from ppe_ingest.simulator.weather import generate_weather

PARAMS = ["fff", "FMAX", "hksat_sf", "baseflow_scalar"]
RESPONSES = ["QRUNOFF", "EFLX_LH_TOT"]
UNITS = {"QRUNOFF": "mm/s", "EFLX_LH_TOT": "W/m^2"}


def true_theta(sites: xr.Dataset, lo, hi, seed: int = 0) -> np.ndarray:
    """Parameters that vary smoothly with the gridcell attributes (what g_A must learn)."""
    a = np.stack([sites[k].values for k in ("PCT_SAND", "PCT_CLAY", "p_mean", "aridity", "grid1d_lat")], 1)
    a = (a - a.mean(0)) / a.std(0)
    w = np.random.default_rng([seed, 5]).normal(0, 1, (a.shape[1], len(lo)))
    u = 1 / (1 + np.exp(-(a @ w) / np.sqrt(a.shape[1]) * 1.5))
    u = 0.1 + 0.8 * u
    return lo + (hi - lo) * u


@functools.lru_cache(maxsize=2)
def make_twin(n_grid: int = 24, n_years: int = 2, per_cell: int = 3, seed: int = 0, emu_steps: int = 60):
    torch.manual_seed(seed)
    table = load_param_table(default_table_path())
    lo, hi, dflt = bounds_from_table(table, PARAMS)
    sites = builtin_sites(n_grid, seed)
    weather = generate_weather(sites, 2000, n_years, seed)
    entities = xr.merge([sites, weather])
    sim = SimulatorForward.for_entities(entities, PARAMS, RESPONSES)
    forcing = torch.as_tensor(np.stack([weather[n].values for n in sim.forcing_names], -1), dtype=torch.float32)
    static = torch.as_tensor(np.stack([sites[n].values for n in sim.static_names], -1), dtype=torch.float32)
    rng = np.random.default_rng([seed, 7])
    theta = lo + (hi - lo) * rng.random((n_grid * per_cell, len(PARAMS)))
    ent = np.repeat(np.arange(n_grid), per_cell)
    y = sim.chunked(forcing[ent], static[ent], torch.as_tensor(theta, dtype=torch.float32), batch=512)
    # a small emulator trained on the simulator PPE
    yl = y.numpy().reshape(-1, len(RESPONSES))
    f = forcing.numpy().reshape(-1, forcing.shape[-1])
    norm = Normalizer(Scaler(f.mean(0), f.std(0), [False] * f.shape[1], 1e-6),
                      Scaler(static.numpy().mean(0), static.numpy().std(0), [False] * static.shape[1], 1e-6),
                      Scaler(theta.mean(0), theta.std(0), [False] * len(PARAMS), 1e-6),
                      Scaler(yl.mean(0), yl.std(0), [False] * len(RESPONSES), 1e-6))
    emu = Emulator.build({"name": "lstm", "hidden": 32, "embed": 16, "layers": 1, "dropout": 0.0, "ea_gate": False},
                         norm, sim.forcing_names, sim.static_names, PARAMS, RESPONSES)
    opt = torch.optim.Adam(emu.parameters(), lr=1e-2)
    th = torch.as_tensor(theta, dtype=torch.float32)
    target = norm.response(y)
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(emu_steps):
        b = torch.randint(0, len(th), (32,), generator=g)
        rows = ent[b.numpy()]
        pred, _ = emu.forward_normalized(norm.forcing(forcing[rows]), emu.conditioning(static[rows], th[b]))
        loss = ((pred - target[b]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fwd = EmulatorForward(emu)
    truth = true_theta(sites, lo, hi, seed)
    y_true = fwd.chunked(forcing, static, torch.as_tensor(truth, dtype=torch.float32)).numpy()
    truth_ds = xr.Dataset({"theta": (("gridcell", "param"), truth)},
                          coords={"gridcell": sites["gridcell"].values, "param": PARAMS})
    return dict(entities=entities, forward=fwd, simulator=sim, table=table, truth=truth_ds, y_true=y_true,
                time=weather["time"].values, emu_loss=float(loss.detach()))


def observations(twin: dict, observed: np.ndarray, variables=("QRUNOFF",), gap_fraction: float = 0.1, seed: int = 0):
    """Observation-schema Dataset (site, time) at the observed gridcells, with gaps and masks."""
    rng = np.random.default_rng([seed, 9])
    ent = twin["entities"]
    out = {}
    for v in variables:
        vals = twin["y_true"][observed, :, RESPONSES.index(v)].astype(np.float64)
        if v == "QRUNOFF":
            vals = np.clip(vals, 0, None)  # the emulator can dip slightly below zero; runoff cannot
        good = rng.random(vals.shape) >= gap_fraction
        out[v] = (("site", "time"), np.where(good, vals, np.nan), {"units": UNITS[v]})
        out[f"{v}_mask"] = (("site", "time"), good)
    ids = ent["gridcell"].values[observed]
    return xr.Dataset(out, coords={"site": [str(i) for i in ids], "time": twin["time"]}).assign(
        gridcell=("site", ids), site_lat=("site", ent["grid1d_lat"].values[observed]),
        site_lon=("site", ent["grid1d_lon"].values[observed]))


class LinearForward(torch.nn.Module):
    """A toy forward model with a known Jacobian: y(t) = sum_j theta_j * x_j(t) (+ an optional spread)."""

    kind = "toy"

    def __init__(self, n_params: int, spread=None):
        super().__init__()
        self.forcing_names = [f"x{j}" for j in range(n_params)]
        self.static_names = []
        self.param_names = [f"p{j}" for j in range(n_params)]
        self.response_names = ["y"]
        self._spread = spread
        if spread is not None:
            self.predict_with_spread = lambda f, s, th: (self(f, s, th), spread(th)[:, None, None].expand(
                f.shape[0], f.shape[1], 1))

    def forward(self, forcing, static, theta, state=None, return_state=False):
        return (forcing * theta[:, None, :]).sum(-1, keepdim=True)

    def chunked(self, forcing, static, theta, batch=256):
        with torch.no_grad():
            return self(forcing, static, theta)


def toy_problem(x: np.ndarray, obs: np.ndarray, observed=None, attrs=None):
    """An InverseProblem over N entities, T days and P regressors x (N,T,P) in [0,1] bounds, obs (N,T)."""
    from esm_emu.inverse.problem import InverseProblem

    N, T, P = x.shape
    t32 = functools.partial(torch.as_tensor, dtype=torch.float32)
    attrs = np.zeros((N, 1)) if attrs is None else attrs
    return InverseProblem(
        entity_dim="gridcell", entity=np.arange(N), time=np.arange(T), forcing=t32(x), static=torch.zeros(N, 0),
        attrs=t32(attrs), attr_names=[f"a{k}" for k in range(attrs.shape[1])], obs=t32(obs[..., None]),
        variables=["y"], observed=np.ones(N, bool) if observed is None else observed,
        train_time=np.ones(T, bool), test_time=np.ones(T, bool), param_names=[f"p{j}" for j in range(P)],
        lo=torch.zeros(P), hi=torch.ones(P), default=torch.full((P,), 0.5), forward_default=torch.full((P,), 0.5),
        forward_index=list(range(P)), response_index=[0])
