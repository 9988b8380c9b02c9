"""The quickstart twin experiment's figures: stage wall times, emulator skill, parameter recovery,
held-out-year NSE with default and inferred parameters, against the issue targets.

    python bench/quickstart.py --out run/            # runs `esm-emu quickstart --out run/` first
    python bench/quickstart.py --out run/ --no-run   # only reads run/report/metrics.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record

TARGETS_EMU = {"QRUNOFF": 0.95, "EFLX_LH_TOT": 0.97, "SOILWATER_10CM": 0.97}
IDENTIFIABLE = ("FMAX", "fff", "hksat_sf")


def _n(x) -> float:
    """A metric that may be None (r of an estimate that is one value everywhere) as a float (nan)."""
    return float("nan") if x is None else float(x)


def lines_from(report: dict, stages: dict) -> list[str]:
    out = [report.get("what", "")]
    walls = report["wall_s"]
    out.append("wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in walls.items() if k != "total")
               + f"; total {walls['total']} (goal < 600, stretch < 300)")
    tr = stages.get("train", {})
    out.append(f"emulator training: {tr.get('steps')} steps, {tr.get('train_wall_s')} s wall (goal < 180)")
    mg = (report.get("emulator") or {}).get("members_x_gridcells", {})
    for v, goal in TARGETS_EMU.items():
        nse = (mg.get(v) or {}).get("NSE_median")
        if nse is not None:
            out.append(f"emulator median daily NSE, held-out members x gridcells, {v}: {nse:.3f} "
                       f"(target >= {goal}: {'met' if nse >= goal else 'NOT met'})")
    rec = report.get("parameter_recovery") or {}
    for where in ("observed", "unobserved"):
        for p, d in (rec.get(where) or {}).items():
            tgt = (f" (target r >= 0.9: {'met' if (d['r'] or 0) >= 0.9 else 'NOT met'})"
                   if where == "unobserved" and p in IDENTIFIABLE else "")
            out.append(f"recovery at {where} gridcells, {p:26s} r {_n(d['r']):.3f}  RMSE {d['rmse']:.4g}  "
                       f"coverage {d.get('coverage', float('nan')):.2f}{tgt}")
    sk = report.get("skill_held_out_years") or {}
    for v, d in (sk.get("inferred") or {}).items():
        dflt = (sk.get("default") or {}).get(v, {}).get("nse_median")
        goal = " (target >= 0.9: " + ("met" if d["nse_median"] >= 0.9 else "NOT met") + ")" if v == "QRUNOFF" else ""
        out.append(f"held-out-year median NSE at observed sites, {v}: default {dflt:.3f}, "
                   f"inferred {d['nse_median']:.3f}{goal}")
    for name, d in (report.get("ablation") or {}).items():
        un = d.get("unobserved")
        if isinstance(un, dict):
            out.append(f"ablation {name}: r at unobserved " + ", ".join(f"{p} {_n(x['r']):.2f}" for p, x in un.items()))
        ob = d.get("observed") or {}
        out.append(f"ablation {name}: r at observed " + ", ".join(f"{p} {_n(x['r']):.2f}" for p, x in ob.items()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="quickstart output folder")
    ap.add_argument("--no-run", action="store_true", help="read an existing run's report instead of running")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    out = Path(args.out)
    if not args.no_run:
        from esm_emu.pipeline import run_quickstart

        run_quickstart(out, seed=args.seed, restart=True, progress=False)
    report = json.loads((out / "report" / "metrics.json").read_text())
    stages = json.loads((out / "stages.json").read_text())
    lines = lines_from(report, stages)
    lines.append(f"load average at the end: {os.getloadavg()[0]:.1f}")
    record("Quickstart twin experiment (esm-emu quickstart, configs/quickstart.yaml)", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
