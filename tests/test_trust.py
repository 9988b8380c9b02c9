"""The trust region: parameter sets far from every PPE member, or where an emulator ensemble
disagrees, are penalised, and dPL stays where the forward model was trained."""
from __future__ import annotations

import numpy as np
import torch
from inverse_twin import LinearForward, toy_problem

from esm_emu.inverse.dpl import DPLConfig, predict, train_dpl
from esm_emu.inverse.trust import TrustRegion, spread_method

DESIGN = np.random.default_rng(0).uniform(0, 0.5, (40, 2))  # the PPE covered the lower-left quarter only


def test_design_penalty_is_zero_among_members_and_grows_away_from_them():
    tr = TrustRegion.from_design(DESIGN)
    inside = torch.as_tensor(DESIGN[:5], dtype=torch.float32)
    assert float(tr.design_penalty(inside)) == 0.0
    corner = torch.tensor([[1.0, 1.0]], requires_grad=True)
    far = tr.design_penalty(corner)
    assert float(far.detach()) > 1.0 and float(tr.design_penalty(torch.tensor([[0.7, 0.7]]))) < float(far.detach())
    far.backward()
    assert (corner.grad > 0).all()  # descending the penalty moves the set back toward the design
    assert tr.outside(np.array([[1.0, 1.0], [0.25, 0.25]])).tolist() == [True, False]
    assert TrustRegion.from_design(None).design_penalty(corner).item() == 0.0


def _problem(n=12, T=60):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 1.5, (n, T, 2))
    obs = x.sum(-1)  # the data ask for theta = (1, 1): a corner the design never visited
    return toy_problem(x, obs, attrs=rng.normal(size=(n, 2)))


def _fit(trust, forward=None):
    problem = _problem()
    net, _ = train_dpl(problem, forward or LinearForward(2), DPLConfig(steps=120, lr=0.03, warmup_days=0,
                                                                        dropout=0.0), seed=0, trust=trust)
    return predict(net, problem).numpy()


def test_dpl_stays_in_the_design_when_the_data_pull_it_out():
    free = _fit(None)
    assert free.min() > 0.9  # without the trust region the inversion goes to the corner
    tr = TrustRegion.from_design(DESIGN, design_weight=10.0)
    held = _fit(tr)
    d = torch.cdist(torch.as_tensor(held, dtype=torch.float32), tr.design_unit).min(1).values
    assert float(d.max()) < 1.5 * tr.d_ref  # and with it stays near the members


def test_ensemble_disagreement_is_penalised_when_the_forward_model_has_a_spread():
    """A forward model whose ensemble disagrees more the larger p1 is: with the spread term the
    inversion gives up part of the fit to keep p1 low."""
    fwd = LinearForward(2, spread=lambda th: 2.0 * th[:, 1] ** 2)
    assert spread_method(fwd) is not None and spread_method(LinearForward(2)) is None
    free = _fit(TrustRegion.from_design(None, spread_weight=0.0), fwd)
    held = _fit(TrustRegion.from_design(None, spread_weight=1.0), fwd)
    assert held[:, 1].mean() < free[:, 1].mean() - 0.1
