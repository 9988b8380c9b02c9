"""Summary-PPE emulators on the real CLM5 PPE, K-fold CV R2 per output on the same folds:
esm-emu's exact ARD GP (gp), its MLP ensemble (mlp_ensemble) and scikit-learn's ARD GP.

Each esm-emu kind runs through `esm_emu.training.cv.cross_validate` (what `esm-emu train CONFIG --cv K`
runs), folds from configs/emulator_tabular_ppe.yaml's train.seed; sklearn gets the same folds
(`fold_indices`), one GaussianProcessRegressor per output: constant x RBF(ARD) + white noise on the
unit-cube design, normalize_y. Output sets: five (global annual means), lai_pxb / gpp_pxb (146 PFT x
biome means each), mclimo (5 variables x 12 months).
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

# per-kind overrides of the shipped config (fit_steps there is the GP's; the ensemble needs more steps)
KIND_SETS = {"mlp_ensemble": ["model.fit_steps=2000"]}
SETS = {"five": "fivevars_gmean_amean_2005-2014.nc", "lai_pxb": "lai_amean_pxb_2003-2007.nc",
        "gpp_pxb": "gpp_amean_pxb_2001-2010_v2.nc", "mclimo": "fivevars_gmean_mclimo_2005-2014.nc"}


def data_root() -> Path:
    env = os.environ.get("ESM_EMU_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def sklearn_cv(s, y, folds, restarts=0, seed=0):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    pred = np.zeros_like(y)
    for te in folds:
        tr = np.setdiff1d(np.arange(len(y)), te)
        for r in range(y.shape[1]):
            k = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.ones(s.shape[1]), (1e-2, 1e3)) \
                + WhiteKernel(1e-2, (1e-8, 1.0))
            gp = GaussianProcessRegressor(k, normalize_y=True, n_restarts_optimizer=restarts, random_state=seed)
            gp.fit(s[tr], y[tr, r])
            pred[te, r] = gp.predict(s[te])
    return pred


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(SETS), default="five")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--kinds", default="gp,mlp_ensemble,sklearn")
    ap.add_argument("--config", default=str(REPO / "configs" / "emulator_tabular_ppe.yaml"))
    ap.add_argument("--set-key", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--outputs", type=int, default=0,
                    help="score only this many outputs, evenly spaced over the non-constant ones (0: all)")
    ap.add_argument("--save", default=None, help="also write each kind's R2 per output to this JSON file")
    args = ap.parse_args()
    import torch

    from esm_emu.training.config import load_emulator_config
    from esm_emu.training.cv import cross_validate, fold_indices, r2_score
    from ppe_ingest.ingest.summary import build_summary_store

    torch.set_num_threads(2)
    root = data_root() / "ppe"
    files = [root / "outputs" / SETS[args.set], root / "outputs" / "lhc220926.nc",
             root / "param_tables" / "lhc_220926.csv"]
    for f in files:
        if not f.exists():
            sys.exit(f"real data not available: {f} (set ESM_EMU_SHARED_DATA)")
    kinds = args.kinds.split(",")
    r2, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.nc"
        ds = build_summary_store(*files, out=store)
        const = int(np.sum(np.std(ds["y"].values, 0) == 0))
        if args.outputs:  # a subset: evenly spaced over the outputs that vary
            vary = np.flatnonzero(np.std(ds["y"].values, 0) > 0)
            pick = vary[np.unique(np.linspace(0, len(vary) - 1, min(args.outputs, len(vary))).round().astype(int))]
            ds = ds.isel(output=pick)
            store = Path(tmp) / "store_subset.nc"
            ds.to_netcdf(store)
        outputs = [str(o) for o in ds["output"].values]
        y, s = ds["y"].values, ds["s"].values
        for kind in kinds:
            t0 = time.perf_counter()
            if kind == "sklearn":
                seed = load_emulator_config(args.config, check_files=False).train.seed
                pred = sklearn_cv(s, y, fold_indices(len(y), args.folds, seed), seed=seed)
                r2[kind] = r2_score(y, pred)
            else:
                cfg = load_emulator_config(args.config, [f"model.name={kind}", f"store={store}",
                                                         f"run_dir={Path(tmp) / kind}", *KIND_SETS.get(kind, []),
                                                         *args.set_key])
                res = cross_validate(cfg, args.folds, progress=True)
                r2[kind] = np.array([res["r2"][o] for o in outputs])
            times[kind] = time.perf_counter() - t0
            print(f"{kind}: median R2 {np.nanmedian(r2[kind]):.4f} ({times[kind]:.0f} s)", flush=True)
    lines = [f"{args.folds}-fold CV R2 (1 - SSE/SST, pooled held-out predictions), set {args.set} "
             f"({SETS[args.set]}), {len(y)} members, {s.shape[1]} parameters, {len(outputs)} outputs; "
             f"same folds for every kind",
             f"{'output':24s} " + " ".join(f"{k:>12s}" for k in kinds)]
    show = range(len(outputs)) if len(outputs) <= 12 else []
    for r in show:
        lines.append(f"{outputs[r]:24s} " + " ".join(f"{r2[k][r]:12.4f}" for k in kinds))
    if len(outputs) > 12:  # too many to list: the lowest five of each kind
        for k in kinds:
            low = np.argsort(np.where(np.isfinite(r2[k]) | np.isneginf(r2[k]), r2[k], np.inf))[:5]
            lines.append(f"lowest {k}: " + ", ".join(f"{outputs[r]} {r2[k][r]:.3f}" for r in low))
    if const:
        lines.append(f"{const} output(s) constant over all members (R2 undefined) left out of the statistics")
    if args.outputs:
        lines.append(f"subset: {len(outputs)} outputs evenly spaced over the non-constant ones ({', '.join(outputs)})")
    for name, f in [("median", np.nanmedian), ("10th percentile", lambda a: np.nanpercentile(a, 10)),
                    ("min", np.nanmin), ("max", np.nanmax)]:
        lines.append(f"{name + ' over outputs':24s} " + " ".join(f"{f(r2[k]):12.4f}" for k in kinds))
    for cut in (0.9, 0.95):
        lines.append(f"{f'share R2 >= {cut}':24s} "
                     + " ".join(f"{np.mean(r2[k][np.isfinite(r2[k])] >= cut):12.2f}" for k in kinds))
    if "sklearn" in r2:
        for k in kinds:
            if k != "sklearn":
                fin = np.isfinite(r2[k]) & np.isfinite(r2["sklearn"])
                d = r2[k][fin] - r2["sklearn"][fin]
                lines.append(f"{k} R2 >= sklearn ARD GP on {int(np.sum(d >= -1e-12))}/{int(fin.sum())} outputs; "
                             f"median difference {np.median(d):+.4f}")
    lines.append("wall time: " + ", ".join(f"{k} {times[k]:.0f} s" for k in kinds)
                 + f"; config {Path(args.config).name} {' '.join(args.set_key)} {KIND_SETS}; 2 CPU cores shared with "
                 "other jobs (times are indicative only)")
    if args.save:
        import json

        Path(args.save).write_text(json.dumps({"set": args.set, "outputs": outputs, "set_keys": args.set_key,
                                               "r2": {k: [float(v) for v in r2[k]] for k in kinds},
                                               "wall_s": times}, indent=1))
    record(f"PPE summary emulators, CV R2 on the same folds ({args.set})", lines)


if __name__ == "__main__":
    main()
