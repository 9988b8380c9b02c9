"""K-fold cross-validation of a tabular (summary-PPE) emulator: `esm-emu train CONFIG --cv K`.

Folds come from `emulator.train.seed` alone (a seeded permutation of the store's members cut in
K parts), so every kind (tabular, gp, mlp_ensemble) is scored on the same folds. Each fold trains
the configured kind on the other members through the same `train` as a normal run (an SGD kind's
validation members drawn from them by `data.val_fraction`; kinds that fit themselves use them
all) and predicts the held-out fold. R2 is
1 - SSE/SST of the pooled held-out predictions, per output; also per fold and the median over
outputs. Written: RUN_DIR/cv.json, cv_predictions.nc (mean, variance, truth) and cv_parity.png.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError


def fold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """K disjoint sorted index sets covering range(n), from `seed` only."""
    if k < 2 or k > n:
        raise UserError(f"--cv: {k} folds for {n} members (need 2 <= K <= members)")
    perm = np.random.default_rng([int(seed), 7919]).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]


def r2_score(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """1 - SSE/SST per column."""
    sst = ((y - y.mean(0)) ** 2).sum(0)
    return 1.0 - ((y - p) ** 2).sum(0) / np.where(sst > 0, sst, np.nan)


def _fold_store(tab, split: np.ndarray, path: Path) -> None:
    import xarray as xr

    xr.Dataset({"theta": (("member", "param"), tab.theta), "y": (("member", "output"), tab.y),
                "split_member": ("member", split.astype(np.int8))},
               coords={"member": tab.members, "param": tab.param_names,
                       "output": tab.response_names}).to_netcdf(path)


def cross_validate(cfg, k: int, progress: bool = True) -> dict:
    """Cross-validate the configured tabular emulator over K seeded folds; writes the files in RUN_DIR."""
    import torch

    from ..data import SummaryTable
    from ..distributed import Distributed
    from ..emulator import load_emulator
    from ..models import is_tabular
    from .loop import train

    if not is_tabular(cfg["model"]):
        raise UserError(f"--cv: emulator.model.name {cfg['model']['name']!r} is not a tabular kind "
                        "(cross-validation is for summary PPEs)")
    tab = SummaryTable(cfg["store"], cfg["responses"], cfg["params"])
    n, seed = len(tab.theta), int(cfg["train"]["seed"])
    folds = fold_indices(n, k, seed)
    from ..models import build_model

    dims = dict(n_forcing=0, n_cond=len(tab.param_names), n_param=len(tab.param_names),
                n_response=len(tab.response_names))
    # kinds that fit themselves (gp, mlp_ensemble) need no validation members: all others train them
    fits = bool(getattr(build_model(cfg["model"], dims), "fits", False))
    mean, var = np.full_like(tab.y, np.nan), np.full_like(tab.y, np.nan)
    fold_of = np.zeros(n, np.int32)
    run_dir = Path(cfg["run_dir"])
    with tempfile.TemporaryDirectory(prefix="esm_emu_cv_") as tmp:
        for i, test in enumerate(folds):
            rest = np.setdiff1d(np.arange(n), test)
            perm = np.random.default_rng([seed, 31, i]).permutation(rest)
            nval = 0 if fits else max(1, int(round(cfg["data"]["val_fraction"] * len(rest))))
            split = np.full(n, 2, np.int8)
            split[perm[nval:]] = 0
            split[perm[:nval]] = 1
            store = Path(tmp) / f"fold{i}.nc"
            _fold_store(tab, split, store)
            fcfg = cfg.override({"store": str(store), "run_dir": str(Path(tmp) / f"run{i}"),
                                 "evaluate.at_end": False})
            train(fcfg, Distributed(), resume=False, progress=False)
            emu = load_emulator(Path(tmp) / f"run{i}")
            with torch.no_grad():
                m, v = emu.predict(torch.tensor(tab.theta[test], dtype=torch.float32))
            mean[test], var[test] = m.double().numpy(), v.double().numpy()
            fold_of[test] = i
            if progress:
                print(f"cv fold {i + 1}/{k}: {len(test)} held out", flush=True)
    r2 = r2_score(tab.y, mean)
    per_fold = np.stack([r2_score(tab.y[f], mean[f]) for f in folds])
    z = (tab.y - mean) / np.sqrt(np.maximum(var, 1e-300))
    result = {"kind": cfg["model"]["name"], "folds": k, "seed": seed, "members": n,
              "outputs": tab.response_names, "r2": dict(zip(tab.response_names, map(float, r2))),
              "r2_median": float(np.nanmedian(r2)), "r2_min": float(np.nanmin(r2)),
              "r2_per_fold": {o: [float(x) for x in per_fold[:, r]] for r, o in enumerate(tab.response_names)},
              "coverage_95": (dict(zip(tab.response_names, map(float, (np.abs(z) < 1.96).mean(0))))
                              if np.any(var > 0) else None),
              "definition": "R2 = 1 - SSE/SST of pooled held-out predictions; folds from emulator.train.seed"}
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "cv.json") as t:
        Path(t).write_text(json.dumps(result, indent=1))
    _write_predictions(run_dir / "cv_predictions.nc", tab, mean, var, fold_of)
    try:
        _parity_plot(run_dir / "cv_parity.png", tab, mean, r2)
    except ImportError:
        pass
    return result


def _write_predictions(path: Path, tab, mean, var, fold_of) -> None:
    import xarray as xr

    ds = xr.Dataset({"y": (("member", "output"), tab.y), "mean": (("member", "output"), mean),
                     "var": (("member", "output"), var), "fold": ("member", fold_of)},
                    coords={"member": tab.members, "output": tab.response_names})
    with atomic_path(path) as t:
        ds.to_netcdf(t)


def _parity_plot(path: Path, tab, mean, r2, max_panels: int = 30) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(r2)[:max_panels] if len(r2) > max_panels else np.arange(len(r2))
    ncol = min(5, len(order))
    nrow = int(np.ceil(len(order) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 3 * nrow), squeeze=False)
    for ax, r in zip(axes.flat, order):
        ax.scatter(tab.y[:, r], mean[:, r], s=4, alpha=0.6)
        lo, hi = np.nanmin(tab.y[:, r]), np.nanmax(tab.y[:, r])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_title(f"{tab.response_names[r]}  R2={r2[r]:.3f}", fontsize=8)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    fig.supxlabel("simulated (held out)")
    fig.supylabel("emulator mean")
    fig.tight_layout()
    with atomic_path(path) as t:
        fig.savefig(t, format="png", dpi=90)
    plt.close(fig)
