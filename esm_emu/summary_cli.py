"""`esm-emu sensitivity RUN_DIR` and `esm-emu history-match RUN_DIR --targets TARGETS.yaml` (summary-PPE emulators)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("sensitivity", help="first-order and total Sobol indices of a tabular emulator's outputs, "
                       "with bootstrap intervals (CSV, JSON, bar plot)")
    p.add_argument("run_dir", help="training run directory of a tabular emulator (gp, mlp_ensemble, tabular)")
    p.add_argument("--out", help="output folder (default RUN_DIR/sensitivity)")
    p.add_argument("--samples", type=int, default=4096, help="base sample size N (N (d + 2) emulator calls)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--outputs", nargs="+", help="only these outputs (default: all)")
    p.add_argument("--emulator-draws", type=int, default=0, metavar="K",
                   help="gp: indices of K posterior draws of the emulator, so the intervals also hold its own "
                        "uncertainty (default 0: its mean, Monte Carlo error only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_sensitivity)

    p = sub.add_parser("history-match", help="implausibility of the design space against observed targets, the "
                       "NROY fraction and parameter ranges, and the next wave of PPE members inside NROY")
    p.add_argument("run_dir", help="training run directory of a tabular emulator")
    p.add_argument("--targets", required=True, help="YAML: targets: {OUTPUT: {value, sd, discrepancy_sd, source}}")
    p.add_argument("--out", help="output folder (default RUN_DIR/history_match)")
    p.add_argument("--samples", type=int, default=100_000, help="Latin hypercube size over the design space")
    p.add_argument("--cutoff", type=float, help="implausibility cutoff (default: the targets file's, else 3)")
    p.add_argument("--wave", type=int, default=0, help="members of the next wave to write (0: none)")
    p.add_argument("--prefix", default="WAVE", help="member name prefix of the wave (WAVE0001 ...)")
    p.add_argument("--table", help="parameter table (default: the one the store names)")
    p.add_argument("--base-paramfile", help="the PPE's default paramfile, copied into each wave member's")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_history_match)


def _sensitivity(args: argparse.Namespace) -> int:
    from ppe_ingest.base.errors import UserError

    from .sensitivity import sensitivity_run

    if args.bootstrap < 1:
        raise UserError(f"--bootstrap: {args.bootstrap} must be >= 1")
    res = sensitivity_run(args.run_dir, args.out, args.samples, args.bootstrap, args.seed, args.outputs,
                          plot=not args.no_plots, draws=args.emulator_draws)
    ind = res["indices"]
    for r, o in enumerate(res["outputs"][:10]):
        top = sorted(range(len(res["params"])), key=lambda j: -ind["ST"][r, j])[:3]
        print(f"{o}: " + ", ".join(f"{res['params'][j]} ST {ind['ST'][r, j]:.2f} "
                                   f"[{ind['ST_lo'][r, j]:.2f}, {ind['ST_hi'][r, j]:.2f}]" for j in top))
    print(f"Sobol indices written to {res['out_dir']}")
    return 0


def _history_match(args: argparse.Namespace) -> int:
    from .history_match import history_match

    res = history_match(args.run_dir, args.targets, args.out, args.samples, args.seed, args.wave, args.table,
                        args.base_paramfile, args.prefix, args.cutoff)
    print(f"NROY: {res['nroy_fraction']:.4f} of {res['samples']} samples (cutoff {res['cutoff']:g})")
    for n, f in res["ruled_out_by"].items():
        print(f"  {n}: rules out {f:.3f} alone")
    if "wave" in res:
        print(f"wave of {len(res['wave']['members'])} members written to {res['wave']['dir']}")
    print(f"written to {res['out_dir']}")
    return 0
