"""Read a CIME case's settings from its env_*.xml files, and regenerate its land namelist.

CIME stores case variables as ``<entry id="RUNDIR" value="$CIMEROOT/..."/>`` inside ``<group>``s of
``env_case.xml``, ``env_run.xml``, ``env_build.xml`` ... Values may reference other variables
(``$CASEROOT``, ``${CASE}``) and the environment (``$ENV{HOME}``); they are expanded the way CIME's
``get_resolved_value`` does. ``$SHELL{...}`` values are never executed: they are reported unresolved.
Only the standard library is used here, so reading a case is cheap and works without CIME.
"""
from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from ppe_ingest.base.errors import UserError

# The env files CIME's Case reads, in its order; env_mach_specific.xml has another structure.
ENV_FILES = ("env_case.xml", "env_run.xml", "env_build.xml", "env_mach_pes.xml", "env_batch.xml",
             "env_archive.xml", "env_workflow.xml")
CASE_MARKERS = ("env_run.xml", "env_case.xml", "xmlchange")

_VAR = re.compile(r"\$(\{)?(\w+)(?(1)\})")
_ENV = re.compile(r"\$ENV\{(\w+)\}")


def check_caseroot(caseroot: str | os.PathLike) -> Path:
    """Return CASEROOT as an absolute path, or raise UserError when it is not a CIME case."""
    root = Path(caseroot).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (expected a CIME case directory made by create_newcase)")
    missing = [m for m in CASE_MARKERS if not (root / m).exists()]
    if missing:
        raise UserError(f"{root}: not a CIME case ({', '.join(missing)} missing; "
                        "run create_newcase and case.setup first)")
    return root


class CaseXml:
    """Case variables read from the env XML files (read-only), with CIME-style `$VAR` expansion."""

    def __init__(self, caseroot: str | os.PathLike):
        self.caseroot = check_caseroot(caseroot)
        self._raw: dict[str, tuple[str, str, str]] = {}  # id -> (value, type, file)
        for name in ENV_FILES:
            path = self.caseroot / name
            if path.is_file():
                self._read(path)
        self._raw.setdefault("CASEROOT", (str(self.caseroot), "char", "(case directory)"))

    def _read(self, path: Path) -> None:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise UserError(f"{path}: not valid XML ({e})") from None
        for entry in root.iter("entry"):
            vid, value = entry.get("id"), entry.get("value")
            if vid is None or value is None or vid in self._raw:
                continue  # first definition wins, as for CIME's non-job groups
            self._raw[vid] = (value, (entry.findtext("type") or "char").strip(), path.name)

    def __contains__(self, name: str) -> bool:
        return name in self._raw

    def get_raw(self, name: str) -> str | None:
        item = self._raw.get(name)
        return None if item is None else item[0]

    def resolve(self, text: str, _depth: int = 0) -> str:
        """Expand `$ENV{X}`, `$X` and `${X}` references (unknown names are left as they are)."""
        if _depth > 20:
            raise UserError(f"{self.caseroot}: circular $VAR reference while resolving {text!r}")
        text = _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(0)), text)

        def sub(m: re.Match) -> str:
            name = m.group(2)
            if name in ("ENV", "SHELL") or name not in self._raw:
                return m.group(0)
            return self.resolve(self._raw[name][0], _depth + 1)

        return _VAR.sub(sub, text)

    def get_value(self, name: str, default=None):
        """The resolved, typed value of a case variable (None or `default` if it is not defined)."""
        item = self._raw.get(name)
        if item is None:
            return default
        value, typ, _ = item
        value = self.resolve(value)
        if typ == "logical":
            return value.strip().upper() == "TRUE"
        if typ == "integer":
            try:
                return int(value)
            except ValueError:
                raise UserError(f"{self.caseroot}: {name}={value!r} is not an integer") from None
        if typ == "real":
            return float(value)
        return value

    def require(self, name: str) -> str:
        """A variable the hooks cannot work without; a one-line error names it and the case."""
        value = self.get_value(name)
        if value in (None, ""):
            raise UserError(f"{self.caseroot}: case variable {name} is not set in the env XML files")
        if isinstance(value, str) and "$" in value:
            raise UserError(f"{self.caseroot}: case variable {name}={value!r} has unresolved references")
        return value


def open_case(caseroot: str | os.PathLike) -> CaseXml:
    """The case's settings read from its env XML files."""
    return CaseXml(caseroot)


def import_cime(case: CaseXml):
    """Return CIME's `Case` class if CIME can be imported (already on the path, or at the case's
    CIMEROOT); else None. Nothing inside CASEROOT is ever put on the import path."""
    try:
        from CIME.case import Case
        return Case
    except ImportError:
        pass
    candidates = [os.environ.get("ESM_EMU_CIMEROOT"), case.get_value("CIMEROOT")]
    for root in filter(None, candidates):
        root = Path(root).resolve()
        if not (root / "CIME" / "case").is_dir() or root == case.caseroot or case.caseroot in root.parents:
            continue
        sys.path.append(str(root))
        try:
            from CIME.case import Case
            return Case
        except ImportError:
            sys.path.remove(str(root))
    return None


def regenerate_lnd_namelist(case: CaseXml) -> bool:
    """Rebuild the land namelist after `user_nl_clm` changed (CIME only redoes the coupler's
    namelist between DA cycles). True if done; False when CIME cannot be imported here."""
    Case = import_cime(case)
    if Case is None:
        return False
    try:
        with Case(str(case.caseroot), read_only=False) as cime_case:
            cime_case.create_namelists(component="lnd")
    except Exception as e:  # CIME raises its own CIMEError; the run must stop, not use stale lnd_in
        raise UserError(f"{case.caseroot}: regenerating the land namelist failed: {e}") from None
    return True
