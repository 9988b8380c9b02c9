"""Per-site calibration: each observed site's own parameters, fitted by gradient descent through the
frozen forward model, with the same bounds and prior scale (the parameter table's; inverse.scale) and
an uncertainty from an ensemble.

g_A and g_z learn one mapping from attributes to parameters over all sites; that needs many sites
(a regional mapping). With a handful of gauged basins there is nothing regional to learn: a network
with thousands of weights fits any per-site values exactly and says nothing about a new site. The
honest estimate is then each site's own calibration, as the CTSM-over-CAMELS calibration does basin
by basin (Tang, Wood & Swenson 2025). `choose_method` picks it when the observed sites are fewer
than PER_SITE_MAX_SITES (see there).

Parameters are held as logits z per (member, site, param); theta = from_unit(sigmoid(z)), so every
value stays inside its bounds. The loss is 1 - NSE per site and variable on the scored calibration
days plus a weak Gaussian prior on z centred on the table default (PRIOR_SD in logit units), which
keeps a parameter the data cannot pin down near its default instead of drifting onto a bound.
Multi-start: before the gradient steps, `screen` Latin-hypercube candidates per site (and the default)
are run through the forward model without gradients (cheap: one batched run) and each ensemble
member starts from one of the best of them, so the descent starts in the right basin of attraction
rather than wherever the default happens to lie.
Uncertainty: each ensemble member starts from its own good candidate and fits its own block
bootstrap of the calibration days (BLOCK_DAYS-day blocks resampled with replacement; member 0
fits the days as they are), so the spread of the members is the spread the calibration data allow.
Sites without observations keep the table default, with the prior's spread as their std.
"""
from __future__ import annotations

import numpy as np
import torch

from ..forward import ForwardModel
from .problem import InverseProblem

# Below this many observed sites `inverse.method: auto` calibrates each site on its own. g_A's network
# reads ~20-40 attributes (static fields, their logs, forcing means, location): with fewer sites than
# about that many, even a linear map interpolates any set of per-site values, so the "regional"
# mapping is no more than per-site calibration with extra freedom and nothing held out to test it.
PER_SITE_MAX_SITES = 20
PRIOR_SD = 2.0        # logit units: the prior's 95 % range covers nearly the whole unit interval
BLOCK_DAYS = 30       # block length of the bootstrap of the calibration days


def choose_method(method: str, n_observed: int) -> str:
    """`auto`: per_site below PER_SITE_MAX_SITES observed sites, else g_z; any other method as given."""
    if method != "auto":
        return method
    return "per_site" if n_observed < PER_SITE_MAX_SITES else "g_z"


def _logit(u: torch.Tensor) -> torch.Tensor:
    u = u.clamp(1e-4, 1 - 1e-4)
    return torch.log(u) - torch.log1p(-u)


def bootstrap_weights(n_days: int, n_members: int, block: int, gen: torch.Generator) -> torch.Tensor:
    """(M, n_days) day weights: member 0 all ones; the others count each day as often as its
    BLOCK-day block is drawn in a block bootstrap (with replacement)."""
    n_blocks = max(1, -(-n_days // block))
    w = torch.ones(n_members, n_days)
    for m in range(1, n_members):
        counts = torch.bincount(torch.randint(0, n_blocks, (n_blocks,), generator=gen), minlength=n_blocks)
        w[m] = counts.repeat_interleave(block)[:n_days].float()
    return w


def weighted_nse_loss(sim: torch.Tensor, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(M, S) of 1 - NSE per member and site, summed over variables: sim, obs (M, S, T, R) with NaN
    gaps in obs, w (M, 1, T, 1) day weights (zero where a day is not scored)."""
    ok = torch.isfinite(obs) & (w > 0)
    wt = torch.where(ok, w.expand_as(obs), torch.zeros_like(obs))
    o = torch.where(ok, obs, torch.zeros_like(obs))
    n = wt.sum(2, keepdim=True).clamp_min(1e-9)
    mo = (wt * o).sum(2, keepdim=True) / n
    num = (wt * (sim - o) ** 2).sum(2)
    den = (wt * (o - mo) ** 2).sum(2)
    good = (ok.sum(2) > 2) & (den > 0)
    return torch.where(good, num / torch.where(good, den, torch.ones_like(den)), torch.zeros_like(den)).sum(-1)


def screen_candidates(problem: InverseProblem, forward: ForwardModel, obs_idx: np.ndarray, last: int,
                      weights: torch.Tensor, n: int, keep: int, gen: torch.Generator,
                      batch: int = 1024) -> torch.Tensor:
    """(keep, S, P) unit-space starting points per observed site by 1 - NSE on the weighted days: the
    best of the default, `n` Latin-hypercube candidates and `n/2` more around each site's best of
    those, all run without gradients in batches."""
    P, S = problem.n_params, len(obs_idx)
    t = torch.as_tensor(obs_idx)

    def lhs(k):
        strata = torch.stack([torch.randperm(k, generator=gen) for _ in range(P)], 1)
        return (strata + torch.rand(k, P, generator=gen)) / k

    def losses(u):  # u (K, S, P) -> (K, S) 1 - NSE of each candidate at each site
        K = u.shape[0]
        flat_u, site = u.reshape(K * S, P), torch.arange(S).repeat(K)
        out = torch.empty(K * S)
        with torch.no_grad():
            for i in range(0, K * S, batch):
                st = site[i:i + batch]
                y = forward(problem.forcing[t[st], :last], problem.static[t[st]],
                            problem.full_theta(problem.from_unit(flat_u[i:i + batch])))[..., problem.response_index]
                out[i:i + batch] = weighted_nse_loss(y[None], problem.obs[t[st], :last][None], weights)[0]
        return torch.nan_to_num(out.reshape(K, S), nan=float("inf"))

    # round 1: the default and a Latin hypercube over the whole box, the same candidates at every site
    u = torch.cat([problem.to_unit(problem.default)[None].clamp(0, 1), lhs(n)])[:, None].expand(-1, S, -1)
    loss = losses(u)
    # round 2: half as many around each site's best (a box of +-0.1 in unit space)
    best = u[loss.argmin(0), torch.arange(S)]                                          # (S, P)
    u2 = (best[None] + 0.2 * (lhs(max(n // 2, 1))[:, None] - 0.5)).clamp(0, 1)       # (n/2, S, P)
    u, loss = torch.cat([u, u2]), torch.cat([loss, losses(u2)])
    order = loss.argsort(0)[:keep]                                                   # (keep, S)
    return u[order, torch.arange(S)[None]]


def fit_per_site(problem: InverseProblem, forward: ForwardModel, steps: int = 300, lr: float = 0.05,
                 n_members: int = 3, warmup_days: int = 180, seed: int = 0, prior_sd: float = PRIOR_SD,
                 block_days: int = BLOCK_DAYS, progress=None, screen: int = 0):
    """Calibrate every observed site's parameters; returns (theta (N, P), theta_std (N, P), loss history per member).

    All members and sites run as one batch through the forward model, only up to the last
    calibration day. theta is the members' mean in unit space, theta_std their spread (law of total variance
    over members is just their variance here: each member is a point estimate).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    obs_idx = np.flatnonzero(problem.observed)
    N, P = len(problem.entity), problem.n_params
    default_u = problem.to_unit(problem.default).clamp(1e-3, 1 - 1e-3)
    z0 = _logit(default_u)
    theta = problem.default.expand(N, -1).clone()
    prior_std_unit = torch.full((P,), 0.25)   # sd of the prior mapped to [0, 1] (about 1/sqrt(12) + tails)
    theta_std = _unit_std_to_physical(problem, default_u.expand(N, -1), prior_std_unit.expand(N, -1))
    if len(obs_idx) == 0:
        return theta, theta_std, []
    train = torch.as_tensor(problem.train_time.copy())
    train[:warmup_days] = False
    last = int(np.flatnonzero(train.numpy()).max()) + 1 if train.any() else problem.forcing.shape[1]
    M, S = n_members, len(obs_idx)
    t = torch.as_tensor(obs_idx)
    forcing = problem.forcing[t, :last].repeat(M, 1, 1)
    static = problem.static[t].repeat(M, 1)
    obs = problem.obs[t, :last].expand(M, -1, -1, -1)                       # (M, S, T, R)
    w = bootstrap_weights(last, M, block_days, gen) * train[:last].float()[None]
    w = w[:, None, :, None]
    if screen:
        z = _logit(screen_candidates(problem, forward, obs_idx, last, w[:1], screen, M, gen)).clone()
    else:
        z = z0.expand(M, S, P) + torch.cat([torch.zeros(1, S, P), 0.5 * torch.randn(M - 1, S, P, generator=gen)])
    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * 0.1)
    hist = [[] for _ in range(M)]
    days = float(w.sum((2, 3)).mean().clamp_min(1.0))
    for _ in range(steps):
        u = torch.sigmoid(z)
        th = problem.from_unit(u.reshape(M * S, P))
        sim = forward(forcing, static, problem.full_theta(th))[..., problem.response_index]
        sim = sim.reshape(M, S, last, -1)
        data = weighted_nse_loss(sim, obs, w)                                 # (M, S)
        # the prior counts as much as one day of data per site and parameter: weak
        prior = 0.5 * (((z - z0) / prior_sd) ** 2).sum(-1) / days
        loss = (data + prior).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        per_member = (data.detach().mean(1)).tolist()
        for m in range(M):
            hist[m].append(per_member[m])
        if progress is not None:
            progress.update(1)
    with torch.no_grad():
        u = torch.sigmoid(z)                                                  # (M, S, P)
        th = problem.from_unit(u.reshape(M * S, P)).reshape(M, S, P)
        # the members' centre in the space the calibration searches (inverse.scale): on the log
        # scale a physical mean of log-scaled values is pulled toward the largest member
        theta[t] = problem.from_unit(u.mean(0))
        theta_std[t] = th.std(0, unbiased=False) if M > 1 else torch.zeros(S, P)
    return theta, theta_std, hist


def with_data_spread(problem: InverseProblem, theta: torch.Tensor, theta_std: torch.Tensor,
                     ratio_obs: np.ndarray) -> torch.Tensor:
    """theta_std at the observed sites, at least the linearised posterior sd of the site's data.

    The block-bootstrap members are point estimates: where every member ends on a bound (the data
    push the parameter past it) their spread is zero, though the data only say the value is near
    the bound. ``ratio_obs`` (n_observed, P): posterior-to-prior variance ratios at the solution
    (esm_emu.inverse.identifiability.assess), so the posterior sd in unit space is sqrt(ratio / 12).
    The larger of the two is kept (both estimate the same spread; adding them would count it twice).
    """
    obs = torch.as_tensor(np.asarray(problem.observed, bool))
    if not bool(obs.any()):
        return theta_std
    u = problem.to_unit(theta[obs]).clamp(0, 1)
    ratio = np.clip(np.nan_to_num(np.asarray(ratio_obs, np.float64), nan=1.0), 0.0, 1.0)
    sd_u = torch.as_tensor(np.sqrt(ratio / 12.0), dtype=theta.dtype)
    out = theta_std.clone()
    out[obs] = torch.maximum(theta_std[obs], _unit_std_to_physical(problem, u, sd_u))
    return out


def _unit_std_to_physical(problem: InverseProblem, u: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """A std in unit space at u as a std in physical units (half the width of from_unit(u +- sd))."""
    hi = problem.from_unit((u + sd).clamp(0, 1))
    lo = problem.from_unit((u - sd).clamp(0, 1))
    return (hi - lo) / 2


def per_site_skill(inv_metrics: dict, names: dict | None = None) -> dict:
    """``{site: {default|inferred: {variable: {nse, kge, bias}}}}`` from an inversion's metrics
    (`skill_test_period`, the held-out period); `names` maps an entity id to the site's own name
    (a gauge id) where they differ."""
    names = names or {}
    out: dict = {}
    for which, by_var in (inv_metrics.get("skill_test_period") or {}).items():
        for v, d in (by_var or {}).items():
            bias = d.get("bias") or [None] * len(d.get("entity", []))
            for i, e in enumerate(d.get("entity", [])):
                site = names.get(str(e), str(e))
                out.setdefault(site, {}).setdefault(which, {})[v] = {"nse": d["nse"][i], "kge": d["kge"][i],
                                                                    "bias": bias[i]}
    return out


def site_names(pmap, obs) -> dict:
    """Entity id -> observation site id, by nearest location (the entities of a store are numbered)."""
    from ppe_ingest.base.geometry import nearest_gridcell

    la, lo = next(((a, b) for a, b in (("grid1d_lat", "grid1d_lon"), ("site_lat", "site_lon")) if a in pmap),
                  (None, None))
    if obs is None or "site_lat" not in obs or la is None:
        return {}
    dim = pmap[la].dims[0]
    loc, _ = nearest_gridcell(obs["site_lat"].values, obs["site_lon"].values, pmap[la].values,
                              pmap[lo].values, max_deg=0.5)
    ids = pmap[dim].values
    return {str(ids[j]): str(s) for s, j in zip(obs["site"].values, loc) if j >= 0}
