"""Entry point the installed hook scripts call in esm-emu's own interpreter: `HOOK CASEROOT [CYCLE]`."""
from __future__ import annotations

import sys

from ppe_ingest.base.errors import UserError

USAGE = "usage: prerun CASEROOT | da CASEROOT CYCLE | postrun CASEROOT"


def main(argv: list[str]) -> int:
    """Run one hook; a UserError becomes one line on stderr and exit status 2."""
    if len(argv) < 2 or argv[0] not in ("prerun", "da", "postrun"):
        print(USAGE, file=sys.stderr)
        return 2
    hook, caseroot, rest = argv[0], argv[1], argv[2:]
    try:
        if hook == "prerun" and not rest:
            from .prerun import run_prerun
            run_prerun(caseroot)
        elif hook == "postrun" and not rest:
            from .postrun import run_postrun
            run_postrun(caseroot)
        elif hook == "da" and len(rest) == 1 and rest[0].isdigit():
            from .da import run_da
            run_da(caseroot, int(rest[0]))
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except UserError as e:
        print(f"esm-emu {hook}: error: {e}", file=sys.stderr)
        return 2
    return 0
