"""Differentiable parameter learning (Tsai et al., 2021): a network maps attributes (g_A), or
attributes plus the KGSSL embedding of the observed series (g_z), to parameters bounded by the
parameter table, trained end to end through a frozen forward model with one loss over all sites."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..forward import ForwardModel
from ..metrics import nse_terms
from .problem import InverseProblem


@dataclass
class DPLConfig:
    hidden: int = 64
    dropout: float = 0.1
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch: int = 0  # observed sites per step; 0 = all of them
    loss: str = "nse"  # nse | rmse
    warmup_days: int = 180  # not scored: the forward model's state spins up
    z_dropout: float = 0.5  # g_z: fraction of steps a site's embedding is hidden, so g_z also works without one


class ParamNet(nn.Module):
    """g_A (n_z = 0) or g_z: attributes [+ embedding, has-embedding flag] -> parameters in [0, 1]."""

    def __init__(self, n_attr: int, n_params: int, n_z: int = 0, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.n_z = n_z
        n_in = n_attr + (n_z + 1 if n_z else 0)
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_params))

    def forward(self, attrs: torch.Tensor, z: torch.Tensor | None = None, has_z: torch.Tensor | None = None):
        x = attrs
        if self.n_z:
            has = has_z.float()[:, None]
            x = torch.cat([attrs, z * has, has], -1)
        return torch.sigmoid(self.net(x))


def masked_loss(sim: torch.Tensor, obs: torch.Tensor, time_mask: torch.Tensor, kind: str = "nse",
                scale: torch.Tensor | None = None) -> torch.Tensor:
    """One loss over all sites and variables, gaps (NaN) and unscored times masked.

    nse: mean over (site, variable) of sum((s-o)^2) / sum((o-mean o)^2), i.e. 1 - NSE;
    rmse: RMSE per variable divided by ``scale`` (the variable's observed std), averaged.
    """
    scored = torch.where(time_mask[None, :, None], obs, torch.full_like(obs, float("nan")))
    err, var, n = nse_terms(sim, scored, axis=1)
    if kind == "nse":
        ok = (n > 2) & (var > 0)
        return (err[ok] / var[ok]).mean()
    per_var = torch.sqrt(err.sum(0) / n.sum(0).clamp_min(1))
    return (per_var / scale).mean()


def simulate(problem: InverseProblem, forward: ForwardModel, idx, theta: torch.Tensor, spread=None):
    """Observed variables simulated at entities ``idx`` with inferred parameters ``theta``; with
    ``spread`` (the forward model's (mean, std) method) the pair (mean, ensemble std)."""
    t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    if spread is not None:
        mean, std = spread(problem.forcing[t], problem.static[t], problem.full_theta(theta))
        return mean[..., problem.response_index], std[..., problem.response_index]
    out = forward(problem.forcing[t], problem.static[t], problem.full_theta(theta))
    return out[..., problem.response_index]


def score_mask(problem: InverseProblem, period: np.ndarray, warmup_days: int) -> torch.Tensor:
    m = torch.as_tensor(period.copy())
    m[:warmup_days] = False
    return m


def train_dpl(problem: InverseProblem, forward: ForwardModel, cfg: DPLConfig, z: torch.Tensor | None = None,
              has_z: torch.Tensor | None = None, seed: int = 0, progress=None, on_step=None, trust=None,
              sites=None, init: dict | None = None):
    """Train g_A (z None) or g_z on the observed entities; returns (net, history).

    ``on_step(step, net)``, when given, is called after every optimiser step (benchmarks use it).
    ``trust`` (esm_emu.inverse.trust.TrustRegion) adds its design-coverage penalty on the network's
    output at every entity and, where the forward model gives an ensemble spread, its disagreement
    penalty. ``sites`` restricts training to those observed entities (the rest held out). ``init``
    (a ParamNet state dict of the same shape, e.g. the previous PPE wave's) is where training starts.

    Under ``mpiexec -n N`` (or torchrun) each rank runs the forward model on its share of each step's
    sites (`Distributed.shard`); the simulations are gathered so every rank computes the one loss,
    and the gradients are averaged over ranks: the same steps as one process, to rounding.
    """
    from ..distributed import active
    from .trust import spread_method

    dist = active()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    obs_idx = np.flatnonzero(problem.observed) if sites is None else np.asarray(sites)
    spread = spread_method(forward) if trust is not None and trust.spread_weight else None
    if len(obs_idx) == 0:
        raise ValueError("no observed entity has data in the training period")
    if dist.world_size > min(len(obs_idx), cfg.batch or len(obs_idx)):
        from ppe_ingest.base.errors import UserError

        raise UserError(f"inverse.dpl: {min(len(obs_idx), cfg.batch or len(obs_idx))} observed sites per step "
                        f"cannot be shared by {dist.world_size} ranks (run fewer ranks)")
    net = ParamNet(problem.attrs.shape[1], problem.n_params, 0 if z is None else z.shape[1], cfg.hidden, cfg.dropout)
    if init is not None:
        net.load_state_dict(init)
    dist.broadcast_parameters(net)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1), eta_min=cfg.lr * 0.05)
    tmask = score_mask(problem, problem.train_time, cfg.warmup_days)
    train_obs = problem.obs[obs_idx][:, problem.train_time].numpy()
    scale = torch.as_tensor(np.nanstd(train_obs, axis=(0, 1))).clamp_min(1e-12)
    hist = {"loss": []}
    for step in range(cfg.steps):
        idx = obs_idx if not cfg.batch or cfg.batch >= len(obs_idx) else rng.choice(obs_idx, cfg.batch, replace=False)
        t = torch.as_tensor(idx)
        net.train()
        if z is None:
            u = net(problem.attrs[t])
        else:
            keep = has_z[t] & (torch.rand(len(idx)) >= cfg.z_dropout)
            u = net(problem.attrs[t], z[t], keep)
        std = None
        mine = dist.shard(len(idx))  # this rank's sites (all of them on one process)
        if spread is not None:
            sim, std = simulate(problem, forward, idx[mine], problem.from_unit(u[mine]), spread)
            std = dist.gather_rows(std, len(idx))
        else:
            sim = simulate(problem, forward, idx[mine], problem.from_unit(u[mine]))
        sim = dist.gather_rows(sim, len(idx))
        loss = masked_loss(sim, problem.obs[t], tmask, cfg.loss, scale)
        if trust is not None:
            u_all = net(problem.attrs) if z is None else net(problem.attrs, z, has_z)
            loss = loss + trust.design_penalty(u_all) + trust.spread_penalty(std, scale, tmask)
        opt.zero_grad()
        loss.backward()
        dist.average_gradients(net.parameters())
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        hist["loss"].append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
        if on_step is not None:
            on_step(step, net)
    return net.eval(), hist


def predict(net: ParamNet, problem: InverseProblem, z: torch.Tensor | None = None,
            has_z: torch.Tensor | None = None, mc_samples: int = 0) -> torch.Tensor:
    """Parameters (physical units) at every entity: (N, P), or (mc_samples, N, P) with MC dropout on."""
    with torch.no_grad():
        if mc_samples:
            net.train()
            out = torch.stack([problem.from_unit(net(problem.attrs, z, has_z)) for _ in range(mc_samples)])
            net.eval()
            return out
        net.eval()
        return problem.from_unit(net(problem.attrs, z, has_z))
