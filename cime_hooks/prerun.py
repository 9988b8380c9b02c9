"""PRERUN: put the calibrated paramfile / fsurdat into the case and point `user_nl_clm` at them.

Runs before CIME generates the namelists. Idempotent: files already in place (same content) are
not copied again and `user_nl_clm` settings are replaced in place, other lines kept. When the DA
hook has recorded cycles (a resubmitted case), the latest estimate is applied instead of the
first guess, so a resubmission continues from where the assimilation stopped.
"""
from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .case import open_case
from .config import CASE_DIR, load_case_config
from .state import latest, read_state


def place(src: str | Path, dest_dir: Path) -> Path:
    """Copy `src` into `dest_dir` unless an identical copy is already there; return the copy."""
    src = Path(src)
    dst = dest_dir / src.name
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return dst
    dest_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, inputs=[src]) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def check_single_instance(case) -> None:
    ninst = case.get_value("NINST_LND", 1)
    if isinstance(ninst, int) and ninst > 1:
        raise UserError(f"{case.caseroot}: NINST_LND={ninst}: multi-instance land cases are not supported")


def run_prerun(caseroot) -> dict:
    """Place the files and set `user_nl_clm`; return the settings written."""
    from ppe_ingest.ctsmio.user_nl import read_user_nl, set_user_nl

    case = open_case(caseroot)
    check_single_instance(case)
    cfg = load_case_config(case.caseroot)
    root = case.caseroot
    user_nl = root / "user_nl_clm"
    dest = root / CASE_DIR / "calibrated"

    settings: dict[str, object] = {}
    if cfg["paramfile"]:
        settings["paramfile"] = str(place(cfg["paramfile"], dest))
    if cfg["fsurdat"]:
        if cfg["parameter_map"]:
            settings["fsurdat"] = str(_fsurdat_from_map(cfg, dest))
        else:
            settings["fsurdat"] = str(place(cfg["fsurdat"], dest))
    settings.update(cfg["namelist"])

    if cfg["da"] is not None:
        from .params import initial_parameters, write_parameter_set

        last = latest(read_state(root))
        if last is not None:
            settings.update(last["user_nl"])
            origin = f"the estimate after DA cycle {last['cycle']}"
        else:
            current = read_user_nl(user_nl) if user_nl.exists() else {}
            first = initial_parameters(cfg, current)
            settings.update(write_parameter_set(root, cfg, first, "initial", overwrite=False))
            origin = "the first guess"
        print(f"esm-emu prerun: DA parameters from {origin}")

    if not settings:
        print("esm-emu prerun: nothing to place (no paramfile, fsurdat, namelist or da in the config)")
        return settings
    set_user_nl(user_nl if user_nl.exists() else None, user_nl, settings,
                history_comment="set by esm-emu PRERUN (esm-emu/config.yaml)")
    for name, value in settings.items():
        print(f"esm-emu prerun: user_nl_clm {name} = {value}")
    return settings


def _fsurdat_from_map(cfg: dict, dest: Path) -> Path:
    """fsurdat with the parameter map's per-gridcell values written in (through esm_emu.writers)."""
    from esm_emu.writers import write_ctsm_files

    out = dest / "from_map"
    target = out / Path(cfg["fsurdat"]).name
    if target.exists() and target.stat().st_mtime >= max(Path(cfg["fsurdat"]).stat().st_mtime,
                                                         Path(cfg["parameter_map"]).stat().st_mtime):
        return target  # already written from these inputs
    written = write_ctsm_files(out, fsurdat=cfg["fsurdat"], values=cfg["parameter_map"],
                               log=lambda msg: print(f"esm-emu prerun: {msg}"))
    paths = [Path(p) for p in written.get("fsurdat", [])]
    if len(paths) != 1:
        raise UserError(f"parameter_map: {cfg['parameter_map']} holds no fsurdat parameter to write "
                        f"into {cfg['fsurdat']}")
    return paths[0]
