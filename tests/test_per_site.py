"""Per-site calibration (esm_emu.inverse.per_site) on a toy problem with a known answer, through
run_inversion (the library behind `esm-emu invert`), and the default choice of method."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr

from esm_emu.forward import ForwardModel
from esm_emu.inverse.inversion import run_inversion
from esm_emu.inverse.per_site import PER_SITE_MAX_SITES, choose_method

TRUE = np.array([[0.5, 0.2], [2.0, 0.7], [5.0, 0.4]])          # (site, [a, b])
TABLE = {"a": (0.1, 10.0, 1.0), "b": (0.0, 1.0, 0.5)}


class Toy(ForwardModel):
    """QRUNOFF = a * X + b * X**2 with a state-free daily step (a toy forward model)."""

    def __init__(self):
        super().__init__(["X"], ["S"], ["a", "b"], ["QRUNOFF"])

    def forward(self, forcing, static, theta, state=None, return_state=False):
        x = forcing[..., 0]
        y = (theta[:, :1] * x + theta[:, 1:2] * x ** 2)[..., None]
        return (y, None) if return_state else y


def _data(noise: float = 0.02, seed: int = 0):
    rng = np.random.default_rng(seed)
    time = pd.date_range("2000-01-01", periods=730, freq="D")
    x = rng.gamma(1.0, 1.0, (3, len(time)))
    y = TRUE[:, :1] * x + TRUE[:, 1:] * x ** 2
    obs_y = y * np.exp(noise * rng.standard_normal(y.shape))
    ids = ["s1", "s2", "s3"]
    ent = xr.Dataset({"X": (("site", "time"), x), "S": (("site",), np.ones(3))},
                     coords={"site": ids, "time": time})
    obs = xr.Dataset({"QRUNOFF": (("site", "time"), obs_y)}, coords={"site": ids, "time": time})
    return ent, obs


def test_per_site_recovers_known_parameters_with_uncertainty():
    ent, obs = _data()
    cfg = {"method": "auto", "train_period": {"start": 2000, "end": 2000}, "test_period": {"start": 2001, "end": 2001},
           "per_site": {"steps": 300, "lr": 0.1}, "dpl": {"warmup_days": 0},
           "uncertainty": {"ensemble": 3, "mc_samples": 0}}
    pmap, m = run_inversion(cfg, ent, obs, Toy(), TABLE, progress=False)
    assert m["method"] == "per_site"            # three sites: the default chooses per-site calibration
    theta, std = pmap["theta"].values, pmap["theta_std"].values
    assert np.allclose(theta, TRUE, rtol=0.08, atol=0.03), theta
    assert (std > 0).all() and (std < 0.2 * (np.array([10.0, 1.0]) - np.array([0.1, 0.0]))).all(), std
    sk = m["skill_test_period"]
    assert min(sk["inferred"]["QRUNOFF"]["nse"]) > 0.95
    assert np.median(sk["inferred"]["QRUNOFF"]["nse"]) > np.median(sk["default"]["QRUNOFF"]["nse"])


def test_per_site_with_routing_learns_the_delay():
    """Observed flow is the toy runoff routed with a long delay: the routing parameters are inferred
    and move the mean delay (shape * scale) well above the default's."""
    from esm_emu.routing import ROUTING_BOUNDS, route

    ent, obs = _data(noise=0.0)
    q = torch.as_tensor(obs["QRUNOFF"].values)
    obs["QRUNOFF"].values[:] = route(q, torch.full((3,), 2.5, dtype=q.dtype),
                                     torch.full((3,), 3.0, dtype=q.dtype)).numpy()
    cfg = {"method": "per_site", "routing": {"QRUNOFF": "gamma"}, "train_period": {"start": 2000, "end": 2000},
           "test_period": {"start": 2001, "end": 2001}, "per_site": {"steps": 300, "lr": 0.1},
           "dpl": {"warmup_days": 30}, "uncertainty": {"ensemble": 2, "mc_samples": 0}}
    pmap, m = run_inversion(cfg, ent, obs, Toy(), TABLE, progress=False)
    names = [str(p) for p in pmap["param"].values]
    assert names[-2:] == ["UH_SHAPE", "UH_SCALE"]
    th = pmap["theta"].values
    delay = th[:, -2] * th[:, -1]
    default_delay = ROUTING_BOUNDS["UH_SHAPE"][2] * ROUTING_BOUNDS["UH_SCALE"][2]
    assert (delay > 2.5 * default_delay).all(), delay
    assert min(m["skill_test_period"]["inferred"]["QRUNOFF"]["nse"]) > 0.9


def test_method_choice_by_number_of_sites():
    assert choose_method("auto", 4) == "per_site"
    assert choose_method("auto", PER_SITE_MAX_SITES) == "g_z"
    assert choose_method("g_A", 2) == "g_A"


def test_a_parameter_pushed_past_its_bound_keeps_the_datas_spread():
    """Site s3's true a (5.0) lies above a table whose upper bound is 3.0: every bootstrap member ends
    on the bound, and their spread is zero. The interval keeps the data's linearised posterior sd
    there (not a vanishing one), and stays tight where the data pin a value inside the range."""
    ent, obs = _data()
    cfg = {"method": "per_site", "train_period": {"start": 2000, "end": 2000},
           "test_period": {"start": 2001, "end": 2001}, "per_site": {"steps": 300, "lr": 0.1},
           "dpl": {"warmup_days": 0}, "uncertainty": {"ensemble": 3, "mc_samples": 0}}
    table = {"a": (0.1, 3.0, 1.0), "b": (0.0, 1.0, 0.5)}
    pmap, m = run_inversion(cfg, ent, obs, Toy(), table, progress=False)
    theta, std = pmap["theta"].values, pmap["theta_std"].values
    assert theta[2, 0] > 2.9  # at the bound (the logit parametrisation approaches it)
    assert std[2, 0] > 0.01 * (3.0 - 0.1)
    assert std[0, 0] < 0.05 * (3.0 - 0.1)  # s1's a (0.5) is well inside and well constrained
