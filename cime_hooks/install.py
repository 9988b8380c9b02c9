"""Register the esm-emu hooks in a CIME case: copy the hook scripts and config into the case, then
set PRERUN_SCRIPT, DATA_ASSIMILATION_SCRIPT, DATA_ASSIMILATION_CYCLES and POSTRUN_SCRIPT with the
case's own ``./xmlchange NAME=VALUE`` (an argument list, never a shell string).

CIME runs the DA script whenever DATA_ASSIMILATION_CYCLES > 0 and the script file exists
(CIME/case/case_run.py); the per-component DATA_ASSIMILATION_LND flag is a different thing (it asks
the driver to send the land model a post-DA "resume" signal for restart-file edits) and is left alone.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .case import check_caseroot, open_case
from .config import CASE_DIR, case_config_path, dump_config, parse_config

TEMPLATE = Path(__file__).resolve().parent / "hook_template.py.in"
# case variable -> (file name, hook, arguments, when CIME calls it). CIME derives the function
# name from the file name: up to the first dot for PRERUN/POSTRUN, the whole name for the DA script.
HOOKS = {
    "PRERUN_SCRIPT": ("esm_emu_prerun.py", "prerun", ("caseroot",), "before the model runs"),
    "DATA_ASSIMILATION_SCRIPT": ("esm_emu_da", "da", ("caseroot", "cycle"),
                                 "after each model run (cycle counts from 0)"),
    "POSTRUN_SCRIPT": ("esm_emu_postrun.py", "postrun", ("caseroot",), "after the last model run"),
}
PLACEHOLDER = "@ESM_EMU_PYTHON@"


@dataclass
class InstallPlan:
    """What an install writes and which case variables it changes (old value kept for display)."""

    caseroot: Path
    files: dict[Path, str] = field(default_factory=dict)
    changes: list[tuple[str, str, object]] = field(default_factory=list)  # (name, new, old)

    def describe(self) -> list[str]:
        lines = [f"write {p}" for p in self.files]
        for name, new, old in self.changes:
            lines.append(f"run   {shlex.join(['./xmlchange', f'{name}={new}'])}   (now: {old!r})")
        return lines


def render_hook(var: str, python: str) -> str:
    """The hook script for case variable `var`, rendered from the one template with the esm-emu
    interpreter's absolute path filled in."""
    name, hook, args, when = HOOKS[var]
    text = TEMPLATE.read_text()
    for key, value in (("@CASE_VAR@", var.replace("_SCRIPT", "")), ("@FUNC@", name.split(".")[0]),
                       ("@SIGNATURE@", ", ".join(args)), ("@WHEN@", when), ("@HOOK@", hook),
                       ("@ARGS@", "".join(f"{a!r}, " for a in args).rstrip(" "))):
        text = text.replace(key, value)
    first, rest = text.split("\n", 1)
    return first.replace(PLACEHOLDER, python) + "\n" + rest.replace(f'"{PLACEHOLDER}"', repr(python))


def plan_install(caseroot, config_path, cycles: int | None = None, python: str | None = None) -> InstallPlan:
    """Check the case and config and work out the install, changing nothing."""
    root = check_caseroot(caseroot)
    if not os.access(root / "xmlchange", os.X_OK):
        raise UserError(f"{root / 'xmlchange'}: not executable (is this a CIME case made by create_newcase?)")
    python = python or sys.executable
    if not os.path.isabs(python) or any(c.isspace() for c in python):
        raise UserError(f"{python}: the esm-emu Python must be an absolute path without spaces "
                        "(it becomes the hook scripts' #! line)")
    cfg = parse_config(config_path)
    case = open_case(root)
    ninst = case.get_value("NINST_LND", 1)
    if isinstance(ninst, int) and ninst > 1:
        raise UserError(f"{root}: NINST_LND={ninst}: multi-instance land cases are not supported by the esm-emu hooks")
    if cycles is not None and cycles < 1:
        raise UserError(f"--cycles {cycles}: must be at least 1 (CIME runs the model once per cycle)")
    if cycles is not None and cfg["da"] is None:
        raise UserError(f"{config_path}: da: --cycles needs a da section in the config")

    plan = InstallPlan(root)
    plan.files[case_config_path(root)] = dump_config(cfg)
    hooks_dir = root / CASE_DIR / "hooks"
    wanted = ["PRERUN_SCRIPT"]
    if cfg["da"] is not None:
        wanted.append("DATA_ASSIMILATION_SCRIPT")
    if cfg["observations"] is not None:
        wanted.append("POSTRUN_SCRIPT")
    for var in wanted:
        path = hooks_dir / HOOKS[var][0]
        plan.files[path] = render_hook(var, python)
        plan.changes.append((var, str(path), case.get_value(var)))
    if cycles is not None:
        plan.changes.append(("DATA_ASSIMILATION_CYCLES", str(cycles), case.get_value("DATA_ASSIMILATION_CYCLES")))
    for name, new, _ in plan.changes:
        if "," in new or "=" in new:
            raise UserError(f"{new}: xmlchange cannot take a value with ',' or '=' ({name}); "
                            "move the case to a path without them")
    return plan


def apply_install(plan: InstallPlan) -> None:
    """Write the files (atomically, hooks executable) and run the case's ./xmlchange."""
    for path, text in plan.files.items():
        with atomic_path(path) as tmp:
            tmp.write_text(text)
            if path.parent.name == "hooks":
                tmp.chmod(0o755)
    for name, new, _ in plan.changes:
        cmd = ["./xmlchange", f"{name}={new}"]
        proc = subprocess.run(cmd, cwd=plan.caseroot, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise UserError(f"{plan.caseroot}: {shlex.join(cmd)} failed: {msg[-1] if msg else proc.returncode}")
    check = open_case(plan.caseroot)
    for name, new, _ in plan.changes:
        if str(check.get_value(name)) != new:
            raise UserError(f"{plan.caseroot}: ./xmlchange did not set {name} (it reads {check.get_value(name)!r})")
