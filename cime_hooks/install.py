"""Register the esm-emu hooks in a CIME case: copy the hook scripts and config into the case, then
set PRERUN_SCRIPT, DATA_ASSIMILATION_SCRIPT, DATA_ASSIMILATION_CYCLES and POSTRUN_SCRIPT with the
case's own ``./xmlchange NAME=VALUE`` (an argument list, never a shell string).

CIME runs the DA script whenever DATA_ASSIMILATION_CYCLES > 0 and the script file exists
(CIME/case/case_run.py); the per-component DATA_ASSIMILATION_LND flag is a different thing (it asks
the driver to send the land model a post-DA "resume" signal for restart-file edits) and is left alone.

An install leaves the case exactly as the config asks. What the config no longer asks for is
switched off: a config without ``da:`` (or without ``observations:``) gives the DA (POSTRUN) script
variable back the value it had before esm-emu set it (normally empty) and removes the hook file;
DATA_ASSIMILATION_CYCLES goes back to its value from before ``--cycles`` (normally CIME's default
1: CIME runs the model ``range(DATA_ASSIMILATION_CYCLES)`` times, so 0 would run nothing). A value
the user changed since esm-emu set it is theirs and is left alone, with a note. What esm-emu set,
and what was there before, is recorded in ``CASEROOT/esm-emu/install.json``.

The same holds for the ``user_nl_clm`` settings the hooks write (paramfile, fsurdat, ``namelist:``
settings, namelist DA parameters): one the config no longer asks for gets back the text it had
before esm-emu (or its line is removed when it had none), unless the user changed it since.

An install is all-or-nothing: when anything fails (a ``./xmlchange`` that exits non-zero or does
not set the value, a file that cannot be written), the env XML files, the hook scripts, the config
and the record are put back byte for byte as they were, and the folders it made are removed.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .case import ENV_FILES, check_caseroot, open_case
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
CYCLES = "DATA_ASSIMILATION_CYCLES"
CIME_DEFAULT_CYCLES = "1"  # CIME's default: one model run per job
RECORD_NAME = "install.json"  # what esm-emu set in the case, and the values from before


@dataclass
class InstallPlan:
    """What an install writes, removes and which case variables it changes (old value kept for display)."""

    caseroot: Path
    files: dict[Path, str] = field(default_factory=dict)
    changes: list[tuple[str, str, object]] = field(default_factory=list)  # (name, new, old)
    remove: list[Path] = field(default_factory=list)  # hook files the config no longer asks for
    notes: list[str] = field(default_factory=list)
    user_nl_restore: dict[str, str] = field(default_factory=dict)  # name -> Fortran text from before esm-emu
    user_nl_unset: list[str] = field(default_factory=list)  # esm-emu's settings no longer asked for

    def describe(self) -> list[str]:
        lines = [f"write {p}" for p in self.files]
        lines += [f"remove {p}" for p in self.remove]
        nl = self.caseroot / "user_nl_clm"
        lines += [f"edit  {nl}: {k} back to {v} (its value before esm-emu)" for k, v in self.user_nl_restore.items()]
        lines += [f"edit  {nl}: remove {k} (set by esm-emu, no longer in the config)" for k in self.user_nl_unset]
        for name, new, old in self.changes:
            lines.append(f"run   {shlex.join(['./xmlchange', f'{name}={new}'])}   (now: {old!r})")
        lines += [f"note: {n}" for n in self.notes]
        return lines


def record_path(caseroot: Path) -> Path:
    return Path(caseroot) / CASE_DIR / RECORD_NAME


def read_record(caseroot: Path) -> tuple[dict, dict]:
    """What an earlier install set: case variables, name -> {"before": value, "set": value}, and
    user_nl_clm settings the hooks write, name -> {"before": Fortran text or None, "kind": ...}."""
    path = record_path(caseroot)
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text())
        variables, user_nl = data["variables"], data.get("user_nl", {})
        if not all(isinstance(v, dict) and isinstance(v.get("before"), str) and isinstance(v.get("set"), str)
                   for v in variables.values()):
            raise TypeError
        if not all(isinstance(v, dict) and isinstance(v.get("before"), (str, type(None))) and
                   v.get("kind") in ("file", "namelist", "da") for v in user_nl.values()):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: not an esm-emu install record; delete it and install again "
                        "(the hook variables are then judged by their values)") from None
    return variables, user_nl


def asked_user_nl(cfg) -> dict[str, dict]:
    """The user_nl_clm settings the hooks write for `cfg`: name -> {"kind": file|namelist|da[, "value"]}."""
    from ppe_ingest.ctsmio.user_nl import setting_key

    out: dict[str, dict] = {}
    da = cfg["da"]
    if cfg["paramfile"] or (da is not None and any(p["location"] == "paramfile" for p in da["parameters"].values())):
        out["paramfile"] = {"kind": "file"}
    if cfg["fsurdat"]:
        out["fsurdat"] = {"kind": "file"}
    for name, value in cfg["namelist"].items():
        out[setting_key(name)] = {"kind": "namelist", "value": value}
    if da is not None:
        for name, p in da["parameters"].items():
            if p["location"] == "namelist":
                out[setting_key(name)] = {"kind": "da"}
    return out


def _plan_user_nl(plan: InstallPlan, cfg, recorded: dict) -> dict:
    """Give back the user_nl_clm settings esm-emu wrote that `cfg` no longer asks for (the text
    from before esm-emu, or no line); return the record of what the hooks will write."""
    from ppe_ingest.ctsmio.user_nl import FortranText, read_user_nl

    path = plan.caseroot / "user_nl_clm"
    current = read_user_nl(path, raw=True) if path.is_file() else {}
    parsed = read_user_nl(path) if path.is_file() else {}
    ours_dir = plan.caseroot / CASE_DIR

    def esm_emus(key: str) -> bool:
        value, entry = parsed.get(key), recorded.get(key)
        if isinstance(value, str) and ours_dir in Path(value).parents:
            return True  # a file esm-emu placed in the case
        if entry is None:
            return False
        if entry["kind"] == "namelist":
            was = entry.get("value")
            return value == was or (isinstance(was, list) and len(was) == 1 and value == was[0])
        return entry["kind"] == "da" and isinstance(value, (int, float))

    asked = asked_user_nl(cfg)
    new_record = {}
    for key, what in asked.items():
        if key in recorded:
            before = recorded[key]["before"]
        else:
            before = None if key not in current or esm_emus(key) else str(current[key])
        new_record[key] = {"before": before, **what}
    stale = (set(recorded) | {k for k in current if esm_emus(k)}) - set(asked)
    for key in sorted(stale):
        if key not in current:
            continue
        if not esm_emus(key):
            plan.notes.append(f"user_nl_clm {key} = {current[key]} was changed after esm-emu set it; left as it is")
            continue
        before = recorded.get(key, {}).get("before")
        if before is None:
            plan.user_nl_unset.append(key)
        elif before != str(current[key]):
            plan.user_nl_restore[key] = FortranText(before)
    return new_record


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
    _check_case_paths(cfg, root, Path(config_path).name)
    case = open_case(root)
    ninst = case.get_value("NINST_LND", 1)
    if isinstance(ninst, int) and ninst > 1:
        raise UserError(f"{root}: NINST_LND={ninst}: multi-instance land cases are not supported by the esm-emu hooks")
    if cycles is not None and cycles < 1:
        raise UserError(f"--cycles {cycles}: must be at least 1 (CIME runs the model once per cycle)")
    if cycles is not None and cfg["da"] is None:
        raise UserError(f"{config_path}: da: --cycles needs a da section in the config")

    _check_inputs(cfg, root, Path(config_path).name)

    plan = InstallPlan(root)
    plan.files[case_config_path(root)] = dump_config(cfg)
    hooks_dir = root / CASE_DIR / "hooks"
    wanted = {"PRERUN_SCRIPT": True, "DATA_ASSIMILATION_SCRIPT": cfg["da"] is not None,
              "POSTRUN_SCRIPT": cfg["observations"] is not None}
    record, recorded_nl = read_record(root)
    new_record: dict[str, dict] = {}
    user_nl_record = _plan_user_nl(plan, cfg, recorded_nl)

    def current(var: str) -> str:
        value = case.get_value(var)
        if value is None:
            raise UserError(f"{root}: case variable {var} is not defined in its env XML files "
                            "(the esm-emu hooks need a CIME with PRERUN_SCRIPT, POSTRUN_SCRIPT and "
                            "DATA_ASSIMILATION_SCRIPT)")
        return str(value)

    def ours(value: str) -> bool:
        return Path(value).parent == hooks_dir and Path(value).name in {h[0] for h in HOOKS.values()}

    def want(var: str, new: str) -> None:
        now, entry = current(var), record.get(var)
        if entry is not None and now == entry["set"]:
            before = entry["before"]
        elif var != CYCLES and ours(now):  # set by an esm-emu install that kept no record
            before = ""
        else:
            before = now
        new_record[var] = {"before": before, "set": new}
        if now != new:
            plan.changes.append((var, new, case.get_value(var)))

    def release(var: str, legacy_default: str | None) -> bool:
        """The config no longer asks for `var`: back to its value from before esm-emu set it.
        False when the value is not esm-emu's (left as it is)."""
        now, entry = current(var), record.get(var)
        if entry is not None and now == entry["set"]:
            target = entry["before"]
        elif entry is None and legacy_default is not None:
            target = legacy_default
        else:
            if entry is not None:
                plan.notes.append(f"{var}={now!r} was changed after esm-emu set it; left as it is")
            return False
        if now != target:
            plan.changes.append((var, target, case.get_value(var)))
        return True

    legacy_da = ours(current("DATA_ASSIMILATION_SCRIPT")) and "DATA_ASSIMILATION_SCRIPT" not in record
    da_released = False
    for var, on in wanted.items():
        path = hooks_dir / HOOKS[var][0]
        if on:
            plan.files[path] = render_hook(var, python)
            want(var, str(path))
        else:
            released = release(var, "" if ours(current(var)) else None)
            da_released |= released and var == "DATA_ASSIMILATION_SCRIPT"
            if path.exists() or path.is_symlink():
                plan.remove.append(path)
    if cycles is not None:
        want(CYCLES, str(cycles))
    elif cfg["da"] is not None:
        if CYCLES in record and current(CYCLES) == record[CYCLES]["set"]:
            new_record[CYCLES] = record[CYCLES]  # still esm-emu's: keep what to go back to
    elif da_released:
        # The cycles go with esm-emu's DA script; with the user's own script they are the user's.
        release(CYCLES, CIME_DEFAULT_CYCLES if legacy_da else None)
    for name, new, _ in plan.changes:
        if "," in new or "=" in new:
            raise UserError(f"{new}: xmlchange cannot take a value with ',' or '=' ({name}); "
                            "move the case to a path without them")
    plan.files[record_path(root)] = json.dumps(
        {"version": 1, "note": "written by `esm-emu cime install`: the case variables it set, and their "
         "values from before, restored when a later install no longer asks for them",
         "variables": new_record, "user_nl": user_nl_record}, indent=1) + "\n"
    return plan


FNAME_LEN = 256  # CTSM's fname_len (SHR_KIND_CL): longer file names are cut when the namelist is read


def _check_case_paths(cfg, root: Path, source: str) -> None:
    """The paths the hooks write into user_nl_clm (files placed under CASEROOT/esm-emu/) must be
    namelist strings CTSM reads whole: no control characters, at most FNAME_LEN characters."""
    from ppe_ingest.ctsmio.user_nl import check_namelist_value, show

    check_namelist_value(str(root), f"case path {show(str(root))}")
    da = cfg["da"]
    calibrated = root / CASE_DIR / "calibrated"
    placed = {"paramfile": cfg["paramfile"] and calibrated / Path(cfg["paramfile"]).name,
              "fsurdat": cfg["fsurdat"] and calibrated / ("from_map" if cfg["parameter_map"] else "")
              / Path(cfg["fsurdat"]).name,
              "da.base_paramfile": da is not None and (da["base_paramfile"] or cfg["paramfile"]) and
              root / CASE_DIR / "params" / "after_cycle_000" / Path(da["base_paramfile"] or cfg["paramfile"]).name}
    for key, path in placed.items():
        if not path:
            continue
        check_namelist_value(str(path), f"{source}: {key}")
        if len(str(path)) > FNAME_LEN:
            raise UserError(f"{source}: {key}: its copy in the case, {show(str(path))}, is {len(str(path))} "
                            f"characters; CTSM reads file names of at most {FNAME_LEN} (move the case or "
                            "shorten the file name)")


def _check_inputs(cfg, root: Path, source: str) -> None:
    """What the hooks would otherwise find wrong only inside the batch job: the DA's first guess
    (paramfile parameters present and scalar, namelist parameters given a value, inside
    [min, max]; the DA parameters against the parameter table; the first parameter set planned
    as PRERUN writes it: group targets present, table bounds, physics), the emulator (loads, takes
    the DA parameters, gives the observed variable), a DA state from an earlier config, and the
    observations (readable, holding the variable and mask)."""
    obs = cfg["observations"]
    if obs is not None:
        from ppe_ingest.obs.io import read_observations

        ds, _ = read_observations(obs["file"], obs["variable"], obs["mask"])
        if obs["mask"] is not None and obs["mask"] not in ds.variables:
            raise UserError(f"{obs['file']}: observations have no mask variable {obs['mask']} "
                            "(observations.mask)")
    da = cfg["da"]
    if da is None:
        return
    from ppe_ingest.ctsmio.user_nl import read_user_nl

    from .params import initial_parameters, plan_parameter_set
    from .state import latest, read_state, state_path

    user_nl = root / "user_nl_clm"
    try:
        first = initial_parameters(cfg, read_user_nl(user_nl) if user_nl.is_file() else {})
        plan_parameter_set(root, cfg, first, "initial")  # written as PRERUN will write it, checked, nothing written
    except UserError as e:
        if str(e).startswith("da.parameters."):  # name the config the key is in
            raise UserError(f"{source}: {e}") from None
        raise
    last = latest(read_state(root))
    if last is not None:
        had = sorted(last.get("parameters") or {})
        if had != sorted(da["parameters"]):
            raise UserError(f"{state_path(root)}: the assimilation so far updated {', '.join(had) or 'nothing'}, "
                            f"{source} da.parameters lists {', '.join(sorted(da['parameters']))}; move the state "
                            "file away to start the assimilation over")
        for name, value in last["parameters"].items():
            lo, hi = da["parameters"][name]["min"], da["parameters"][name]["max"]
            if not (isinstance(value, (int, float)) and lo <= value <= hi):
                raise UserError(f"{source}: da.parameters.{name}: the latest estimate in {state_path(root)} "
                                f"({value!r:.40}) lies outside [{lo:g}, {hi:g}]; widen the bounds or move the "
                                "state file away to start over")
    if da["forward"]["kind"] == "emulator":
        from esm_emu.forward import load_forward

        ckpt = da["forward"]["checkpoint"]
        fwd = load_forward("emulator", ckpt)
        for name in da["parameters"]:
            if name not in fwd.param_names:
                raise UserError(f"{source}: da.parameters.{name}: not an input of the emulator in {ckpt} "
                                f"(it takes {', '.join(fwd.param_names)})")
        var = obs["variable"]
        if var not in fwd.response_names:
            raise UserError(f"{source}: observations.variable: {var} is not an output of the emulator in {ckpt} "
                            f"(it gives {', '.join(fwd.response_names)})")


def apply_install(plan: InstallPlan) -> None:
    """Write the files (atomically, hooks executable), remove stale hooks and run the case's
    ./xmlchange; on any failure put every file back as it was (all-or-nothing)."""
    root = plan.caseroot
    touched = [*plan.files, *plan.remove, *(root / n for n in ENV_FILES), root / "user_nl_clm"]
    saved = {p: _snapshot(p) for p in touched}
    made = [d for d in (root / CASE_DIR, root / CASE_DIR / "hooks") if not d.exists()]
    try:
        _apply(plan)
    except BaseException:
        _restore(saved, made)
        raise


def _apply(plan: InstallPlan) -> None:
    for path, text in plan.files.items():
        with atomic_path(path, executable=path.parent.name == "hooks") as tmp:  # umask's mode, hooks runnable
            tmp.write_text(text)
    for path in plan.remove:
        path.unlink()
    if plan.user_nl_restore or plan.user_nl_unset:
        from ppe_ingest.ctsmio.user_nl import set_user_nl

        nl = plan.caseroot / "user_nl_clm"
        set_user_nl(nl, nl, plan.user_nl_restore, unset=plan.user_nl_unset,
                    history_comment="given back by esm-emu cime install (its value before esm-emu)")
    for name, new, _ in plan.changes:
        cmd = ["./xmlchange", f"{name}={new}"]
        try:
            proc = subprocess.run(cmd, cwd=plan.caseroot, capture_output=True, text=True, errors="replace")
        except OSError as e:
            raise UserError(f"{plan.caseroot}: {shlex.join(cmd)} could not run ({e.strerror}); "
                            "the case is left as it was") from None
        if proc.returncode != 0:
            msg = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            last = msg[-1].strip()[:300] if msg else f"exit status {proc.returncode}"
            raise UserError(f"{plan.caseroot}: {shlex.join(cmd)} failed ({last}); the case is left as it was")
    check = open_case(plan.caseroot)
    for name, new, _ in plan.changes:
        if str(check.get_value(name)) != new:
            raise UserError(f"{plan.caseroot}: ./xmlchange did not set {name} (it reads {check.get_value(name)!r}); "
                            "the case is left as it was")


def _snapshot(path: Path):
    """(bytes, mode) of a file, or None when there is none."""
    try:
        return path.read_bytes(), path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return None


def _restore(saved: dict, made: list[Path]) -> None:
    """Put each file back as it was (or remove it when there was none), then the folders made."""
    for path, old in saved.items():
        if old is None:
            if path.exists() or path.is_symlink():
                path.unlink()
            continue
        data, mode = old
        if _snapshot(path) == old:
            continue
        with atomic_path(path, mode=mode) as tmp:
            tmp.write_bytes(data)
    for d in reversed(made):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
