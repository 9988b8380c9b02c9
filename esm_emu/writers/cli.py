"""The `esm-emu write-ctsm` command: parse the arguments, call `write_ctsm_files` (or print its plan)."""
from __future__ import annotations

import argparse
import re

from ppe_ingest.base.errors import UserError

from .plan import TOL_DEG

_SET = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)(?:\[([^\]]+)\])?\s*=(.*)$")


def parse_set(items) -> dict:
    """``NAME=VALUE`` / ``NAME[PFT]=VALUE`` strings to a dict (value parsed as Fortran/number text)."""
    from ppe_ingest.ctsmio.user_nl import parse_namelist_value

    out: dict = {}
    for item in items or ():
        m = _SET.match(item)
        if not m or not m.group(3).strip():
            raise UserError(f"--set {item!r}: expected NAME=VALUE (or NAME[PFT]=VALUE), e.g. --set FMAX=0.3")
        name, pft, text = m.group(1), m.group(2), m.group(3).strip()
        value = parse_namelist_value(text)
        if pft is not None:
            key = int(pft) if pft.strip().isdigit() else pft.strip()
            out.setdefault(name, {})
            if not isinstance(out[name], dict):
                raise UserError(f"--set {item!r}: {name} is set both whole and per PFT")
            out[name][key] = value
        else:
            out[name] = value
    return out


def _handler(args) -> int:
    from .plan import plan_ctsm_files
    from .write import write_ctsm_files

    request = {"fsurdat": args.fsurdat, "paramfile": args.paramfile, "user_nl": args.user_nl,
               "values": args.values, "table": args.table, "settings": parse_set(args.set),
               "per_gridcell_paramfiles": args.per_gridcell_paramfiles,
               "per_cluster_paramfiles": args.per_cluster_paramfiles, "tol_deg": args.tol_deg,
               "allow_outside_table": args.allow_outside_table}
    if args.dry_run:
        print(plan_ctsm_files(args.out, **request).describe())
        return 0
    for paths in write_ctsm_files(args.out, **request).values():
        for p in paths:
            print(p)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "write-ctsm", help="write CTSM fsurdat/paramfile/user_nl_clm from parameter values or a parameter map",
        description="Write new CTSM files in --out, named after their inputs, with the given parameter "
                    "values. Each name goes where CTSM reads it (the parameter table's location, or where "
                    "the variable exists). Paramfile/namelist values from a map are reduced to their median "
                    "across gridcells unless --per-gridcell-paramfiles is given. Every value is checked "
                    "(table bounds, surface dataset physics, variable dtype) before any file is written.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (new files are named after their inputs)")
    p.add_argument("--fsurdat", help="base surface dataset (both 2-D lsmlat/lsmlon and 1-D gridcell forms)")
    p.add_argument("--paramfile", help="base CTSM parameter file")
    p.add_argument("--user-nl", dest="user_nl",
                   help="base user_nl_clm (gets fsurdat/paramfile pointed at the new files)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a parameter value, e.g. --set FMAX=0.3 --set medlynslope[c4_grass]=1.6 (repeatable)")
    p.add_argument("--values", metavar="MAP.nc", help="parameter map netCDF: theta(gridcell|site, param)")
    p.add_argument("--table", help="parameter table CSV (default: configs/params_hydrology.csv)")
    p.add_argument("--per-gridcell-paramfiles", action="store_true",
                   help="one paramfile per gridcell/site of the map instead of the median value")
    p.add_argument("--per-cluster-paramfiles", action="store_true",
                   help="one paramfile per k-means cluster of the map (its cluster/theta_cluster variables), "
                   "with paramfile_clusters.csv mapping each gridcell/site to its file")
    p.add_argument("--tol-deg", type=float, default=TOL_DEG,
                   help="max distance (degrees) matching map lat/lon to fsurdat gridcells")
    p.add_argument("--allow-outside-table", action="store_true",
                   help="write values outside the parameter table's bounds (a deliberate experiment); each file "
                   "records the flag and those values in its history (user_nl_clm: a comment line). Physically "
                   "invalid values (a negative rate, a fraction above 1) are refused all the same")
    p.add_argument("--dry-run", action="store_true",
                   help="print where each parameter goes and which files would be written; write nothing")
    p.set_defaults(func=_handler)
