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
and noise variances, mean coefficients) maximise the log marginal likelihood from `restarts`
starts; the best start is kept per output.

Many outputs (148 PFT x biome means, 60 monthly means): every output and start is one row of ONE
batched problem, since the likelihood of independent GPs is a sum over outputs. Each evaluation is
one batched Cholesky and its inverse, with the gradient in closed form (no autograd graph through
the factorisation, which cost about twice the factorisation and several N x N arrays per row); the
mean coefficients are profiled out by generalised least squares; a batched projected L-BFGS gives
each row its own curvature memory, step length and stopping test, and rows that have converged
leave the batch. At most `fit_steps` iterations per row; rows are processed in memory-bounded
chunks.

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
_PREDICT_ELEMENTS = 2 ** 25  # cross-covariance numbers per output chunk in predict (256 MB in float64)
_FITTED = ("x_train", "y_train", "log_ls", "log_sf2", "log_sn2", "mean_w", "mean_b")


def _lbfgs(fg, z0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, max_iter: int, memory: int = 10,
           ftol: float = 1e-4, window: int = 5, gtol: float = 1e-6):
    """Minimise S independent functions at once: row s of z (S,D) by its own projected L-BFGS.

    fg(z_rows, idx) -> (f, grad, extra) for the rows idx (a LongTensor into the batch). Each row keeps
    its own curvature pairs, backtracking (Armijo) step and stopping test (f decreased by less than
    ftol over the last `window` iterations, or projected gradient below gtol, or max_iter; f here is
    a per-point NLL, so ftol = 1e-4 is 0.04 nats in all for 400 members); only the rows still
    running are evaluated.
    Bounds lo <= z <= hi by projection. Returns z, f and the extra of each row's last accepted point.
    """
    sn, d = z0.shape
    dev = z0.device
    z = torch.minimum(torch.maximum(z0, lo), hi)
    every = torch.arange(sn, device=dev)
    f, g, extra = fg(z, every)
    s_h = torch.zeros(memory, sn, d, dtype=z.dtype, device=dev)
    y_h = torch.zeros_like(s_h)
    rho = torch.zeros(memory, sn, dtype=z.dtype, device=dev)  # 0 marks an empty slot
    active = torch.isfinite(f)
    f_past = torch.full((window, sn), math.inf, dtype=z.dtype, device=dev)  # f `window` iterations ago
    for it in range(max_iter):
        idx = torch.nonzero(active).squeeze(-1)
        if len(idx) == 0:
            break
        za, ga = z[idx], g[idx]
        # two-loop recursion over each row's own pairs (newest first: slot (it - 1 - j) % memory)
        q = ga.clone()
        al = []
        order = [(it - 1 - j) % memory for j in range(min(it, memory))]
        for k in order:
            a_k = rho[k, idx] * (s_h[k, idx] * q).sum(-1)
            q = q - a_k[:, None] * y_h[k, idx]
            al.append(a_k)
        if order:
            k = order[0]
            yy = (y_h[k, idx] ** 2).sum(-1)
            gamma = torch.where((rho[k, idx] > 0) & (yy > 0), 1.0 / (rho[k, idx] * yy).clamp_min(1e-300),
                                torch.ones_like(yy))
        else:
            gamma = 1.0 / ga.abs().amax(-1).clamp_min(1.0)  # first step moves at most 1 in log space
        r = q * gamma[:, None]
        for k, a_k in zip(reversed(order), reversed(al)):
            b_k = rho[k, idx] * (y_h[k, idx] * r).sum(-1)
            r = r + (a_k - b_k)[:, None] * s_h[k, idx]
        step = -r
        # free the coordinates held at a bound by a gradient pushing outwards
        at_lo, at_hi = (za <= lo) & (ga > 0), (za >= hi) & (ga < 0)
        step = torch.where(at_lo | at_hi, torch.zeros_like(step), step)
        bad = (step * ga).sum(-1) >= 0  # not a descent direction: steepest descent, memory cleared
        if bad.any():
            step[bad] = torch.where((at_lo | at_hi)[bad], torch.zeros_like(ga[bad]), -ga[bad] * gamma[bad, None])
            rho[:, idx[bad]] = 0.0
        # backtracking line search, each row its own step length
        t = torch.ones(len(idx), dtype=z.dtype, device=dev)
        fa = f[idx]
        z_new, f_new, g_new, e_new = za.clone(), fa.clone(), ga.clone(), extra[idx].clone()
        todo = torch.ones(len(idx), dtype=torch.bool, device=dev)
        for _ in range(20):
            ti = torch.nonzero(todo).squeeze(-1)
            if len(ti) == 0:
                break
            zt = torch.minimum(torch.maximum(za[ti] + t[ti, None] * step[ti], lo), hi)
            ft, gt, et = fg(zt, idx[ti])
            okay = torch.isfinite(ft) & (ft <= fa[ti] + 1e-4 * (ga[ti] * (zt - za[ti])).sum(-1))
            acc = ti[okay]
            z_new[acc], f_new[acc], g_new[acc], e_new[acc] = zt[okay], ft[okay], gt[okay], et[okay]
            todo[acc] = False
            t[ti[~okay]] *= 0.5
        moved = ~todo
        sk, yk = z_new - za, g_new - ga
        sy = (sk * yk).sum(-1)
        keep = moved & (sy > 1e-12)
        slot = it % memory
        s_h[slot, idx] = torch.where(keep[:, None], sk, torch.zeros_like(sk))
        y_h[slot, idx] = torch.where(keep[:, None], yk, torch.zeros_like(yk))
        rho[slot, idx] = torch.where(keep, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        z[idx], f[idx], g[idx], extra[idx] = z_new, f_new, g_new, e_new
        pg = torch.where(((z_new <= lo) & (g_new > 0)) | ((z_new >= hi) & (g_new < 0)), torch.zeros_like(g_new),
                         g_new)
        small = f_past[it % window, idx] - f_new <= ftol
        f_past[it % window, idx] = f_new
        # a row whose line search failed tries once more from steepest descent (memory cleared)
        retry = ~moved & (rho[:, idx] > 0).any(0)
        rho[:, idx[retry]] = 0.0
        done = (~moved & ~retry) | (moved & small) | (pg.abs().amax(-1) <= gtol)
        active[idx[done]] = False
    return z, f, extra


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
        # lr: the step of the former Adam fit, kept so that old callers construct; L-BFGS chooses its own steps
        self.restarts, self.fit_steps, self.lr, self.seed = restarts, fit_steps, lr, seed
        self.n_param, self.n_response = n_param, n_response
        self.predict_elements = _PREDICT_ELEMENTS  # an attribute: TorchScript reads no int globals
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
    def _design(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-function regressors H (N,q): a constant, and the parameters for the linear mean."""
        one = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        return torch.cat([one, x], 1) if self.linear_mean else one

    def _nll_grad(self, x, hx, y, z):
        """Negative log marginal likelihood per point and its gradient, without autograd, for a batch of
        independent GPs sharing the inputs x (N,P): targets y (S,N), hyperparameters z (S,P+2) =
        (log length scales, log signal variance, log noise variance). The mean coefficients are
        profiled out by generalised least squares (their maximum-likelihood values given z), so the
        gradient in z is the partial one (envelope theorem) and the optimiser has P+2 unknowns, not
        2P+3. Returns nll (S,), grad (S,P+2), beta (S,q); rows whose Cholesky fails get nll = inf."""
        n, p = x.shape
        ls2 = torch.exp(2.0 * z[:, :p])
        sf2, sn2 = torch.exp(z[:, p]), torch.exp(z[:, p + 1])
        d2 = _sqdist(x, x, ls2.sqrt())
        if self.matern:
            r = torch.sqrt(d2 + 1e-12) * math.sqrt(5.0)
            e = torch.exp(-r)
            kf = (1.0 + r + r * r / 3.0) * e
            dk = -(5.0 / 6.0) * (1.0 + r) * e  # dk/d(d2)
        else:
            kf = torch.exp(-0.5 * d2)
            dk = -0.5 * kf
        del d2
        kf = kf * sf2[:, None, None]
        k = kf + torch.diag_embed((sn2 + _JITTER)[:, None].expand(-1, n))
        chol, info = torch.linalg.cholesky_ex(k)
        ok = info == 0
        chol = torch.where(ok[:, None, None], chol, torch.eye(n, dtype=x.dtype, device=x.device))
        del k
        # K^-1 = L^-T L^-1 (a triangular solve and a product: faster than cholesky_inverse on CPU)
        linv = torch.linalg.solve_triangular(chol, torch.eye(n, dtype=x.dtype, device=x.device).expand_as(chol),
                                             upper=False)
        kinv = linv.transpose(-1, -2) @ linv
        del linv
        # GLS mean: beta = (H' K^-1 H)^-1 H' K^-1 y
        kih = kinv @ hx  # (S,N,q)
        a = hx.T @ kih
        a = a + 1e-10 * a.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(a.shape[-1], dtype=x.dtype,
                                                                                          device=x.device)
        beta = torch.linalg.solve(a, (kih * y[:, :, None]).sum(1))
        res = y - beta @ hx.T
        alpha = (kinv @ res.unsqueeze(-1)).squeeze(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        nll = (0.5 * (res * alpha).sum(-1) + 0.5 * logdet) / n + 0.5 * math.log(2 * math.pi)
        # dNLL/dz = tr((K^-1 - alpha alpha') dK/dz) / (2n)
        w = kinv - alpha.unsqueeze(-1) * alpha.unsqueeze(-2)
        del kinv
        g_sf2 = (w * kf).sum((-2, -1))
        g_sn2 = sn2 * w.diagonal(dim1=-2, dim2=-1).sum(-1)
        m = w * dk * sf2[:, None, None]  # symmetric
        del w, kf, dk
        # sum_ij m_ij (x_ip - x_jp)^2 = 2 (m 1)' x_p^2 - 2 x_p' m x_p; d(d2)/d(log ls_p) = -2 (x_ip - x_jp)^2 / ls_p^2
        quad = 2.0 * (m.sum(-1) @ (x * x)) - 2.0 * ((m @ x) * x).sum(-2)
        g_ls = -2.0 * quad / ls2
        grad = torch.cat([g_ls, g_sf2[:, None], g_sn2[:, None]], 1) * (0.5 / n)
        nll = torch.where(ok & torch.isfinite(nll), nll, torch.full_like(nll, math.inf))
        grad = torch.where(torch.isfinite(nll)[:, None], grad, torch.zeros_like(grad))
        return nll, grad, beta

    def fit(self, x: torch.Tensor, y: torch.Tensor, memory_mb: float = 1024.0) -> dict:
        """Fit each output's hyperparameters to x (N,P), y (N,R) by marginal likelihood; returns NLL per output.

        Every output and random start is one row of a single batched problem (the likelihood is a sum
        over independent outputs): one batched Cholesky per evaluation, gradients in closed form,
        minimised by a batched projected L-BFGS in which each row keeps its own memory, step length
        and stopping test, and converged rows leave the batch. Rows are processed in chunks of at most
        `memory_mb` of N x N work arrays. Each output is fitted standardised (its mean and standard
        deviation; the GP is equivariant to this) and its best start is kept."""
        x, y = x.detach().double(), y.detach().double()
        n, p = x.shape
        nr, s = y.shape[1], self.restarts
        mu, sd = y.mean(0), y.std(0, unbiased=False)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        ys = ((y - mu) / sd).T  # (R,N)
        hx = self._design(x)
        g = torch.Generator().manual_seed(self.seed)
        # starts, restart-major: the first every length scale ~ the design's spread, the others at random
        z0 = torch.empty(s, nr, p + 2, dtype=torch.float64)
        # drawn output by output, so an output's starts do not depend on how many outputs follow it
        z0[..., :p] = math.log(20.0) * torch.rand(nr, s, p, generator=g, dtype=torch.float64).transpose(0, 1)
        z0[0, :, :p] = math.log(3.0)
        z0[..., p] = 0.0
        z0[..., p + 1] = math.log(1e-2)
        z0 = z0.reshape(s * nr, p + 2).to(x.device)
        yb = ys.repeat(s, 1)
        lo = torch.tensor([-3.0] * p + [-12.0, math.log(1e-8)], dtype=torch.float64, device=x.device)
        hi = torch.tensor([8.0] * p + [12.0, 2.0], dtype=torch.float64, device=x.device)
        chunk = max(1, int(memory_mb * 2**20 // (6 * 8 * n * n)))
        zs, fs, bs = [], [], []
        for a in range(0, s * nr, chunk):
            rows = slice(a, min(a + chunk, s * nr))
            z, f, b = _lbfgs(lambda zz, idx, yr=yb[rows]: self._nll_grad(x, hx, yr[idx], zz), z0[rows], lo, hi,
                             self.fit_steps)
            zs.append(z), fs.append(f), bs.append(b)
        z, f, beta = torch.cat(zs).reshape(s, nr, -1), torch.cat(fs).reshape(s, nr), torch.cat(bs).reshape(s, nr, -1)
        pick = f.argmin(0)
        ar = torch.arange(nr, device=x.device)
        z, f, beta = z[pick, ar], f[pick, ar], beta[pick, ar]
        with torch.no_grad():
            self.log_ls = z[:, :p].clone().to(self.log_ls.device)
            self.log_sf2 = (z[:, p] + 2.0 * torch.log(sd)).to(self.log_sf2.device)
            self.log_sn2 = (z[:, p + 1] + 2.0 * torch.log(sd)).to(self.log_sn2.device)
            self.mean_b = (beta[:, 0] * sd + mu).to(self.mean_b.device)
            self.mean_w = ((beta[:, 1:] * sd[:, None]) if self.linear_mean
                           else torch.zeros(nr, p, dtype=torch.float64, device=x.device)).to(self.mean_w.device)
        self.x_train = x.clone()
        self.y_train = y.clone()
        self._refresh()
        return {"nll": (f + torch.log(sd)).tolist()}

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
        """Predictive mean and variance of y (latent variance + noise), each (B,R), normalised units.

        Outputs are taken a few at a time so the (outputs, B, N) cross-covariances stay under
        `predict_elements` numbers (146 PFT x biome outputs at B = 8192 would take 3.8 GB at once)."""
        xd = x.to(torch.float64)
        m = self._mean(xd)
        sf2 = torch.exp(self.log_sf2)
        n = self.x_train.shape[0]
        if n == 0:
            var = (sf2 + torch.exp(self.log_sn2)).expand(m.shape)
            return m.to(x.dtype), var.to(x.dtype)
        ls = torch.exp(self.log_ls)
        step = max(1, self.predict_elements // max(1, xd.shape[0] * n))
        means: list[torch.Tensor] = []
        variances: list[torch.Tensor] = []
        for a in range(0, self.n_response, step):
            b = min(a + step, self.n_response)
            ks = sf2[a:b, None, None] * _kernel(_sqdist(xd, self.x_train, ls[a:b]), self.matern)
            means.append((ks @ self.alpha[a:b].unsqueeze(-1)).squeeze(-1))
            v = torch.linalg.solve_triangular(self.chol[a:b], ks.transpose(-1, -2), upper=False)
            variances.append((sf2[a:b, None] - (v * v).sum(-2)).clamp_min(0.0)
                             + torch.exp(self.log_sn2[a:b])[:, None])
        mean = m + torch.cat(means, 0).T
        return mean.to(x.dtype), torch.cat(variances, 0).T.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)[0]

    @torch.jit.unused
    def sample_paths(self, draws: int, features: int = 2048, seed: int = 0):
        """`draws` functions from the GP posterior of the latent f (noise-free), each a whole function:
        x (B,P) -> (B,R,draws), normalised units, consistent across calls (the same draws).

        Pathwise conditioning (Wilson et al. 2020, ICML, eq. 7): a prior path from random Fourier
        features plus its update by the data, f*(x) = m(x) + f0(x) + k(x,X) K_y^-1 (y - m(X) - f0(X) - e),
        e ~ N(0, sn2). Features: for the Matern-5/2 kernel frequencies are multivariate Student-t with
        5 degrees of freedom scaled by 1/ls (its spectral density); Gaussian for the RBF. Used to carry
        the emulator's own uncertainty into quantities that need joint draws (Sobol indices)."""
        x_tr = self.x_train
        n, p = x_tr.shape
        nr = self.n_response
        g = torch.Generator().manual_seed(int(seed))
        f8 = torch.float64
        z = torch.randn(nr, features, p, generator=g, dtype=f8)
        if self.matern:  # omega = z sqrt(5 / u), u ~ chi2(5)
            u = (torch.randn(nr, features, 5, generator=g, dtype=f8) ** 2).sum(-1, keepdim=True)
            z = z * torch.sqrt(5.0 / u)
        omega = z / torch.exp(self.log_ls)[:, None, :]  # (R,L,P)
        phase = 2 * math.pi * torch.rand(nr, features, 1, generator=g, dtype=f8)
        amp = torch.sqrt(2.0 * torch.exp(self.log_sf2) / features)[:, None, None]  # (R,1,1)
        w = torch.randn(nr, features, draws, generator=g, dtype=f8)
        # the noise the Cholesky factor holds (sn2 + jitter), so the update is exact for the approximate prior
        noise_sd = torch.sqrt(torch.exp(self.log_sn2) + _JITTER)[:, None, None]
        eps = torch.randn(nr, n, draws, generator=g, dtype=f8) * noise_sd

        def prior(xx: torch.Tensor) -> torch.Tensor:  # (B,P) -> (R,B,draws)
            phi = torch.cos(omega @ xx.T.unsqueeze(0) + phase) * amp  # (R,L,B)
            return phi.transpose(-1, -2) @ w

        if n:
            resid = (self.y_train.T - self._mean(x_tr).T).unsqueeze(-1) - prior(x_tr) - eps  # (R,N,draws)
            v = torch.cholesky_solve(resid, self.chol)
        mls = torch.exp(self.log_ls)

        def path(xx: torch.Tensor) -> torch.Tensor:
            xd = xx.to(f8)
            out = self._mean(xd).T.unsqueeze(-1) + prior(xd)  # (R,B,draws)
            if n:
                out = out + (self._kern(xd, x_tr, mls) @ v)
            return out.permute(1, 0, 2)

        return path

    @torch.jit.unused
    def _kern(self, a: torch.Tensor, b: torch.Tensor, ls: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_sf2)[:, None, None] * _kernel(_sqdist(a, b, ls), self.matern)
