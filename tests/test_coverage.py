"""Interval coverage on a toy Gaussian problem: 90% intervals hold about 90% of the true values."""
from __future__ import annotations

import numpy as np
import torch
from inverse_twin import LinearForward, toy_problem

from esm_emu.inverse.identifiability import assess
from esm_emu.inverse.uncertainty import interval_inside, posterior, unit_interval


def test_ninety_percent_intervals_cover_85_to_95_percent():
    """Linear model, Gaussian noise, truth drawn from the uniform prior; the estimate is the least-squares
    one (what an inversion converges to). Coverage of the level-0.9 intervals per parameter."""
    rng = np.random.default_rng(3)
    n, T, P = 1500, 40, 2
    x = rng.normal(size=(n, T, P)) * np.array([1.0, 0.3])  # p1 much less constrained than p0
    true = rng.uniform(0, 1, (n, P))
    obs = (x * true[:, None]).sum(-1) + 0.5 * rng.normal(size=(n, T))
    est = np.stack([np.linalg.lstsq(x[i], obs[i], rcond=None)[0] for i in range(n)])
    problem = toy_problem(x, obs)
    ident = assess(problem, LinearForward(P), torch.as_tensor(est, dtype=torch.float32), np.ones(T, bool))
    assert 0.01 < ident.median_ratio[0] < 0.1 < ident.median_ratio[1] < 0.8  # a strong and a weak parameter
    post = posterior([est], problem.observed, ident.ratio)
    lo, hi = unit_interval(post.u, post.sd, 0.9)
    cov = interval_inside(true, lo, hi).mean(0)
    assert np.all((cov >= 0.85) & (cov <= 0.95)), cov
    # without the data's share (ensemble spread only, here zero) the intervals would not cover at all
    assert interval_inside(true, est, est).mean() < 0.01


def test_kriged_residuals_predict_a_smooth_field_with_honest_variance():
    """Residuals of a smooth field (exponential covariance, 8 degrees) at 80 sites, predicted at 300
    others: correlated with the truth, and their 90% intervals hold about 90% of it."""
    from scipy.stats import norm

    from esm_emu.inverse.identifiability import krige
    from ppe_ingest.base.geometry import great_circle_deg

    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(30, 48, 380), rng.uniform(-120, -75, 380)
    d = great_circle_deg(lat[:, None], lon[:, None], lat[None], lon[None])
    field = np.linalg.cholesky(np.exp(-d / 8.0) + 1e-9 * np.eye(380)) @ rng.normal(size=380)
    obs = np.arange(80)
    mean, var = krige(lat[obs], lon[obs], field[obs], lat[80:], lon[80:])
    assert np.corrcoef(mean, field[80:])[0, 1] > 0.7
    inside = np.abs(field[80:] - mean) <= norm.ppf(0.95) * np.sqrt(var)
    assert 0.82 <= inside.mean() <= 0.98, inside.mean()


def test_kriging_keeps_the_estimates_noise_out_of_the_field_variance():
    """The same field seen through noisy local estimates (known error variances, as an observed
    site's posterior): the interval for the field itself covers about 90% when the noise is given;
    counted as part of the field (the old way) the intervals are wider and over-cover."""
    from scipy.stats import norm

    from esm_emu.inverse.identifiability import krige
    from ppe_ingest.base.geometry import great_circle_deg

    inside = {True: [], False: []}
    width = {True: [], False: []}
    for seed in range(4):
        rng = np.random.default_rng(10 + seed)
        lat, lon = rng.uniform(30, 48, 380), rng.uniform(-120, -75, 380)
        d = great_circle_deg(lat[:, None], lon[:, None], lat[None], lon[None])
        field = np.linalg.cholesky(np.exp(-d / 8.0) + 1e-9 * np.eye(380)) @ rng.normal(size=380)
        noise = rng.uniform(0.3, 1.0, 80)                 # error variance of each local estimate
        seen = field[:80] + np.sqrt(noise) * rng.normal(size=80)
        for given in (True, False):
            mean, var = krige(lat[:80], lon[:80], seen, lat[80:], lon[80:], noise=noise if given else None)
            inside[given].append(np.abs(field[80:] - mean) <= norm.ppf(0.95) * np.sqrt(var))
            width[given].append(np.sqrt(var).mean())
    cov = {k: np.concatenate(v).mean() for k, v in inside.items()}
    assert 0.85 <= cov[True] <= 0.95, cov
    assert cov[False] > cov[True] and np.mean(width[False]) > 1.1 * np.mean(width[True]), (cov, width)


def test_an_identified_parameter_moves_along_its_trade_off_when_its_partner_returns_to_the_prior():
    """Data that fix only a + b (an exact trade-off): when b, not identified, is pulled back toward
    the prior mean, a moves by the posterior covariance so that a + b, what the data say, is kept."""
    from esm_emu.inverse.uncertainty import along_trade_off

    J = np.array([[1.0, 1.0]])
    post = np.linalg.inv(12 * np.eye(2) + J.T @ J / 1e-4)          # uniform prior var 1/12, tiny noise
    u_loc = np.array([[0.30, 0.70], [0.55, 0.25]])
    cov = np.stack([post, post])
    ratio = np.tile(np.diag(post) * 12, (2, 1))                     # posterior/prior variance: ~0.5 each
    out = along_trade_off(u_loc, cov, ratio, np.array([False, True]))
    assert np.allclose(out[:, 1], u_loc[:, 1]), "the unidentified value itself is shrunk later, not here"
    shrunk_b = (1 - ratio[:, 1]) * u_loc[:, 1] + ratio[:, 1] * 0.5
    np.testing.assert_allclose(out[:, 0] + shrunk_b, u_loc.sum(1), atol=2e-3)
    assert np.allclose(along_trade_off(u_loc, cov, ratio, np.array([False, False])), u_loc)
