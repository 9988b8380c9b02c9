"""`esm-emu simulate CONFIG --out DIR`: a PPE (and observations) from the built-in simulator."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="write a PPE (and synthetic observations) from the built-in land simulator, in CTSM's layout",
        description="Run the built-in CTSM-like land simulator (a stand-in for CTSM, not CTSM) over a "
        "Latin-hypercube design and write paramfiles/, namelist_mods/, hist/*.clm2.h1.*.nc, a 1-D "
        "surfdata, design.csv and params.csv; with a `truth:` section also truth/ parameter maps and "
        "observations (CAMELS streamflow text, PLUMBER2-style latent heat, ISMN soil moisture).")
    p.add_argument("config", help="YAML config with a `simulate:` section (e.g. configs/quickstart.yaml)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="override simulate.seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the simulate: section, e.g. --set n_members=16 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ppe_ingest.base.config import output_folder

    from .config import load_simulate_config

    cfg = load_simulate_config(args.config, args.set, {"seed": args.seed})
    output_folder(args.out, create=False)
    from .ppe import simulate  # torch only after the config and --out pass

    simulate(cfg, args.out, quiet=args.quiet)
    return 0
