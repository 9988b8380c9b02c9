"""`user_nl_clm` files (and PPE `namelist_mods/<member>.txt`): Fortran namelist settings, one per line.

`set_user_nl` replaces settings of the same name (case-insensitive, any spacing), appends new
ones and keeps every other line and comment. Unlike the netCDF writers, the output may be the
input itself when it is a ``user_nl_*`` file, because CIME cases are edited in place (the new
content is still written to a temporary file and renamed).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

_NAME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_%()]*)\s*=(.*)$")


def format_namelist_value(v) -> str:
    """A Python value as Fortran namelist text: .true./.false., 'quoted', exact floats, lists."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (list, tuple, np.ndarray)):
        if len(v) == 0:
            raise UserError("namelist value: empty list")
        return ", ".join(format_namelist_value(x) for x in v)
    if isinstance(v, bool):
        return ".true." if v else ".false."
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise UserError(f"namelist value: {v} is not finite")
        r = repr(v)  # shortest text that round-trips
        if "e" in r:
            mant, exp = r.split("e")
            if "." not in mant:
                mant += ".0"
            return f"{mant}e{int(exp):+03d}"
        return r
    if isinstance(v, (str, Path)):
        return "'" + str(v).replace("'", "''") + "'"
    raise UserError(f"namelist value: cannot write {type(v).__name__} {v!r}")


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


def read_user_nl(path: str | Path) -> dict:
    """Settings of a user_nl file (names lower-cased as Fortran is case-insensitive); last one wins."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: user_nl file not found")
    lines = path.read_text().splitlines()
    out = {}
    for first, last, name in _settings(lines):
        text = " ".join(_strip_comment(lines[j]) for j in range(first, last + 1))
        value = text.split("=", 1)[1]
        if not value.strip():
            raise UserError(f"{path}: line {first + 1}: setting {name} has no value")
        out[name.lower()] = parse_namelist_value(value)
    return out


def set_user_nl(src: str | Path | None, dst: str | Path, settings: Mapping[str, object],
                history_comment: str | None = None) -> Path:
    """Write `dst` = `src` with `settings` applied (replacing same-named ones, appending new ones).

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
    wanted = {}
    for k, v in settings.items():
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", str(k)):
            raise UserError(f"{dst}: {k!r} is not a namelist variable name")
        wanted[str(k).lower()] = (str(k), format_namelist_value(v))
    done, drop, replace = set(), set(), {}
    for first, last, name in _settings(lines):
        key = name.lower()
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
