"""The DA state file `CASEROOT/esm-emu/da_state.json`: one record per assimilated cycle, written
atomically, so a resubmitted or restarted case resumes where it stopped instead of starting over."""
from __future__ import annotations

import json
from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .config import CASE_DIR, STATE_NAME

VERSION = 1


def state_path(caseroot: Path) -> Path:
    return Path(caseroot) / CASE_DIR / STATE_NAME


def read_state(caseroot: Path) -> dict:
    """The recorded cycles (an empty state when none are recorded yet)."""
    path = state_path(caseroot)
    if not path.is_file():
        return {"version": VERSION, "cycles": []}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); "
                        "restore it or delete it to restart the assimilation") from None
    if not isinstance(state, dict) or not isinstance(state.get("cycles"), list):
        raise UserError(f"{path}: not an esm-emu DA state file (no 'cycles' list)")
    return state


def write_state(caseroot: Path, state: dict) -> None:
    path = state_path(caseroot)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(state, indent=1, sort_keys=False) + "\n")


def latest(state: dict) -> dict | None:
    """The last recorded cycle, or None."""
    return state["cycles"][-1] if state["cycles"] else None
