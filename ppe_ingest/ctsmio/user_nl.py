"""`user_nl_clm` files (and PPE `namelist_mods/<member>.txt`): Fortran namelist settings, one per line.

`set_user_nl` replaces settings of the same name (case-insensitive, any spacing), appends new
ones and keeps every other line and comment. Unlike the netCDF writers, the output may be the
input itself when it is a ``user_nl_*`` file, because CIME cases are edited in place (the new
content is still written to a temporary file and renamed).

Every name and value written goes through the one check here (`check_namelist_name`,
`check_namelist_value`, `check_namelist_settings`), which `esm-emu cime install` also runs on the
hook config, so a setting CTSM would reject, or a string that would become a second line, is
refused before anything is written: names are Fortran identifiers (at most 63 characters,
optionally with an index such as ``(2)`` or ``(1:3)``); values are numbers, logicals, strings or
lists of them; strings are single-quoted with embedded quotes doubled and may not hold a line
break or any other control character.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

_NAME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_%]*(?:\s*\([^)=]*\))?)\s*=(.*)$")
MAX_NAME_LENGTH = 63  # Fortran 2003 limit on a name
_SUBSCRIPT = r"-?\d+(?:\s*:\s*-?\d+)?"
_SETTING_NAME = re.compile(rf"([A-Za-z][A-Za-z0-9_]*)(\(\s*{_SUBSCRIPT}(?:\s*,\s*{_SUBSCRIPT})*\s*\))?")


def show(x, limit: int = 60) -> str:
    """`x` for a one-line message: as it is when printable, else its repr; cut to `limit` characters."""
    text = x if isinstance(x, str) and x.isprintable() else repr(x)
    return text if len(text) <= limit else text[:limit] + "..."


def check_namelist_name(name, where: str = "namelist") -> str:
    """`name` if it is a Fortran namelist variable name (optionally indexed: ``hist_fincl1(2)``);
    else UserError naming `where` and the name."""
    m = _SETTING_NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise UserError(f"{where}: {show(name)!s} is not a namelist variable name (a Fortran name: a letter, "
                        "then letters, digits or '_', optionally an index like (2))")
    if len(m.group(1)) > MAX_NAME_LENGTH:
        raise UserError(f"{where}: {show(name)} is not a namelist variable name "
                        f"(longer than Fortran's {MAX_NAME_LENGTH} characters)")
    return name


def setting_key(name: str) -> str:
    """The key two spellings of one namelist setting share (Fortran ignores case and blanks)."""
    return re.sub(r"\s+", "", name).lower()


def _check_string(text: str, where: str) -> None:
    for i, c in enumerate(text):
        if not c.isprintable():
            raise UserError(f"{where}: a namelist string may not hold a line break or other control "
                            f"character (found {c!r} at position {i})")


def check_namelist_value(value, where: str = "namelist value"):
    """`value` (numpy scalars and paths made plain) if it is a namelist value: a finite number, a
    logical, a string without control characters, or a non-empty list of these; else UserError."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise UserError(f"{where}: an empty list is not a namelist value")
        out = []
        for x in value:
            if isinstance(x, (list, tuple, dict, np.ndarray)):
                raise UserError(f"{where}: a namelist list holds numbers, logicals or strings, not {show(x)}")
            out.append(check_namelist_value(x, where))
        kinds = {"logical" if isinstance(x, bool) else "string" if isinstance(x, str) else "number" for x in out}
        if len(kinds) > 1:
            raise UserError(f"{where}: a namelist list holds one kind of value; this one mixes "
                            f"{', '.join(sorted(kinds))}")
        return out
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > 2**63 - 1:
            raise UserError(f"{where}: {show(value)} does not fit a Fortran integer; write a real "
                            f"such as {float(value):.6e}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{where}: {value} is not finite (a namelist number must be a finite value)")
        return value
    if isinstance(value, str):
        _check_string(value, where)
        return value
    raise UserError(f"{where}: expected a number, logical (true/false) or string, "
                    f"got {type(value).__name__} {show(value)}")


def check_namelist_settings(settings: Mapping, where: str = "namelist", sep: str = ".") -> dict:
    """Every name and value of `settings` checked (``WHERE.NAME`` in messages, `sep` between); two
    spellings of one variable (``baseflow_scalar`` and ``BASEFLOW_SCALAR``) are refused. Returns
    the checked settings."""
    seen: dict[str, str] = {}
    out = {}
    for name, value in settings.items():
        check_namelist_name(name, where)
        key = setting_key(name)
        if key in seen:
            raise UserError(f"{where}{sep}{name}: the same variable as {seen[key]} (Fortran ignores case "
                            "and blanks); keep one")
        seen[key] = name
        out[name] = check_namelist_value(value, f"{where}{sep}{name}")
    return out


def format_namelist_value(v) -> str:
    """A Python value as Fortran namelist text: .true./.false., 'quoted', exact floats, lists."""
    if isinstance(v, FortranText):
        _check_string(v, "namelist value")
        return str(v)
    v = check_namelist_value(v)
    if isinstance(v, list):
        return ", ".join(format_namelist_value(x) for x in v)
    if isinstance(v, bool):
        return ".true." if v else ".false."
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)  # shortest text that round-trips
        if "e" in r:
            mant, exp = r.split("e")
            if "." not in mant:
                mant += ".0"
            return f"{mant}e{int(exp):+03d}"
        return r
    return "'" + v.replace("'", "''") + "'"


def _strip_comment(text: str) -> str:
    """Text before a '!' that is outside quotes."""
    quote = None
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "!":
            return text[:i]
    return text


def _split_items(text: str) -> list[str]:
    items, cur, quote = [], "", None
    for c in text:
        if quote:
            cur += c
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
            cur += c
        elif c == ",":
            items.append(cur.strip())
            cur = ""
        else:
            cur += c
    if cur.strip():
        items.append(cur.strip())
    return items


def parse_namelist_value(text: str):
    """Fortran namelist text to Python: bool, str, int, float, or a list of them."""
    items = _split_items(text.strip())
    vals = [_parse_item(x) for x in items]
    if len(vals) == 1:
        return vals[0]
    return vals


def _parse_item(x: str):
    low = x.lower()
    if low in (".true.", ".t.", "t", "true"):
        return True
    if low in (".false.", ".f.", "f", "false"):
        return False
    if len(x) >= 2 and x[0] == x[-1] and x[0] in "'\"":
        return x[1:-1].replace(x[0] * 2, x[0])
    try:
        return int(x)
    except ValueError:
        pass
    try:
        return float(re.sub(r"[dD]", "e", x))
    except ValueError:
        return x


def _settings(lines: list[str]):
    """Yield (first line index, last line index, name) for each setting, following continuations."""
    out = []
    for i, line in enumerate(lines):
        body = _strip_comment(line)
        m = _NAME.match(body)
        if m:
            out.append([i, i, m.group(1)])
        elif body.strip() and out and out[-1][1] == i - 1 and _strip_comment(lines[out[-1][1]]).rstrip().endswith(","):
            out[-1][1] = i  # continuation of a list value
    return out


class FortranText(str):
    """A value already in Fortran namelist form (e.g. the text a user_nl file held), written as it is."""


def read_user_nl(path: str | Path, raw: bool = False) -> dict:
    """Settings of a user_nl file (names lower-cased as Fortran is case-insensitive); last one wins.
    With `raw`, each value is its text as written (a `FortranText`, comments and breaks removed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: user_nl file not found")
    lines = path.read_text().splitlines()
    out = {}
    for first, last, name in _settings(lines):
        text = " ".join(_strip_comment(lines[j]).strip() for j in range(first, last + 1))
        value = text.split("=", 1)[1]
        if not value.strip():
            raise UserError(f"{path}: line {first + 1}: setting {name} has no value")
        out[setting_key(name)] = FortranText(value.strip()) if raw else parse_namelist_value(value)
    return out


def set_user_nl(src: str | Path | None, dst: str | Path, settings: Mapping[str, object],
                history_comment: str | None = None, unset: Iterable[str] = ()) -> Path:
    """Write `dst` = `src` with `settings` applied (replacing same-named ones, appending new ones)
    and the settings named in `unset` removed (with their continuation lines).

    `src` may be missing (a new file is written). `dst` may equal `src` only for ``user_nl_*``
    files. `history_comment` becomes a '!' comment line before appended settings. Idempotent.
    """
    dst = Path(dst)
    lines: list[str] = []
    inputs = []
    if src is not None and Path(src).exists():
        src = Path(src)
        lines = src.read_text().splitlines()
        same = dst.exists() and dst.resolve() == src.resolve()
        if not (same and dst.name.startswith("user_nl")):
            inputs = [src]
    if history_comment is not None:
        _check_string(history_comment, f"{dst}: comment")
    wanted = {}
    for k, v in check_namelist_settings(settings, f"{dst}:", sep=" ").items():
        wanted[setting_key(k)] = (k, format_namelist_value(v))
    gone = {setting_key(check_namelist_name(n, f"{dst}:")) for n in unset}
    done, drop, replace = set(), set(), {}
    for first, last, name in _settings(lines):
        key = setting_key(name)
        if key in gone and key not in wanted:
            drop.update(range(first, last + 1))
            continue
        if key not in wanted:
            continue
        if key in done:
            drop.update(range(first, last + 1))  # a later duplicate would override ours
            continue
        done.add(key)
        comment = lines[last][len(_strip_comment(lines[last])):]
        replace[first] = f"{name} = {wanted[key][1]}" + (f" {comment}" if comment else "")
        drop.update(range(first + 1, last + 1))
    out = [replace.get(i, line) for i, line in enumerate(lines) if i not in drop]
    new = [k for k in wanted if k not in done]
    if new:
        if history_comment:
            out.append(f"! {history_comment}")
        out.extend(f"{wanted[k][0]} = {wanted[k][1]}" for k in new)
    with atomic_path(dst, inputs=inputs) as tmp:
        tmp.write_text("\n".join(out) + "\n")
    return dst
