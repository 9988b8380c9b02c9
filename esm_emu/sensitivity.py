"""Global sensitivity of a tabular emulator: first-order and total Sobol indices with bootstrap intervals.

Estimators (Saltelli et al. 2010, Comput. Phys. Commun. 181, 259, table 2): two independent
sample matrices A, B (N, d) of the unit cube; AB_i is A with column i from B.
First order ``S_i = mean(f_B (f_ABi - f_A)) / V``, total (Jansen) ``ST_i = mean((f_A - f_ABi)^2) / (2V)``,
``V = var([f_A, f_B])``: the estimators SALib's `sobol.analyze` uses; tests check both against the
Ishigami function's analytic indices and against SALib. Intervals: percentile bootstrap over the
N sample rows (the same resampled rows for every output and parameter). Parameters are sampled
uniformly between the design's bounds (the store's theta_min/theta_max, as the LHC was drawn);
the emulator's predictive mean is the function analysed. Cost: N (d + 2) emulator calls.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.config import read_yaml
from ppe_ingest.base.errors import UserError


def saltelli_matrices(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A and B: (n, d) each, scrambled Sobol' points (one 2d-dimensional sequence split in two)."""
    from scipy.stats import qmc

    m = int(np.ceil(np.log2(max(n, 2))))
    pts = qmc.Sobol(2 * d, scramble=True, seed=seed).random_base2(m)[:n]
    return pts[:, :d], pts[:, d:]


def sobol_indices(f: Callable[[np.ndarray], np.ndarray], d: int, n: int = 4096, n_boot: int = 200,
                  seed: int = 0, conf: float = 0.95, draws: int = 1) -> dict:
    """Sobol indices of f: unit cube (M, d) -> (M, R). Returns arrays (R, d): S1, ST and their CI bounds.

    With ``draws`` > 1, f returns (M, R * draws): R outputs of `draws` functions each (output-major), e.g.
    posterior draws of a GP emulator. The index is then the mean over the draws, and the interval pools
    the bootstrap over the draws, so it holds the emulator's uncertainty as well as the Monte Carlo
    error (Le Gratiet, Cannamela & Iooss 2014, SIAM/ASA JUQ 2, 336, sec. 3)."""
    a, b = saltelli_matrices(n, d, seed)
    fa, fb = np.atleast_2d(f(a).T).T, np.atleast_2d(f(b).T).T
    fab = np.stack([np.atleast_2d(f(np.where(np.arange(d) == i, b, a)).T).T for i in range(d)])  # (d, n, R*D)

    def est(rows):
        va, vb, vab = fa[rows], fb[rows], fab[:, rows]
        var = np.var(np.concatenate([va, vb]), 0)
        var = np.where(var > 0, var, np.nan)
        s1 = np.mean(vb[None] * (vab - va[None]), 1) / var
        st = 0.5 * np.mean((va[None] - vab) ** 2, 1) / var
        return s1.T.reshape(-1, draws, d), st.T.reshape(-1, draws, d)  # (R, D, d)

    s1, st = est(np.arange(n))
    rng = np.random.default_rng([seed, 17])
    boots = [est(rng.integers(0, n, n)) for _ in range(n_boot)]
    q = [(1 - conf) / 2 * 100, (1 + conf) / 2 * 100]
    b1 = np.percentile(np.concatenate([x[0] for x in boots], 1), q, axis=1)  # pooled over resamples and draws
    bt = np.percentile(np.concatenate([x[1] for x in boots], 1), q, axis=1)
    return {"S1": s1.mean(1), "S1_lo": b1[0], "S1_hi": b1[1], "ST": st.mean(1), "ST_lo": bt[0], "ST_hi": bt[1],
            "n": n, "n_boot": n_boot, "conf": conf, "draws": draws}


def run_config(run_dir: Path) -> dict:
    """The `emulator:` section a run trained with (RUN_DIR/config.yaml)."""
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise UserError(f"{p}: not found (is {run_dir} an esm-emu training run directory?)")
    cfg = read_yaml(p)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("emulator"), dict):
        raise UserError(f"{p}: no emulator: section")
    return cfg["emulator"]


def design_bounds(run_dir: Path, param_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of each parameter: the store's theta_min/theta_max, else the members' range."""
    from .data import _open

    store = run_config(run_dir).get("store")
    if not store or not Path(store).is_file():
        raise UserError(f"{Path(run_dir) / 'config.yaml'}: store {store!r} not found (the design bounds come "
                        "from it)")
    ds = _open(store)
    names = [str(p) for p in ds["param"].values]
    missing = [p for p in param_names if p not in names]
    if missing:
        raise UserError(f"{store}: parameter {missing[0]} of the emulator is not in the store")
    idx = [names.index(p) for p in param_names]
    if "theta_min" in ds and "theta_max" in ds:
        lo, hi = ds["theta_min"].values[idx].astype(float), ds["theta_max"].values[idx].astype(float)
    else:
        th = ds["theta"].transpose("member", "param").values[:, idx].astype(float)
        lo, hi = np.nanmin(th, 0), np.nanmax(th, 0)
    return lo, hi


def emulator_function(emu, lo: np.ndarray, hi: np.ndarray, batch: int = 8192) -> Callable[[np.ndarray], np.ndarray]:
    """Unit cube (M, d) -> the emulator's predictive mean (M, R), physical units."""
    import torch

    def f(u: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(u), batch):
                th = torch.tensor(lo + (hi - lo) * u[i:i + batch], dtype=torch.float32)
                out.append(emu(th).double().numpy())
        return np.concatenate(out)

    return f


def emulator_draws_function(emu, lo: np.ndarray, hi: np.ndarray, draws: int, seed: int = 0,
                            batch: int = 1024) -> Callable[[np.ndarray], np.ndarray]:
    """Unit cube (M, d) -> `draws` posterior functions of a GP emulator (M, R * draws), physical units,
    output-major; the same draws on every call (esm_emu.models.gp.ExactGP.sample_paths)."""
    import torch

    from .models.gp import ExactGP

    if not isinstance(emu.core, ExactGP):
        raise UserError(f"--emulator-draws: needs a gp emulator without output_pca, this one is "
                        f"{emu.model_cfg.get('name')!r}" + (" with output_pca" if emu.model_cfg.get("output_pca")
                                                            else ""))
    path = emu.core.sample_paths(draws, seed=seed)

    def f(u: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(u), batch):
                th = torch.tensor(lo + (hi - lo) * u[i:i + batch], dtype=torch.float32)
                z = path(emu.norm.theta(th)).permute(0, 2, 1).float()  # (B, D, R) normalised
                y = emu.out_tf.inverse(emu.norm.response.inverse(z))
                out.append(y.permute(0, 2, 1).reshape(len(th), -1).double().numpy())
        return np.concatenate(out)

    return f


def sensitivity_run(run_dir, out_dir=None, n: int = 4096, n_boot: int = 200, seed: int = 0,
                    outputs=None, plot: bool = True, draws: int = 0) -> dict:
    """Sobol indices of every output of the run's emulator; writes sobol.csv, sobol.json and sobol.png.

    ``draws`` > 0 (gp only): the indices of that many posterior draws of the emulator, so the intervals
    hold its own uncertainty too; 0: the indices of its predictive mean, Monte Carlo error only."""
    from .emulator import TabularEmulator, load_emulator

    run_dir = Path(run_dir)
    emu = load_emulator(run_dir)
    if not isinstance(emu, TabularEmulator):
        raise UserError(f"{run_dir}: sensitivity needs a tabular (summary-PPE) emulator, this one is {emu.kind}")
    if n < 16:
        raise UserError(f"--samples: {n} is too few (>= 16)")
    names = emu.response_names
    sel = list(range(len(names)))
    if outputs:
        bad = [o for o in outputs if o not in names]
        if bad:
            raise UserError(f"--outputs: {bad[0]!r} is not an output of {run_dir} ({', '.join(names[:10])} ...)")
        sel = [names.index(o) for o in outputs]
    lo, hi = design_bounds(run_dir, emu.param_names)
    if draws < 0:
        raise UserError(f"--emulator-draws: {draws} must be >= 0")
    if draws:
        base = emulator_draws_function(emu, lo, hi, draws, seed)
        cols = np.concatenate([np.arange(k * draws, (k + 1) * draws) for k in sel])
        res = sobol_indices(lambda u: base(u)[:, cols], len(lo), n, n_boot, seed, draws=draws)
    else:
        base = emulator_function(emu, lo, hi)
        res = sobol_indices(lambda u: base(u)[:, sel], len(lo), n, n_boot, seed)
    out_dir = Path(out_dir) if out_dir else run_dir / "sensitivity"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["output,param,S1,S1_lo,S1_hi,ST,ST_lo,ST_hi"]
    for r, k in enumerate(sel):
        for j, p in enumerate(emu.param_names):
            rows.append(",".join([names[k], p] + [f"{res[c][r, j]:.6g}" for c in
                                                  ("S1", "S1_lo", "S1_hi", "ST", "ST_lo", "ST_hi")]))
    with atomic_path(out_dir / "sobol.csv") as t:
        Path(t).write_text("\n".join(rows) + "\n")
    meta = {"n": n, "n_boot": n_boot, "seed": seed, "conf": 0.95, "evaluations": n * (len(lo) + 2),
            "outputs": [names[k] for k in sel], "params": emu.param_names, "bounds_lo": lo.tolist(),
            "bounds_hi": hi.tolist(), "method": "Saltelli 2010 first order, Jansen total, percentile bootstrap",
            "emulator_draws": draws,
            "intervals": ("Monte Carlo error and the emulator's own (bootstrap pooled over its posterior draws)"
                          if draws else "Monte Carlo error only (the emulator's predictive mean)")}
    with atomic_path(out_dir / "sobol.json") as t:
        Path(t).write_text(json.dumps(meta, indent=1))
    if plot:
        try:
            _plot(out_dir / "sobol.png", res, [names[k] for k in sel], emu.param_names)
        except ImportError:
            pass
    return {"out_dir": str(out_dir), "indices": res, "outputs": [names[k] for k in sel],
            "params": emu.param_names}


def _plot(path: Path, res: dict, outputs: list[str], params: list[str], max_outputs: int = 8,
          top: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(len(outputs), max_outputs)
    fig, axes = plt.subplots(k, 1, figsize=(9, 2.6 * k), squeeze=False)
    for r, ax in enumerate(axes[:, 0]):
        order = np.argsort(-res["ST"][r])[:top]
        x = np.arange(len(order))
        for off, key, lab in [(-0.2, "S1", "first order"), (0.2, "ST", "total")]:
            v = res[key][r, order]
            err = np.abs(np.stack([v - res[key + "_lo"][r, order], res[key + "_hi"][r, order] - v]))
            ax.bar(x + off, v, 0.4, yerr=err, label=lab, capsize=2)
        ax.set_xticks(x, [params[j] for j in order], rotation=30, ha="right", fontsize=7)
        ax.set_title(outputs[r], fontsize=9)
        ax.set_ylabel("Sobol index")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as t:
        fig.savefig(t, format="png", dpi=90)
    plt.close(fig)
