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
