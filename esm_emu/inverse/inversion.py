"""The whole inversion in one call: KGSSL pretraining, dPL through the frozen forward model, an
ensemble for theta_std, evaluation against observations (and the truth in a twin experiment)."""
from __future__ import annotations

import time as _time
from dataclasses import fields
from typing import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from ppe_ingest.base.errors import UserError

from . import dpl as _dpl
from ..forward import ForwardModel
from .kgssl import KGSSLConfig, KGSSLData, embed_entities, train_kgssl
from .param_map import build_param_map, cluster_param_map
from .problem import InverseProblem, build_problem
from .uncertainty import combine, coverage


IDENTIFIABLE_MIN = 0.05


def _sub(cls, d: Mapping | None):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (d or {}).items() if k in names})


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


def _truth_array(truth: xr.Dataset, problem: InverseProblem) -> np.ndarray:
    dim = problem.entity_dim
    out = np.full((len(problem.entity), problem.n_params), np.nan)
    tdim = dim if dim in truth.dims else ("gridcell" if "gridcell" in truth.dims else "site")
    ids = truth[tdim].values if tdim in truth.coords else np.arange(truth.sizes[tdim])
    pos = {v: i for i, v in enumerate(ids)}
    rows = [pos.get(e, -1) for e in problem.entity]
    for j, p in enumerate(problem.param_names):
        if "theta" in truth.data_vars and "param" in truth.dims and p in truth["param"].values:
            col = truth["theta"].sel(param=p).transpose(tdim).values
        elif p in truth.data_vars and truth[p].dims == (tdim,):
            col = truth[p].values
        else:
            continue
        out[:, j] = [col[r] if r >= 0 else np.nan for r in rows]
    return out


def _pearson(a, b) -> float:
    m = np.isfinite(a) & np.isfinite(b)
    if m.sum() < 3 or np.std(a[m]) == 0 or np.std(b[m]) == 0:
        return float("nan")
    return float(np.corrcoef(a[m], b[m])[0, 1])


def recovery(true: np.ndarray, est: np.ndarray, std: np.ndarray | None, names: Sequence[str],
             where: np.ndarray, level: float) -> dict:
    """Per-parameter r, RMSE and interval coverage over the entities selected by ``where``."""
    out = {}
    for j, p in enumerate(names):
        t, e = true[where, j], est[where, j]
        ok = np.isfinite(t) & np.isfinite(e)
        d = {"r": _pearson(t, e), "rmse": float(np.sqrt(np.mean((t[ok] - e[ok]) ** 2))) if ok.any() else float("nan"),
             "n": int(ok.sum())}
        if std is not None and ok.any():
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
            ys.append(forward.chunked(problem.forcing[t], problem.static[t], problem.full_theta(th))[..., problem.response_index])
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
    sim = forward.chunked(problem.forcing[t], problem.static[t], problem.full_theta(theta[t]))[..., problem.response_index]
    out = {}
    for k, v in enumerate(problem.variables):
        s = sim[:, period, k].numpy().astype(np.float64)
        o = problem.obs[t][:, period, k].numpy().astype(np.float64)
        ok = np.isfinite(o).sum(1) > 2
        n_, k_ = nse(s[ok], o[ok]), kge(s[ok], o[ok])
        out[v] = {"nse_median": float(np.nanmedian(n_)) if ok.any() else float("nan"),
                  "kge_median": float(np.nanmedian(k_)) if ok.any() else float("nan"),
                  "nse": [float(x) for x in n_], "kge": [float(x) for x in k_],
                  "entity": [str(x) for x in problem.entity[idx][ok]]}
    return out


def run_inversion(cfg: Mapping, entities: xr.Dataset, observations: xr.Dataset | None, forward: ForwardModel,
                  table, out_dir=None, truth: xr.Dataset | None = None, progress: bool = True,
                  sources: Sequence[str] = ()) -> tuple[xr.Dataset, dict]:
    """Infer theta at every entity from observations at some of them.

    ``cfg`` is the validated ``inverse:`` section (see ``esm_emu.inverse.config``); ``entities``
    holds (gridcell|site, time) forcing and static fields; ``observations`` follows the
    observation schema. Returns the parameter map and a metrics dict; with ``out_dir`` both are
    written there (``parameter_map.nc``, ``metrics.json``) with plots.
    """
    t0 = _time.perf_counter()
    walls = {}
    torch.manual_seed(int(cfg.get("seed", 0)))
    problem = build_problem(entities, observations, forward, table, cfg.get("params"),
                            cfg.get("variables", ["QRUNOFF"]), cfg.get("train_period"), cfg.get("test_period"),
                            sources=sources)
    if not problem.observed.any():
        raise UserError("observations: no observed site has data in the training period")
    seed = int(cfg.get("seed", 0))
    method = cfg.get("method", "g_z")
    kc = _sub(KGSSLConfig, cfg.get("kgssl"))
    dc = _sub(_dpl.DPLConfig, cfg.get("dpl"))
    unc = cfg.get("uncertainty") or {}
    n_ens, mc = int(unc.get("ensemble", 3)), int(unc.get("mc_samples", 0))
    level = float(unc.get("level", 0.9))
    ablation = bool(cfg.get("ablation", False))
    obs_idx = np.flatnonzero(problem.observed)
    N = len(problem.entity)
    walls["prepare_s"] = _time.perf_counter() - t0

    z = has_z = kg_theta = None
    kg_hist = None
    if method in ("g_z", "kgssl") or ablation:
        t1 = _time.perf_counter()
        per = int((cfg.get("kgssl") or {}).get("ppe_samples", 4))
        pf, py, pu, _ = ppe_samples(problem, forward, per, seed, float((cfg.get("kgssl") or {}).get("noise", 0.02)))
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
            kmodel, kg_hist = train_kgssl(data, problem.n_params, kc, seed, bar)
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
        walls["kgssl_s"] = _time.perf_counter() - t1

    def fit(kind: str, n_members: int, n_mc: int, tag: str):
        samples, hists = [], []
        with _bar(dc.steps * n_members, f"dPL {tag}", progress) as bar:
            for m in range(n_members):
                zin, hin = (z, has_z) if kind == "g_z" else (None, None)
                net, h = _dpl.train_dpl(problem, forward, dc, zin, hin, seed=seed + 1000 * m, progress=bar)
                samples.append(_dpl.predict(net, problem, zin, hin, n_mc))
                hists.append(h["loss"])
        mean, std = combine(samples)
        return mean, std, hists

    t2 = _time.perf_counter()
    if method == "kgssl":
        theta, theta_std, dpl_hist = kg_theta, torch.zeros_like(kg_theta), []
    else:
        theta, theta_std, dpl_hist = fit(method, n_ens, mc, method)
    walls["dpl_s"] = _time.perf_counter() - t2

    t3 = _time.perf_counter()
    metrics: dict = {"method": method, "forward_model": forward.kind, "n_entities": N,
                     "n_observed": int(len(obs_idx)), "params": problem.param_names,
                     "variables": problem.variables}
    score = _dpl.score_mask(problem, problem.test_time, dc.warmup_days).numpy()
    default = problem.default.expand(N, -1)
    metrics["skill_test_period"] = {
        "default": skill(problem, forward, default, obs_idx, score),
        "inferred": skill(problem, forward, torch.nan_to_num(theta), obs_idx, score)}
    metrics["sensitivity"] = sensitivity(problem, forward, obs_idx)
    # one-at-a-time response change below 5 % of the observed std: the data cannot pin it down
    metrics["identifiable"] = {p: bool(v >= IDENTIFIABLE_MIN) for p, v in metrics["sensitivity"].items()}
    metrics["training"] = {"dpl_loss": dpl_hist, "kgssl": kg_hist}
    unobs = ~problem.observed
    if truth is not None:
        true = _truth_array(truth, problem)
        th_np, sd_np = theta.numpy(), theta_std.numpy()
        metrics["recovery"] = {"observed": recovery(true, th_np, sd_np, problem.param_names, problem.observed, level),
                               "unobserved": recovery(true, th_np, sd_np, problem.param_names, unobs, level),
                               "coverage_level": level}
        if ablation:
            ab = {}
            if kg_theta is not None:
                ab["kgssl"] = {"observed": recovery(true, kg_theta.numpy(), None, problem.param_names, problem.observed, level),
                               "unobserved": "not applicable: the KGSSL head needs an observed series"}
            for kind in ("g_A", "g_z"):
                if kind == method:
                    est = th_np
                else:
                    est = fit(kind, 1, 0, f"{kind} (ablation)")[0].numpy()
                ab[kind] = {"observed": recovery(true, est, None, problem.param_names, problem.observed, level),
                            "unobserved": recovery(true, est, None, problem.param_names, unobs, level)}
            metrics["ablation"] = ab
    walls["evaluate_s"] = _time.perf_counter() - t3
    walls["total_s"] = _time.perf_counter() - t0
    metrics["wall_s"] = walls

    prov = {"forward_model": forward.kind, "emulator_checkpoint_sha256": forward.checkpoint_sha256,
            "observation_sources": list(sources), "observed_variables": problem.variables, "config": dict(cfg)}
    pmap = build_param_map(problem.entity, theta.numpy(), theta_std.numpy(), problem.param_names,
                           "site" if problem.entity_dim in ("site", "basin") else "gridcell",
                           problem.lat, problem.lon, problem.observed, problem.lo.numpy(), problem.hi.numpy(),
                           problem.default.numpy(), prov)
    k = int(cfg.get("clusters", 0) or 0)
    if k:
        cl = cluster_param_map(pmap, k, seed=seed)
        pmap["cluster"] = cl["cluster"].assign_attrs(long_name="k-means cluster of the inferred parameters "
                                                     "(one paramfile per cluster)")
        pmap["theta_cluster"] = cl["theta_cluster"].assign_attrs(long_name="parameter value of each cluster's paramfile")
    if out_dir is not None:
        from .report import write_outputs

        write_outputs(out_dir, pmap, metrics, problem, forward, theta, truth)
    return pmap, metrics
