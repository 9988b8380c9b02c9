"""Outputs of an inversion a person can look at: the parameter map netCDF, metrics JSON and PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ppe_ingest.base.atomic import atomic_path

from .param_map import param_values_at, write_param_map


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _clean(o):
    """NaN/inf become null so the JSON is standard."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(obj, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(obj), indent=1, default=_json_default))
    return path


def write_outputs(out_dir, pmap, metrics, problem, forward, theta, truth=None) -> dict:
    """parameter_map.nc, metrics.json and plots under out_dir; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(fig, name: str) -> Path:
        fig.tight_layout()
        p = out / name
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        return p

    paths = {"parameter_map": write_param_map(pmap, out / "parameter_map.nc"),
             "metrics": write_json(metrics, out / "metrics.json")}

    hist = metrics.get("training", {})
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for h in hist.get("dpl_loss") or []:
        ax[0].plot(h, lw=0.8)
    ax[0].set(title="dPL loss per ensemble member", xlabel="step", ylabel="loss")
    kg = hist.get("kgssl")
    if kg:
        for k in ("recon", "contrast", "inverse"):
            ax[1].plot(kg[k], label=k, lw=0.8)
        ax[1].legend()
        ax[1].set(title="KGSSL losses", xlabel="step", yscale="log")
    paths["training_curves"] = save(fig, "training_curves.png")

    if truth is not None:
        true = param_values_at(truth, problem.entity_dim, problem.entity, problem.param_names)
        P = problem.n_params
        cols = min(P, 4)
        rows = int(np.ceil(P / cols))
        fig, axs = plt.subplots(rows, cols, figsize=(3 * cols, 2.8 * rows), squeeze=False)
        th = theta.numpy()
        for j, name in enumerate(problem.param_names):
            a = axs[j // cols][j % cols]
            for sel, lab, c in ((problem.observed, "observed", "C0"), (~problem.observed, "unobserved", "C1")):
                if "theta_lower" in pmap and "theta_upper" in pmap:  # the level interval of each estimate
                    lw = pmap["theta_lower"].values[sel, j]
                    up = pmap["theta_upper"].values[sel, j]
                    a.errorbar(true[sel, j], th[sel, j], yerr=[th[sel, j] - lw, up - th[sel, j]], fmt="none",
                               ecolor=c, alpha=0.25, lw=0.6)
                a.scatter(true[sel, j], th[sel, j], s=6, label=lab, c=c)
            lo, hi = float(problem.lo[j]), float(problem.hi[j])
            a.plot([lo, hi], [lo, hi], "k--", lw=0.6)
            ident = (metrics.get("identifiability") or {}).get(name)
            tag = "" if ident is None else (" (identified)" if ident["identified"] else " (not identified)")
            a.set_title(name + tag, fontsize=9)
        axs[0][0].legend(fontsize=7)
        axs[0][0].set(xlabel="true", ylabel="inferred")
        for j in range(P, rows * cols):
            axs[j // cols][j % cols].axis("off")
        paths["true_vs_inferred"] = save(fig, "true_vs_inferred.png")

    if problem.lat is not None:
        P = problem.n_params
        fig, axs = plt.subplots(1, P, figsize=(3 * P, 2.8), squeeze=False)
        for j, name in enumerate(problem.param_names):
            sc = axs[0][j].scatter(problem.lon, problem.lat, c=theta[:, j].numpy(), s=10)
            axs[0][j].scatter(problem.lon[problem.observed], problem.lat[problem.observed], s=14,
                              facecolors="none", edgecolors="k", lw=0.4)
            fig.colorbar(sc, ax=axs[0][j])
            axs[0][j].set_title(name, fontsize=9)
        paths["parameter_maps"] = save(fig, "parameter_maps.png")

    idx = np.flatnonzero(problem.observed)[:6]  # a few basins: each one
    if len(idx):
        from esm_emu.metrics import kge, nse

        t = torch.as_tensor(idx)
        period = problem.test_time
        with torch.no_grad():
            dflt = forward.chunked(problem.forcing[t], problem.static[t],
                                   problem.full_theta(problem.default.expand(len(idx), -1)))
            dflt = dflt[..., problem.response_index]
            inf = forward.chunked(problem.forcing[t], problem.static[t],
                                  problem.full_theta(torch.nan_to_num(theta[t])))
            inf = inf[..., problem.response_index]
        fig, axs = plt.subplots(len(idx), 1, figsize=(9, 2.4 * len(idx)), squeeze=False)
        tt = np.flatnonzero(period)  # day index (model calendars may be noleap)
        for i in range(len(idx)):
            a = axs[i][0]
            a.plot(tt, problem.obs[idx[i], period, 0].numpy(), "k", lw=0.8, label="observed")
            a.plot(tt, dflt[i, period, 0].numpy(), lw=0.8, label="default")
            a.plot(tt, inf[i, period, 0].numpy(), lw=0.8, label="inferred")
            o = problem.obs[idx[i], period, 0].numpy().astype(float)
            sc = {k: (float(nse(y[i, period, 0].numpy(), o)), float(kge(y[i, period, 0].numpy(), o)),
                      float(np.nanmean(y[i, period, 0].numpy() - o) / np.nanmean(o))) for k, y in
                  (("default", dflt), ("inferred", inf))}
            a.set_title(f"{problem.entity_dim} {problem.entity[idx[i]]}: "
                        f"{problem.variables[0]} (test period, day index); NSE/KGE/bias default "
                        "{:.2f}/{:.2f}/{:+.0%}, inferred {:.2f}/{:.2f}/{:+.0%}".format(*sc["default"], *sc["inferred"]),
                        fontsize=8)
        axs[0][0].legend(fontsize=7)
        paths["hydrographs"] = save(fig, "hydrographs.png")
    return paths
