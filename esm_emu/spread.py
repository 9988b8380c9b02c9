"""A calibrated predictive spread for a sequence emulator (one network or an ensemble).

The spread of K members trained with different seeds measures only their disagreement, a part of
the emulator's error: on the quickstart it is 2-8 % of each series' std and only a third of
held-out days fall within +-2 of it. After training, the emulator's own error is measured where it
is honest, on the validation series (validation members or gridcells, never test ones; the store's
training and validation years after the warm-up), and a per-variable Gaussian model of it is fitted
by maximum likelihood, in physical units (what `predict_with_spread` returns and the evaluation
scores)::

    sigma^2 = a * spread^2 + b + c * mean^2

``a`` scales the members' disagreement (the part that grows where theta leaves the PPE's cover),
``b`` is the floor the members share (a single network has only this and the next term), ``c``
the error that grows with the predicted magnitude (runoff's multiplicative error: the loss scores
runoff in log space). A term that does not help goes to zero. The fit needs one prediction pass
over at most `CAL_SERIES` validation series (`esm_emu.evaluate.calibrate_spread`).

`SpreadCalibration` holds (a, b, c) per response and lives inside the emulator
(`Emulator.calibration`, `EmulatorEnsemble.calibration`), so every consumer reads the same
calibrated spread: `predict_with_spread` (mean, calibrated std), `predict_with_disagreement`
(mean, sqrt(a) * spread: the trust region's penalty, which must not push the inversion toward
small flows through the c term), the evaluation and the TorchScript export. Its numbers travel
in the payload as the plain dict ``payload["spread_calibration"]``; a payload without one
(checkpoints written before) loads uncalibrated: std = the members' spread, stated as
``calibration: none``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

FORM = "sigma^2 = a * spread^2 + b + c * mean^2"
METHOD = "gaussian likelihood on validation residuals, physical units"
CAL_SERIES = 256  # validation series in the fit (seeded subset): one cheap prediction pass
MIN_DAYS = 50  # finite validation days a variable needs for its own fit
Z_LEVELS = {"1.64": 1.6449, "2": 2.0}  # bands reported: nominal 90 % and 95.4 % for a Gaussian
NONE_NOTE = "none (fitted before spread calibration existed: std = the members' spread)"


class SpreadCalibration(nn.Module):
    """(a, b, c) per response; identity (a=1, b=c=0, std = spread) until `load` or a fit sets them.

    The buffers are not persistent: the numbers travel as ``payload["spread_calibration"]`` (so
    a state_dict from before the calibration still loads strictly)."""

    def __init__(self, n_response: int):
        super().__init__()
        self.register_buffer("a", torch.ones(n_response), persistent=False)
        self.register_buffer("b", torch.zeros(n_response), persistent=False)
        self.register_buffer("c", torch.zeros(n_response), persistent=False)
        self.fitted = False
        self.info: dict = {}

    def std(self, mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        """Calibrated predictive std (..., R), physical units; the spread itself when not fitted."""
        if not self.fitted:
            return spread
        a, b, c = (x.to(mean.dtype) for x in (self.a, self.b, self.c))
        var = a * spread ** 2 + b + c * mean ** 2
        return torch.sqrt(var.clamp_min(torch.finfo(mean.dtype).tiny))

    def disagreement(self, spread: torch.Tensor) -> torch.Tensor:
        """sqrt(a) * spread: the calibrated part of the std that is the members' disagreement."""
        return spread if not self.fitted else spread * torch.sqrt(self.a.to(spread.dtype))

    def to_payload(self) -> dict | None:
        """Plain types for the checkpoint (None when not fitted)."""
        if not self.fitted:
            return None
        return {"form": FORM, "method": METHOD, "a": [float(x) for x in self.a], "b": [float(x) for x in self.b],
                "c": [float(x) for x in self.c], **{k: v for k, v in self.info.items() if k not in ("a", "b", "c")}}

    def load(self, d: Mapping | None, response_names: Sequence[str]) -> SpreadCalibration:
        """Set from `to_payload()` output (None: stays uncalibrated). ValueError on a malformed entry."""
        if d is None:
            return self
        if not isinstance(d, Mapping):
            raise ValueError("spread_calibration is not a mapping")
        n = len(response_names)
        vals = {}
        for k in ("a", "b", "c"):
            v = d.get(k)
            if not isinstance(v, (list, tuple)) or len(v) != n:
                raise ValueError(f"spread_calibration.{k} must list {n} numbers (one per response)")
            t = torch.tensor([float(x) for x in v], dtype=torch.float32)
            if not torch.isfinite(t).all() or (t < 0).any():
                raise ValueError(f"spread_calibration.{k} must be finite and >= 0")
            vals[k] = t
        names = d.get("response_names")
        if names is not None and list(names) != list(response_names):
            raise ValueError(f"spread_calibration is for {list(names)}, the emulator gives {list(response_names)}")
        for k, t in vals.items():
            getattr(self, k).copy_(t)
        self.info = {k: v for k, v in d.items() if k not in ("a", "b", "c")}
        self.fitted = True
        return self

    def describe(self) -> str:
        return f"{FORM} ({METHOD})" if self.fitted else NONE_NOTE


# ---- the fit ---------------------------------------------------------------------------------

def _nll(la, lb, lc, s2, m2, r2):
    var = torch.exp(la) * s2 + torch.exp(lb) + torch.exp(lc) * m2
    return 0.5 * (torch.log(var) + r2 / var).mean()


class _Closure:
    """The L-BFGS closure: the negative log-likelihood at the current log parameters."""

    def __init__(self, opt, p, s2, m2, r2):
        self.opt, self.p, self.s2, self.m2, self.r2 = opt, p, s2, m2, r2

    def __call__(self):
        self.opt.zero_grad()
        q = self.p.clamp(-40.0, 20.0)
        loss = _nll(q[0], q[1], q[2], self.s2, self.m2, self.r2)
        loss.backward()
        return loss


def fit_one(mean: np.ndarray, spread: np.ndarray, obs: np.ndarray) -> tuple[float, float, float] | None:
    """(a, b, c) for one variable from 1-D arrays (physical units) by Gaussian maximum likelihood;
    None when fewer than `MIN_DAYS` finite days or a constant target."""
    ok = np.isfinite(obs) & np.isfinite(mean) & np.isfinite(spread)
    if ok.sum() < MIN_DAYS:
        return None
    scale = float(np.std(obs[ok]))
    if not scale > 0:
        return None
    # in units of the variable's std (the likelihood is scale-free; the optimiser is not)
    m = torch.as_tensor(mean[ok] / scale, dtype=torch.float64)
    s2 = torch.as_tensor(spread[ok] / scale, dtype=torch.float64) ** 2
    r2 = (torch.as_tensor(obs[ok] / scale, dtype=torch.float64) - m) ** 2
    m2 = m ** 2
    v0 = float(r2.mean().clamp_min(1e-12))
    best = None
    # a few starts (which term carries the error), then L-BFGS on the log parameters
    for a0, b0, c0 in ((1.0, 0.5 * v0, 1e-3 * v0), (10.0, 0.1 * v0, 0.1 * v0 / max(float(m2.mean()), 1e-12)),
                       (1.0, 0.9 * v0, 1e-6)):
        p = torch.tensor([math.log(max(a0, 1e-12)), math.log(max(b0, 1e-12)), math.log(max(c0, 1e-12))],
                         dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([p], lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")
        opt.step(_Closure(opt, p, s2, m2, r2))
        with torch.no_grad():
            q = p.clamp(-40.0, 20.0)
            val = float(_nll(q[0], q[1], q[2], s2, m2, r2))
        if math.isfinite(val) and (best is None or val < best[0]):
            best = (val, q.detach().clone())
    if best is None:
        return None
    a, b, c = torch.exp(best[1]).tolist()
    return float(a), float(b * scale ** 2), float(c)


def coverage(mean: np.ndarray, std: np.ndarray, obs: np.ndarray, z: float) -> float | None:
    """Share of finite days with |obs - mean| <= z std (all series and days pooled)."""
    ok = np.isfinite(obs) & np.isfinite(mean) & np.isfinite(std)
    if not ok.any():
        return None
    return float((np.abs(obs[ok] - mean[ok]) <= z * std[ok]).mean())


def calibrated_std(mean: np.ndarray, spread: np.ndarray, a, b, c) -> np.ndarray:
    """numpy form of `SpreadCalibration.std` for arrays (..., R)."""
    a, b, c = (np.asarray(x, np.float64) for x in (a, b, c))
    return np.sqrt(np.maximum(a * spread.astype(np.float64) ** 2 + b + c * mean.astype(np.float64) ** 2, 0.0))


def fit_calibration(mean: np.ndarray, spread: np.ndarray, obs: np.ndarray, response_names: Sequence[str],
                    info: Mapping | None = None) -> dict:
    """The payload entry fitted on (N, T, R) arrays of validation series (NaN: not scored), with
    the validation coverage before and after per variable. A variable too short to fit keeps the
    identity (a=1, b=c=0), and the entry says so."""
    R = len(response_names)
    a, b, c = np.ones(R), np.zeros(R), np.zeros(R)
    unfitted, val = [], {}
    for r, name in enumerate(response_names):
        got = fit_one(mean[..., r].ravel(), spread[..., r].ravel(), obs[..., r].ravel())
        if got is None:
            unfitted.append(name)
        else:
            a[r], b[r], c[r] = got
        sd = calibrated_std(mean[..., r], spread[..., r], a[r], b[r], c[r])
        val[name] = {f"raw_{k}sd": coverage(mean[..., r], spread[..., r], obs[..., r], z) for k, z in Z_LEVELS.items()}
        val[name].update({f"calibrated_{k}sd": coverage(mean[..., r], sd, obs[..., r], z) for k, z in Z_LEVELS.items()})
    return {"form": FORM, "method": METHOD, "a": a.tolist(), "b": b.tolist(), "c": c.tolist(),
            "response_names": list(response_names), "unfitted": unfitted, "validation_coverage": val,
            **dict(info or {})}


def validation_pairs(store, max_series: int = CAL_SERIES, seed: int = 0) -> np.ndarray:
    """(N, 2) validation (member, gridcell) pairs: a validation member or gridcell, never a test one
    (the pairs the training loop validates on), a seeded subset of at most `max_series`."""
    from ppe_ingest.store import TRAIN, VAL

    pairs = store.pairs([TRAIN, VAL], [TRAIN, VAL])
    pairs = pairs[(store.split_member[pairs[:, 0]] == VAL) | (store.split_gridcell[pairs[:, 1]] == VAL)]
    if len(pairs) > max_series:
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), max_series, replace=False))]
    return pairs

