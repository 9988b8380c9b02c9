"""Tabular emulator core: parameters -> summary outputs (no time), for summary PPE outputs."""
from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model


@register_model("tabular")
class TabularMLP(nn.Module):
    """A multilayer perceptron theta (B,P) -> outputs (B,R) in normalised units."""

    tabular = True

    def __init__(self, n_param: int, n_response: int, hidden: int = 128, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        mods: list[nn.Module] = []
        width = n_param
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout)]
            width = hidden
        mods.append(nn.Linear(width, n_response))
        self.net = nn.Sequential(*mods)

    @classmethod
    def from_config(cls, cfg, dims):
        return cls(dims["n_param"], dims["n_response"], hidden=cfg["hidden"], layers=cfg["layers"],
                   dropout=cfg["dropout"])

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.net(theta)


class OutputTransform(nn.Module):
    """Per-output Box-Cox transform of a tabular emulator's outputs, applied before standardising.

    ``t = ((sign y)^lam - 1) / lam`` (log at lam = 0), with `sign` -1 for outputs that are negative
    on every training member (e.g. QHR). Skewed outputs become closer to Gaussian, which is what a
    GP's likelihood assumes; the emulator's mean in physical units is the back-transformed mean
    (the median of the predictive distribution) and its variance the delta-method variance.
    Disabled outputs (or a checkpoint from before this transform) pass through unchanged.

    Outside the training outputs' range the Box-Cox curve is not used: it is fitted to those outputs
    only, and with lam > 0 (lam < 0) it is bounded below (above), so a GP prediction just past the
    range back-transformed to 0 (infinity): on the CLM5 PPE an EFLX_LH_TOT member 6% under the
    training minimum came back as 0.007 W/m2 with sd 2e8, one fold's R2 0.70 against 0.91. Past the
    top the inverse continues linearly; past the bottom log-linearly, x = x_lo exp(s (t - t_lo) / x_lo)
    with the same value and slope s at the end, so an output of one sign keeps it (a linear lower
    tail gave an MLP ensemble GPP of -0.13 gC/m2/s). At lam = 0 the lower tail is the log itself.
    """

    def __init__(self, n_response: int):
        super().__init__()
        self.register_buffer("enabled", torch.zeros(n_response, dtype=torch.bool))
        self.register_buffer("sign", torch.ones(n_response))
        self.register_buffer("lam", torch.ones(n_response))
        # outputs are divided by a scale (the training median) first: Box-Cox of ~1e-5 values (GPP in
        # gC/m2/s) would otherwise lose every digit in float32 (x^lam - 1 == -1)
        self.register_buffer("scale", torch.ones(n_response))
        # With lam < 0 the transform is bounded above by -1/lam, and a prediction at or past that
        # ceiling back-transforms to infinity (float32 overflow): base = 1 + lam t is floored at the
        # base of CEILING x the largest training output (in units of scale), so y stays finite.
        self.register_buffer("base_floor", torch.zeros(n_response))
        # the training range (x = sign y / scale) and its transform: linear tails beyond (defaults: none)
        self.register_buffer("x_lo", torch.zeros(n_response))
        self.register_buffer("x_hi", torch.full((n_response,), math.inf))
        self.register_buffer("t_lo", torch.full((n_response,), -math.inf))
        self.register_buffer("t_hi", torch.full((n_response,), math.inf))

    CEILING = 10.0

    def fit(self, y) -> None:
        """Box-Cox lambdas by maximum likelihood (scipy) on training outputs y (N,R); outputs of mixed sign stay off."""
        import numpy as np
        from scipy import stats

        y = np.asarray(y, dtype=np.float64)
        for r in range(y.shape[1]):
            col = y[:, r][np.isfinite(y[:, r])]
            sign = -1.0 if (col < 0).all() else 1.0
            if len(col) < 8 or not (sign * col > 0).all():
                continue
            scale = float(np.median(sign * col))
            lam = float(stats.boxcox_normmax(sign * col / scale, method="mle"))
            if np.isfinite(lam):
                lam = float(np.clip(lam, -3.0, 5.0))
                self.enabled[r], self.sign[r], self.lam[r] = True, sign, lam
                self.scale[r] = scale
                if lam < -1e-6:
                    self.base_floor[r] = float((self.CEILING * (sign * col).max() / scale) ** lam)
                x = np.array([(sign * col).min(), (sign * col).max()]) / scale
                t = np.log(x) if abs(lam) < 1e-6 else (x ** lam - 1.0) / lam
                self.x_lo[r], self.x_hi[r] = float(x[0]), float(x[1])
                self.t_lo[r], self.t_hi[r] = float(t[0]), float(t[1])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.enabled, self.sign * y / self.scale, torch.ones_like(y))
        xc = torch.minimum(torch.maximum(x, self.x_lo), self.x_hi).clamp_min(1e-30)
        small = self.lam.abs() < 1e-6
        lam = torch.where(small, torch.ones_like(self.lam), self.lam)
        t = torch.where(small, torch.log(xc), (torch.pow(xc, lam) - 1.0) / lam)
        # beyond the training range (the inverse's tails, inverted): dt/dx = x^(lam - 1) at the range's end;
        # below it t - t_lo = x_lo^lam log(x / x_lo)
        lam0 = torch.where(small, torch.zeros_like(lam), lam)
        above = (x > xc) & self.enabled
        below = (x < xc) & self.enabled
        tail = torch.where(above, (x - xc) * torch.pow(xc, lam0 - 1.0), torch.zeros_like(x))
        tail = torch.where(below, torch.pow(xc, lam0) * torch.log(x.clamp_min(1e-30) / xc), tail)
        return torch.where(self.enabled, t + tail, y)

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_slope(t)[0]

    def inverse_and_slope(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y and dy/dt at t (for the delta-method variance)."""
        small = self.lam.abs() < 1e-6
        lam = torch.where(small, torch.ones_like(self.lam), self.lam)
        tc = torch.minimum(torch.maximum(torch.where(self.enabled, t, torch.zeros_like(t)), self.t_lo), self.t_hi)
        base = torch.maximum(lam * tc + 1.0, self.base_floor.clamp_min(1e-12))
        y_pow = torch.pow(base, 1.0 / lam)
        te = torch.where(self.enabled & small, tc, torch.zeros_like(t))
        y_exp = torch.exp(te)
        y = torch.where(small, y_exp, y_pow)
        slope = torch.where(small, y_exp, y_pow / base)
        d = torch.where(self.enabled, t - tc, torch.zeros_like(t))
        # past the top: linear; past the bottom: log-linear (same value and slope at x_lo, stays > 0)
        grow = torch.exp(slope / y * d.clamp_max(0.0))
        y, slope = torch.where(d < 0, y * grow, y + slope * d), torch.where(d < 0, slope * grow, slope)
        return (torch.where(self.enabled, self.sign * self.scale * y, t),
                torch.where(self.enabled, self.sign * self.scale * slope, torch.ones_like(t)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "lam" not in state_dict:  # a checkpoint from before output transforms: identity
            return
        if prefix + "base_floor" not in state_dict:  # from before the ceiling: uncapped, as it was trained
            state_dict = {**state_dict, prefix + "base_floor": torch.zeros_like(self.base_floor)}
        if prefix + "t_lo" not in state_dict:  # from before the linear tails: none, as it was trained
            state_dict = {**state_dict, **{prefix + k: getattr(self, k).clone()
                                           for k in ("x_lo", "x_hi", "t_lo", "t_hi")}}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class OutputPCA(nn.Module):
    """Standardised outputs (N,R) <-> their leading principal components (N,K).

    Many outputs per member (148 PFT x biome means, 12 months) are strongly correlated: a core fitted
    on the K components that hold a fraction `frac` of the variance costs K fits instead of R (the
    PCA-GP of Higdon et al. 2008, JASA 103:570). The variance each output loses to truncation
    (`resid_var`, over the training members) is added to the predictive variance.
    """

    def __init__(self, n_response: int, n_components: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_response))
        self.register_buffer("basis", torch.zeros(n_response, n_components))
        self.register_buffer("resid_var", torch.zeros(n_response))

    @staticmethod
    def n_components(y, frac: float) -> int:
        """Fewest components holding `frac` of the variance of y (N,R)."""
        import numpy as np

        y = np.asarray(y, dtype=np.float64)
        s = np.linalg.svd(y - y.mean(0), compute_uv=False) ** 2
        share = np.cumsum(s) / max(float(s.sum()), 1e-300)
        return int(min(np.searchsorted(share, frac) + 1, len(s)))

    def fit(self, y) -> None:
        import numpy as np

        y = np.asarray(y, dtype=np.float64)
        mu = y.mean(0)
        _, _, vt = np.linalg.svd(y - mu, full_matrices=False)
        v = vt[: self.basis.shape[1]].T
        resid = (y - mu) - (y - mu) @ v @ v.T
        self.mean.copy_(torch.as_tensor(mu))
        self.basis.copy_(torch.as_tensor(v))
        self.resid_var.copy_(torch.as_tensor(resid.var(0)))

    def project(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean.to(y.dtype)) @ self.basis.to(y.dtype)

    def expand(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.basis.to(z.dtype).T + self.mean.to(z.dtype)

    def expand_var(self, v: torch.Tensor) -> torch.Tensor:
        b = self.basis.to(v.dtype)
        return v @ (b * b).T + self.resid_var.to(v.dtype)


class PCACore(nn.Module):
    """A tabular core (gp, mlp_ensemble, tabular) fitted on output principal components; outputs R."""

    tabular = True
    __jit_unused_properties__ = ["seed"]

    def __init__(self, inner: nn.Module, n_response: int, n_components: int):
        super().__init__()
        self.inner = inner
        self.pca = OutputPCA(n_response, n_components)
        self.fits = bool(getattr(inner, "fits", False))

    @property
    def seed(self):
        return getattr(self.inner, "seed", 0)

    @seed.setter
    def seed(self, value):
        self.inner.seed = value

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        return self.inner.fit(x, self.pca.project(y.to(self.pca.basis.dtype)))

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self.inner, "predict"):
            m, v = self.inner.predict(x)
        else:
            m = self.inner(x)
            v = torch.zeros_like(m)
        return self.pca.expand(m), self.pca.expand_var(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pca.expand(self.inner(x))
