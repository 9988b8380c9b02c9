"""The exact ARD GP fitted on many outputs at once (one batched problem): the closed-form gradient is
the marginal likelihood's, the batched L-BFGS reaches the optimum a reference optimiser finds, outputs
fitted together are fitted as if alone, and the memory bound and the output scale change nothing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from esm_emu.models.gp import ExactGP, _kernel, _sqdist


def _data(n=50, p=3, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, p, generator=g, dtype=torch.float64) * 3.4 - 1.7
    f = torch.stack([torch.sin(1.5 * x[:, 0]) + 0.3 * x[:, 1] ** 2, torch.cos(x[:, 1]) * x[:, 2],
                     x[:, 0] * x[:, 2], torch.exp(0.4 * x[:, 1])], 1)[:, :r]
    return x, f + 0.05 * torch.randn(n, r, generator=g, dtype=torch.float64)


def _nll_autograd(gp, x, y, z, beta):
    """The per-point negative log marginal likelihood written directly, differentiated by autograd."""
    n, p = x.shape
    k = torch.exp(z[:, p])[:, None, None] * _kernel(_sqdist(x, x, torch.exp(z[:, :p])), gp.matern)
    k = k + (torch.exp(z[:, p + 1]) + 1e-6)[:, None, None] * torch.eye(n, dtype=x.dtype)
    res = y - beta @ gp._design(x).T
    chol = torch.linalg.cholesky(k)
    a = torch.cholesky_solve(res.unsqueeze(-1), chol).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return (0.5 * (res * a).sum(-1) + 0.5 * logdet) / n + 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
@pytest.mark.parametrize("mean", ["constant", "linear"])
def test_closed_form_gradient_is_the_marginal_likelihood_gradient(kernel, mean):
    x, y = _data()
    y = y.T.contiguous()
    gp = ExactGP(3, 4, kernel=kernel, mean=mean)
    z = torch.tensor([[0.3, -0.2, 0.8, 0.1, -3.0], [1.0, 0.5, -0.5, -0.4, -5.0],
                      [-0.5, 2.0, 0.0, 0.6, -2.0], [0.2, 0.2, 0.2, 0.0, -4.0]], dtype=torch.float64)
    nll, grad, beta = gp._nll_grad(x, gp._design(x), y, z)
    zz = z.clone().requires_grad_()
    ref = _nll_autograd(gp, x, y, zz, beta)
    ref.sum().backward()
    np.testing.assert_allclose(nll.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grad.numpy(), zz.grad.numpy(), rtol=1e-7, atol=1e-9)
    # the mean coefficients are the likelihood's best for these hyperparameters: moving them costs
    for step in (1e-2, -1e-2):
        shifted = _nll_autograd(gp, x, y, z, beta + step)
        assert (shifted > nll).all()


def test_batched_fit_reaches_the_optimum_of_a_reference_optimiser():
    """scipy's L-BFGS-B on each output's likelihood alone, from the same start: the batched fit is as good."""
    from scipy.optimize import minimize

    x, y = _data(n=60)
    gp = ExactGP(3, 4, kernel="rbf", mean="constant", restarts=1, fit_steps=200)
    nll = np.array(gp.fit(x, y)["nll"])
    ys = ((y - y.mean(0)) / y.std(0, unbiased=False)).T.contiguous()
    hx = gp._design(x)
    bounds = [(-3.0, 8.0)] * 3 + [(-12.0, 12.0), (math.log(1e-8), 2.0)]
    for r in range(4):
        def fg(v, r=r):
            f, g, _ = gp._nll_grad(x, hx, ys[r:r + 1], torch.tensor(v[None], dtype=torch.float64))
            return float(f[0]), g[0].numpy()
        z0 = np.array([math.log(3.0)] * 3 + [0.0, math.log(1e-2)])
        best = minimize(fg, z0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 500})
        ref = best.fun + math.log(float(y[:, r].std(unbiased=False)))  # the NLL of y itself, not of y/std
        assert nll[r] <= ref + 2e-3, (r, nll[r], ref)


def test_outputs_fitted_together_as_if_each_alone():
    x, y = _data(n=45, r=4)
    together = ExactGP(3, 4, kernel="matern52", mean="linear", restarts=1, fit_steps=100)
    nll = together.fit(x, y)["nll"]
    xt = torch.rand(20, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3 - 1.5
    m_all, v_all = together.predict(xt)
    for r in range(4):
        alone = ExactGP(3, 1, kernel="matern52", mean="linear", restarts=1, fit_steps=100)
        nll_r = alone.fit(x, y[:, r:r + 1])["nll"][0]
        assert abs(nll_r - nll[r]) < 1e-4, (r, nll_r, nll[r])
        m, v = alone.predict(xt)
        np.testing.assert_allclose(m[:, 0].numpy(), m_all[:, r].numpy(), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(v[:, 0].numpy(), v_all[:, r].numpy(), rtol=2e-2, atol=1e-6)


def test_memory_bound_and_output_scale_change_nothing():
    """One row per chunk (a tiny memory bound) fits what one chunk fits; y * 1000 + 5 gives the mean
    * 1000 + 5 and the variance * 1e6 (each output is fitted standardised); a constant output next
    to the others spoils nothing."""
    x, y = _data(n=40, r=3)
    xt = torch.rand(15, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3 - 1.5
    base = ExactGP(3, 3, kernel="rbf", mean="constant", restarts=2, fit_steps=80)
    nll = base.fit(x, y)["nll"]
    m0, v0 = base.predict(xt)
    small = ExactGP(3, 3, kernel="rbf", mean="constant", restarts=2, fit_steps=80)
    nll_s = small.fit(x, y, memory_mb=1e-3)["nll"]
    np.testing.assert_allclose(nll_s, nll, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(small.predict(xt)[0].numpy(), m0.numpy(), rtol=1e-5, atol=1e-6)

    scaled = ExactGP(3, 3, kernel="rbf", mean="constant", restarts=2, fit_steps=80)
    nll_k = scaled.fit(x, y * 1000.0 + 5.0)["nll"]
    np.testing.assert_allclose(np.array(nll_k) - math.log(1000.0), nll, rtol=1e-6, atol=1e-6)
    m1, v1 = scaled.predict(xt)
    # the same optimum up to rounding along flat directions of the likelihood (5e-5 of the output scale)
    np.testing.assert_allclose(m1.numpy(), m0.numpy() * 1000.0 + 5.0, rtol=0, atol=0.05)
    np.testing.assert_allclose(v1.numpy(), v0.numpy() * 1e6, rtol=2e-2)

    with_const = ExactGP(3, 4, kernel="rbf", mean="constant", restarts=2, fit_steps=80)
    with_const.fit(x, torch.cat([y, torch.full((40, 1), 7.0, dtype=torch.float64)], 1))
    m2, v2 = with_const.predict(xt)
    assert torch.isfinite(m2).all() and torch.isfinite(v2).all()
    np.testing.assert_allclose(m2[:, 3].numpy(), 7.0, atol=1e-6)
    np.testing.assert_allclose(m2[:, :3].numpy(), m0.numpy(), rtol=1e-4, atol=1e-4)


def test_predict_in_output_chunks_is_the_same_prediction():
    """predict takes outputs a few at a time (bounded memory for many outputs x many points): the
    chunked mean and variance are those of all outputs at once."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(80, 3, generator=g, dtype=torch.float64)
    y = torch.stack([torch.sin(3 * x[:, 0] + k) + 0.1 * x[:, 1] * k for k in range(7)], 1)
    gp = ExactGP(3, 7, restarts=1, fit_steps=30)
    gp.fit(x, y)
    xt = torch.rand(50, 3, generator=g, dtype=torch.float64)
    m_all, v_all = gp.predict(xt)
    gp.predict_elements = 50 * 80 * 2  # two outputs per chunk
    m, v = gp.predict(xt)
    torch.testing.assert_close(m, m_all, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v, v_all, rtol=1e-12, atol=1e-12)
