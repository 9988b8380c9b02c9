"""Identifiability on toy problems with a known answer: the linearised posterior of a linear model."""
from __future__ import annotations

import numpy as np
import torch
from inverse_twin import LinearForward, toy_problem

from esm_emu.inverse.identifiability import assess
from esm_emu.inverse.uncertainty import posterior, unit_interval


def _toy(n=30, T=200, seed=0, noise=0.05):
    """p0 and p1 enter only as p0 + p1 (an exact trade-off); p2 is well constrained; p3 does nothing."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(size=(n, T)), rng.normal(size=(n, T))
    x = np.stack([a, a, c, np.zeros((n, T))], -1)
    true = rng.uniform(0.1, 0.9, (n, 4))
    obs = (x * true[:, None, :]).sum(-1) + noise * rng.normal(size=(n, T))
    return toy_problem(x, obs), true


def test_exact_trade_off_is_not_separately_identified():
    problem, true = _toy()
    ident = assess(problem, LinearForward(4), torch.as_tensor(true, dtype=torch.float32), np.ones(200, bool))
    d = ident.to_dict()
    assert d["p2"]["identified"] and d["p2"]["posterior_to_prior_variance"] < 0.01
    for p, q in (("p0", "p1"), ("p1", "p0")):  # each keeps half its prior variance, correlation -1
        assert not d[p]["identified"]
        assert 0.45 < d[p]["posterior_to_prior_variance"] < 0.55
        assert d[p]["posterior_correlation"][q] < -0.95 and q in d[p]["trades_off_with"]
    assert not d["p3"]["identified"] and d["p3"]["posterior_to_prior_variance"] > 0.99
    lines = "\n".join(ident.lines())
    assert "p0" in lines and "NOT identified" in lines and "trades off with p1" in lines


def test_unidentified_parameter_returns_to_its_prior_with_a_prior_wide_interval():
    """An optimiser that left p3 (no effect on the data) at a bound with no spread gets the middle of
    its range and the prior's own 90 % interval (5-95 % of the range: the uniform's, not a Gaussian's
    clipped 2.5-97.5 %); p2 keeps its estimate and a tight interval."""
    problem, true = _toy()
    est = true.copy()
    est[:, 3] = 1.0  # pinned at the upper bound
    ident = assess(problem, LinearForward(4), torch.as_tensor(est, dtype=torch.float32), np.ones(200, bool))
    post = posterior([est], problem.observed, ident.ratio)
    lo, hi = unit_interval(post.u, post.sd, 0.9)
    assert np.allclose(post.u[:, 3], 0.5, atol=0.01)
    assert np.allclose(lo[:, 3], 0.05, atol=0.005) and np.allclose(hi[:, 3], 0.95, atol=0.005)
    assert np.allclose(post.u[:, 2], true[:, 2], atol=0.02)
    assert np.all(hi[:, 2] - lo[:, 2] < 0.1)


def test_emulator_error_part_is_only_what_the_data_limit_does_not_explain():
    """Held-out PPE series inverted through the forward model: with a perfect forward model the
    error of p0 and p1 (an exact trade-off) is large but is all in the update's own posterior
    variance, so the emulator adds ~nothing (it was counted twice before); a forward model that is
    wrong (responses 30% off) adds a clear error on the parameter the data pin down."""
    from esm_emu.inverse.inversion import forward_parameter_error

    problem, _ = _toy()
    held, theta = _held_out()
    tm = np.ones(200, bool)
    perfect = forward_parameter_error(problem, LinearForward(4), held(1.0, 0.01), tm)
    raw_p0 = np.mean((0.5 - theta[:, 0]) ** 2)  # what p0's error is from the middle of the range
    assert perfect[0] < 0.2 * raw_p0 and perfect[1] < 0.2 * raw_p0 and perfect[2] < 1e-3
    wrong = forward_parameter_error(problem, LinearForward(4), held(1.3, 0.0), tm)
    assert wrong[2] > 10 * max(perfect[2], 1e-5)


def _held_out(n=40, T=200, seed=5):
    """Held-out PPE members of the toy (known theta) and a function giving their series, scaled by
    ``gain`` (a forward model that is that far off) with noise of std ``noise``."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(size=(n, T)), rng.normal(size=(n, T))
    x = np.stack([a, a, c, np.zeros((n, T))], -1)
    theta = rng.uniform(0.1, 0.9, (n, 4))
    clean = (x * theta[:, None, :]).sum(-1)

    def held(gain, noise):
        t32 = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
        resp = gain * clean + noise * rng.normal(size=(n, T))
        return {"forcing": t32(x), "static": torch.zeros(n, 0), "theta": t32(theta), "response": t32(resp[..., None])}

    return held, theta


def test_a_parameter_the_data_fix_is_not_identified_through_a_forward_model_that_cannot_recover_it():
    """p2 is pinned by the data (ratio < 0.01). Through a forward model whose held-out members'
    parameters come back right it stays identified; through one 30 % off (its held-out parameters
    wrong) the emulator's part joins the ratio, p2 is reported not identified, with both figures."""
    from dataclasses import replace

    from esm_emu.inverse.inversion import forward_parameter_error

    problem, true = _toy()
    ident = assess(problem, LinearForward(4), torch.as_tensor(true, dtype=torch.float32), np.ones(200, bool))
    held, _ = _held_out()
    tm = np.ones(200, bool)
    good = replace(ident, emulator_var=forward_parameter_error(problem, LinearForward(4), held(1.0, 0.01), tm))
    bad = replace(ident, emulator_var=forward_parameter_error(problem, LinearForward(4), held(1.3, 0.0), tm))
    assert good.to_dict()["p2"]["identified"]
    d = bad.to_dict()["p2"]
    assert d["posterior_to_prior_variance"] < 0.01, "the data alone still pin it"
    assert not d["identified"] and d["emulator_error_to_prior_variance"] > 0.1
    assert d["posterior_to_prior_variance_with_emulator_error"] > 0.1
    line = next(x for x in bad.lines() if x.strip().startswith("p2"))
    assert "NOT identified" in line and "+ emulator" in line


def test_the_emulator_error_is_measured_on_every_member_it_was_not_trained_on_and_a_small_wave_falls_back(
        tmp_path):
    """Validation and test members both measure the emulator's error (training members never do). A
    wave's own measure it where the calibration went only when there are enough of them to measure a
    variance: 4 (a 16-member wave) fall back to all the store's held-out members; 8 are used alone."""
    import xarray as xr

    from esm_emu.inverse.pipeline import MIN_HELD_OUT_MEMBERS, _held_out_members
    from ppe_ingest.store import MEMBER, SPLIT_MEMBER, TEST, TRAIN, VAL

    class Emulator:
        kind = "emulator"

    def store(n_wave_held):
        names = [f"LHC{i:04d}" for i in range(20)] + [f"WB{i:04d}" for i in range(16)]
        split = np.full(len(names), TRAIN, np.int8)
        split[[3, 7, 11]] = TEST                                   # the first PPE's
        split[[5, 13]] = VAL
        split[20:20 + n_wave_held] = TEST                          # the wave's, half of them validation
        split[20:20 + n_wave_held:2] = VAL
        ds = xr.Dataset({SPLIT_MEMBER: (MEMBER, split), "QRUNOFF": ((MEMBER, "time"), np.zeros((len(names), 4)))},
                        coords={MEMBER: names})
        path = tmp_path / f"store{n_wave_held}.nc"
        ds.to_netcdf(path)
        return path, names

    assert MIN_HELD_OUT_MEMBERS == 8
    path, names = store(4)
    _, held = _held_out_members(path, Emulator(), ["QRUNOFF"], prefix="WB")
    assert sorted(names[i] for i in held) == ["LHC0003", "LHC0005", "LHC0007", "LHC0011", "LHC0013",
                                              "WB0000", "WB0001", "WB0002", "WB0003"]
    path, names = store(8)
    _, held = _held_out_members(path, Emulator(), ["QRUNOFF"], prefix="WB")
    assert [names[i] for i in held] == [f"WB{i:04d}" for i in range(8)]
    _, held = _held_out_members(path, Emulator(), ["QRUNOFF"])           # the first inversion: all of them
    assert len(held) == 13


def test_the_emulator_part_weighs_held_out_series_as_the_observations_are_weighed():
    """An emulator error that mimics a shift of a weakly felt parameter (p1) drives a noise-free held-out
    inversion far; given the observed sites' error variance, the held-out series are trusted no more than
    the observations and the same error adds far less, down to nothing once it is lost in their noise."""
    from esm_emu.inverse.inversion import forward_parameter_error

    rng = np.random.default_rng(5)
    n, T = 40, 200
    a, b, c = rng.normal(size=(n, T)), rng.normal(size=(n, T)), rng.normal(size=(n, T))
    x = np.stack([a, 0.05 * b, c, np.zeros((n, T))], -1)              # p1 barely felt
    problem = toy_problem(x, (x * 0.5).sum(-1))
    theta = rng.uniform(0.1, 0.9, (n, 4))
    resp = (x * theta[:, None, :]).sum(-1) + 0.02 * b                 # the emulator's error looks like p1 + 0.4

    t32 = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
    held = {"forcing": t32(x), "static": torch.zeros(n, 0), "theta": t32(theta), "response": t32(resp[..., None])}
    tm = np.ones(T, bool)
    alone = forward_parameter_error(problem, LinearForward(4), held, tm)
    noisy = forward_parameter_error(problem, LinearForward(4), held, tm, np.array([0.05]))
    lost = forward_parameter_error(problem, LinearForward(4), held, tm, np.array([0.2]))
    assert alone[1] > 0.1
    assert noisy[1] < 0.25 * alone[1]
    assert lost[1] < 1e-3
    # observations exactly as noisy as the emulator's own error: weighed alike, that error is not counted twice
    own = np.array([np.mean((0.02 * b) ** 2)])
    np.testing.assert_allclose(forward_parameter_error(problem, LinearForward(4), held, tm, own), alone, rtol=0.05)
