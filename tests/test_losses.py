"""The training losses score what users score: NSE* per series, runoff in a blend of spaces, masks."""
import numpy as np
import torch

from esm_emu.emulator import Emulator
from esm_emu.normalize import Normalizer, Scaler
from esm_emu.training.config import MODEL
from esm_emu.training.losses import SequenceLoss, series_scales
from ppe_ingest.base.config import validate


def _emu(log=(False,), names=("EFLX_LH_TOT",), const=None):
    torch.manual_seed(0)
    n = len(names)
    norm = Normalizer(Scaler(np.zeros(1), np.ones(1), [False], 1e-6), Scaler(np.zeros(1), np.ones(1), [False], 1e-6),
                      Scaler(np.zeros(1), np.ones(1), [False], 1e-6), Scaler(np.zeros(n), np.ones(n), list(log), 1e-8))
    emu = Emulator.build(validate({"name": "lstm", "hidden": 4, "embed": 2}, MODEL), norm, ["RAIN"], ["PCT_SAND"],
                         ["fff"], list(names))
    if const is not None:  # a model that predicts a constant (zero head weights, bias = const)
        with torch.no_grad():
            emu.core.head.weight.zero_()
            emu.core.head.bias.fill_(const)
    return emu


def _series(rng, B=3, T=50):
    # three series with the same mean (2.0) and very different variances
    z = rng.standard_normal((B, T, 1))
    z = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
    return (2.0 + z * np.array([0.01, 1.0, 30.0])[:, None, None]).astype(np.float32)


def test_nse_star_weighs_every_series_alike_and_ignores_masked_values():
    rng = np.random.default_rng(0)
    y = _series(rng)
    y[0, 5:9] = np.nan  # a gap
    y[2, 40:] = np.nan  # a held-out year inside the window
    mask = np.isfinite(y)
    # the weights come from the finite days only; eps ~ 0 makes the loss exactly 1 - NSE per series
    w = series_scales(y[None], Scaler(np.zeros(1), np.ones(1), [False], 1e-8), np.ones(1),
                      np.arange(y.shape[1]), eps=1e-9)[0]
    emu = _emu(const=2.0)  # predicting each series' mean: NSE = 0 everywhere, so the loss is 1
    loss = SequenceLoss(emu, "nse", phys_std=np.ones(1))
    args = (torch.rand(3, 50, 1), torch.rand(3, 1), torch.rand(3, 1))
    sse, n = loss(*args, torch.from_numpy(np.nan_to_num(y, nan=0.0)), torch.from_numpy(mask), torch.from_numpy(w))
    assert n.item() == mask.sum()
    np.testing.assert_allclose(sse.item() / n.item(), 1.0, rtol=1e-3)  # not dominated by the wettest series
    plain, _ = SequenceLoss(emu, "physical", phys_std=np.ones(1))(*args, torch.from_numpy(np.nan_to_num(y)),
                                                                  torch.from_numpy(mask))
    assert plain.item() / n.item() > 100  # without NSE* the variance-30 series dominates
    # masked values never count, whatever they hold, and leave the gradients finite
    y2 = np.where(mask, y, 1e30).astype(np.float32)
    y2[0, 5] = np.nan
    emu2 = _emu()
    loss2 = SequenceLoss(emu2, "nse", phys_std=np.ones(1))
    a, _ = loss2(*args, torch.from_numpy(np.nan_to_num(y)), torch.from_numpy(mask), torch.from_numpy(w))
    b, _ = loss2(*args, torch.from_numpy(y2), torch.from_numpy(mask), torch.from_numpy(w))
    assert torch.equal(a, b)
    b.sum().backward()
    grads = [p.grad for p in emu2.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_series_scales_fall_back_for_series_without_data():
    y = np.full((1, 2, 10, 1), np.nan, np.float32)
    y[0, 0] = np.arange(10)[:, None]
    w = series_scales(y, Scaler(np.zeros(1), np.ones(1), [False], 1e-8), np.ones(1), np.arange(10))
    assert np.isfinite(w).all() and w[0, 1, 0, 0] == w[0, 0, 0, 0]  # the empty series gets the median weight


def test_runoff_is_scored_in_a_blend_of_physical_and_log_space():
    emu = _emu(log=(True, False), names=("QRUNOFF", "EFLX_LH_TOT"))
    w = {s: SequenceLoss(emu, "nse", runoff_space=s).spaces().numpy() for s in ("blend", "physical", "log")}
    np.testing.assert_array_equal(w["blend"], [[0.5, 1.0], [0.5, 0.0]])  # rows: physical, log/normalised
    np.testing.assert_array_equal(w["physical"], [[1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(w["log"], [[0.0, 1.0], [1.0, 0.0]])
    # a tenfold error on a flow 1000x below the typical one: invisible in physical units, counted in log space
    args = (torch.rand(1, 4, 1), torch.rand(1, 1), torch.rand(1, 1))
    with torch.no_grad():
        pred = emu.norm.response.inverse(emu.forward_normalized(emu.norm.forcing(args[0]),
                                                                emu.conditioning(args[1], args[2]))[0])
    std = np.array([float(pred[0, 1, 0]) * 1e3, 1.0])
    mask = torch.zeros(1, 4, 2, dtype=torch.bool)
    mask[0, 1, 0] = True
    low = pred.clone()
    low[0, 1, 0] = pred[0, 1, 0] * 10
    blend, _ = SequenceLoss(emu, "nse", phys_std=std, runoff_space="blend")(*args, low, mask)
    phys, _ = SequenceLoss(emu, "nse", phys_std=std, runoff_space="physical")(*args, low, mask)
    assert phys[0] < 1e-3 and abs(blend[0].item() - 0.5 * np.log(10) ** 2) < 0.01


def test_runoff_components_share_one_response_weight():
    n = Normalizer(Scaler(np.zeros(1), np.ones(1), [False], 1e-6), Scaler(np.zeros(1), np.ones(1), [False], 1e-6),
                   Scaler(np.zeros(1), np.ones(1), [False], 1e-6),
                   Scaler([-12.0, -11.0, 0.0], [2.0, 1.0, 1.0], [True, True, False], 1e-8))
    emu = Emulator.build(validate({"name": "lstm", "hidden": 4, "embed": 2, "runoff": "components"}, MODEL), n,
                         ["RAIN"], ["PCT_SAND"], ["fff"], ["QRUNOFF", "EFLX_LH_TOT"])
    sc = Scaler([-11.5], [1.5], [True], 1e-8)
    loss = SequenceLoss(emu, "both", phys_std=np.ones(4), score_scaler=sc)
    assert loss.scored_names == ["QOVER", "QDRAI", "EFLX_LH_TOT", "QRUNOFF"]
    w = loss.var_weight.numpy()
    np.testing.assert_allclose(w / w[2], [0.5, 0.5, 1.0, 1.0])  # QOVER + QDRAI weigh one response
    target = torch.rand(2, 6, 3) * torch.tensor([1e-5, 1e-5, 50.0])
    mask = torch.ones(2, 6, 3, dtype=torch.bool)
    mask[0, :3, 0] = False  # a QOVER gap: the QRUNOFF sum is not scored there either
    sse, cnt = loss(torch.rand(2, 6, 1), torch.rand(2, 1), torch.rand(2, 1), target, mask)
    assert cnt.tolist() == [9, 12, 12, 9] and torch.isfinite(sse).all()
