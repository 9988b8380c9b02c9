"""Tabular emulator vs a Gaussian process (ARD) on the real CLM5 PPE summary outputs: 5-fold CV R2.

Data: ../shared/data/ppe (500 LHC members, 32 parameters; global-mean annual-mean TLAI, GPP,
SOILWATER_10CM, EFLX_LH_TOT, QHR 2005-2014), through ppe_ingest.ingest.summary.build_summary_store.
Same folds for both models. The tabular emulator trains with the package's loop (configs/
emulator_tabular_ppe.yaml, validation = 10% of each training fold for early stopping); the GP is
scikit-learn GaussianProcessRegressor, constant x RBF with one length scale per parameter + white
noise, one GP per output, on the unit-cube design. R2 = 1 - SSE/SST on each held-out fold, pooled.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record


def data_root() -> Path:
    env = os.environ.get("ESM_EMU_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def reference_gp(s_tr, y_tr, restarts: int, seed: int) -> list:
    """The reference: one scikit-learn ARD GP per output (constant x RBF + white noise) on unit-cube inputs."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    gps = []
    for r in range(y_tr.shape[1]):
        k = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.ones(s_tr.shape[1]), (1e-2, 1e3)) \
            + WhiteKernel(1e-2, (1e-8, 1.0))
        gps.append(GaussianProcessRegressor(k, normalize_y=True, n_restarts_optimizer=restarts,
                                            random_state=seed).fit(s_tr, y_tr[:, r]))
    return gps


def gp_fold(s_tr, y_tr, s_te, restarts: int, seed: int):
    return np.stack([gp.predict(s_te) for gp in reference_gp(s_tr, y_tr, restarts, seed)], 1)


def emulator_fold(ds, train_idx, test_idx, cfg_path: Path, work: Path, seed: int, n_ens: int):
    import torch

    from esm_emu.distributed import Distributed
    from esm_emu.emulator import load_emulator
    from esm_emu.training.config import SCHEMA
    from esm_emu.training.loop import train
    from ppe_ingest.base.config import read_yaml, validate

    rng = np.random.default_rng(seed)
    preds = []
    for e in range(n_ens):
        split = np.full(ds.sizes["member"], 2, np.int8)
        tr = rng.permutation(train_idx)
        nval = max(1, len(tr) // 10)
        split[tr[nval:]] = 0
        split[tr[:nval]] = 1
        fold_store = work / f"fold_{e}.nc"
        ds.assign(split_member=("member", split)).to_netcdf(fold_store)
        raw = read_yaml(cfg_path)["emulator"]
        raw.update(store=str(fold_store), run_dir=str(work / f"run_{e}"))
        raw.setdefault("train", {})["seed"] = seed + e
        raw.setdefault("evaluate", {})["at_end"] = False
        cfg = validate(raw, SCHEMA, cfg_path.name, cfg_path.parent)
        train(cfg, Distributed(), resume=False, progress=False)
        emu = load_emulator(work / f"run_{e}")
        with torch.no_grad():
            th = torch.tensor(ds["theta"].values[test_idx], dtype=torch.float32)
            preds.append(emu(th).double().numpy())
    return np.mean(preds, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--config", default=str(REPO / "configs" / "emulator_tabular_ppe.yaml"))
    ap.add_argument("--ensemble", type=int, default=1, help="tabular emulators averaged per fold")
    ap.add_argument("--gp-restarts", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    from ppe_ingest.ingest.summary import build_summary_store

    torch.set_num_threads(2)
    root = data_root() / "ppe"
    files = [root / "outputs" / "fivevars_gmean_amean_2005-2014.nc", root / "outputs" / "lhc220926.nc",
             root / "param_tables" / "lhc_220926.csv"]
    for f in files:
        if not f.exists():
            sys.exit(f"real data not available: {f} (set ESM_EMU_SHARED_DATA)")
    ds = build_summary_store(*files)
    outputs = [str(o) for o in ds["output"].values]
    y = ds["y"].values
    s = ds["s"].values
    pred_gp, pred_emu = np.zeros_like(y), np.zeros_like(y)
    t_gp = t_emu = 0.0
    folds = KFold(args.folds, shuffle=True, random_state=args.seed).split(s)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (tr, te) in enumerate(folds):
            t0 = time.perf_counter()
            pred_gp[te] = gp_fold(s[tr], y[tr], s[te], args.gp_restarts, args.seed)
            t_gp += time.perf_counter() - t0
            t0 = time.perf_counter()
            work = Path(tmp) / f"fold{k}"
            work.mkdir()
            pred_emu[te] = emulator_fold(ds, tr, te, Path(args.config), work, args.seed + 100 * k, args.ensemble)
            t_emu += time.perf_counter() - t0
            print(f"fold {k + 1}/{args.folds} done", flush=True)
    lines = [f"{args.folds}-fold CV R2 (1 - SSE/SST, pooled held-out predictions), {len(y)} LHC members, "
             f"{s.shape[1]} parameters", f"{'output':16s} {'tabular':>8s} {'GP(ARD)':>8s}  tabular>=GP"]
    met = True
    for r, o in enumerate(outputs):
        a, b = r2_score(y[:, r], pred_emu[:, r]), r2_score(y[:, r], pred_gp[:, r])
        met &= a >= b
        lines.append(f"{o:16s} {a:8.4f} {b:8.4f}  {'yes' if a >= b else 'no'}")
    lines.append(f"target (tabular R2 >= GP R2 on every output): {'met' if met else 'NOT met'}")
    lines.append(f"GP: {args.gp_restarts} optimiser restart(s); tabular: {Path(args.config).name}")
    lines.append(f"wall time: tabular {t_emu:.1f} s (ensemble of {args.ensemble} per fold), GP {t_gp:.1f} s; "
                 f"CPU shared with other jobs while measured")
    record("PPE summary: tabular emulator vs GP (5-fold CV R2)", lines)


if __name__ == "__main__":
    main()
