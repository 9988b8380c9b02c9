"""`esm-emu train CONFIG`, `esm-emu evaluate CONFIG|RUN_DIR`, `esm-emu export RUN_DIR --out model.pt`."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("train", help="train an emulator from the `emulator:` section of a YAML config; "
                       "the same command runs under mpiexec/srun/torchrun",
                       description="Train an emulator. Resumes from RUN_DIR/checkpoint.pt when it exists. "
                       "Under `mpiexec -n N` (or srun, torchrun) it trains with DistributedDataParallel.")
    p.add_argument("config", help="YAML file with an `emulator:` section")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--max-steps", type=int, help="override emulator.train.max_steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the emulator: section, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="skill (NSE, KGE, RMSE, bias, R2) of a trained emulator on held-out "
                       "members, gridcells and years; CSV/JSON and plots")
    p.add_argument("target", help="the training config (YAML) or the run directory")
    p.add_argument("--out", help="output folder (default RUN_DIR/eval)")
    p.add_argument("--store", help="training store to evaluate on (default: the one the run trained on)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--max-series", type=int, help="at most this many series per group (default: the run's config)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="write the trained emulator as TorchScript (normalisation inside), "
                       "loadable by torch.jit.load or FTorch without this package")
    p.add_argument("run_dir", help="run directory (its best.pt) or a checkpoint file")
    p.add_argument("--out", required=True, help="output .pt file")
    p.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from .config import load_emulator_config
    from .job import train_job

    cfg = load_emulator_config(args.config, args.set, {"train.max_steps": args.max_steps})
    summary, evaluation = train_job(cfg, resume=not args.restart, progress=not args.quiet, evaluate=not args.no_eval)
    if summary is None:
        return 0
    print(f"trained {summary['steps']} steps in {summary['wall_s']:.1f} s ({summary['cpu_s']:.1f} s CPU on rank 0; "
          f"{summary['stop']}); best validation loss {summary['best_val']:.4g}; run directory {summary['run_dir']}")
    if summary["stop"] == "sigterm":
        print("stopped by SIGTERM after writing checkpoint.pt; run the same command to resume")
    if evaluation is not None:
        print(f"evaluation written to {evaluation['out_dir']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ppe_ingest.base.errors import UserError

    from ..evaluate import evaluate_run
    from .job import run_dir_of

    if args.max_series is not None and args.max_series < 1:
        raise UserError("--max-series: must be >= 1")
    res = evaluate_run(run_dir_of(args.target), out_dir=args.out, store=args.store, plots=not args.no_plots,
                       max_series=args.max_series)
    print(f"evaluation written to {res['out_dir']}")
    for line in res["summary_lines"]:
        print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..export import export_torchscript

    out = export_torchscript(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
