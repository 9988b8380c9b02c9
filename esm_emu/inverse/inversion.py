"""The whole inversion in one call: KGSSL pretraining, dPL through the frozen forward model, an
ensemble for theta_std, evaluation against observations (and the truth in a twin experiment)."""
from __future__ import annotations

import time as _time
from dataclasses import dataclass, fields
from dataclasses import replace as _replace
from typing import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from ppe_ingest.base.errors import UserError

from ..distributed import active as _active
from ..forward import ForwardModel
from . import dpl as _dpl
from .config import inverse_config
from .identifiability import PRIOR_PRECISION
from .kgssl import KGSSLConfig, KGSSLData, embed_entities, train_kgssl
from .param_map import build_param_map, cluster_param_map, param_values_at
from .problem import InverseProblem, build_problem
from .report import write_outputs
from .uncertainty import UncertaintyConfig, combine, coverage, interval_inside, unit_interval

IDENTIFIABLE_MIN = 0.05  # one-at-a-time sensitivity reported beside the linearised identifiability


def _section(cls, cfg: Mapping, key: str):
    """The validated section ``cfg[key]`` as its dataclass; a key the dataclass lacks is a UserError."""
    values = cfg[key]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"inverse.{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    return cls(**values)


@dataclass(frozen=True)
class InversionSettings:
    """The ``inverse:`` section as typed objects (the schema in esm_emu.inverse.config holds the defaults)."""

    params: list | None
    variables: list
    train_period: Mapping | None
    test_period: Mapping | None
    method: str
    ablation: bool
    clusters: int
    seed: int
    kgssl: KGSSLConfig
    dpl: _dpl.DPLConfig
    uncertainty: UncertaintyConfig
    max_site_distance_deg: float | None = None  # None: the schema's default
    shared_gridcells: bool = False
    scale: str = "linear"  # the parameters' prior and search scale (problem.SCALES)
    identifiability: Mapping | None = None
    trust: Mapping | None = None

    @classmethod
    def from_config(cls, cfg: Mapping) -> InversionSettings:
        """From a validated ``inverse:`` mapping (esm_emu.inverse.config.inverse_config)."""
        return cls(params=cfg["params"], variables=list(cfg["variables"]), train_period=cfg["train_period"],
                   test_period=cfg["test_period"], method=cfg["method"], ablation=bool(cfg["ablation"]),
                   clusters=int(cfg["clusters"]), seed=int(cfg["seed"]), kgssl=_section(KGSSLConfig, cfg, "kgssl"),
                   dpl=_section(_dpl.DPLConfig, cfg, "dpl"),
                   uncertainty=_section(UncertaintyConfig, cfg, "uncertainty"),
                   max_site_distance_deg=float(cfg["max_site_distance_deg"]),
                   shared_gridcells=bool(cfg["shared_gridcells"]), scale=str(cfg["scale"]),
                   identifiability=dict(cfg["identifiability"]), trust=dict(cfg["trust"]))


def _bar(total: int, desc: str, enabled: bool):
    from ppe_ingest.base.progress import progress

    return progress(total=total, desc=desc, enabled=enabled, leave=False)


def ppe_samples(problem: InverseProblem, forward: ForwardModel, per_entity: int, seed: int,
                noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A PPE through the forward model at every entity: Latin-hypercube theta in the table bounds.

    Returns (forcing, response (observed variables), theta_unit, entity index) for N*per_entity samples.
    """
    g = torch.Generator().manual_seed(seed)
    N, P = problem.forcing.shape[0], problem.n_params
    n = N * per_entity
    # Latin hypercube: one stratum per sample and parameter, shuffled per parameter
    u = (torch.stack([torch.randperm(n, generator=g) for _ in range(P)], 1) + torch.rand(n, P, generator=g)) / n
    ent = torch.arange(N).repeat_interleave(per_entity)
    y = forward.chunked(problem.forcing[ent], problem.static[ent], problem.full_theta(problem.from_unit(u)))
    y = y[..., problem.response_index]
    if noise:
        y = y + noise * y.std((0, 1)) * torch.randn(y.shape, generator=g)
    return problem.forcing[ent], y, u, ent


def _pearson(a, b) -> float:
    m = np.isfinite(a) & np.isfinite(b)
    if m.sum() < 3 or np.std(a[m]) == 0 or np.std(b[m]) == 0:
        return float("nan")
    return float(np.corrcoef(a[m], b[m])[0, 1])


def recovery(true: np.ndarray, est: np.ndarray, std: np.ndarray | None, names: Sequence[str],
             where: np.ndarray, level: float, interval: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Per-parameter r, RMSE and interval coverage over the entities selected by ``where``
    (coverage of ``interval`` (lower, upper) when given, else of the Gaussian interval from ``std``)."""
    out = {}
    for j, p in enumerate(names):
        t, e = true[where, j], est[where, j]
        ok = np.isfinite(t) & np.isfinite(e)
        d = {"r": _pearson(t, e), "rmse": float(np.sqrt(np.mean((t[ok] - e[ok]) ** 2))) if ok.any() else float("nan"),
             "n": int(ok.sum())}
        if interval is not None and ok.any():
            lo, hi = interval[0][where, j][ok], interval[1][where, j][ok]
            d["coverage"] = float(interval_inside(t[ok], lo, hi).mean())
            d["interval_width_median"] = float(np.median(hi - lo))
        elif std is not None and ok.any():
            d["coverage"] = float(coverage(t[ok], e[ok], std[where, j][ok], level))
        out[p] = d
    return out


def sensitivity(problem: InverseProblem, forward: ForwardModel, idx: np.ndarray) -> dict:
    """One-at-a-time sensitivity of the observed responses to each parameter over its range.

    For each parameter the responses at ``idx`` are simulated with it at min and at max (others at
    default); the figure is the RMS difference divided by the response's std, per variable, max
    over variables. Near zero means the observations cannot identify the parameter.
    """
    t = torch.as_tensor(idx)
    base = problem.default.expand(len(idx), -1).clone()
    sd = problem.obs[t][:, problem.train_time].numpy()
    ref = np.nanstd(sd, axis=(0, 1))
    runs = {}
    for j, p in enumerate(problem.param_names):
        ys = []
        for v in (problem.lo[j], problem.hi[j]):
            th = base.clone()
            th[:, j] = v
            y = forward.chunked(problem.forcing[t], problem.static[t], problem.full_theta(th))
            ys.append(y[..., problem.response_index])
        diff = torch.sqrt(((ys[1] - ys[0]) ** 2).mean((0, 1))).numpy()
        if not np.isfinite(ref).all() or (ref == 0).any():
            ref = ys[0].std((0, 1)).numpy()
        runs[p] = float(np.max(diff / np.where(ref > 0, ref, 1)))
    return runs


def skill(problem: InverseProblem, forward: ForwardModel, theta: torch.Tensor, idx: np.ndarray,
          period: np.ndarray) -> dict:
    """NSE and KGE per observed variable and entity in a period (median over entities)."""
    from esm_emu.metrics import kge, nse

    t = torch.as_tensor(idx)
    sim = forward.chunked(problem.forcing[t], problem.static[t], problem.full_theta(theta[t]))
    sim = sim[..., problem.response_index]
    out = {}
    for k, v in enumerate(problem.variables):
        s = sim[:, period, k].numpy().astype(np.float64)
        o = problem.obs[t][:, period, k].numpy().astype(np.float64)
        ok = np.isfinite(o).sum(1) > 2
        n_, k_ = nse(s[ok], o[ok]), kge(s[ok], o[ok])
        out[v] = {"nse_median": float(np.nanmedian(n_)) if ok.any() else float("nan"),
                  "kge_median": float(np.nanmedian(k_)) if ok.any() else float("nan"),
                  "nse": [float(x) for x in n_], "kge": [float(x) for x in k_],
                  # relative volume bias: mean(sim - obs) / mean(obs) over the observed days
                  "bias": [float(np.nanmean(np.where(np.isfinite(oo), ss - oo, np.nan)) / np.nanmean(oo))
                           for ss, oo in zip(s[ok], o[ok])],
                  "entity": [str(x) for x in problem.entity[idx][ok]]}
    return out


@dataclass
class Pretrained:
    """KGSSL at every entity: the standardized embedding z (zeros where none), whether the entity
    has one, KGSSL's own theta (NaN where unobserved) and its loss history."""

    z: torch.Tensor
    has_z: torch.Tensor
    theta: torch.Tensor
    history: dict


def run_inversion(cfg: Mapping, entities: xr.Dataset, observations: xr.Dataset | None, forward: ForwardModel,
                  table, out_dir=None, truth: xr.Dataset | None = None, progress: bool = True,
                  sources: Sequence[str] = (), design: Mapping | None = None,
                  emulator_error: Mapping | None = None,
                  reference: ForwardModel | None = None, held_out: Mapping | None = None,
                  warm_from=None, warm_steps: int | None = None) -> tuple[xr.Dataset, dict]:
    """Infer theta at every entity from observations at some of them.

    ``cfg`` is the ``inverse:`` section (see ``esm_emu.inverse.config``; validated here, so an
    unknown key is a UserError); ``entities`` holds (gridcell|site, time) forcing and static
    fields; ``observations`` follows the observation schema. Returns the parameter map and a
    metrics dict; with ``out_dir`` both are written there (``parameter_map.nc``,
    ``metrics.json``) with plots.

    ``design`` (param name -> PPE member values) bounds the trust region; ``emulator_error``
    (variable -> held-out RMSE of the forward model) widens the intervals, as does the parameter error
    of inverting ``held_out`` PPE series (forcing, static, theta, response of the members the emulator
    was not trained on) through the forward model, where the answer is known; ``reference``, in a twin
    experiment, is the true model (the built-in simulator): the truth's and the estimates' skill
    through it is reported beside the forward model's own. ``warm_from`` (a previous PPE wave's
    ``inverse_state.pt``) starts the dPL members from that wave's weights, on its KGSSL embedding
    (no KGSSL pretraining), for ``warm_steps`` steps (default inverse.dpl.steps).
    """
    t0 = _time.perf_counter()
    walls = {}
    cfg = inverse_config(dict(cfg))
    s = InversionSettings.from_config(cfg)
    torch.manual_seed(s.seed)

    from ..routing import with_routing
    from .per_site import choose_method, fit_per_site

    forward, routed_params = with_routing(forward, cfg["routing"], s.variables, s.params)  # inverse.routing
    s = _replace(s, params=routed_params)
    problem = _problem(s, entities, observations, forward, table, sources)
    s = _replace(s, method=choose_method(s.method, int(problem.observed.sum())))  # auto: few sites -> per_site
    walls["prepare_s"] = _time.perf_counter() - t0

    pre, warm = None, None
    if warm_from is not None and s.method in ("g_z", "g_A"):
        from .warm import load_state

        warm = load_state(warm_from, problem.param_names, problem.entity, s.uncertainty.ensemble, problem.scale)
        if warm_steps:
            s = _replace(s, dpl=_replace(s.dpl, steps=int(warm_steps)))
        if warm["z"] is not None:
            pre = Pretrained(warm["z"], warm["has_z"], warm["kg_theta"], warm["kg_history"])
    if pre is None and (s.method in ("g_z", "kgssl") or s.ablation):
        t1 = _time.perf_counter()
        pre = pretrain(problem, forward, s.kgssl, s.seed, progress)
        walls["kgssl_s"] = _time.perf_counter() - t1

    trust = trust_region(problem, s, design)
    t2 = _time.perf_counter()
    fit = None
    if s.method == "kgssl":
        theta, theta_std, dpl_hist = pre.theta, torch.zeros_like(pre.theta), []
    elif s.method == "per_site":  # each observed site's own parameters (esm_emu.inverse.per_site)
        ps = cfg["per_site"]
        theta, theta_std, dpl_hist = fit_per_site(problem, forward, ps["steps"], ps["lr"], s.uncertainty.ensemble,
                                                  s.dpl.warmup_days, s.seed, ps["prior_sd"], ps["block_days"],
                                                  screen=ps["screen"])
    else:
        fit = fit_dpl(problem, forward, s, pre, s.method, s.uncertainty.ensemble, s.uncertainty.mc_samples,
                      s.method, progress, trust=trust, holdout=s.uncertainty.holdout,
                      init_states=warm["nets"] if warm is not None else None)
        theta, theta_std, dpl_hist = fit
    walls["dpl_s"] = _time.perf_counter() - t2

    t3 = _time.perf_counter()
    ident, post = _identify(problem, forward, s, theta, fit, emulator_error, held_out)
    if s.method == "per_site":  # a site whose bootstrap members all end on a bound keeps the data's spread
        from .per_site import with_data_spread

        theta_std = with_data_spread(problem, theta, theta_std, ident.ratio)
    interval = None
    if post is not None:  # the estimate and its interval: data, ensemble and regionalisation together
        theta = torch.clamp(problem.from_unit(torch.as_tensor(post.u, dtype=torch.float32)), problem.lo, problem.hi)
        theta_std, interval = _physical_spread(problem, post, s.uncertainty.level)
    metrics = evaluate(problem, forward, s, theta, dpl_hist, pre)
    metrics["identifiability"] = ident.to_dict()
    if post is not None and not np.all(problem.observed):  # how well the map is known away from the data
        away = np.median(PRIOR_PRECISION * post.sd[~np.asarray(problem.observed, bool)] ** 2, axis=0)
        for j, p in enumerate(problem.param_names):
            metrics["identifiability"][p]["posterior_to_prior_variance_unobserved"] = float(away[j])
    metrics["identifiable"] = {p: bool(v) for p, v in zip(problem.param_names, ident.identified)}
    if warm is not None:
        metrics["warm_start"] = {"dpl_steps": s.dpl.steps, "kgssl_embedding_reused": pre is not None}
    metrics["trust_region"] = trust.summary(problem.to_unit(theta).clamp(0, 1).numpy())
    if emulator_error:
        metrics["forward_model_held_out_rmse"] = dict(emulator_error)
    if post is not None:
        metrics["uncertainty_parts_unit_sd_median"] = {
            k: {p: _sd_median_where_counted(v[:, j]) for j, p in enumerate(problem.param_names)}
            for k, v in post.parts.items()}
    if truth is not None:
        ref = None
        if reference is not None:  # the true model's own inputs (its static fields may differ)
            ref = (_problem(s, entities, observations, reference, table, sources), reference)
        metrics.update(_twin_metrics(problem, forward, s, theta, theta_std, pre, truth, progress, interval, ref))
    walls["evaluate_s"] = _time.perf_counter() - t3
    walls["total_s"] = _time.perf_counter() - t0
    metrics["wall_s"] = walls

    pmap = _parameter_map(problem, forward, s, theta, theta_std, cfg, sources, ident, interval)
    if out_dir is not None and _active().is_root:  # under mpiexec every rank has the result; rank 0 writes
        write_outputs(out_dir, pmap, metrics, problem, forward, theta, truth)
        if fit is not None:  # where the next PPE wave's inversion starts
            from .warm import save_state

            save_state(out_dir, problem.param_names, problem.entity, fit.states, pre if s.method == "g_z" else None,
                       problem.scale)
    return pmap, metrics


def _sd_median_where_counted(var: np.ndarray) -> float:
    """Median sd of one interval part over the entities it is counted at (data and emulator: observed;
    regionalisation: unobserved); 0 where it is counted nowhere."""
    counted = var[var > 0]
    return float(np.sqrt(np.median(counted))) if counted.size else 0.0


def trust_region(problem: InverseProblem, s: InversionSettings, design: Mapping | None):
    """The trust region from the PPE design's values of the inferred parameters (no design term without one)."""
    from .trust import TrustRegion

    tc = s.trust or {}
    u = None
    if design is not None and all(p in design for p in problem.param_names):
        th = torch.as_tensor(np.stack([np.asarray(design[p], np.float64) for p in problem.param_names], 1),
                             dtype=torch.float32)
        th = th[torch.isfinite(th).all(1)]
        u = problem.to_unit(th).clamp(0, 1) if len(th) else None
    return TrustRegion.from_design(u, tc.get("design_weight", 1.0), tc.get("spread_weight", 1.0),
                                   tc.get("quantile", 0.9), seed=s.seed)


def forward_parameter_error(problem: InverseProblem, forward: ForwardModel, held_out: Mapping, time_mask,
                            error_var=None) -> np.ndarray:
    """(P,) unit-space error variance the forward model's own error adds to each parameter.

    Held-out PPE series (the simulator's output at known parameters, no observation noise) are
    inverted through the forward model by the same local update the observed sites get, from the
    middle of the range. Their mean squared error holds what the data cannot tell (the update's own
    posterior variance, already in every interval as the data part) and what the emulator's error
    adds; only the excess over the posterior variance is returned, so it is not counted twice.
    ``error_var`` (V,): the error variance the observed sites' update weighs their data by; the
    held-out series are given the same (their own emulator error plus the rest), else noise-free
    series would be trusted more than any observation and their parameters driven further by the
    emulator's error along directions the observations leave to the prior."""
    import dataclasses

    from .identifiability import local_update

    n = held_out["forcing"].shape[0]
    P = problem.n_params
    hp = dataclasses.replace(problem, entity=np.arange(n), forcing=held_out["forcing"], static=held_out["static"],
                             attrs=torch.zeros(n, 1), obs=held_out["response"], observed=np.ones(n, bool),
                             lat=None, lon=None)
    u_true = problem.to_unit(held_out["theta"][:, problem.forward_index]).clamp(0, 1).numpy()
    u0 = np.full((n, P), 0.5)
    extra_var = None
    if error_var is not None:
        tm = np.asarray(time_mask, bool)
        y = forward.chunked(hp.forcing, hp.static, hp.full_theta(held_out["theta"][:, problem.forward_index]))
        e = (y[..., problem.response_index] - held_out["response"]).numpy()[:, tm].astype(np.float64)
        extra_var = np.maximum(np.asarray(error_var, np.float64) - np.nanmean(e ** 2, axis=(0, 1)), 0.0)
    u, cov = local_update(hp, forward, u0, np.arange(n), time_mask, u0, np.full((n, P), 1 / 12), extra_var)
    return np.maximum(np.mean((u - u_true) ** 2, axis=0) - np.mean(np.einsum("npp->np", cov), axis=0), 0.0)


def _identify(problem: InverseProblem, forward: ForwardModel, s: InversionSettings, theta: torch.Tensor,
              fit, emulator_error: Mapping | None, held_out: Mapping | None = None):
    """Identifiability at the solution and, for dPL, the posterior (None for KGSSL alone)."""
    from .identifiability import assess

    ic = s.identifiability or {}
    tm = _dpl.score_mask(problem, problem.train_time, s.dpl.warmup_days).numpy()
    extra = None
    if emulator_error:
        extra = np.array([float(emulator_error.get(v, 0.0)) ** 2 for v in problem.variables])
    th = torch.where(torch.isfinite(theta), theta, problem.default.expand_as(theta))
    ratio_max = ic.get("max_variance_ratio", 0.1)
    if fit is None:
        return assess(problem, forward, th, tm, max_variance_ratio=ratio_max, extra_var=extra), None
    from .identifiability import local_update
    from .uncertainty import posterior_refined

    draws = [d if d.ndim == 3 else d[None] for d in fit.u_members]
    means = np.stack([d.mean(0) for d in draws])
    u_hat = means.mean(0)
    ens_var = np.stack([d.var(0) for d in draws]).mean(0) + means.var(0)
    obs_idx = np.flatnonzero(problem.observed)
    regional = fit.regional_var if fit.regional_var is not None else np.full(problem.n_params, 1 / 48)
    prior_var = ens_var[obs_idx] + regional[None]
    u_loc, cov = local_update(problem, forward, u_hat, obs_idx, tm, u_hat[obs_idx], prior_var, extra)
    full = u_hat.copy()
    full[obs_idx] = u_loc
    ident = assess(problem, forward, problem.from_unit(torch.as_tensor(full, dtype=torch.float32)), tm,
                   max_variance_ratio=ratio_max, extra_var=extra)
    emu_var = None
    if held_out is not None:
        emu_var = forward_parameter_error(problem, forward, held_out, tm,
                                          ident.sigma ** 2 + (0 if extra is None else extra))
        ident = _replace(ident, emulator_var=emu_var)
    # the data's verdict decides what returns toward the prior: returning hksat_sf (r 0.91, data ratio 0.013,
    # emulator part 0.13) with the rest cost the twin's seed 60 its share of the runoff gain (0.858 -> 0.778)
    post = posterior_refined(u_hat, ens_var, fit.u_blind, problem.observed, u_loc, cov, ident.ratio,
                             ident.data_identified, problem.lat, problem.lon, emu_var, cov_prior=ident.cov)
    return ident, post


def _physical_spread(problem: InverseProblem, post, level: float):
    """(theta_std (delta method at the estimate), (lower, upper) of the level interval) in physical units."""
    u = torch.as_tensor(post.u, dtype=torch.float32)
    h = 1e-3
    slope = (problem.from_unit((u + h).clamp(max=1)) - problem.from_unit((u - h).clamp(min=0))) / (
        (u + h).clamp(max=1) - (u - h).clamp(min=0))
    std = slope.abs() * torch.as_tensor(post.sd, dtype=torch.float32)
    lo, hi = unit_interval(post.u, post.sd, level)
    bounds = problem.lo.double().numpy(), problem.hi.double().numpy()
    lower = np.clip(problem.from_unit(torch.as_tensor(lo, dtype=torch.float32)).double().numpy(), *bounds)
    upper = np.clip(problem.from_unit(torch.as_tensor(hi, dtype=torch.float32)).double().numpy(), *bounds)
    return std, (lower, upper)


def _problem(s: InversionSettings, entities, observations, forward: ForwardModel, table,
             sources: Sequence[str]) -> InverseProblem:
    """The inverse problem's tensors; a UserError when no observed entity has training data."""
    problem = build_problem(entities, observations, forward, table, s.params, s.variables, s.train_period,
                            s.test_period, sources=sources, max_site_distance_deg=s.max_site_distance_deg,
                            shared_gridcells=s.shared_gridcells, scale=s.scale)
    if not problem.observed.any():
        raise UserError("observations: no observed site has data in the training period")
    return problem


def pretrain(problem: InverseProblem, forward: ForwardModel, kc: KGSSLConfig, seed: int,
             progress: bool = False) -> Pretrained:
    """KGSSL pretraining on a forward-model PPE plus the observed series (training period only)."""
    obs_idx = np.flatnonzero(problem.observed)
    N = len(problem.entity)
    pf, py, pu, _ = ppe_samples(problem, forward, kc.ppe_samples, seed, kc.noise)
    obs_train = problem.obs.clone()
    obs_train[:, ~problem.train_time] = float("nan")
    of = problem.forcing[torch.as_tensor(obs_idx)]
    oy = obs_train[torch.as_tensor(obs_idx)]
    forcing = torch.cat([pf, of])
    response = torch.cat([py, oy])
    theta_u = torch.cat([pu, torch.zeros(len(obs_idx), problem.n_params)])
    mask = torch.cat([torch.ones_like(pu), torch.zeros(len(obs_idx), problem.n_params)])
    data = KGSSLData(forcing, response, theta_u, mask, kc)
    with _bar(kc.steps, "KGSSL", progress) as bar:
        kmodel, hist = train_kgssl(data, problem.n_params, kc, seed, bar)
    zz, th, has = embed_entities(kmodel, data)
    z = torch.zeros(N, kc.embedding)
    has_z = torch.zeros(N, dtype=torch.bool)
    kg_theta = torch.full((N, problem.n_params), float("nan"))
    n_ppe = len(pu)
    z[obs_idx] = zz[n_ppe:]
    has_z[obs_idx] = has[n_ppe:]
    kg_theta[obs_idx] = problem.from_unit(th[n_ppe:])
    # standardize the embedding so it enters g_z on the attributes' scale
    mu, sd = z[has_z].mean(0), z[has_z].std(0).clamp_min(1e-6)
    z = torch.where(has_z[:, None], (z - mu) / sd, torch.zeros_like(z))
    return Pretrained(z, has_z, kg_theta, hist)


class DPLFit:
    """An inverse ensemble: unpacks as (theta mean, theta std, loss histories); also holds each
    member's unit-space draws and the regionalisation variance from its held-out observed sites."""

    def __init__(self, mean, std, hists, u_members, regional_var, u_blind=None, states=None):
        self.mean, self.std, self.hists = mean, std, hists
        self.u_members, self.regional_var = u_members, regional_var
        self.u_blind = u_blind  # (N, P) members' mean without the embedding: what an unobserved entity gets
        self.states = states or []  # each member's network weights (the next PPE wave starts from them)

    def __iter__(self):
        return iter((self.mean, self.std, self.hists))

    def __getitem__(self, i):
        return (self.mean, self.std, self.hists)[i]


def fit_dpl(problem: InverseProblem, forward: ForwardModel, s: InversionSettings, pre: Pretrained | None,
            kind: str, n_members: int, n_mc: int, tag: str, progress: bool = False, trust=None,
            holdout: float = 0.0, init_states: Sequence[dict] | None = None) -> DPLFit:
    """An ensemble of dPL networks (g_A, or g_z on the KGSSL embedding).

    With ``holdout`` > 0 and several members, member m leaves out its own share of the observed
    sites (disjoint folds). At those sites its estimate, made as at an unobserved gridcell (no
    embedding), is compared with the other members' (which saw the site's data): the mean square
    difference is the regionalisation variance that intervals at unobserved gridcells carry.
    ``init_states`` (one per member) start each member from given weights (the previous wave's):
    the folds depend on the seed only, so a member never sees its held-out sites in any wave.
    """
    samples, hists, u_members, blinds, states = [], [], [], [], []
    zin, hin = (pre.z, pre.has_z) if kind == "g_z" else (None, None)
    obs_idx = np.flatnonzero(problem.observed)
    folds = [np.array([], int)] * n_members
    if holdout > 0 and n_members > 1 and len(obs_idx) >= 4 * n_members:
        perm = np.random.default_rng(s.seed + 17).permutation(obs_idx)
        k = max(1, int(round(holdout * len(obs_idx))))
        k = min(k, len(obs_idx) // n_members)
        folds = [perm[m * k:(m + 1) * k] for m in range(n_members)]
    oob = []  # (member, held-out sites, unit estimate there without the embedding)
    with _bar(s.dpl.steps * n_members, f"dPL {tag}", progress) as bar:
        for m in range(n_members):
            sites = np.setdiff1d(obs_idx, folds[m]) if len(folds[m]) else None
            net, h = _dpl.train_dpl(problem, forward, s.dpl, zin, hin, seed=s.seed + 1000 * m, progress=bar,
                                    trust=trust, sites=sites, init=init_states[m] if init_states else None)
            states.append(net.state_dict())
            draw = _dpl.predict(net, problem, zin, hin, n_mc)
            samples.append(draw)
            u_members.append(problem.to_unit(draw).clamp(0, 1).numpy())
            no_z = None if hin is None else torch.zeros_like(hin)
            blinds.append(problem.to_unit(_dpl.predict(net, problem, zin, no_z)).clamp(0, 1).numpy())
            if len(folds[m]):
                blind = None if hin is None else hin & torch.as_tensor(~np.isin(np.arange(len(hin)), folds[m]))
                u_oob = problem.to_unit(_dpl.predict(net, problem, zin, blind)).clamp(0, 1).numpy()
                oob.append((m, folds[m], u_oob[folds[m]]))
            hists.append(h["loss"])
    mean, std = combine(samples)
    regional = None
    if oob:
        diffs = []
        for m, idx, u in oob:
            others = [u_members[k] for k in range(n_members) if k != m]
            ref = np.mean([o.mean(0) if o.ndim == 3 else o for o in others], axis=0)[idx]
            diffs.append(u - ref)
        regional = np.mean(np.concatenate(diffs) ** 2, axis=0)
    return DPLFit(mean, std, hists, u_members, regional, np.mean(blinds, axis=0), states)


def evaluate(problem: InverseProblem, forward: ForwardModel, s: InversionSettings, theta: torch.Tensor,
             dpl_hist: list, pre: Pretrained | None) -> dict:
    """Skill of default and inferred theta in the test period, sensitivity, identifiability, training curves."""
    obs_idx = np.flatnonzero(problem.observed)
    N = len(problem.entity)
    metrics: dict = {"method": s.method, "forward_model": forward.kind, "n_entities": N,
                     "n_observed": int(len(obs_idx)), "params": problem.param_names,
                     "variables": problem.variables}
    score = _dpl.score_mask(problem, problem.test_time, s.dpl.warmup_days).numpy()
    default = problem.default.expand(N, -1)
    metrics["skill_test_period"] = {
        "default": skill(problem, forward, default, obs_idx, score),
        "inferred": skill(problem, forward, torch.nan_to_num(theta), obs_idx, score)}
    metrics["sensitivity"] = sensitivity(problem, forward, obs_idx)
    # one-at-a-time response change below 5 % of the observed std: the data cannot pin it down
    metrics["identifiable"] = {p: bool(v >= IDENTIFIABLE_MIN) for p, v in metrics["sensitivity"].items()}
    metrics["training"] = {"dpl_loss": dpl_hist, "kgssl": pre.history if pre is not None else None}
    return metrics


class SpunUp(ForwardModel):
    """A stateful forward model started from a spun-up state: the first year repeated ``years`` times
    from a cold start, as the PPE and the twin's truth run were (their outputs are what it must match)."""

    def __init__(self, inner: ForwardModel, years: int, days_per_year: int = 365):
        super().__init__(inner.forcing_names, inner.static_names, inner.param_names, inner.response_names)
        self.inner, self.years, self.days = inner, int(years), days_per_year
        self.kind = inner.kind

    def forward(self, forcing, static, theta, state=None, return_state: bool = False):
        if state is None:
            # without gradients: a calibration through it treats the spun-up state as given (the
            # gradient of the run itself, not of the spin-up; the spin-up then costs a plain run)
            with torch.no_grad():
                for _ in range(self.years):
                    _, state = self.inner(forcing[:, :self.days], static, theta, state=state, return_state=True)
        return self.inner(forcing, static, theta, state=state, return_state=return_state)


def _gain(default: dict, inferred: dict, truth: dict) -> dict:
    """Per variable, the calibration's share of the reachable gain (inferred - default) / (truth - default)."""
    out = {}
    for v in truth:
        d, i, t = (x.get(v, {}).get("nse_median") for x in (default, inferred, truth))
        ok = all(isinstance(x, float) and np.isfinite(x) for x in (d, i, t)) and abs(t - d) > 1e-9
        out[v] = float((i - d) / (t - d)) if ok else float("nan")
    return out


def _twin_metrics(problem: InverseProblem, forward: ForwardModel, s: InversionSettings, theta: torch.Tensor,
                  theta_std: torch.Tensor, pre: Pretrained | None, truth: xr.Dataset, progress: bool,
                  interval=None, reference=None) -> dict:
    """Recovery of the true parameters at observed and unobserved entities; the truth's held-out skill
    (the ceiling) and the share of the reachable gain, through the forward model and, with
    ``reference``, through the twin's true model; with ``ablation``, also the recovery of KGSSL alone
    and of the other dPL variant (one member each)."""
    names, observed, unobs, level = problem.param_names, problem.observed, ~problem.observed, s.uncertainty.level
    true = param_values_at(truth, problem.entity_dim, problem.entity, names)
    th_np, sd_np = theta.numpy(), theta_std.numpy()
    out = {"recovery": {"observed": recovery(true, th_np, sd_np, names, observed, level, interval),
                        "unobserved": recovery(true, th_np, sd_np, names, unobs, level, interval),
                        "coverage_level": level}}
    obs_idx = np.flatnonzero(observed)
    score = _dpl.score_mask(problem, problem.test_time, s.dpl.warmup_days).numpy()
    tt = torch.as_tensor(np.where(np.isfinite(true), true, problem.default.numpy()[None]), dtype=torch.float32)
    default = problem.default.expand(len(problem.entity), -1)
    out["skill_test_period_truth"] = skill(problem, forward, tt, obs_idx, score)
    out["reachable_gain_share"] = _gain(_nse_only(skill(problem, forward, default, obs_idx, score)),
                                        _nse_only(skill(problem, forward, torch.nan_to_num(theta), obs_idx, score)),
                                        _nse_only(out["skill_test_period_truth"]))
    if reference is not None:
        rp, rf = reference
        ref = {"default": skill(rp, rf, default, obs_idx, score),
               "inferred": skill(rp, rf, torch.nan_to_num(theta), obs_idx, score),
               "truth": skill(rp, rf, tt, obs_idx, score)}
        out["skill_test_period_true_model"] = ref
        out["reachable_gain_share_true_model"] = _gain(*(_nse_only(ref[k]) for k in ("default", "inferred", "truth")))
    if s.ablation:
        ab = {}
        if pre is not None:
            ab["kgssl"] = {"observed": recovery(true, pre.theta.numpy(), None, names, observed, level),
                           "unobserved": "not applicable: the KGSSL head needs an observed series"}
        for kind in ("g_A", "g_z"):
            if kind == s.method:
                est = th_np
            else:
                est = fit_dpl(problem, forward, s, pre, kind, 1, 0, f"{kind} (ablation)", progress)[0].numpy()
            ab[kind] = {"observed": recovery(true, est, None, names, observed, level),
                        "unobserved": recovery(true, est, None, names, unobs, level)}
        out["ablation"] = ab
    return out


def _nse_only(sk: dict) -> dict:
    return {v: {"nse_median": d["nse_median"]} for v, d in sk.items()}


def _parameter_map(problem: InverseProblem, forward: ForwardModel, s: InversionSettings, theta: torch.Tensor,
                   theta_std: torch.Tensor, cfg: Mapping, sources: Sequence[str], ident=None,
                   interval=None) -> xr.Dataset:
    """The parameter map with provenance, identifiability and intervals, and k-means clusters when
    ``clusters`` asks for them."""
    prov = {"forward_model": forward.kind, "emulator_checkpoint_sha256": forward.checkpoint_sha256,
            "observation_sources": list(sources), "observed_variables": problem.variables, "config": dict(cfg),
            "parameter_scale": problem.scale}
    pmap = build_param_map(problem.entity, theta.numpy(), theta_std.numpy(), problem.param_names,
                           "site" if problem.entity_dim in ("site", "basin") else "gridcell",
                           problem.lat, problem.lon, problem.observed, problem.lo.numpy(), problem.hi.numpy(),
                           problem.default.numpy(), prov)
    dim = pmap["theta"].dims[0]
    if interval is not None:
        lvl = f"{100 * s.uncertainty.level:g}%"
        for name, arr, ln in (("theta_lower", interval[0], "lower"), ("theta_upper", interval[1], "upper")):
            pmap[name] = ((dim, "param"), np.asarray(arr, np.float64), {
                "long_name": f"{ln} end of the {lvl} interval (data, inverse ensemble and regionalisation)",
                "units": "1"})
    if ident is not None:
        pmap["identified"] = ("param", ident.identified.astype(np.int8), {
            "long_name": "1 where the observations identify the parameter", "flag_values": np.array([0, 1], np.int8),
            "flag_meanings": "not_identified identified",
            "comment": f"median posterior/prior variance plus the emulator's part <= {ident.max_variance_ratio} "
                       "(linearised at the solution)"})
        pmap["posterior_to_prior_variance"] = ("param", ident.median_ratio, {
            "long_name": "median over observed entities of the posterior-to-prior variance ratio", "units": "1"})
        pmap["emulator_error_to_prior_variance"] = ("param", ident.emulator_ratio, {
            "long_name": "parameter error inverting through the forward model adds (held-out PPE members), "
                         "as a share of the prior variance", "units": "1"})
        local = np.full((len(problem.entity), problem.n_params), np.nan)
        local[np.asarray(problem.observed, bool)] = ident.ratio
        pmap["posterior_to_prior_variance_local"] = ((dim, "param"), local, {
            "long_name": "posterior-to-prior variance ratio of each observed entity's own data", "units": "1",
            "identified_at_most": float(ident.max_variance_ratio),
            "comment": "linearised at the solution; below the identified threshold the data there constrain the "
                       "parameter (a value on a bound is where they push it); NaN at unobserved entities"})
        pmap["posterior_correlation"] = (("param", "param2"), ident.corr, {
            "long_name": "median posterior correlation between parameters (unit space)", "units": "1"})
        pmap = pmap.assign_coords(param2=("param2", np.array(problem.param_names, dtype=object)))
    if s.clusters:
        cl = cluster_param_map(pmap, s.clusters, seed=s.seed)
        pmap["cluster"] = cl["cluster"].assign_attrs(long_name="k-means cluster of the inferred parameters "
                                                     "(one paramfile per cluster)")
        pmap["theta_cluster"] = cl["theta_cluster"].assign_attrs(
            long_name="parameter value of each cluster's paramfile")
    return pmap
