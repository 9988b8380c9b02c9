"""Normalisation from the training store's statistics, as a torch module.

The store (`ppe_ingest.store`) holds train-split statistics per (norm_group, norm_var) and the
log-transformed variables: those are normalised as (log(max(x, 0) + log_eps) - mean) / std.
Living in a module (buffers), the statistics travel inside checkpoints and the exported
TorchScript, so callers always work in physical units.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ppe_ingest import store as contract


class Scaler(nn.Module):
    """(x - mean) / std per feature on the last axis, with log(x + eps) first where `log` is set."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], log: Sequence[bool], eps: float):
        super().__init__()
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(std, dtype=np.float64), dtype=torch.float32)
        # A constant field (std 0) would divide by zero; it carries no information, so scale by 1.
        std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
        mean = torch.where(torch.isfinite(mean), mean, torch.zeros_like(mean))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("log", torch.as_tensor(list(log), dtype=torch.bool).reshape(mean.shape))
        self.register_buffer("eps", torch.tensor(float(eps), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clamp keeps log finite for tiny negative round-off in fluxes that should be >= 0
        xl = torch.where(self.log, torch.log(torch.clamp(x, min=0.0) + self.eps), x)
        return (xl - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        x = z * self.std + self.mean
        # exp only where log-transformed: exp of e.g. TWS (~600 mm) is inf, and where() would
        # back-propagate 0 * inf = NaN through the unselected branch
        xe = torch.where(self.log, x, torch.zeros_like(x))
        return torch.where(self.log, torch.exp(xe) - self.eps, x)


class Normalizer(nn.Module):
    """The four scalers an emulator needs: forcing, static fields, parameters, responses."""

    def __init__(self, forcing: Scaler, static: Scaler, theta: Scaler, response: Scaler):
        super().__init__()
        self.forcing = forcing
        self.static = static
        self.theta = theta
        self.response = response

    @classmethod
    def from_store(cls, ds, forcing_names, static_names, param_names, response_names) -> Normalizer:
        """Build from an opened store (xarray Dataset following `ppe_ingest.store`)."""
        st = contract.norm_stats(ds)

        def scaler(names, group):
            mean, std, log = st.lookup(names, group)
            return Scaler(mean, std, log, st.log_eps)

        return cls(scaler(forcing_names, contract.GROUP_VARIABLE), scaler(static_names, contract.GROUP_STATIC),
                   scaler(param_names, contract.GROUP_PARAM), scaler(response_names, contract.GROUP_VARIABLE))

    @classmethod
    def empty(cls, nf: int, ns: int, npar: int, nr: int) -> Normalizer:
        """Identity-initialised placeholder whose buffers a state_dict then fills."""
        def mk(n):
            return Scaler(np.zeros(n), np.ones(n), [False] * n, 1e-6)

        return cls(mk(nf), mk(ns), mk(npar), mk(nr))
