"""Normalisation from the training store's statistics, as a torch module.

The store holds `norm_mean(norm_var)`, `norm_std(norm_var)` (train split only) and the global
attrs `log_transform_vars` / `log_eps`: those variables are normalised as
(log(x + log_eps) - mean) / std. Living in a module (buffers), the statistics travel inside
checkpoints and the exported TorchScript, so callers always work in physical units.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ppe_ingest.errors import UserError


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
    def from_store(cls, ds, forcing_names, static_names, param_names, response_names) -> "Normalizer":
        """Build from an opened store (xarray Dataset following the training-store contract)."""
        for v in ("norm_mean", "norm_std"):
            if v not in ds:
                raise UserError(f"training store: variable {v!r} is missing (normalisation statistics)")
        names = [str(x) for x in ds["norm_var"].values]
        # (group, name) keys: a static field and a parameter may share a name (FMAX); stores
        # written before norm_group existed fall back to the name alone
        groups = [str(x) for x in ds["norm_group"].values] if "norm_group" in ds else [""] * len(names)
        keys = list(zip(groups, names))
        mean = dict(zip(keys, np.asarray(ds["norm_mean"].values, dtype=np.float64)))
        std = dict(zip(keys, np.asarray(ds["norm_std"].values, dtype=np.float64)))
        logs = set(str(ds.attrs.get("log_transform_vars", "")).split())
        eps = float(ds.attrs.get("log_eps", 1e-6))

        def scaler(members, group):
            key = [(group if "norm_group" in ds else "", n) for n in members]
            missing = [k[1] for k in key if k not in mean]
            if missing:
                raise UserError(f"training store: norm_var has no statistics for {missing[0]!r}")
            return Scaler([mean[k] for k in key], [std[k] for k in key], [n in logs for n in members], eps)

        return cls(scaler(forcing_names, "variable"), scaler(static_names, "static"),
                   scaler(param_names, "param"), scaler(response_names, "variable"))

    @classmethod
    def empty(cls, nf: int, ns: int, npar: int, nr: int) -> "Normalizer":
        """Identity-initialised placeholder whose buffers a state_dict then fills."""
        mk = lambda n: Scaler(np.zeros(n), np.ones(n), [False] * n, 1e-6)
        return cls(mk(nf), mk(ns), mk(npar), mk(nr))
