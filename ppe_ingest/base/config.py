"""YAML configs: read with yaml.safe_load, validated against a declarative schema, returned typed.

A schema maps each key to a `Field`; the Field declarations hold every default. `validate` returns
a `Section`: a read-only dict whose class is generated from the schema, so ``cfg.train.lr`` and
``cfg["train"]["lr"]`` both work, ``cfg.to_dict()`` gives plain types for YAML/JSON, and
``cfg.override({"train.lr": 0.01})`` returns a new section validated again. `load_config` reads a
file (or one section of it) and applies command-line overrides (``--set KEY.SUB=VALUE`` and the
commands' convenience flags) before validating, so a value from a flag is checked like one in the file.

Every problem (unknown key, wrong type, missing file, out-of-range value) raises UserError
with one line naming the file and the dotted key, e.g. ``quickstart.yaml: train.lr: must be > 0``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import UserError, shown, user_error_from_os

REQUIRED = object()

# The sections a config file may hold, one per command that reads it (a file may hold several:
# configs/quickstart.yaml holds them all). Any other top-level key is an error.
SECTIONS = ("simulate", "ingest", "emulator", "inverse")


@dataclass
class Field:
    """One config key: its type, default and constraints."""

    type: type | tuple = object
    default: Any = REQUIRED
    min: float | None = None  # inclusive lower bound
    max: float | None = None  # inclusive upper bound
    gt: float | None = None  # exclusive lower bound
    choices: Sequence | None = None
    path: bool = False  # a file or folder that must exist (relative to the config file); lists: each item
    output_path: bool = False  # a path resolved relative to the config file, need not exist
    schema: Mapping[str, Field] | None = None  # nested mapping
    each: Mapping[str, Field] | None = None  # name -> mapping table: the schema of every value
    items: type | tuple | None = None  # element type of a list
    nullable: bool = False
    help: str = ""
    extra: dict = field(default_factory=dict)


class Section(dict):
    """A validated config section: read-only, with attribute and item access.

    Subclasses are generated from a schema by `section_type`; each key is a property (keys that
    are dict method names, such as ``values``, are read with ``cfg["values"]``). Pickling gives a
    plain dict.
    """

    __slots__ = ("_base_dir", "_check_files", "_prefix", "_source")
    _schema: ClassVar[Mapping[str, Field]] = {}

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__}: build config sections with validate() or load_config()")

    @classmethod
    def _new(cls, values: dict, source: str, base_dir: Path | None, prefix: str, check_files: bool = True) -> Section:
        obj = cls.__new__(cls)
        dict.__init__(obj, values)
        obj._source, obj._base_dir, obj._prefix, obj._check_files = source, base_dir, prefix, check_files
        return obj

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is read-only; use .override({{'key.sub': value}})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def to_dict(self) -> dict:
        """Plain dicts and lists all the way down (for YAML, JSON and torch checkpoints)."""
        return _plain(self)

    def override(self, changes: Mapping[str, Any]) -> Section:
        """A new section with `changes` (dotted key -> value) applied, validated again."""
        data = self.to_dict()
        for key, value in changes.items():
            _assign(data, key.split("."), value, self._schema, "override", self._prefix)
        return validate(data, self._schema, self._source, self._base_dir, self._prefix, self._check_files)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return type(self)._new(copy.deepcopy(dict(self), memo), self._source, self._base_dir, self._prefix,
                               self._check_files)

    def __reduce__(self):
        return dict, (self.to_dict(),)


_TYPES: dict[int, tuple[Mapping, type]] = {}


def section_type(schema: Mapping[str, Field], name: str | None = None) -> type[Section]:
    """The Section class of `schema` (one per schema, made on first use; nested schemas too)."""
    hit = _TYPES.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    ns: dict[str, Any] = {"__slots__": (), "_schema": schema,
                          "__doc__": f"Validated config section with keys: {', '.join(schema)}."}
    for key, f in schema.items():
        for sub, nested in (("", f.schema), ("Entry", f.each)):
            if nested is not None:
                section_type(nested, _class_name(key) + sub)
        if key.isidentifier() and not key.startswith("_") and not hasattr(Section, key):
            ns[key] = _property(key, f)
    cls = type(name or "Section", (Section,), ns)
    _TYPES[id(schema)] = (schema, cls)
    return cls


def _class_name(key: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in key.split("_")) + "Config"


def _property(key: str, f: Field) -> property:
    def get(self):
        return self[key]

    get.__name__ = key
    get.__doc__ = f.help or None
    get.__annotations__ = {"return": section_type(f.schema) if f.schema is not None else f.type}
    return property(get)


def _plain(x):
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


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
        raise UserError(f"{where}: expected {_typename(typ)}, got {type(value).__name__} {shown(value)}")
    return value


def _resolve(value, f: Field, where: str, base_dir: Path | None, check_files: bool) -> str:
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if f.path and check_files and not p.exists():
        raise UserError(f"{where}: file not found: {shown(str(p), quote=False)}")
    return str(p)


def _nested(value, f: Field, source: str, base_dir: Path | None, prefix: str, check_files: bool):
    """A mapping value of a Field with `schema` (one Section) or `each` (name -> Section)."""
    if f.schema is not None:
        return validate(value, f.schema, source, base_dir, prefix, check_files=check_files)
    value = _check_type(value, dict, f"{source}: {prefix.rstrip('.')}")
    return {name: validate(spec, f.each, source, base_dir, f"{prefix}{name}.", check_files=check_files)
            for name, spec in value.items()}


def validate(data: Mapping | None, schema: Mapping[str, Field], source: str = "config",
             base_dir: Path | None = None, _prefix: str = "", check_files: bool = True) -> Section:
    """Return a validated, read-only copy of `data` with defaults filled in and paths resolved.

    `check_files` False skips the existence check of input files (a pipeline checking a section
    early, before its earlier stages have written them).
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        where = _prefix.rstrip('.') or 'top level'
        raise UserError(f"{source}: {where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema), key=str)
    if unknown:
        known = ", ".join(sorted(schema))
        raise UserError(f"{source}: {_prefix}{shown(unknown[0], quote=False)}: unknown key (known: {known})")
    out = {}
    for key, f in schema.items():
        where = f"{source}: {_prefix}{key}"
        nested = f.schema is not None or f.each is not None
        if key not in data:
            if f.default is REQUIRED:
                raise UserError(f"{where}: required key is missing")
            value = copy.deepcopy(f.default)
            if nested and isinstance(value, Mapping):
                value = _nested(value, f, source, base_dir, f"{_prefix}{key}.", check_files)
            out[key] = value
            continue
        value = data[key]
        if value is None:
            if f.nullable:
                out[key] = None
                continue
            raise UserError(f"{where}: must not be empty")
        if nested:
            out[key] = _nested(value, f, source, base_dir, f"{_prefix}{key}.", check_files)
            continue
        value = copy.deepcopy(_check_type(value, f.type, where))
        if f.items is not None:
            value = [_check_type(v, f.items, f"{where}[{i}]") for i, v in enumerate(value)]
        if f.choices is not None:
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in f.choices]
            if bad:
                raise UserError(f"{where}: {shown(bad[0])} is not one of {', '.join(map(str, f.choices))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
                raise UserError(f"{where}: must be a finite number, got {value}")
            if f.min is not None and value < f.min:
                raise UserError(f"{where}: {shown(value)} is below the minimum {_num(f.min)}")
            if f.max is not None and value > f.max:
                raise UserError(f"{where}: {shown(value)} is above the maximum {_num(f.max)}")
            if f.gt is not None and value <= f.gt:
                raise UserError(f"{where}: {shown(value)} must be > {_num(f.gt)}")
        if f.path or f.output_path:
            if isinstance(value, list):
                value = [_resolve(v, f, f"{where}[{i}]", base_dir, check_files) for i, v in enumerate(value)]
            else:
                value = _resolve(value, f, where, base_dir, check_files)
        out[key] = value
    return section_type(schema)._new(out, source, base_dir, _prefix, check_files)


def _num(x) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else str(x)


# A config is small: a document whose aliases expand it beyond this many values (a "billion
# laughs" alias bomb) is refused before anything walks or prints it.
MAX_YAML_VALUES = 100_000


def _expanded_size(obj, limit: int) -> int:
    """How many values `obj` holds with every alias expanded (stops counting past `limit`)."""
    memo: dict[int, int] = {}

    def size(x) -> int:
        if not isinstance(x, (dict, list)):
            return 1
        hit = memo.get(id(x))
        if hit is not None:
            return hit
        memo[id(x)] = limit + 1  # a cycle (a recursive alias) counts as too large
        items = list(x.keys()) + list(x.values()) if isinstance(x, dict) else x
        n = 1
        for v in items:
            n += size(v)
            if n > limit:
                break
        memo[id(x)] = n
        return n

    return size(obj)


def read_yaml(path: str | Path) -> Any:
    """yaml.safe_load a file, with a one-line error for a missing, unreadable or malformed file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a YAML config file")
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text (UTF-8) YAML file (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise user_error_from_os(e) from None
    if "\x00" in text:
        raise UserError(f"{path}: not a text YAML file (it contains NUL bytes)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = shown(str(getattr(e, "problem", None) or e), quote=False)
        raise UserError(f"{path}:{line} not valid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError):  # an integer of thousands of digits
        raise UserError(f"{path}: not valid YAML: a number too long to read") from None
    if _expanded_size(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise UserError(f"{path}: YAML expands to more than {MAX_YAML_VALUES} values (aliases repeated "
                        f"many times?); a config is much smaller")
    return data


def output_folder(out: str | Path, flag: str = "--out", create: bool = True) -> Path:
    """Create the output folder `out` (and its parents), or say in one line why it cannot be one.
    With `create` False only check (the writer makes it once its inputs have passed)."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file, expected a folder" if p == out else f"{p} is a file, not a folder"
                raise UserError(f"{flag} {out}: {what}")
            break
    if not create:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise user_error_from_os(e, flag) from None
    return out


def output_file(path: str | Path, flag: str = "--out") -> Path:
    """Check that a file can be written at `path` before any work: not a folder, its folder not a
    file. Creates nothing (the writer makes missing parent folders)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder, expected a file name")
    for p in path.parents:
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{flag} {path}: {p} is a file, not a folder")
            break
    return path


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY.SUB=VALUE`` (a ``--set`` argument) -> ("KEY.SUB", VALUE read with yaml.safe_load)."""
    key, eq, text = item.partition("=")
    if not eq or not key.strip():
        raise UserError(f"--set {shown(item, quote=False)}: expected KEY=VALUE (e.g. --set train.lr=0.01)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = shown(str(getattr(e, "problem", None) or e), quote=False)
        raise UserError(f"--set {shown(item, quote=False)}: value is not valid YAML ({problem})") from None
    if _expanded_size(value, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise UserError(f"--set {shown(key, quote=False)}: value expands to more than {MAX_YAML_VALUES} values")
    return key.strip(), value


def split_sets(sets: Sequence[str], sections: Sequence[str]) -> dict[str, list[str]]:
    """``--set SECTION.KEY=VALUE`` items of a multi-section config, grouped by section."""
    out: dict[str, list[str]] = {s: [] for s in sections}
    for item in sets:
        head = item.partition("=")[0].split(".")[0].strip()
        if head not in out:
            raise UserError(f"--set {shown(item, quote=False)}: start the key with its section "
                            f"({', '.join(sections)}), e.g. --set emulator.train.lr=0.01")
        out[head].append(item)
    return out


def _assign(data: dict, parts: list[str], value, schema: Mapping[str, Field], label: str, prefix: str,
            base_dir: Path | None = None) -> None:
    """Set data[parts[0]][parts[1]]... = value after checking every key against the schema.

    Relative paths given on the command line are relative to the current directory (base_dir).
    """
    node, fields = data, schema
    for i, part in enumerate(parts):
        dotted = prefix + ".".join(parts[: i + 1])
        f = fields.get(part) if fields is not None else None
        if f is None:
            known = f" (known: {', '.join(sorted(fields))})" if fields else ""
            raise UserError(f"{shown(label, quote=False)}: {shown(dotted, quote=False)}: unknown key{known}")
        if i == len(parts) - 1:
            if base_dir is not None and (f.path or f.output_path) and value is not None:
                value = ([str(base_dir / Path(v).expanduser()) for v in value] if isinstance(value, list)
                         else str(base_dir / Path(str(value)).expanduser()))
            node[part] = value
            return
        if f.schema is None and f.each is None:
            raise UserError(f"{shown(label, quote=False)}: {shown(dotted, quote=False)}: has no sub-keys")
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
        if f.each is not None:  # the next part is a free name of the table, then its schema
            i_name = i + 1
            if i_name == len(parts) - 1:
                node[parts[i_name]] = value
                return
            name = parts[i_name]
            if not isinstance(node.get(name), dict):
                node[name] = {}
            _assign(node[name], parts[i_name + 1:], value, f.each, label, f"{dotted}.{name}.", base_dir)
            return
        fields = f.schema


def load_config(path: str | Path | None, schema: Mapping[str, Field], section: str | None = None,
                sets: Sequence[str] = (), values: Mapping[str, Any] | None = None,
                check_files: bool = True) -> Section:
    """Read a YAML config (or one section of it), apply overrides and validate against `schema`.

    `sets` are ``--set KEY.SUB=VALUE`` strings (the key may start with the section name); `values`
    maps dotted keys to the values of a command's convenience flags (None: flag not given). Both are
    validated like the file; their relative paths are relative to the current directory. With
    `path` None the section holds the schema's defaults plus the overrides. `check_files`: as in
    `validate`.
    """
    prefix = f"{section}." if section else ""
    if path is None:
        data, source, base_dir = {}, "command line", None
    else:
        path = Path(path)
        data, source, base_dir = read_yaml(path), path.name, path.parent.resolve()
        if section is not None:
            if not isinstance(data, Mapping):
                raise UserError(f"{path.name}: expected a mapping of sections ({', '.join(SECTIONS)})")
            unknown = sorted(set(data) - set(SECTIONS), key=str)
            if unknown:
                raise UserError(f"{path.name}: {shown(unknown[0], quote=False)}: unknown section "
                                f"(known: {', '.join(SECTIONS)})")
            if section not in data:
                raise UserError(f"{path.name}: {section}: required section is missing")
            data = data[section]
    changes = []
    for item in sets:
        key, value = parse_set(item)
        parts = key.split(".")
        if section and parts[0] == section and section not in schema and len(parts) > 1:
            parts = parts[1:]
        changes.append((parts, value, f"--set {item}"))
    changes += [(k.split("."), v, "command line") for k, v in (values or {}).items() if v is not None]
    if changes:
        data = {} if data is None else data
        if isinstance(data, Mapping):
            data = _plain(data)
            for parts, value, label in changes:
                _assign(data, parts, value, schema, label, prefix, Path.cwd())
    return validate(data, schema, source=source, base_dir=base_dir, _prefix=prefix, check_files=check_files)


def _represent_section(dumper, data):
    return dumper.represent_dict(dict(data))


yaml.add_multi_representer(Section, _represent_section, Dumper=yaml.SafeDumper)
