"""YAML configs: read with yaml.safe_load and validated against a small declarative schema.

Every problem (unknown key, wrong type, missing file, out-of-range value) raises UserError
with one line naming the file and the dotted key, e.g. ``quickstart.yaml: train.lr: must be > 0``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import UserError

REQUIRED = object()


@dataclass
class Field:
    """One config key: its type, default and constraints."""

    type: type | tuple = object
    default: Any = REQUIRED
    min: float | None = None  # inclusive lower bound
    max: float | None = None  # inclusive upper bound
    gt: float | None = None  # exclusive lower bound
    choices: Sequence | None = None
    path: bool = False  # a file or folder that must exist (relative to the config file)
    output_path: bool = False  # a path resolved relative to the config file, need not exist
    schema: Mapping[str, "Field"] | None = None  # nested mapping
    items: type | tuple | None = None  # element type of a list
    nullable: bool = False
    help: str = ""
    extra: dict = field(default_factory=dict)


def _typename(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def _check_type(value, typ, where: str):
    # YAML ints are acceptable where floats are asked for; bools are not numbers.
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types and object not in types:
        raise UserError(f"{where}: expected {_typename(typ)}, got bool {value!r}")
    if not isinstance(value, types):
        raise UserError(f"{where}: expected {_typename(typ)}, got {type(value).__name__} {value!r}")
    return value


def validate(data: Mapping | None, schema: Mapping[str, Field], source: str = "config",
             base_dir: Path | None = None, _prefix: str = "") -> dict:
    """Return a validated copy of `data` with defaults filled in and paths resolved."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: {_prefix.rstrip('.') or 'top level'}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        known = ", ".join(sorted(schema))
        raise UserError(f"{source}: {_prefix}{unknown[0]}: unknown key (known: {known})")
    out = {}
    for key, f in schema.items():
        where = f"{source}: {_prefix}{key}"
        if key not in data:
            if f.default is REQUIRED:
                raise UserError(f"{where}: required key is missing")
            value = copy.deepcopy(f.default)
            if f.schema is not None and isinstance(value, Mapping):
                value = validate(value, f.schema, source, base_dir, f"{_prefix}{key}.")
            out[key] = value
            continue
        value = data[key]
        if value is None:
            if f.nullable:
                out[key] = None
                continue
            raise UserError(f"{where}: must not be empty")
        if f.schema is not None:
            out[key] = validate(value, f.schema, source, base_dir, f"{_prefix}{key}.")
            continue
        value = _check_type(value, f.type, where)
        if f.items is not None:
            value = [_check_type(v, f.items, f"{where}[{i}]") for i, v in enumerate(value)]
        if f.choices is not None:
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in f.choices]
            if bad:
                raise UserError(f"{where}: {bad[0]!r} is not one of {', '.join(map(str, f.choices))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if f.min is not None and value < f.min:
                raise UserError(f"{where}: {value} is below the minimum {f.min}")
            if f.max is not None and value > f.max:
                raise UserError(f"{where}: {value} is above the maximum {f.max}")
            if f.gt is not None and value <= f.gt:
                raise UserError(f"{where}: {value} must be > {f.gt}")
        if f.path or f.output_path:
            p = Path(value).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            if f.path and not p.exists():
                raise UserError(f"{where}: file not found: {p}")
            value = str(p)
        out[key] = value
    return out


def read_yaml(path: str | Path) -> Any:
    """yaml.safe_load a file, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}:{line} not valid YAML: {getattr(e, 'problem', e)}") from None


def load_config(path: str | Path, schema: Mapping[str, Field], section: str | None = None) -> dict:
    """Read a YAML config (optionally one top-level section of it) and validate it against `schema`."""
    path = Path(path)
    data = read_yaml(path)
    prefix = ""
    if section is not None:
        if not isinstance(data, Mapping) or section not in data:
            raise UserError(f"{path.name}: {section}: required section is missing")
        data = data[section]
        prefix = f"{section}."
    return validate(data, schema, source=path.name, base_dir=path.parent.resolve(), _prefix=prefix)
