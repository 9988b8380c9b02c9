"""Skill metrics: the values users read in evaluation reports."""
import numpy as np
import pytest
import torch

from esm_emu.metrics import bias, kge, nse, r2, rmse


def test_perfect_and_mean_predictions():
    obs = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    assert nse(obs, obs) == pytest.approx(1.0)
    assert kge(obs, obs) == pytest.approx(1.0)
    assert rmse(obs, obs) == pytest.approx(0.0)
    # predicting the observed mean scores NSE 0 (the definition's reference point)
    assert nse(np.full_like(obs, obs.mean()), obs) == pytest.approx(0.0)


def test_known_values():
    obs = np.array([1.0, 2.0, 3.0, 4.0])
    sim = 2 * obs  # r = 1, alpha = 2, beta = 2 -> KGE = 1 - sqrt(2)
    assert kge(sim, obs) == pytest.approx(1 - np.sqrt(2))
    assert bias(sim, obs) == pytest.approx(2.5)
    assert rmse(sim, obs) == pytest.approx(np.sqrt(np.mean(obs ** 2)))
    assert r2(sim, obs) == pytest.approx(1.0)
    assert nse(sim, obs) == pytest.approx(1 - np.sum(obs ** 2) / np.sum((obs - 2.5) ** 2))


def test_nan_pairs_are_ignored():
    obs = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    sim = np.array([1.1, 1.9, 100.0, np.nan, 5.2])
    keep = [0, 1, 4]
    assert nse(sim, obs) == pytest.approx(nse(sim[keep], obs[keep]))
    assert kge(sim, obs) == pytest.approx(kge(sim[keep], obs[keep]))
    assert np.isnan(nse(np.ones(3), np.ones(3)))  # no variance in obs: undefined, not 1


def test_axis_and_torch_agree_with_numpy():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 4, 50))
    sim = obs + rng.normal(scale=0.3, size=obs.shape)
    sim[0, 0, :5] = np.nan
    for f in (nse, kge, rmse, bias, r2):
        a = f(sim, obs)
        b = f(torch.tensor(sim), torch.tensor(obs))
        assert a.shape == (3, 4) and isinstance(b, torch.Tensor)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10)
        np.testing.assert_allclose(f(np.moveaxis(sim, -1, 0), np.moveaxis(obs, -1, 0), axis=0), a, rtol=1e-10)


def test_torch_metric_is_differentiable():
    obs = torch.linspace(0, 1, 20)
    sim = (obs + 0.1).requires_grad_()
    (-nse(sim, obs)).backward()
    assert torch.isfinite(sim.grad).all() and sim.grad.abs().sum() > 0
