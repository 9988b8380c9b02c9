"""Skill metrics for emulator evaluation: NSE, KGE, RMSE, bias, R2.

Plain functions, NaN-aware (a pair is used only where both simulation and observation are
finite), reducing over `axis` (default: the last, time). They accept numpy arrays or torch
tensors and return the same kind.
"""
from __future__ import annotations

import numpy as np

try:  # torch is a hard dependency of the package, but keep the metrics usable without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

__all__ = ["nse", "nse_terms", "pooled_nse", "kge", "rmse", "bias", "r2", "METRICS"]


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _prep(sim, obs):
    """Return (xp, sim, obs, mask) with NaN in either input masked out."""
    if _is_torch(sim) or _is_torch(obs):
        sim = torch.as_tensor(sim)
        obs = torch.as_tensor(obs, dtype=sim.dtype, device=sim.device)
        sim, obs = torch.broadcast_tensors(sim, obs)
        mask = torch.isfinite(sim) & torch.isfinite(obs)
        # zeros where masked: NaN in an unselected torch.where branch still poisons the gradient
        zero = torch.zeros_like(sim)
        return torch, torch.where(mask, sim, zero), torch.where(mask, obs, zero), mask
    sim = np.asarray(sim, dtype=np.float64)
    obs = np.asarray(obs, dtype=np.float64)
    sim, obs = np.broadcast_arrays(sim, obs)
    mask = np.isfinite(sim) & np.isfinite(obs)
    return np, np.where(mask, sim, 0.0), np.where(mask, obs, 0.0), mask


def _sum(xp, x, mask, axis):
    zero = xp.zeros_like(x)
    return xp.where(mask, x, zero).sum(axis)


def _mean(xp, x, mask, axis):
    n = mask.sum(axis)
    s = _sum(xp, x, mask, axis)
    return s / xp.where(n > 0, n, xp.ones_like(n)) + xp.where(n > 0, 0.0 * s, xp.full_like(s, float("nan")))


def _count(mask, axis):
    return mask.sum(axis)


def rmse(sim, obs, axis: int = -1):
    """Root-mean-square error, in the units of the variable."""
    xp, sim, obs, m = _prep(sim, obs)
    return _mean(xp, (sim - obs) ** 2, m, axis) ** 0.5


def bias(sim, obs, axis: int = -1):
    """Mean error sim - obs, in the units of the variable (positive: the emulator is too high)."""
    xp, sim, obs, m = _prep(sim, obs)
    return _mean(xp, sim - obs, m, axis)


def nse_terms(sim, obs, axis: int = -1):
    """(sum((sim-obs)^2), sum((obs-mean(obs))^2), number of pairs) along `axis`: the parts of NSE."""
    xp, sim, obs, m = _prep(sim, obs)
    mo = _mean(xp, obs, m, axis)
    mo = xp.nan_to_num(mo) if xp is torch else np.nan_to_num(mo)
    mo = mo.unsqueeze(axis) if xp is torch else np.expand_dims(mo, axis)
    num = _sum(xp, (sim - obs) ** 2, m, axis)
    den = _sum(xp, (obs - mo) ** 2, m, axis)
    return num, den, _count(m, axis)


def nse(sim, obs, axis: int = -1):
    """Nash-Sutcliffe efficiency 1 - sum((sim-obs)^2) / sum((obs-mean(obs))^2) (Nash & Sutcliffe 1970).

    1 is perfect, 0 is no better than the observed mean; NaN where obs has no variance.
    """
    num, den, _ = nse_terms(sim, obs, axis)
    xp = torch if _is_torch(num) else np
    ok = den > 0
    return xp.where(ok, 1.0 - num / xp.where(ok, den, xp.ones_like(den)), xp.full_like(den, float("nan")))


def pooled_nse(sim, obs, axis: int = -1) -> float:
    """One NSE over many series: 1 - (total squared error) / (total squared anomaly from each
    series' own mean), so long, variable series weigh more than in a median of per-series NSE."""
    num, den, _ = nse_terms(sim, obs, axis)
    num, den = float(num.sum()), float(den.sum())
    return 1.0 - num / den if den > 0 else float("nan")


def r2(sim, obs, axis: int = -1):
    """Squared Pearson correlation between sim and obs (coefficient of determination of a linear fit)."""
    xp, sim, obs, m = _prep(sim, obs)
    return _corr(xp, sim, obs, m, axis) ** 2


def _corr(xp, sim, obs, m, axis):
    ms = _mean(xp, sim, m, axis)
    mo = _mean(xp, obs, m, axis)
    exp = (lambda a: a.unsqueeze(axis)) if xp is torch else (lambda a: np.expand_dims(a, axis))
    ds, do = sim - exp(ms), obs - exp(mo)
    cov = _sum(xp, ds * do, m, axis)
    vs = _sum(xp, ds * ds, m, axis)
    vo = _sum(xp, do * do, m, axis)
    den = (vs * vo) ** 0.5
    ok = den > 0
    return xp.where(ok, cov / xp.where(ok, den, xp.ones_like(den)), xp.full_like(den, float("nan")))


def kge(sim, obs, axis: int = -1):
    """Kling-Gupta efficiency 1 - sqrt((r-1)^2 + (alpha-1)^2 + (beta-1)^2) (Gupta et al. 2009).

    r: correlation, alpha = std(sim)/std(obs), beta = mean(sim)/mean(obs); 1 is perfect.
    """
    xp, sim, obs, m = _prep(sim, obs)
    r = _corr(xp, sim, obs, m, axis)
    ms, mo = _mean(xp, sim, m, axis), _mean(xp, obs, m, axis)
    exp = (lambda a: a.unsqueeze(axis)) if xp is torch else (lambda a: np.expand_dims(a, axis))
    ss = _mean(xp, (sim - exp(ms)) ** 2, m, axis) ** 0.5
    so = _mean(xp, (obs - exp(mo)) ** 2, m, axis) ** 0.5
    alpha = ss / so
    beta = ms / mo
    return 1.0 - ((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2) ** 0.5


METRICS = {"NSE": nse, "KGE": kge, "RMSE": rmse, "bias": bias, "R2": r2}
