"""Gamma unit-hydrograph routing (esm_emu.routing): volume, timing, gradients, state, config."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from esm_emu.forward import ForwardModel
from esm_emu.routing import UH_DAYS, RoutedForward, check_routing, route, unit_hydrograph
from ppe_ingest.base.errors import UserError


def test_unit_hydrograph_sums_to_one_and_routing_conserves_volume():
    h = unit_hydrograph(torch.tensor([0.1, 1.0, 3.0]), torch.tensor([0.5, 2.0, 7.0]))
    assert torch.allclose(h.sum(1), torch.ones(3, dtype=h.dtype))
    assert (h >= 0).all()
    q = torch.zeros(3, 120, dtype=torch.float64)
    q[:, 10] = 5.0
    q[:, 40:43] = 2.0
    out = route(q, torch.tensor([0.1, 1.0, 3.0]), torch.tensor([0.5, 2.0, 7.0]))
    # every pulse arrives within UH_DAYS days, so the routed series carries the same volume
    assert torch.allclose(out.sum(1), q.sum(1), rtol=1e-12)
    assert (out >= 0).all()


def test_longer_lag_delays_and_flattens_the_peak():
    q = torch.zeros(1, 60, dtype=torch.float64)
    q[0, 5] = 10.0
    peaks, heights = [], []
    for scale in (0.5, 2.0, 5.0):
        out = route(q, torch.tensor([2.5]), torch.tensor([scale]))
        peaks.append(int(out.argmax()))
        heights.append(float(out.max()))
    assert peaks[0] < peaks[1] < peaks[2]
    assert heights[0] > heights[1] > heights[2]
    assert peaks[0] >= 5  # causal: nothing arrives before the runoff


def test_routing_is_differentiable_in_both_parameters():
    q = torch.rand(2, 50, dtype=torch.float64)
    shape = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    (route(q, shape, scale) * torch.linspace(0, 1, 50, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(shape.grad).all() and (shape.grad.abs() > 0).all()
    assert torch.isfinite(scale.grad).all() and (scale.grad.abs() > 0).all()


class _Toy(ForwardModel):
    """Runoff = theta * forcing (a toy forward model with a state: the running total)."""

    def __init__(self):
        super().__init__(["X"], ["S"], ["a"], ["QRUNOFF", "OTHER"])

    def forward(self, forcing, static, theta, state=None, return_state=False):
        q = forcing[..., 0] * theta[:, :1]
        y = torch.stack([q, forcing[..., 0]], -1)
        total = (0 if state is None else state) + q.sum(1)
        return (y, total) if return_state else y


def test_routed_forward_routes_runoff_only_and_carries_state():
    fwd = RoutedForward(_Toy())
    assert fwd.param_names == ["a", "UH_SHAPE", "UH_SCALE"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 90, 1, generator=g, dtype=torch.float64)
    th = torch.tensor([[2.0, 1.5, 3.0], [0.5, 0.5, 1.0]], dtype=torch.float64)
    whole = fwd(x, torch.zeros(2, 1), th)
    assert torch.equal(whole[..., 1], x[..., 0])  # other responses untouched
    assert not torch.allclose(whole[..., 0], 2 * x[:1, :, 0].expand(2, -1))
    y1, st = fwd(x[:, :30], torch.zeros(2, 1), th, return_state=True)
    y2, _ = fwd(x[:, 30:], torch.zeros(2, 1), th, state=st, return_state=True)
    assert torch.allclose(torch.cat([y1, y2], 1), whole, atol=1e-12)


def test_routing_config_names_the_key():
    assert check_routing({"QRUNOFF": "gamma"}, ["QRUNOFF", "EFLX_LH_TOT"]) == ["QRUNOFF"]
    assert check_routing({"QRUNOFF": "none"}, ["QRUNOFF"]) == []
    with pytest.raises(UserError, match="inverse.routing.EFLX_LH_TOT"):
        check_routing({"EFLX_LH_TOT": "gamma"}, ["QRUNOFF", "EFLX_LH_TOT"])
    with pytest.raises(UserError, match="inverse.routing.QRUNOFF"):
        check_routing({"QRUNOFF": "gamma"}, ["EFLX_LH_TOT"])
    assert UH_DAYS > 1 and np.isfinite(UH_DAYS)


def test_da_hook_routes_ctsm_runoff_and_the_forward_model_alike():
    """cime_hooks.da with observations.routing gamma: CTSM's paired runoff is routed (volume kept,
    peak delayed) and the forward model routes its own runoff with the same fixed parameters."""
    from cime_hooks.da import _routed

    y = np.zeros((2, 40))
    y[:, 3] = 4.0
    cfg = {"routing": "gamma", "uh_shape": 2.0, "uh_scale": 2.0}
    fwd, routed = _routed(_Toy(), y, "QRUNOFF", cfg)
    assert np.allclose(routed.sum(1), y.sum(1)) and routed[0].argmax() > 3
    x = torch.zeros(1, 40, 1, dtype=torch.float64)
    x[0, 3, 0] = 4.0
    out = fwd(x, torch.zeros(1, 1), torch.tensor([[1.0]], dtype=torch.float64))
    assert fwd.param_names == ["a"] and np.allclose(out[0, :, 0].numpy(), routed[0])
    with pytest.raises(UserError, match="observations.routing"):
        _routed(_Toy(), y, "EFLX_LH_TOT", cfg)
