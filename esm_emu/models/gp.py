"""Gaussian-process emulator (`model.name: gp`): an exact GP per output in plain torch, ARD kernel.

Why an exact GP in torch and not GPyTorch: a summary PPE has a few hundred members (the CLM5 PPE:
500), so the N x N Cholesky costs milliseconds and needs no approximation, conjugate gradients or
inducing points, which are what GPyTorch adds. Plain torch keeps the model a small `nn.Module`
with no extra dependency, differentiable in theta (the inverse and history matching use the
gradient) and scriptable by `esm_emu.export` (TorchScript) like the other kinds.

Model, per output r (inputs and outputs as normalised by the emulator's scalers):
``y = m_r(x) + f_r(x) + e``, ``f_r ~ GP(0, sf2_r k(x, x'; ls_r))``, ``e ~ N(0, sn2_r)``, with
`k` Matern-5/2 (default) or squared-exponential on ARD distances (one length scale per parameter
and output) and `m_r` a constant or linear mean. Hyperparameters (log length scales, log signal
and noise variances, mean coefficients) maximise the log marginal likelihood by Adam from
`restarts` random starts; the best start is kept per output. Outputs are fitted in chunks so
that many outputs (148 PFT x biome means) stay within memory.

The fitted state (training inputs and targets, hyperparameters) is saved as buffers; the
Cholesky factor and the weights alpha = K^-1 (y - m) are recomputed after loading, so a
checkpoint holds O(N (P + R)) numbers, not R N x N matrices.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

_JITTER = 1e-6
_FITTED = ("x_train", "y_train", "log_ls", "log_sf2", "log_sn2", "mean_w", "mean_b")


def _sqdist(a: torch.Tensor, b: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
    """Squared ARD distances: a (N,P), b (M,P), ls (R,P) -> (R,N,M)."""
    a = a.unsqueeze(0) / ls.unsqueeze(1)
    b = b.unsqueeze(0) / ls.unsqueeze(1)
    d2 = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * a @ b.transpose(-1, -2)
    return d2.clamp_min(0.0)


def _kernel(d2: torch.Tensor, matern: bool) -> torch.Tensor:
    if matern:
        r = torch.sqrt(d2 + 1e-12) * math.sqrt(5.0)
        return (1.0 + r + r * r / 3.0) * torch.exp(-r)
    return torch.exp(-0.5 * d2)


@register_model("gp")
class ExactGP(nn.Module):
    """Independent exact GPs x (B,P) -> mean (B,R); `predict` gives mean and variance (normalised units)."""

    tabular = True
    fits = True  # fitted by `fit` (marginal likelihood), not by the SGD loop

    def __init__(self, n_param: int, n_response: int, kernel: str = "matern52", mean: str = "linear",
                 restarts: int = 3, fit_steps: int = 300, lr: float = 0.1, seed: int = 0):
        super().__init__()
        if kernel not in ("matern52", "rbf"):
            raise ValueError(f"kernel must be matern52 or rbf, got {kernel!r}")
        self.matern = kernel == "matern52"
        self.linear_mean = mean == "linear"
        self.restarts, self.fit_steps, self.lr, self.seed = restarts, fit_steps, lr, seed
        self.n_param, self.n_response = n_param, n_response
        f8 = torch.float64
        self.register_buffer("x_train", torch.zeros(0, n_param, dtype=f8))
        self.register_buffer("y_train", torch.zeros(0, n_response, dtype=f8))
        self.register_buffer("log_ls", torch.zeros(n_response, n_param, dtype=f8))
        self.register_buffer("log_sf2", torch.zeros(n_response, dtype=f8))
        self.register_buffer("log_sn2", torch.full((n_response,), -4.0, dtype=f8))
        self.register_buffer("mean_w", torch.zeros(n_response, n_param, dtype=f8))
        self.register_buffer("mean_b", torch.zeros(n_response, dtype=f8))
        self.register_buffer("chol", torch.zeros(n_response, 0, 0, dtype=f8), persistent=False)
        self.register_buffer("alpha", torch.zeros(n_response, 0, dtype=f8), persistent=False)

    @classmethod
    def from_config(cls, cfg, dims):
        return cls(dims["n_param"], dims["n_response"], kernel=cfg.get("kernel", "matern52"),
                   mean=cfg.get("mean", "linear"), restarts=cfg.get("restarts", 3),
                   fit_steps=cfg.get("fit_steps", 300), seed=cfg.get("seed", 0))

    # -- fitting ---------------------------------------------------------------------------
    def _nll(self, x, y, log_ls, log_sf2, log_sn2, w, b):
        """Mean negative log marginal likelihood per point, for each (batch) output: (S,)."""
        n = x.shape[0]
        k = torch.exp(log_sf2)[:, None, None] * _kernel(_sqdist(x, x, torch.exp(log_ls)), self.matern)
        k = k + (torch.exp(log_sn2) + _JITTER)[:, None, None] * torch.eye(n, dtype=x.dtype)
        r = y - (x @ w.T + b).T if self.linear_mean else y - b[:, None]
        chol = torch.linalg.cholesky(k)
        a = torch.cholesky_solve(r.unsqueeze(-1), chol).squeeze(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return (0.5 * (r * a).sum(-1) + 0.5 * logdet) / n + 0.5 * math.log(2 * math.pi)

    def fit(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 8) -> dict:
        """Fit each output's hyperparameters to x (N,P), y (N,R) by marginal likelihood; returns NLL per output."""
        x, y = x.detach().double(), y.detach().double()
        n, p = x.shape
        g = torch.Generator().manual_seed(self.seed)
        nll_best = torch.empty(y.shape[1], dtype=torch.float64)
        for lo in range(0, y.shape[1], chunk):
            cols = slice(lo, min(lo + chunk, y.shape[1]))
            yc = y[:, cols].T  # (C,N)
            c, s = yc.shape[0], self.restarts
            yb = yc.repeat(s, 1)  # (S*C, N), restart-major
            log_ls = (math.log(1.0) + math.log(20.0) * torch.rand(s * c, p, generator=g, dtype=torch.float64))
            log_ls[:c] = math.log(3.0)  # the first start: every length scale ~ the design's spread
            params = [log_ls.requires_grad_(),
                      torch.zeros(s * c, dtype=torch.float64).requires_grad_(),
                      torch.full((s * c,), math.log(1e-2), dtype=torch.float64).requires_grad_(),
                      torch.zeros(s * c, p, dtype=torch.float64).requires_grad_(),
                      torch.zeros(s * c, dtype=torch.float64).requires_grad_()]
            opt = torch.optim.Adam(params, lr=self.lr)
            for _ in range(self.fit_steps):
                opt.zero_grad()
                loss = self._nll(x, yb, *params)
                loss.sum().backward()
                opt.step()
                with torch.no_grad():
                    params[0].clamp_(-3.0, 8.0)
                    params[2].clamp_(math.log(1e-8), 2.0)
            with torch.no_grad():
                final = self._nll(x, yb, *params).reshape(s, c)
                final = torch.where(torch.isfinite(final), final, torch.full_like(final, math.inf))
                best = final.argmin(0)
                pick = best * c + torch.arange(c)
                nll_best[cols] = final.min(0).values
                self.log_ls[cols] = params[0][pick]
                self.log_sf2[cols] = params[1][pick]
                self.log_sn2[cols] = params[2][pick]
                self.mean_w[cols] = params[3][pick] if self.linear_mean else 0.0
                self.mean_b[cols] = params[4][pick]
        self.x_train = x.clone()
        self.y_train = y.clone()
        self._refresh()
        return {"nll": nll_best.tolist()}

    @torch.no_grad()
    def _refresh(self) -> None:
        """Cholesky factors and alpha from the fitted state (after `fit` and after loading)."""
        x, n = self.x_train, self.x_train.shape[0]
        if n == 0:
            return
        k = torch.exp(self.log_sf2)[:, None, None] * _kernel(_sqdist(x, x, torch.exp(self.log_ls)), self.matern)
        k = k + (torch.exp(self.log_sn2) + _JITTER)[:, None, None] * torch.eye(n, dtype=x.dtype)
        self.chol = torch.linalg.cholesky(k)
        r = self.y_train.T - self._mean(x).T
        self.alpha = torch.cholesky_solve(r.unsqueeze(-1), self.chol).squeeze(-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in _FITTED:  # the number of training members is known only from the checkpoint
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh()

    # -- prediction ------------------------------------------------------------------------
    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.mean_w.T + self.mean_b

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance of y (latent variance + noise), each (B,R), normalised units."""
        xd = x.to(torch.float64)
        m = self._mean(xd)
        sf2 = torch.exp(self.log_sf2)
        if self.x_train.shape[0] == 0:
            var = (sf2 + torch.exp(self.log_sn2)).expand(m.shape)
            return m.to(x.dtype), var.to(x.dtype)
        ks = sf2[:, None, None] * _kernel(_sqdist(xd, self.x_train, torch.exp(self.log_ls)), self.matern)
        mean = m + (ks @ self.alpha.unsqueeze(-1)).squeeze(-1).T
        v = torch.linalg.solve_triangular(self.chol, ks.transpose(-1, -2), upper=False)
        var = (sf2[:, None] - (v * v).sum(-2)).clamp_min(0.0) + torch.exp(self.log_sn2)[:, None]
        return mean.to(x.dtype), var.T.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)[0]
