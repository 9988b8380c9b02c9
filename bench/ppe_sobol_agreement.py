"""GPP Sobol total indices from two emulators of the real CLM5 PPE on the same Saltelli samples: do
their 95% bootstrap intervals overlap?

Usage: python bench/ppe_sobol_agreement.py RUN_DIR_A RUN_DIR_B [--output GPP] [--samples 4096]
Both runs are `esm-emu train` runs on the same summary store (same design bounds). RUN_DIR_B may be
`sklearn-gp`: the reference ARD GP of bench/ppe_summary_gp.py (scikit-learn, constant x RBF + white
noise), fitted on the same training members as RUN_DIR_A.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--output", default="GPP")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--emulator-draws", type=int, default=0,
                    help="esm-emu gp runs: indices of this many posterior draws, so their intervals hold the "
                         "emulator's own uncertainty too (0: predictive mean, Monte Carlo error only)")
    args = ap.parse_args()
    import tempfile

    from esm_emu.emulator import load_emulator
    from esm_emu.sensitivity import sensitivity_run

    res, kinds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate((args.run_a, args.run_b)):
            if run == "sklearn-gp":
                kinds.append("sklearn ARD GP")
                res.append(sklearn_sobol(args.run_a, args.output, args.samples, args.bootstrap))
                continue
            kind = load_emulator(run).model_cfg.get("name")
            draws = args.emulator_draws if kind == "gp" else 0
            kinds.append(kind + (f" ({draws} draws)" if draws else ""))
            res.append(sensitivity_run(run, Path(tmp) / str(i), args.samples, args.bootstrap, 0, [args.output],
                                       plot=False, draws=draws))
    params = res[0]["params"]
    a, b = res[0]["indices"], res[1]["indices"]
    over = (a["ST_lo"][0] <= b["ST_hi"][0]) & (b["ST_lo"][0] <= a["ST_hi"][0])
    order = np.argsort(-a["ST"][0])
    lines = [f"{args.output} total Sobol indices, same samples (N={args.samples}, {args.bootstrap} bootstrap "
             f"resamples, 95% intervals): {kinds[0]} ({args.run_a}) vs {kinds[1]} ({args.run_b})",
             f"{'param':16s} {kinds[0]:>22s} {kinds[1]:>22s}  overlap"]
    for j in order[:12]:
        lines.append(f"{params[j]:16s} {a['ST'][0, j]:6.3f} [{a['ST_lo'][0, j]:.3f},{a['ST_hi'][0, j]:.3f}] "
                     f"{b['ST'][0, j]:6.3f} [{b['ST_lo'][0, j]:.3f},{b['ST_hi'][0, j]:.3f}]  "
                     f"{'yes' if over[j] else 'no'}")
    for j in order[12:]:
        if not over[j]:  # every disagreement is shown, not only the leading parameters'
            lines.append(f"{params[j]:16s} {a['ST'][0, j]:6.3f} [{a['ST_lo'][0, j]:.3f},{a['ST_hi'][0, j]:.3f}] "
                         f"{b['ST'][0, j]:6.3f} [{b['ST_lo'][0, j]:.3f},{b['ST_hi'][0, j]:.3f}]  no")
    top_a, top_b = set(order[:5]), set(np.argsort(-b["ST"][0])[:5])
    lines.append(f"intervals overlap for {int(over.sum())}/{len(params)} parameters; top-5 sets share "
                 f"{len(top_a & top_b)}; max |difference| {np.abs(a['ST'][0] - b['ST'][0]).max():.3f}")
    lines.append("intervals: " + "; ".join(
        f"{k}: " + ("Monte Carlo and emulator error (bootstrap pooled over posterior draws)" if "draws" in k
                    else "Monte Carlo error only") for k in kinds))
    record(f"PPE summary: {args.output} Sobol total indices, {kinds[0]} vs {kinds[1]}", lines)


def sklearn_sobol(run_a: str, output: str, n: int, n_boot: int) -> dict:
    """Sobol indices of the reference sklearn ARD GP fitted on RUN_DIR_A's training members."""
    from bench.ppe_summary_gp import reference_gp
    from esm_emu.data import SummaryTable
    from esm_emu.distributed import Distributed
    from esm_emu.emulator import load_emulator
    from esm_emu.sensitivity import design_bounds, sobol_indices
    from esm_emu.training.config import load_emulator_config
    from esm_emu.training.loop import TabularTask

    emu = load_emulator(run_a)
    cfg = load_emulator_config(Path(run_a) / "config.yaml")
    train = TabularTask(cfg, Distributed()).train_idx  # the members RUN_DIR_A was fitted on
    tab = SummaryTable(cfg["store"], [output], emu.param_names)
    lo, hi = design_bounds(Path(run_a), emu.param_names)
    gp = reference_gp((tab.theta[train] - lo) / (hi - lo), tab.y[train], restarts=2, seed=0)[0]
    return {"indices": sobol_indices(lambda u: gp.predict(u)[:, None], len(lo), n, n_boot, 0),
            "params": emu.param_names}


if __name__ == "__main__":
    main()
