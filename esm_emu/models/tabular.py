"""Tabular emulator core: parameters -> summary outputs (no time), for summary PPE outputs."""
from __future__ import annotations

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
    """

    def __init__(self, n_response: int):
        super().__init__()
        self.register_buffer("enabled", torch.zeros(n_response, dtype=torch.bool))
        self.register_buffer("sign", torch.ones(n_response))
        self.register_buffer("lam", torch.ones(n_response))
        # outputs are divided by a scale (the training median) first: Box-Cox of ~1e-5 values (GPP in
        # gC/m2/s) would otherwise lose every digit in float32 (x^lam - 1 == -1)
        self.register_buffer("scale", torch.ones(n_response))

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
                self.enabled[r], self.sign[r], self.lam[r] = True, sign, float(np.clip(lam, -3.0, 5.0))
                self.scale[r] = scale

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.enabled, self.sign * y / self.scale, torch.ones_like(y)).clamp_min(1e-30)
        small = self.lam.abs() < 1e-6
        lam = torch.where(small, torch.ones_like(self.lam), self.lam)
        t = torch.where(small, torch.log(x), (torch.pow(x, lam) - 1.0) / lam)
        return torch.where(self.enabled, t, y)

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_slope(t)[0]

    def inverse_and_slope(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y and dy/dt at t (for the delta-method variance)."""
        small = self.lam.abs() < 1e-6
        lam = torch.where(small, torch.ones_like(self.lam), self.lam)
        base = (lam * torch.where(self.enabled, t, torch.zeros_like(t)) + 1.0).clamp_min(1e-12)
        y_pow = torch.pow(base, 1.0 / lam)
        te = torch.where(self.enabled & small, t, torch.zeros_like(t))
        y_exp = torch.exp(te)
        y = torch.where(small, y_exp, y_pow)
        slope = torch.where(small, y_exp, y_pow / base)
        return (torch.where(self.enabled, self.sign * self.scale * y, t),
                torch.where(self.enabled, self.sign * self.scale * slope, torch.ones_like(t)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "lam" not in state_dict:  # a checkpoint from before output transforms: identity
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
