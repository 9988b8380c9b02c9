"""``esm-emu ingest CONFIG | PPE_DIR``: catalog a CTSM PPE and write the training store (or the summary-PPE store)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="catalog a CTSM PPE (intake-esm) and assemble the training store",
        description="Discover members, tapes and time ranges of a CTSM PPE, check parameter values "
                    "against the design, write an intake-esm catalog and the chunked training store. "
                    "The positional is a YAML config with an `ingest:` section, or a PPE folder (ingested "
                    "with the default settings). With --summary: build the tabular store from the CLM5 "
                    "PPE summary outputs. Flags override the config's keys.")
    p.add_argument("source", nargs="?", metavar="CONFIG|PPE_DIR",
                   help="YAML config with an ingest: section, "
                        "or a PPE folder (paramfiles/, namelist_mods/, history files)")
    p.add_argument("--out", help="output store (.nc) (ingest.out)")
    p.add_argument("--catalog", help="also write an intake-esm catalog, JSON + CSV beside it (ingest.catalog)")
    p.add_argument("--params", help="parameter table (bounds, locations), e.g. lhc_220926.csv (ingest.params)")
    p.add_argument("--design", help="member x parameter design table to check against (default PPE_DIR/design.csv)")
    p.add_argument("--vars", nargs="+", help="history variables to ingest (default: CTSM forcing/responses found)")
    p.add_argument("--config", help="YAML config with an ingest: section (when the positional is the PPE folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the ingest: section, e.g. --set split.test_years=2 (repeatable)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave bad members out and record why in the store's 'skipped' attribute")
    p.add_argument("--seed", type=int, help="seed of the train/val/test split")
    p.add_argument("--summary", metavar="OUTPUTS_NC", help="summary-PPE outputs (var x ens) instead of a PPE folder")
    p.add_argument("--base-paramfile", help="paramfile holding defaults for XXpercent bounds (summary mode)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="read and check members on a dask LocalCluster of N worker processes; this process "
                        "writes the store, which is the same as without (default: no cluster) (ingest.workers)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use a running dask cluster, e.g. tcp://node01:8786 (dask-jobqueue; see hpc/README.md) "
                        "(ingest.scheduler)")
    p.add_argument("--scheduler-file", metavar="FILE",
                   help="use the running dask cluster this scheduler file describes (dask-mpi) (ingest.scheduler_file)")
    p.add_argument("--append-to", metavar="STORE",
                   help="append the members of the PPE folder (a new wave, e.g. from esm-emu propose) to this "
                        "existing training store (its normalisation and splits kept; see ppe_ingest/ingest/append.py)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppe_ingest.base.errors import UserError

    from .config import load_ingest_config
    from .pipeline import ingest_ppe, ingest_summary

    if getattr(args, "append_to", None):
        from .append import append_wave

        if args.source is None or not Path(args.source).is_dir():
            raise UserError(f"--append-to: give the wave's PPE folder as the positional (got {args.source!r})")
        res = append_wave(args.source, args.append_to, seed=args.seed or 0, sets=args.set,
                          progress=not args.no_progress, workers=args.workers, scheduler=args.scheduler,
                          scheduler_file=args.scheduler_file)
        print(f"appended {res['appended']} members ({res['first']} .. {res['last']}; {res['val']} to validation) "
              f"to {res['store']}: {res['members']} members")
        return 0
    config, ppe_dir = args.config, None
    if args.source is not None:
        source = Path(args.source)
        if source.is_dir():
            ppe_dir = args.source
        elif not source.exists():
            raise UserError(f"{source}: not found (give a PPE folder or a YAML config with an ingest: section)")
        elif args.config:
            raise UserError(f"{source}: not a PPE folder (with --config, the positional is the PPE folder)")
        else:
            config = args.source
    cfg = load_ingest_config(config, args.set, {
        "ppe_dir": ppe_dir, "out": args.out, "catalog": args.catalog, "params": args.params,
        "design": args.design, "vars": args.vars, "skip_bad": args.skip_bad, "seed": args.seed,
        "summary": args.summary, "base_paramfile": args.base_paramfile, "workers": args.workers,
        "scheduler": args.scheduler, "scheduler_file": args.scheduler_file})
    if cfg.summary:
        ds = ingest_summary(cfg)
        for p in json.loads(ds.attrs.get("skipped", "[]")):
            print(f"skipped: {p['file']} (member {p['member']}): {p['reason']}")
        print(f"wrote {cfg.out}: {ds.sizes['member']} members x {ds.sizes['param']} params -> "
              f"{ds.sizes['output']} outputs")
        return 0
    if not cfg.ppe_dir:
        raise UserError("give a PPE folder (PPE_DIR, or ingest.ppe_dir in CONFIG) or --summary OUTPUTS.nc")
    res = ingest_ppe(cfg, progress=not args.no_progress)
    for line in res.report.lines():
        print(f"skipped: {line}")
    skipped = (f", {len(res.report.problems)} problem(s) skipped (see the store's 'skipped' attribute)"
               if res.report.problems else "")
    catalog = f" and {res.catalog}" if res.catalog else ""
    print(f"wrote {res.store}{catalog}: {res.n_members} members{skipped}")
    return 0
