"""`esm-emu quickstart --out DIR` and `esm-emu run CONFIG --out DIR`: the whole chain (esm_emu.pipeline)."""
from __future__ import annotations

from pathlib import Path

from .pipeline import STAGES


def _add_common(p) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, help="seed for every stage (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. --set emulator.train.max_steps=200 (repeatable)")
    p.add_argument("--restart", action="store_true", help="run every stage again")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--stop-after", metavar="STAGE", choices=STAGES,
                   help="end after this stage (one of: %(choices)s), e.g. ingest on CPU nodes, then train on a "
                        "GPU node; the next call continues from there (waves follow invert)")


def _run(args) -> int:
    from .pipeline import run_pipeline, summary_lines

    report = run_pipeline(args.config, args.out, seed=args.seed, sets=args.set, restart=args.restart,
                          progress=not args.quiet, stop_after=args.stop_after)
    if args.stop_after:
        print(f"stopped after {args.stop_after}: {', '.join(report)} done (in {Path(args.out) / 'stages.json'})")
        return 0
    print(f"report: {Path(args.out) / 'report' / 'metrics.json'}")
    for line in summary_lines(report):
        print(line)
    return 0


def _quickstart(args) -> int:
    from .pipeline import default_config

    args.config = args.config or default_config()
    return _run(args)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="the whole chain on the built-in simulator: PPE, emulator, inversion, CTSM files, report",
        description="Twin experiment on the embedded default: simulate a PPE with the built-in land "
                    "simulator (a CTSM stand-in), ingest it, train the emulator, invert synthetic "
                    "observations, write calibrated CTSM files and DIR/report/metrics.json with plots. "
                    "Rerunning with the same --out continues after the last finished stage. "
                    "The same as `esm-emu run` on the shipped quickstart.yaml.")
    p.add_argument("--config", help="config with simulate, ingest, emulator and inverse sections "
                   "(default: the shipped quickstart.yaml; see `esm-emu config list`)")
    _add_common(p)
    p.set_defaults(func=_quickstart)


def register_run(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="the whole chain (simulate, ingest, train, invert, CTSM files, report) on a config",
        description="Run every stage of a config with simulate, ingest, emulator and inverse sections "
                    "into DIR: the built-in simulator's PPE and truth, the training store, the emulator, "
                    "the inversion of the synthetic observations, calibrated CTSM files and "
                    "DIR/report/metrics.json. Rerunning with the same --out continues after the last "
                    "finished stage.")
    p.add_argument("config", help="YAML config (start from `esm-emu config copy quickstart.yaml DIR`)")
    _add_common(p)
    p.set_defaults(func=_run)
