"""Parameter uncertainty from an ensemble of inverse models (seeds) and MC dropout, and the
coverage of known true values by the resulting intervals."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm


@dataclass(frozen=True)
class UncertaintyConfig:
    """The validated ``inverse.uncertainty`` section (its defaults are in esm_emu.inverse.config)."""

    ensemble: int  # inverse models trained with different seeds
    mc_samples: int  # MC-dropout draws per member (0: off)
    level: float  # interval level for coverage


def combine(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over ensemble members, each (N,P) or (S,N,P) MC-dropout draws.

    The total variance is the mean within-member variance plus the variance of member means
    (law of total variance).
    """
    means, within = [], []
    for s in samples:
        s = s if s.dim() == 3 else s[None]
        means.append(s.mean(0))
        within.append(s.var(0, unbiased=False))
    m = torch.stack(means)
    mean = m.mean(0)
    var = torch.stack(within).mean(0) + m.var(0, unbiased=False)
    return mean, var.sqrt()


def coverage(true, mean, std, level: float = 0.9, axis: int = 0) -> np.ndarray:
    """Fraction of true values inside the central `level` Gaussian interval mean +- z*std."""
    true, mean, std = (np.asarray(x, dtype=np.float64) for x in (true, mean, std))
    z = norm.ppf(0.5 + level / 2)
    inside = np.abs(true - mean) <= z * std
    return inside.mean(axis=axis)
