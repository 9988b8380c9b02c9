"""`esm-emu cime install CASEROOT --config FILE [--cycles N] [--dry-run]`."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the `cime` command group (only `install` for now)."""
    p = subparsers.add_parser("cime", help="wire esm-emu into a CIME (CESM) case",
                              description="Wire esm-emu into a CIME (CESM) case through its PRERUN, "
                              "DATA_ASSIMILATION and POSTRUN scripts.")
    sub = p.add_subparsers(dest="cime_command", metavar="ACTION", required=True)
    inst = sub.add_parser("install", help="register the esm-emu hooks in a case",
                          description="Copy the esm-emu hook scripts and config into CASEROOT/esm-emu/ and "
                          "set PRERUN_SCRIPT, DATA_ASSIMILATION_SCRIPT, DATA_ASSIMILATION_CYCLES and "
                          "POSTRUN_SCRIPT with the case's ./xmlchange. What the config no longer asks for "
                          "is switched off (back to the value from before esm-emu set it); on any failure "
                          "the case is left exactly as it was.")
    inst.add_argument("caseroot", metavar="CASEROOT", help="the case directory (has env_run.xml, xmlchange)")
    inst.add_argument("--config", required=True, metavar="FILE",
                      help="hook config YAML (see the README section on CIME cases)")
    inst.add_argument("--cycles", type=int, default=None, metavar="N",
                      help="set DATA_ASSIMILATION_CYCLES: the model runs N segments of STOP_N, "
                      "with a parameter update after each")
    inst.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    inst.set_defaults(func=_install)


def _install(args: argparse.Namespace) -> int:
    from .install import apply_install, plan_install

    plan = plan_install(args.caseroot, args.config, cycles=args.cycles)
    lines = plan.describe()
    if args.dry_run:
        print(f"dry run: {plan.caseroot} is not changed; an install would:")
        for line in lines:
            print(f"  {line}")
        return 0
    apply_install(plan)
    for line in lines:
        for now, done in (("write ", "wrote "), ("remove ", "removed "), ("run   ", "ran   ")):
            if line.startswith(now):
                line = done + line[len(now):]
                break
        print(line)
    print(f"esm-emu hooks installed in {plan.caseroot}; run ./case.submit as usual")
    return 0
