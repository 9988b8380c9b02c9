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


def test_a_parameter_the_data_cannot_tell_holds_ninety_percent_of_prior_truths_not_ninety_five():
    """Truths drawn from the uniform prior; p1 has no effect on the data and p2 a weak one. The
    returned intervals are the posterior's on [0, 1]: p1's holds 90 % of the truths (a Gaussian
    with the prior's variance, clipped to the bounds, spans 2.5-97.5 % of the range and holds 95 %)."""
    rng = np.random.default_rng(11)
    n, T, P = 3000, 40, 3
    x = rng.normal(size=(n, T, P)) * np.array([1.0, 0.0, 0.15])
    true = rng.uniform(0, 1, (n, P))
    obs = (x * true[:, None]).sum(-1) + 0.5 * rng.normal(size=(n, T))
    est = true.copy()
    est[:, [0, 2]] = np.stack([np.linalg.lstsq(x[i][:, [0, 2]], obs[i], rcond=None)[0] for i in range(n)])
    est[:, 1] = rng.uniform(0, 1, n)  # wherever an optimiser left it
    est = np.clip(est, 0, 1)
    problem = toy_problem(x, obs)
    ident = assess(problem, LinearForward(P), torch.as_tensor(est, dtype=torch.float32), np.ones(T, bool))
    post = posterior([est], problem.observed, ident.ratio)
    lo, hi = unit_interval(post.u, post.sd, 0.9)
    cov = interval_inside(true, lo, hi).mean(0)
    assert abs(cov[1] - 0.90) < 0.02, cov
    assert np.median(hi[:, 1] - lo[:, 1]) > 0.88  # still prior-wide
    assert np.all((cov >= 0.85) & (cov <= 0.95)), cov


def test_an_estimate_at_a_bound_with_a_wide_spread_keeps_an_interval_that_reaches_into_the_range():
    """No distribution on [0, 1] has mean 0.0005 and sd 0.17: the interval is the Gaussian's truncated
    to the bounds there, holding the estimate, not a Beta collapsed onto the bound. A narrow spread
    gives the Gaussian's own interval, and the prior's variance at the middle the uniform's 5-95 %."""
    u = np.array([0.0005, 0.9995, 0.5, 0.5])
    sd = np.array([0.17, 0.17, 0.01, 12 ** -0.5])
    lo, hi = unit_interval(u, sd, 0.9)
    assert lo[0] <= u[0] and hi[0] > 0.25 and hi[1] >= u[1] and lo[1] < 0.75
    assert np.allclose([lo[2], hi[2]], [0.5 - 1.645 * 0.01, 0.5 + 1.645 * 0.01], atol=2e-4)
    assert np.allclose([lo[3], hi[3]], [0.05, 0.95], atol=1e-6)


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


def test_two_unidentified_parameters_that_trade_off_return_to_the_prior_together_and_their_intervals_cover():
    """Data that fix only a + b, and an estimate anywhere along that valley: returning a and b to the
    prior together keeps a + b and gives 90 % intervals that hold 90 % of the truths; returning each
    on its own ratio leaves the valley and holds ~81 %."""
    from scipy.stats import norm

    from esm_emu.inverse.identifiability import shrink_jointly, shrink_to_prior

    rng = np.random.default_rng(3)
    n, noise = 20000, 1e-3
    J = np.array([[1.0, 1.0]])
    C = np.linalg.inv(12 * np.eye(2) + J.T @ J / noise)
    truth = 0.5 + rng.normal(size=(n, 2)) / np.sqrt(12)
    y = truth.sum(1) + np.sqrt(noise) * rng.normal(size=n)
    slide = rng.uniform(-0.4, 0.4, n)
    u = np.stack([y / 2 + slide, y / 2 - slide], 1)            # the optimiser left it somewhere in the valley
    joint, A = shrink_jointly(u, np.broadcast_to(C, (n, 2, 2)))
    alone = shrink_to_prior(u, np.diag(C) * 12)
    np.testing.assert_allclose(joint.sum(1), u.sum(1), atol=0.01)
    assert np.abs(alone.sum(1) - u.sum(1)).mean() > 0.05
    half = norm.ppf(0.95) * np.sqrt(np.diag(C))
    cov_joint = (np.abs(joint - truth) <= half).mean(0)
    cov_alone = (np.abs(alone - truth) <= half).mean(0)
    assert np.all((cov_joint > 0.88) & (cov_joint < 0.92)), cov_joint
    assert np.all(cov_alone < 0.85), cov_alone
    # without a trade-off (diagonal covariance) the joint step is each parameter's own
    D = np.diag([0.02, 0.06])
    np.testing.assert_allclose(shrink_jointly(u[:5], D)[0], shrink_to_prior(u[:5], np.diag(D) * 12))


def test_the_map_keeps_what_the_data_fix_of_two_unidentified_parameters_everywhere():
    """posterior_refined with a and b both unidentified and the sites' posterior covariance: at observed
    gridcells a + b stays as the local fit left it, and it sits on the typical valley's nearest-to-prior
    point at unobserved ones; intervals stay prior-wide at most."""
    from esm_emu.inverse.uncertainty import posterior_refined

    rng = np.random.default_rng(5)
    N, n_obs = 40, 15
    obs = np.zeros(N, bool)
    obs[:n_obs] = True
    J = np.array([[1.0, 1.0]])
    C = np.linalg.inv(12 * np.eye(2) + J.T @ J / 1e-4)
    u_loc = np.stack([rng.uniform(0.5, 1.0, n_obs), rng.uniform(0.3, 0.6, n_obs)], 1)
    u_hat = np.full((N, 2), 0.5)
    u_hat[obs] = u_loc
    cov_prior = np.broadcast_to(C, (n_obs, 2, 2)).copy()
    ratio = np.tile(np.diag(C) * 12, (n_obs, 1))
    lat, lon = rng.uniform(30, 45, N), rng.uniform(-110, -80, N)
    post = posterior_refined(u_hat, np.full((N, 2), 1e-4), u_hat.copy(), obs, u_loc, cov_prior * 0.5, ratio,
                             np.array([False, False]), lat, lon, cov_prior=cov_prior)
    np.testing.assert_allclose(post.u[obs].sum(1), u_loc.sum(1), atol=0.01)
    np.testing.assert_allclose(post.u[obs, 0], post.u[obs, 1], atol=0.01)   # the valley's point nearest the middle
    assert np.all(post.sd <= np.sqrt(1 / 12) + 1e-12)
    old = posterior_refined(u_hat, np.full((N, 2), 1e-4), u_hat.copy(), obs, u_loc, cov_prior * 0.5, ratio,
                            np.array([False, False]), lat, lon)
    assert np.abs(old.u[obs].sum(1) - u_loc.sum(1)).mean() > 0.05


def _sites_of_two_parameters(seed: int = 7, N: int = 40, n_obs: int = 15):
    """(observed, lat, lon, u_loc, u_hat) for a map of two parameters: a high, b low at the observed gridcells."""
    rng = np.random.default_rng(seed)
    obs = np.zeros(N, bool)
    obs[:n_obs] = True
    lat, lon = rng.uniform(30, 45, N), rng.uniform(-110, -80, N)
    u_loc = np.stack([rng.uniform(0.6, 1.0, n_obs), rng.uniform(0.0, 0.3, n_obs)], 1)
    u_hat = np.full((N, 2), 0.5)
    u_hat[obs] = u_loc
    return obs, lat, lon, u_loc, u_hat


def _refine(sites, C, identified, emu=None, loc_share=1.0):
    """posterior_refined on those sites with the same posterior covariance C at every observed gridcell
    (the local fit's: ``loc_share`` x C)."""
    from esm_emu.inverse.uncertainty import posterior_refined

    obs, lat, lon, u_loc, u_hat = sites
    n_obs = int(obs.sum())
    cov_prior = np.broadcast_to(C, (n_obs, 2, 2)).copy()
    ratio = np.tile(np.diag(C) * 12, (n_obs, 1))
    return posterior_refined(u_hat, np.full(u_hat.shape, 1e-4), u_hat.copy(), obs, u_loc, cov_prior * loc_share,
                             ratio, np.array(identified), lat, lon, emu, cov_prior=cov_prior)


def test_an_unidentified_parameter_the_emulator_cannot_recover_returns_further_to_the_prior():
    """The held-out members' parameter error (emulator_var) joins an unidentified parameter's posterior
    variance before it returns to the prior: with no trade-off it moves further toward the middle, by
    the grown ratio; with an exact trade-off the combination the data fix is still kept."""
    sites = _sites_of_two_parameters()
    obs, u_loc = sites[0], sites[3]
    alone = np.diag([0.001, 0.3 / 12])                                  # b unidentified (ratio 0.3), no partner
    before = _refine(sites, alone, [True, False], loc_share=0.5)
    after = _refine(sites, alone, [True, False], np.array([0.0, 0.03]), loc_share=0.5)
    grown = (0.3 / 12 + 0.03) * 12
    np.testing.assert_allclose(after.u[obs, 1] - 0.5, (1 - grown) / (1 - 0.3) * (before.u[obs, 1] - 0.5), atol=1e-6)
    np.testing.assert_allclose(after.u[obs, 0], before.u[obs, 0], atol=1e-6)
    J = np.array([[1.0, 1.0]])
    pair = np.linalg.inv(12 * np.eye(2) + J.T @ J / 1e-3)               # a + b fixed, each ratio ~0.5
    kept = _refine(sites, pair, [False, False], np.array([0.02, 0.02]), loc_share=0.5)
    np.testing.assert_allclose(kept.u[obs].sum(1), u_loc.sum(1), atol=0.03)
    assert np.all(kept.sd <= np.sqrt(1 / 12) + 1e-12) and np.all(after.sd <= np.sqrt(1 / 12) + 1e-12)


def test_an_identified_partner_follows_the_unidentified_one_as_far_as_the_emulator_error_returns_it():
    """a identified, b not, the data fixing mostly a + b: when the emulator's parameter error sends b
    further back to the prior, a moves with it by the same amount, so a + b, what the data say, is kept."""
    sites = _sites_of_two_parameters()
    obs, u_loc = sites[0], sites[3]
    J, w = np.array([[1.0, 1.0], [1.0, 0.0]]), np.diag([1 / 1e-3, 1 / 0.05])
    C = np.linalg.inv(12 * np.eye(2) + J.T @ w @ J)                    # correlation -0.98
    plain = _refine(sites, C, [True, False])
    grown = _refine(sites, C, [True, False], np.array([0.0, 0.03]))
    assert np.abs(grown.u[obs, 1] - 0.5).mean() < 0.6 * np.abs(plain.u[obs, 1] - 0.5).mean()
    np.testing.assert_allclose(grown.u[obs].sum(1), u_loc.sum(1), atol=0.02)
