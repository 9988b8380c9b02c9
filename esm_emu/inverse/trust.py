"""A trust region for the inversion: keep parameter sets where the forward model was trained.

An emulator is only right where its PPE put members. Two penalties keep the inverse models there:

- **design coverage** (always, when the PPE design is known): the distance, in the unit space of the
  parameter bounds, from a parameter set to its nearest PPE member, beyond ``d_ref``, the
  ``quantile`` of that distance over the design's own bounding box (so the emptiest corners are
  penalised, the space between members is not). Applied to the parameter networks' output at every
  entity, observed or not: a prior that keeps g_A/g_z inside the space the emulator has seen.
- **ensemble disagreement** (when the forward model gives a spread, e.g. an emulator ensemble's
  ``predict_with_disagreement`` or ``predict_with_spread`` returning (mean, std)): the ensemble std
  of the simulated series relative to the observed std, squared and averaged over scored days. With
  a calibrated emulator (`esm_emu.spread`) it is the calibrated disagreement sqrt(a) * spread: the
  part of the predictive std that grows where the members part ways, not its floor b nor its
  magnitude term c mean^2 (penalising that would pull the inversion toward small flows).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..forward import ForwardModel


def spread_method(forward: ForwardModel):
    """The forward model's ``(forcing, static, theta) -> (mean, std)`` method, or None when it has none
    (or says, through ``has_spread``, that its std is only zeros: a single emulator, the simulator)."""
    if not getattr(forward, "has_spread", True):
        return None
    for name in ("predict_with_disagreement", "predict_with_spread", "spread"):
        fn = getattr(forward, name, None)
        if callable(fn):
            return fn
    return None


@dataclass
class TrustRegion:
    """The PPE design in unit space and the penalty weights."""

    design_unit: torch.Tensor | None  # (M, P) PPE members in [0, 1]; None: no design term
    design_weight: float = 1.0
    spread_weight: float = 1.0
    d_ref: float = 0.0
    temperature: float = 0.02  # soft minimum over members (unit-space distance)

    @classmethod
    def from_design(cls, design_unit, design_weight: float = 1.0, spread_weight: float = 1.0,
                    quantile: float = 0.9, seed: int = 0, n_probe: int = 4096) -> TrustRegion:
        """``d_ref`` is the ``quantile`` of the nearest-member distance of uniform points in the design's box."""
        if design_unit is None or len(design_unit) == 0:
            return cls(None, 0.0, spread_weight)
        d = torch.as_tensor(np.asarray(design_unit, np.float32)).clamp(0, 1)
        lo, hi = d.min(0).values, d.max(0).values
        g = torch.Generator().manual_seed(seed)
        probe = lo + (hi - lo) * torch.rand(n_probe, d.shape[1], generator=g)
        nn = torch.cdist(probe, d).min(1).values
        return cls(d, float(design_weight), float(spread_weight), float(torch.quantile(nn, quantile)))

    def distance(self, u: torch.Tensor) -> torch.Tensor:
        """Soft nearest-member distance (N,) of unit-space parameter sets u (N, P); differentiable."""
        dist = torch.cdist(u.float(), self.design_unit)
        return -self.temperature * torch.logsumexp(-dist / self.temperature, dim=1)

    def design_penalty(self, u: torch.Tensor) -> torch.Tensor:
        """Mean of ((distance - d_ref) / d_ref)_+^2: zero inside the covered region."""
        if self.design_unit is None or self.design_weight == 0:
            return u.sum() * 0
        excess = torch.relu(self.distance(u) - self.d_ref) / max(self.d_ref, 1e-6)
        return self.design_weight * (excess ** 2).mean()

    def outside(self, u) -> np.ndarray:
        """(N,) bool: parameter sets farther than d_ref from every PPE member (for the report)."""
        if self.design_unit is None:
            return np.zeros(len(u), bool)
        with torch.no_grad():
            return (torch.cdist(torch.as_tensor(u).float(), self.design_unit).min(1).values > self.d_ref).numpy()

    def spread_penalty(self, std: torch.Tensor | None, scale: torch.Tensor, time_mask: torch.Tensor) -> torch.Tensor:
        """Mean over scored days of (ensemble std / observed std)^2; zero without a spread."""
        if std is None or self.spread_weight == 0:
            return torch.zeros(())
        z = std[:, time_mask] / scale.to(std.dtype)
        return self.spread_weight * (z ** 2).mean()

    def summary(self, u_all) -> dict:
        """Figures for metrics.json: the reference distance and the share of entities outside it."""
        if self.design_unit is None:
            return {"design_term": "off: the PPE design is not known (inverse.store not given)"}
        out = self.outside(u_all)
        return {"design_members": int(len(self.design_unit)), "d_ref_unit": self.d_ref,
                "design_weight": self.design_weight, "spread_weight": self.spread_weight,
                "share_outside_design": float(out.mean())}
