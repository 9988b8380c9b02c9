"""History matching on the real CLM5 PPE: NROY fraction and ranges from the example targets, and the
next wave written on the PPE's own 32-parameter table and read back from its files by ingest's reader.

Usage: python bench/ppe_history_match.py RUN_DIR [--samples 100000] [--wave 8]
RUN_DIR: `esm-emu train configs/emulator_tabular_ppe.yaml` on the five global means (its store names
lhc_220926.csv as its table). The base paramfile is the PPE's OAAT0000.nc.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--targets", default=str(REPO / "configs" / "targets_clm5ppe_example.yaml"))
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--wave", type=int, default=8)
    args = ap.parse_args()
    from esm_emu.history_match import history_match
    from ppe_ingest.ingest.discover import discover
    from ppe_ingest.ingest.theta import FROM_DESIGN, member_theta, ppe_table, read_design

    data = Path(os.environ.get("ESM_EMU_SHARED_DATA", REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as tmp:
        res = history_match(args.run_dir, args.targets, Path(tmp) / "hm", args.samples, 0, args.wave,
                            base_paramfile=data / "ppe" / "paramfiles" / "OAAT0000.nc")
        wave = Path(res["wave"]["dir"])
        ppe = discover(wave)
        theta, _, how = member_theta(ppe, ppe_table(ppe))
        design = read_design(wave / "design.csv")
        err = np.abs(theta.loc[design.index, design.columns].values / design.values - 1).max()
        from_design = [p for p, h in how.items() if h == FROM_DESIGN]
    ranges = {p: r for p, r in res["param_ranges"].items() if r is not None}
    tight = sorted(ranges, key=lambda p: ranges[p]["s_q95"] - ranges[p]["s_q05"])[:6]
    lines = [f"targets {Path(args.targets).name}; {args.samples} LHC samples of the design space; cutoff "
             f"{res['cutoff']:g}",
             f"NROY fraction {res['nroy_fraction']:.4f}",
             "ruled out by each target alone: " + ", ".join(f"{k} {v:.3f}" for k, v in res["ruled_out_by"].items()),
             "median emulator sd: " + ", ".join(f"{k} {v:.3g}" for k, v in res["emulator_sd_median"].items()),
             "most constrained parameters (5-95% of NROY on the unit cube):"]
    lines += [f"  {p:20s} [{ranges[p]['s_q05']:.2f}, {ranges[p]['s_q95']:.2f}]" for p in tight]
    lines += [f"wave: {len(design)} members on the {len(design.columns)}-parameter table; ingest's reader gives "
              f"back every design value from the members' files (max relative error {err:.1e}; parameters "
              f"taken from the design table instead of the files: {len(from_design)})"]
    record("PPE summary: history matching on the example targets, and the next wave", lines)


if __name__ == "__main__":
    main()
