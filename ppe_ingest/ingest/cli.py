"""``esm-emu ingest``: catalog a CTSM PPE and write the training store (or the summary-PPE store)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="catalog a CTSM PPE (intake-esm) and assemble the training store",
        description="Discover members, tapes and time ranges of a CTSM PPE, check parameter values "
                    "against the design, write an intake-esm catalog and the chunked training store. "
                    "With --summary: build the tabular store from the CLM5 PPE summary outputs.")
    p.add_argument("ppe_dir", nargs="?", help="PPE folder (paramfiles/, namelist_mods/, history files)")
    p.add_argument("--out", required=True, help="output store (.nc)")
    p.add_argument("--catalog", help="also write an intake-esm catalog (JSON + CSV beside it)")
    p.add_argument("--params", help="parameter table (bounds, locations), e.g. lhc_220926.csv")
    p.add_argument("--design", help="member x parameter design table to check against (default PPE_DIR/design.csv)")
    p.add_argument("--vars", nargs="+", help="history variables to ingest (default: CTSM forcing/responses found)")
    p.add_argument("--config", help="YAML config with an ingest: section")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave bad members out and record why in the store's 'skipped' attribute")
    p.add_argument("--seed", type=int, help="seed of the train/val/test split")
    p.add_argument("--summary", metavar="OUTPUTS_NC", help="summary-PPE outputs (var x ens) instead of a PPE folder")
    p.add_argument("--base-paramfile", help="paramfile holding defaults for XXpercent bounds (summary mode)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppe_ingest.base.config import load_config, validate
    from ppe_ingest.base.errors import UserError
    from .config import INGEST_SCHEMA

    if args.summary:
        from .summary import build_summary_store

        if not (args.design and args.params):
            raise UserError("--summary needs --design (e.g. lhc220926.nc) and --params (e.g. lhc_220926.csv)")
        ds = build_summary_store(args.summary, args.design, args.params, out=args.out,
                                 base_paramfile=args.base_paramfile)
        print(f"wrote {args.out}: {ds.sizes['member']} members x {ds.sizes['param']} params -> "
              f"{ds.sizes['output']} outputs")
        return 0
    if not args.ppe_dir:
        raise UserError("give a PPE folder (or --summary OUTPUTS.nc)")
    cfg = load_config(args.config, INGEST_SCHEMA, section="ingest") if args.config else validate({}, INGEST_SCHEMA, "defaults")
    for key in ("vars", "seed", "skip_bad", "params"):
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    out, catalog, report = ingest_ppe(args.ppe_dir, args.out, cfg, catalog=args.catalog, design=args.design,
                                      progress=not args.no_progress)
    for line in report.lines():
        print(f"skipped: {line}")
    import netCDF4

    with netCDF4.Dataset(out) as ds:
        n = len(ds.dimensions["member"])
    print(f"wrote {out}" + (f" and {catalog}" if catalog else "") + f": {n} members"
          + (f", {len(report.problems)} problem(s) skipped (see the store's 'skipped' attribute)" if report.problems else ""))
    return 0


def ingest_ppe(ppe_dir, out, cfg: dict, catalog=None, design=None, progress: bool = True):
    """Discover a PPE, check its parameters, write the catalog (optional) and the training store.

    ``cfg`` is a validated ``ingest:`` section. Returns (store path, catalog path or None, Report).
    """
    from pathlib import Path

    from ..param_table import load_param_table
    from .catalog import write_catalog
    from .checks import Report
    from .discover import discover
    from .writer import write_store
    from .theta import check_design, member_theta, ppe_table, read_design

    report = Report(cfg["skip_bad"])
    ppe = discover(ppe_dir, variables=cfg["vars"], report=report)
    if design:
        ppe.design = Path(design)
    if cfg["params"]:
        base = next(iter(ppe.paramfiles.values()), None)
        table = load_param_table(cfg["params"], base_paramfile=base)
    else:
        table = ppe_table(ppe)  # PPE_DIR/params.csv when the PPE carries its own table
    theta = member_theta(ppe, table=table)
    if ppe.design is not None:
        check_design(theta[0], read_design(ppe.design), str(ppe.design), report, theta[2])
    if catalog:
        good = [m for m in theta[0].index if m not in report.bad_members()]
        catalog = str(write_catalog(ppe, catalog, theta[0].loc[good]))
    out = write_store(ppe, out, variables=cfg["vars"], table=table, seed=cfg["seed"], split=cfg["split"],
                      log_vars=cfg["log_transform_vars"], log_eps=cfg["log_eps"],
                      chunk_gridcell=cfg["chunk_gridcell"], chunk_time=cfg["chunk_time"], catalog=catalog,
                      progress=progress, theta=theta)
    return out, catalog, report
