"""Training losses that score what users score.

`SequenceLoss` returns per scored variable the masked sum of squared errors and the count of
scored values; the loop divides one by the other. What it scores (`train.loss`):

- ``normalized``: errors of normalised responses (log space for log-transformed runoff);
- ``physical``: errors in physical units / the variable's training-split std;
- ``both``: the mean of the two;
- ``nse``: NSE* (Kratzert et al. 2019; NeuralHydrology's NSELoss): each series' squared errors
  divided by (that series' std + eps)^2, so a dry gridcell weighs as much as a wet one, as a
  median of per-series NSE does. Runoff (the log-transformed variables) is scored in
  ``train.runoff_space``: ``physical`` (peaks dominate), ``log`` (recessions and low flows
  dominate) or ``blend`` (the mean of the two NSE*s: peaks and recessions both count).

Series stds are computed once over the training years of each (member, gridcell) series
(`series_scales`), in the units each space scores in. Masked values (gaps, warm-up, held-out
years: NaN in the store) count nowhere: they are replaced before any arithmetic so no NaN reaches
the gradient, and they are left out of the counts.

With `model.runoff: components` the emulator predicts QOVER and QDRAI and gives QRUNOFF as their
sum; the loss then scores the components and the sum (the variable users score), so
`scored_names` can be longer than the core's outputs.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

LOSSES = ("normalized", "physical", "both", "nse")
RUNOFF_SPACES = ("blend", "physical", "log")
NSE_EPS = 0.1  # NeuralHydrology's eps, in units of the variable's global std
COMPONENT_WEIGHT = 1.0  # the components of a summed response (QOVER + QDRAI) together weigh one response


class SequenceLoss(nn.Module):
    """Per-variable masked squared error: forward(...) -> (sse (V,), count (V,)) over scored variables.

    `score_scaler` normalises the scored variables that are sums of core outputs (their log space);
    `phys_std` (V,) the training-split std of every scored variable in physical units; `is_log` (V,)
    which ones are runoff (log-transformed). A module so DistributedDataParallel sees the whole pass.
    """

    def __init__(self, emu, kind: str = "both", phys_std: np.ndarray | None = None,
                 runoff_space: str = "blend", score_scaler: nn.Module | None = None,
                 is_log: np.ndarray | None = None):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss {kind!r} is not one of {LOSSES}")
        if runoff_space not in RUNOFF_SPACES:
            raise ValueError(f"runoff_space {runoff_space!r} is not one of {RUNOFF_SPACES}")
        self.emu = emu
        self.kind, self.runoff_space = kind, runoff_space
        combine = emu.combine.detach().cpu().numpy()
        self.n_core = combine.shape[1]
        # scored: every core output, then every response that is a sum of several core outputs
        extra = [r for r in range(combine.shape[0]) if (combine[r] != 0).sum() > 1]
        ex = torch.as_tensor(combine[extra], dtype=torch.float32).reshape(len(extra), self.n_core)
        self.register_buffer("extra", ex)
        self.scored_names = list(emu.core_names) + [emu.response_names[r] for r in extra]
        n = len(self.scored_names)
        scale = torch.ones(n) if phys_std is None else torch.as_tensor(np.asarray(phys_std), dtype=torch.float32)
        self.register_buffer("phys_scale", torch.where(scale > 0, scale, torch.ones_like(scale)))
        log = emu.norm.response.log.detach().cpu().numpy() if is_log is None else np.asarray(is_log)
        if len(log) == self.n_core:
            log = np.concatenate([log, np.ones(len(extra), bool)])
        self.register_buffer("is_log", torch.as_tensor(log, dtype=torch.bool))
        self.score_scaler = score_scaler
        # every response the user asked for weighs 1; the components of a summed response share
        # COMPONENT_WEIGHT (the sum itself is scored too), so adding QOVER and QDRAI does not
        # take weight from EFLX_LH_TOT and SOILWATER_10CM. Scaled so the weights average to 1.
        vw = np.array([1.0 if nm in emu.response_names else COMPONENT_WEIGHT / max(1, self._n_components(emu))
                       for nm in self.scored_names])
        self.register_buffer("var_weight", torch.as_tensor(vw * len(vw) / vw.sum(), dtype=torch.float32))

    @staticmethod
    def _n_components(emu) -> int:
        return sum(1 for nm in emu.core_names if nm not in emu.response_names)

    def spaces(self) -> torch.Tensor:
        """(2, V) weights of the physical and the normalised error of each scored variable."""
        if self.kind == "normalized":
            w = torch.stack([torch.zeros_like(self.phys_scale), torch.ones_like(self.phys_scale)])
        elif self.kind == "physical":
            w = torch.stack([torch.ones_like(self.phys_scale), torch.zeros_like(self.phys_scale)])
        elif self.kind == "both":
            w = torch.full((2, len(self.phys_scale)), 0.5, device=self.phys_scale.device)
        else:  # nse: physical space for the linear variables, runoff_space for runoff
            lg = self.is_log.float()
            wp = {"physical": 1.0, "log": 0.0, "blend": 0.5}[self.runoff_space]
            w = torch.stack([1 - lg + lg * wp, lg * (1 - wp)])
        return w

    def forward(self, forcing, static, theta, target, mask, weight=None):
        """target/mask (B, L, C) over the core outputs; weight (B, 2, V): 1 / (series std + eps)^2 in the
        physical and the normalised space (NSE*), or None (every series weighs the same)."""
        emu = self.emu
        # masked targets are NaN (gaps, held-out years); where() alone would still back-propagate
        # 0 * NaN = NaN through the unselected branch, so they are replaced before the error is formed
        target = torch.where(mask, target, torch.zeros_like(target))
        zp, _ = emu.forward_normalized(emu.norm.forcing(forcing), emu.conditioning(static, theta))
        zp = zp.float()
        zt = emu.norm.response(target)
        pp = emu.norm.response.inverse(zp)
        if len(self.extra):  # sums of core outputs (QRUNOFF = QOVER + QDRAI), scored as users score them
            ex = self.extra
            pe, te = pp @ ex.t(), target @ ex.t()
            me = torch.stack([mask[..., ex[k] != 0].all(-1) for k in range(len(ex))], -1)
            te = torch.where(me, te, torch.zeros_like(te))
            sc = self.score_scaler
            pp, target, mask = torch.cat([pp, pe], -1), torch.cat([target, te], -1), torch.cat([mask, me], -1)
            zp, zt = torch.cat([zp, sc(pe)], -1), torch.cat([zt, sc(te)], -1)
        w = self.spaces()
        err = 0.0
        if bool((w[0] > 0).any()):
            perr = ((pp - target) / self.phys_scale) ** 2
            err = err + w[0] * (perr if weight is None else perr * weight[:, 0, None, :])
        if bool((w[1] > 0).any()):
            nerr = (zp - zt) ** 2
            err = err + w[1] * (nerr if weight is None else nerr * weight[:, 1, None, :])
        se = torch.where(mask, err, torch.zeros_like(err))
        return se.sum((0, 1)) * self.var_weight, mask.sum((0, 1)).to(se.dtype)


def series_scales(values: np.ndarray, scaler, phys_std: np.ndarray, days: np.ndarray,
                  eps: float = NSE_EPS) -> np.ndarray:
    """NSE* weights (M, G, 2, V): 1 / (std + eps)^2 of each series over `days`, in the physical space
    (/ `phys_std`) and in the normalised space of `scaler` (log space for runoff).

    values (M, G, T, V) physical, NaN where missing; a series with fewer than two finite days gets
    the median weight of its variable."""
    M, G, _, V = values.shape
    out = np.empty((M, G, 2, V), np.float32)
    mean = scaler.mean.detach().cpu().numpy().astype(np.float64)
    std = scaler.std.detach().cpu().numpy().astype(np.float64)
    log = scaler.log.detach().cpu().numpy()
    e = float(scaler.eps)
    for v in range(V):
        x = values[:, :, days, v].astype(np.float64)
        n = np.isfinite(x).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN series: handled below
            sp = np.nanstd(x, -1) / (phys_std[v] if phys_std[v] > 0 else 1.0)
            z = ((np.log(np.clip(x, 0, None) + e) if log[v] else x) - mean[v]) / std[v]
            sn = np.nanstd(z, -1)
        del x, z
        for k, s in enumerate((sp, sn)):
            w = 1.0 / (s + eps) ** 2
            ok = (n >= 2) & np.isfinite(w)
            w = np.where(ok, w, np.median(w[ok]) if ok.any() else 1.0)
            out[:, :, k, v] = w
    return out
