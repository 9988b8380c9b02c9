"""Is the summary-PPE emulator limited by data? Held-out R2 of esm-emu's GP (the shipped
configs/emulator_tabular_ppe.yaml model) against the number of training members, on one fixed
held-out set of the real CLM5 PPE's five global means.

Usage: python bench/ppe_learning_curve.py [--sizes 100,200,300,400] [--test 100] [--seed 0]
A curve still rising at the largest size says more members would raise R2; a flat one says the
model (or the outputs' own noise) is the limit.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,200,300,400")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(REPO / "configs" / "emulator_tabular_ppe.yaml"))
    args = ap.parse_args()
    import torch

    from esm_emu.data import SummaryTable
    from esm_emu.training.config import load_emulator_config
    from esm_emu.training.cv import r2_score
    from esm_emu.training.loop import build_tabular
    from ppe_ingest.ingest.summary import build_summary_store

    torch.set_num_threads(1)
    root = Path(os.environ.get("ESM_EMU_SHARED_DATA", REPO.parent / "shared" / "data")) / "ppe"
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "five.nc"
        build_summary_store(root / "outputs" / "fivevars_gmean_amean_2005-2014.nc", root / "outputs" / "lhc220926.nc",
                            root / "param_tables" / "lhc_220926.csv", store)
        cfg = load_emulator_config(args.config, sets=[f"store={store}"], check_files=False)
        tab = SummaryTable(store, cfg["responses"], cfg["params"])
    perm = np.random.default_rng([args.seed, 7]).permutation(len(tab.theta))
    test, pool = perm[:args.test], perm[args.test:]
    rows, r2s = [], []
    for n in sizes:
        tr = pool[:n]
        t0 = time.process_time()
        emu = build_tabular(cfg["model"], tab.theta[tr], tab.y[tr], tab.param_names, tab.response_names)
        emu.core.seed = args.seed
        with torch.no_grad():
            x = emu.norm.theta(torch.tensor(tab.theta[tr], dtype=torch.float32))
            y = emu.normalize_response(torch.tensor(tab.y[tr], dtype=torch.float32))
        emu.core.fit(x, y)  # marginal likelihood by gradient: outside no_grad
        with torch.no_grad():
            m, _ = emu.predict(torch.tensor(tab.theta[test], dtype=torch.float32))
        r2 = r2_score(tab.y[test], m.double().numpy())
        r2s.append(r2)
        rows.append(f"{n:5d} " + " ".join(f"{v:15.4f}" for v in r2) + f"  {time.process_time() - t0:7.1f}")
    lines = [f"held-out R2 on {args.test} fixed members vs training members (model {cfg['model']['name']}, "
             f"kernel {cfg['model']['kernel']}, transform {cfg['model']['output_transform']}), seed {args.seed}",
             "    n " + " ".join(f"{o:>15s}" for o in tab.response_names) + "   CPU s"] + rows
    if len(sizes) > 1:
        a, b = r2s[-2], r2s[-1]
        lines.append(f"gain from {sizes[-2]} to {sizes[-1]} members: " +
                     ", ".join(f"{o} {b[i] - a[i]:+.4f}" for i, o in enumerate(tab.response_names)))
    lines.append("2 CPU cores shared with other jobs: CPU seconds are indicative only")
    record("PPE summary: GP learning curve (held-out R2 vs training members)", lines)


if __name__ == "__main__":
    main()
