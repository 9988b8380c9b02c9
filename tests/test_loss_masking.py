"""Masked (NaN) targets must not poison the gradients: held-out years and gaps are NaN in windows."""
import numpy as np
import torch

from esm_emu.emulator import Emulator
from esm_emu.normalize import Normalizer, Scaler
from esm_emu.training.config import MODEL
from esm_emu.training.loop import SequenceLoss
from ppe_ingest.base.config import validate


def test_nan_targets_outside_the_mask_leave_gradients_finite():
    torch.manual_seed(0)
    norm = Normalizer(Scaler(np.zeros(2), np.ones(2), [False] * 2, 1e-6),
                      Scaler(np.zeros(1), np.ones(1), [False], 1e-6),
                      Scaler(np.zeros(1), np.ones(1), [False], 1e-6),
                      Scaler(np.zeros(2), np.ones(2), [True, False], 1e-8))
    emu = Emulator.build(validate({"name": "lstm", "hidden": 8, "embed": 4}, MODEL), norm, ["RAIN", "TBOT"],
                         ["PCT_SAND"], ["fff"], ["QRUNOFF", "EFLX_LH_TOT"])
    loss = SequenceLoss(emu)
    forcing, static, theta = torch.rand(3, 20, 2), torch.rand(3, 1), torch.rand(3, 1)
    target = torch.rand(3, 20, 2)
    target[:, 10:] = float("nan")  # a held-out year inside the window
    mask = torch.isfinite(target)
    sse, n = loss(forcing, static, theta, target, mask)
    (sse.sum() / n.sum()).backward()
    grads = [p.grad for p in emu.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(sse).all() and n.sum() == 3 * 10 * 2


def test_inverse_scaling_of_large_untransformed_variables_has_finite_gradients():
    # TWS (~600 mm) is not log-transformed: the inverse must not evaluate exp(600) on it
    sc = Scaler(np.array([-12.0, 600.0]), np.array([2.0, 250.0]), [True, False], 1e-8)
    z = torch.zeros(4, 2, requires_grad=True)
    sc.inverse(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    np.testing.assert_allclose(sc.inverse(sc(torch.tensor([[1e-5, 650.0]]))).detach().numpy(), [[1e-5, 650.0]],
                               rtol=1e-5)
