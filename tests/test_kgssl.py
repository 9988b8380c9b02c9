"""KGSSL inverse model: contrastive loss, masked pseudo-inverse supervision, parameter recovery."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from inverse_twin import PARAMS, make_twin

from esm_emu.inverse.inversion import ppe_samples
from esm_emu.inverse.kgssl import KGSSLConfig, KGSSLData, embed_entities, nt_xent, train_kgssl, windows
from esm_emu.inverse.problem import build_problem

torch.set_num_threads(1)


def test_nt_xent_rewards_matching_positives():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 8, generator=g)
    aligned = nt_xent(a, a + 0.01 * torch.randn(16, 8, generator=g), 0.1)
    shuffled = nt_xent(a, a[torch.randperm(16, generator=g)], 0.1)
    assert float(aligned) < 0.1 < float(shuffled)


def test_windows_pool_years_and_keep_gaps_as_nan():
    x = torch.arange(730.0).reshape(1, 730, 1)
    x[0, :5] = float("nan")
    w = windows(x, 365, 5)
    assert w.shape == (1, 2, 73, 1)
    assert torch.isnan(w[0, 0, 0, 0]) and float(w[0, 1, 0, 0]) == 365 + 2


@pytest.mark.statistical
def test_training_lowers_every_loss_and_the_mask_is_honoured():
    twin = make_twin()
    p = build_problem(twin["entities"], None, twin["forward"], twin["table"], PARAMS, ["QRUNOFF", "EFLX_LH_TOT"])
    f, y, u, _ = ppe_samples(p, twin["forward"], 6, seed=1)
    n = len(u)
    train = torch.arange(n) % 4 != 0  # a quarter of the samples are never supervised
    cfg = KGSSLConfig(window_days=180, pool_days=5, steps=100, batch=32, embedding=16, hidden=32)
    data = KGSSLData(f, y, u, train[:, None].float().expand(-1, len(PARAMS)), cfg)
    model, hist = train_kgssl(data, len(PARAMS), cfg, seed=0)
    assert np.mean(hist["loss"][-10:]) < np.mean(hist["loss"][:10])
    z, th, has = embed_entities(model, data)
    assert has.all() and z.shape == (n, 16)
    # the supervised pseudo-inverse loss falls as the head learns theta from the embedding
    assert np.mean(hist["inverse"][-10:]) < np.mean(hist["inverse"][:10])
    # with every mask off the pseudo-inverse loss is zero: unknown characteristics never supervise
    data0 = KGSSLData(f, y, u, torch.zeros(n, len(PARAMS)), KGSSLConfig(window_days=180, steps=2, batch=8))
    _, h0 = train_kgssl(data0, len(PARAMS), KGSSLConfig(window_days=180, steps=2, batch=8), seed=0)
    assert h0["inverse"] == [0.0, 0.0]
