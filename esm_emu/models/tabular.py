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
