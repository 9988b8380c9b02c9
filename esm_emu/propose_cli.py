"""`esm-emu propose --parameter-map MAP --n N --out DIR`: the next PPE wave from a calibration's posterior region."""
from __future__ import annotations

import argparse


def _handler(args) -> int:
    from .propose import propose_wave

    res = propose_wave(args.parameter_map, args.n, args.out, table=args.table, base_paramfile=args.base_paramfile,
                       prefix=args.prefix, seed=args.seed, progress=not args.quiet)
    print(f"wrote {len(res['members'])} members ({res['members'][0]} .. {res['members'][-1]}) to {res['dir']}: "
          f"paramfiles/, namelist_mods/, design.csv; how to run them as CTSM cases: {res['note']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "propose", help="write the next PPE wave from the posterior region of a parameter map",
        description="Draw N parameter sets from the region a calibration landed in (each gridcell's interval "
                    "in parameter_map.nc, so unidentified parameters keep their whole interval) and write them "
                    "in the PPE layout: paramfiles/<member>.nc, namelist_mods/<member>.txt, design.csv/.nc and "
                    "RUN_WAVE.md on running them as CTSM cases. Then `esm-emu ingest DIR --append-to STORE` "
                    "and `esm-emu train` fine-tune the emulator where the calibration lands.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parameter-map", required=True, help="parameter_map.nc written by esm-emu invert")
    p.add_argument("--n", type=int, required=True, help="members in the wave")
    p.add_argument("--out", required=True, help="output folder of the wave")
    p.add_argument("--base-paramfile", required=True, help="the PPE's default paramfile (copied into each member's)")
    p.add_argument("--table", help="parameter table (default: the shipped params_hydrology.csv)")
    p.add_argument("--prefix", default="WAVE", help="member name prefix (WAVE0001 ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_handler)
