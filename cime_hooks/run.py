"""Entry point the installed hook scripts call in esm-emu's own interpreter: `HOOK CASEROOT [CYCLE]`."""
from __future__ import annotations

import sys

from ppe_ingest.base.errors import run_guarded

USAGE = "usage: prerun CASEROOT | da CASEROOT CYCLE | postrun CASEROOT"


def _call(hook: str, caseroot: str, rest: list[str]):
    """The hook's function with its arguments (exit status 0 when it returns), or None when they do
    not fit USAGE. The hooks' own return values are reports, not exit statuses."""
    if hook == "prerun" and not rest:
        from .prerun import run_prerun
        return lambda: run_prerun(caseroot) and 0
    if hook == "postrun" and not rest:
        from .postrun import run_postrun
        return lambda: run_postrun(caseroot) and 0
    if hook == "da" and len(rest) == 1 and rest[0].isdigit():
        from .da import run_da
        return lambda: run_da(caseroot, int(rest[0])) and 0
    return None


def main(argv: list[str]) -> int:
    """Run one hook behind the CLI's error boundary: bad input (a missing case, a bad config, a file
    system problem) is one line on stderr and exit status 2; an internal error one line and exit 1
    (``--debug`` anywhere shows the traceback)."""
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if len(argv) < 2 or argv[0] not in ("prerun", "da", "postrun"):
        print(USAGE, file=sys.stderr)
        return 2
    hook, caseroot, rest = argv[0], argv[1], argv[2:]
    call = _call(hook, caseroot, rest)
    if call is None:
        print(USAGE, file=sys.stderr)
        return 2
    return run_guarded(f"esm-emu {hook}", call, debug=debug)
