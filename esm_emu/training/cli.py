"""`esm-emu train CONFIG`, `esm-emu evaluate CONFIG|RUN_DIR`, `esm-emu export RUN_DIR --out model.pt`."""
from __future__ import annotations

import argparse

TRAIN_EPILOG = """exit status:
  0  training finished (max_steps reached or stopped early on the validation loss)
  2  bad input (config, key, value or file), named in one line
  3  stopped by SIGTERM before the end (Slurm/PBS time limit, scancel): checkpoint.pt was written,
     no evaluation was run; run the same command to resume. So `esm-emu train C && esm-emu export ...`
     never exports an unfinished emulator."""


def register(sub) -> None:
    p = sub.add_parser("train", help="train an emulator from the `emulator:` section of a YAML config; "
                       "the same command runs under mpiexec/srun/torchrun",
                       description="Train an emulator. Resumes from RUN_DIR/checkpoint.pt when it exists.\n"
                       "Under `mpiexec -n N` (or srun, torchrun) it trains with DistributedDataParallel.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML file with an `emulator:` section")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--max-steps", type=int, help="override emulator.train.max_steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the emulator: section, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cv", type=int, metavar="K", help="tabular kinds: first cross-validate over K folds seeded "
                   "by emulator.train.seed (RUN_DIR/cv.json, R2 per output), then train on all members")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="skill (NSE, KGE, RMSE, bias, R2) of a trained emulator on held-out "
                       "members, gridcells and years; CSV/JSON and plots")
    p.add_argument("target", help="the training config (YAML) or the run directory")
    p.add_argument("--out", help="output folder (default RUN_DIR/eval)")
    p.add_argument("--store", help="training store to evaluate on (default: the one the run trained on)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--max-series", type=int, help="at most this many series per group (default: the run's config)")
    p.add_argument("--calibrate-spread", action="store_true",
                   help="first fit the calibrated predictive spread on the validation series (one prediction "
                   "pass) and store it in the run's best.pt, as training now does at its end (for runs "
                   "trained before)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="write the trained emulator as TorchScript (normalisation inside), "
                       "loadable by torch.jit.load or FTorch without this package")
    p.add_argument("run_dir", help="run directory (its best.pt) or a checkpoint file")
    p.add_argument("--out", required=True, help="output .pt file (with --ftorch: a folder)")
    p.add_argument("--ftorch", action="store_true", help="write the Fortran-callable form into the folder --out: "
                   "emulator.pt with forward(forcing, static, theta, state) -> (responses, state) in float32 "
                   "physical units, manifest.json and manifest.txt (names, units, shapes)")
    p.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from .config import load_emulator_config
    from .job import STOPPED_EXIT, check_train_paths, train_job

    cfg = load_emulator_config(args.config, args.set, {"train.max_steps": args.max_steps})
    check_train_paths(cfg)  # before anything imports torch
    if args.cv is not None:
        from .cv import cross_validate

        res = cross_validate(cfg, args.cv, progress=not args.quiet)
        print(f"{res['folds']}-fold CV R2 ({res['kind']}, median {res['r2_median']:.4f}, "
              f"min {res['r2_min']:.4f}) written to {cfg.run_dir}/cv.json")
        for o, r in list(res["r2"].items())[:20]:
            print(f"  {o:24s} {r:.4f}")
    summary, evaluation = train_job(cfg, resume=not args.restart, progress=not args.quiet, evaluate=not args.no_eval)
    if summary is None:
        return 0
    print(f"trained {summary['steps']} steps in {summary['wall_s']:.1f} s ({summary['cpu_s']:.1f} s CPU on rank 0; "
          f"{summary['stop']}); best validation loss {summary['best_val']:.4g}; run directory {summary['run_dir']}")
    if summary["stop"] == "sigterm":
        print(f"stopped by SIGTERM after writing checkpoint.pt; run the same command to resume "
              f"(exit status {STOPPED_EXIT})", flush=True)
        return STOPPED_EXIT
    if evaluation is not None:
        print(f"evaluation written to {evaluation['out_dir']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ppe_ingest.base.errors import UserError

    from .job import checkpoint_of, run_dir_of

    if args.max_series is not None and args.max_series < 1:
        raise UserError("--max-series: must be >= 1")
    run = run_dir_of(args.target)  # the config, the checkpoint and the paths first: torch takes seconds to import
    checkpoint_of(run)
    if args.store is not None:
        from ppe_ingest.base.netcdf import require_netcdf

        require_netcdf(args.store, "--store", "training store")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out: {args.out}: is a file, expected a folder")
    from ..evaluate import calibrate_run, evaluate_run

    if args.calibrate_spread:
        entry = calibrate_run(run, store=args.store)
        print(f"spread calibrated on {entry['validation_series']} validation series ({entry['form']}); "
              f"stored in {checkpoint_of(run)}")
    res = evaluate_run(run, out_dir=args.out, store=args.store, plots=not args.no_plots,
                       max_series=args.max_series)
    print(f"evaluation written to {res['out_dir']}")
    for line in res["summary_lines"]:
        print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .job import check_export_paths

    if args.ftorch:
        from ..export_ftorch import export_ftorch

        print(f"wrote {export_ftorch(args.run_dir, args.out)}")
        return 0

    check_export_paths(args.run_dir, args.out)  # before torch is imported
    from ..export import export_torchscript

    out = export_torchscript(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
