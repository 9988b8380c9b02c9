"""Parameter tables: which CTSM parameters to perturb or calibrate, where CTSM reads them, and ranges.

Three formats load into one `ParamTable`:

* the CLM5 PPE tables (``lhc_220926.csv``: param, loc, min, max, pft_mins, pft_maxs; and the full
  spreadsheet ``params.csv``: rows with final == 1): location P (paramfile) / N (namelist), bounds as
  numbers, ``XXpercent`` (default * (1 -/+ XX/100)) or ``pft`` (per-PFT arrays from pft_mins/pft_maxs);
* the CTSM-over-CAMELS calibration table (``CTSM_CAMELS_calibparam_2410.csv``): Source
  Param/Surfdata/Namelist, Method Multiplicative/Additive, Binding;
* our own format (``configs/params_hydrology.csv``): name, location, default, min, max, transform, pft, ...;
  an optional ``group`` column (true) makes a row a group parameter written to its ``binding`` variables only.

Unit-cube position s maps to a value as in the PPE: ``value = min + (max - min) * s``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.physical import Physical, check_physical_values, physical_range

LOCATIONS = ("paramfile", "fsurdat", "namelist")
# Group parameters of the CLM5 PPE: one table row that scales several paramfile variables together.
# KCN: the six nitrogen-uptake cost constants flagged "KCN" in the PPE's params.csv (rows 172-178,
# "KCN flag ... will perturb them together"); lhc_220926.csv samples them as one 90percent/900percent row.
PPE_GROUPS: dict[str, tuple[str, ...]] = {
    "KCN": ("kc_nonmyc", "kn_nonmyc", "akc_active", "akn_active", "ekc_active", "ekn_active"),
}
TRANSFORMS = ("value", "multiplicative", "additive")
_PERCENT = re.compile(r"^\s*([0-9.eE+-]+)\s*percent\s*$", re.IGNORECASE)


@dataclass
class ParamSpec:
    """One calibratable parameter.

    `transform` says how a value `theta` becomes what is written (see `to_field`): ``value`` sets it
    (broadcast over PFTs or gridcells), ``multiplicative`` scales the base field by theta/default,
    ``additive`` shifts it by theta - default. For ``pft`` bounds (per-PFT arrays pft_min/pft_max),
    theta is the unit-cube position itself and every PFT gets ``pft_min + (pft_max - pft_min) * theta``.
    """

    name: str
    location: str
    default: float | None = None
    min: float | None = None
    max: float | None = None
    transform: str = "value"
    pft: bool = False
    pft_min: np.ndarray | None = None
    pft_max: np.ndarray | None = None
    units: str = ""
    long_name: str = ""
    binding: list[str] = field(default_factory=list)
    min_spec: str = ""  # bound as written in the table, e.g. "90percent"
    max_spec: str = ""
    description: str = ""
    source: str = ""
    note: str = ""
    group: bool = False  # the name is no file variable: theta applies to every variable in `binding`

    def __post_init__(self):
        if self.location not in LOCATIONS:
            raise UserError(f"parameter {self.name}: location {self.location!r} is not one of {', '.join(LOCATIONS)}")
        if self.transform not in TRANSFORMS:
            raise UserError(f"parameter {self.name}: transform {self.transform!r} "
                            f"is not one of {', '.join(TRANSFORMS)}")

    @property
    def targets(self) -> list[str]:
        """The file variables theta is written to: the parameter itself and any bound to it, or only
        the bound variables for a group parameter (e.g. the PPE's KCN)."""
        return list(self.binding) if self.group else [self.name, *self.binding]

    @property
    def physical(self) -> Physical | None:
        """What the written value (not theta) can physically be; see `physical_range`."""
        return physical_range(self.name, self.units)

    @property
    def pft_bounds(self) -> bool:
        """True when the bounds are per-PFT arrays (theta is then the unit-cube position)."""
        return self.pft_min is not None and self.pft_max is not None

    def ends(self) -> tuple[float, float]:
        """theta at unit-cube positions 0 and 1: the table's min and max as written. The CLM5 PPE
        writes some in falling order (soilpsi_off: -0.64, -0.96) and maps s the same way."""
        if self.pft_bounds:
            return 0.0, 1.0
        if self.min is None or self.max is None:
            raise UserError(f"parameter {self.name}: bounds {self.min_spec or '?'}..{self.max_spec or '?'} need its "
                            "default value; give a base paramfile (base_paramfile=...) that holds it")
        return float(self.min), float(self.max)

    def bounds(self) -> tuple[float, float]:
        """(lowest, highest) theta: the interval a value must lie in."""
        a, b = self.ends()
        return min(a, b), max(a, b)

    def theta(self, s):
        """Scalar theta at unit-cube position(s) s: min + (max - min) * s, as the PPE maps it."""
        lo, hi = self.ends()
        return lo + (hi - lo) * np.asarray(s, dtype=float)

    def value(self, s):
        """What CTSM gets at unit-cube position s: a scalar, or a per-PFT array for pft bounds."""
        if self.pft_bounds:
            return self.pft_min + (self.pft_max - self.pft_min) * float(s)
        return float(self.theta(s))

    def namelist_values(self, theta, current: Mapping | None = None, source: str = "the user_nl_clm") -> dict:
        """{namelist variable: value} that theta writes into a user_nl_clm: theta for the parameter's own
        name (a namelist parameter's theta is its value) and for every target of a ``value`` transform;
        another target of a ``multiplicative``/``additive`` transform gets its value in `current` (the
        case's settings, names in any case) transformed, and is refused when `current` does not set it
        (CTSM's own default is not known here). A group's name is never written: it is no variable."""
        low = {str(k).lower(): v for k, v in (current or {}).items()}
        out = {}
        for t in self.targets:
            if t == self.name or self.transform == "value" or self.pft_bounds:
                out[t] = theta
                continue
            if isinstance(theta, bool) or not isinstance(theta, (int, float, np.floating, np.integer)):
                raise UserError(f"{self.name} = {theta!r}: a {self.transform} transform needs a number")
            base = low.get(t.lower())
            if isinstance(base, bool) or not isinstance(base, (int, float)):
                raise UserError(f"{self.name}: writes namelist variable {t} as the {self.transform} transform of "
                                f"its current value, which {source} does not set; set {t} there first")
            out[t] = float(self.to_field(theta, float(base)))
        return out

    def to_field(self, theta, base):
        """The field to write for theta given the base field (scalar, per-PFT or per-gridcell array)."""
        base = np.asarray(base, dtype=float)
        theta = np.asarray(theta, dtype=float)
        if self.pft_bounds:
            out = self.pft_min + (self.pft_max - self.pft_min) * theta
            if base.shape and base.shape[-1:] != out.shape:
                raise UserError(f"parameter {self.name}: per-PFT bounds have {out.shape[0]} values, "
                                f"the file has {base.shape}")
            return np.broadcast_to(out, base.shape).copy() if base.shape else out  # e.g. every segment
        ref = 1.0 if self.default is None else float(self.default)
        if self.transform == "multiplicative":
            if ref == 0:
                raise UserError(f"parameter {self.name}: multiplicative transform with default 0")
            return base * (theta / ref)
        if self.transform == "additive":
            return base + (theta - ref)
        return np.broadcast_to(theta, np.broadcast_shapes(theta.shape, base.shape)).copy()


class ParamTable:
    """An ordered set of `ParamSpec`s, indexed by name."""

    def __init__(self, specs: Sequence[ParamSpec], source: str = ""):
        self._specs: dict[str, ParamSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise UserError(f"{source or 'parameter table'}: parameter {spec.name} appears twice")
            self._specs[spec.name] = spec
        self.source = source

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def __getitem__(self, name: str) -> ParamSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UserError(f"{self.source or 'parameter table'}: parameter {name} not in the table "
                            f"(known: {', '.join(self._specs)})") from None

    def __contains__(self, name) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ParamSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def subset(self, names: Sequence[str]) -> ParamTable:
        return ParamTable([self[n] for n in names], self.source)

    def value(self, name: str, s):
        return self[name].value(s)

    def bounds(self, name: str) -> tuple[float, float]:
        return self[name].bounds()

    def to_frame(self):
        """A pandas DataFrame, one row per parameter (per-PFT bounds shown as 'pft')."""
        import pandas as pd

        rows = []
        for p in self:
            rows.append(dict(name=p.name, location=p.location, default=p.default,
                             min="pft" if p.pft_bounds else p.min, max="pft" if p.pft_bounds else p.max,
                             transform=p.transform, pft=p.pft, units=p.units, long_name=p.long_name,
                             binding=",".join(p.binding), min_spec=p.min_spec, max_spec=p.max_spec,
                             description=p.description, source=p.source, note=p.note))
        return pd.DataFrame(rows).set_index("name")


# ---------------------------------------------------------------- parsing helpers

def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _float(v, where: str) -> float | None:
    if _blank(v):
        return None
    try:
        return float(str(v).strip())
    except ValueError:
        raise UserError(f"{where}: {v!r} is not a number") from None


def _pft_array(v, where: str) -> np.ndarray | None:
    if _blank(v):
        return None
    try:
        return np.array([float(x) for x in str(v).replace("\n", "").split(",") if x.strip()])
    except ValueError:
        raise UserError(f"{where}: not a comma-separated list of numbers") from None


class _Defaults:
    """Default values and attributes looked up in a base paramfile (read once, lazily)."""

    def __init__(self, path):
        self.path = path
        self._values = None
        self._attrs = None

    def _load(self):
        from ppe_ingest.base.netcdf import open_dataset

        from .ctsmio.paramfile import read_paramfile

        self._values = read_paramfile(self.path)
        with open_dataset(self.path) as ds:
            self._attrs = {n: {a: v.getncattr(a) for a in v.ncattrs()} for n, v in ds.variables.items()}

    def get(self, name):
        if self.path is None:
            return None
        if self._values is None:
            self._load()
        return self._values.get(name)

    def attrs(self, name) -> dict:
        if self.get(name) is None:
            return {}
        return self._attrs.get(name, {})


def _ppe_spec(name, loc, lo, hi, pmins, pmaxs, where, defaults: _Defaults, table_default=None) -> ParamSpec:
    """One row of a CLM5 PPE table, with percent bounds resolved against the default."""
    location = {"P": "paramfile", "N": "namelist"}.get(str(loc).strip().upper())
    if location is None:
        raise UserError(f"{where}: loc {loc!r} is not P (paramfile) or N (namelist)")
    lo_s, hi_s = str(lo).strip(), str(hi).strip()
    base = defaults.get(name)
    if base is None and name in PPE_GROUPS and location == "paramfile":
        return _group_spec(name, lo_s, hi_s, where)
    attrs = defaults.attrs(name)
    spec = dict(name=name, location=location, min_spec=lo_s, max_spec=hi_s,
                units=str(attrs.get("units", "")), long_name=str(attrs.get("long_name", "")))
    if lo_s.lower() == "pft" or hi_s.lower() == "pft":
        pmin, pmax = _pft_array(pmins, f"{where}: pft_mins"), _pft_array(pmaxs, f"{where}: pft_maxs")
        if pmin is None or pmax is None or pmin.shape != pmax.shape:
            raise UserError(f"{where}: parameter {name}: 'pft' bounds need pft_mins and pft_maxs of equal length")
        return ParamSpec(**spec, pft=True, pft_min=pmin, pft_max=pmax)
    mlo, mhi = _PERCENT.match(lo_s), _PERCENT.match(hi_s)
    if mlo or mhi:
        if not (mlo and mhi):
            raise UserError(f"{where}: parameter {name}: mixes percent and absolute bounds ({lo_s}, {hi_s})")
        plo, phi = float(mlo.group(1)) / 100, float(mhi.group(1)) / 100
        default = base if base is not None else table_default
        if default is not None and np.ndim(default) > 0:
            # Percent of a per-PFT array: theta is the common multiplier (reference 1).
            return ParamSpec(**spec, default=1.0, min=1 - plo, max=1 + phi, transform="multiplicative", pft=True)
        if default is None:
            return ParamSpec(**spec)  # bounds resolved only when a base paramfile is given
        d = float(default)
        return ParamSpec(**spec, default=d, min=d * (1 - plo), max=d * (1 + phi))
    d = None
    if base is not None and np.ndim(base) == 0:
        d = float(base)
    elif table_default is not None:
        d = table_default
    return ParamSpec(**spec, default=d, min=_float(lo, f"{where}: min"), max=_float(hi, f"{where}: max"),
                     pft=base is not None and np.ndim(base) > 0)


def _group_spec(name, lo_s, hi_s, where, targets=None, location="paramfile") -> ParamSpec:
    """A PPE group row: theta is the common multiplier (reference 1) of its member variables, each
    perturbed from its own default as the PPE did (`XXpercent` of each variable's own value)."""
    targets = list(PPE_GROUPS[name] if targets is None else targets)
    mlo, mhi = _PERCENT.match(lo_s), _PERCENT.match(hi_s)
    if not (mlo and mhi):
        raise UserError(f"{where}: group parameter {name} needs percent bounds (got {lo_s}, {hi_s})")
    plo, phi = float(mlo.group(1)) / 100, float(mhi.group(1)) / 100
    return ParamSpec(name=name, location=location, default=1.0, min=1 - plo, max=1 + phi,
                     transform="multiplicative", pft=True, binding=targets, group=True,
                     min_spec=lo_s, max_spec=hi_s, units="1",
                     long_name=f"common multiplier of {', '.join(targets)}",
                     note="group parameter: scales every bound variable together")


def _load_lhc(df, path, defaults) -> list[ParamSpec]:
    specs = []
    for i, row in df.iterrows():
        where = f"{path.name}: row {i + 2} ({row['param']})"
        specs.append(_ppe_spec(str(row["param"]).strip(), row["loc"], row["min"], row["max"],
                               row.get("pft_mins"), row.get("pft_maxs"), where, defaults))
    return specs


def _load_ppe_params(df, path, defaults) -> list[ParamSpec]:
    """The full PPE spreadsheet: keep rows with final == 1 in location P or N (H = hard-coded)."""
    specs = []
    default_col = next((c for c in df.columns if str(c).startswith("CLM5 Default")), None)
    for i, row in df.iterrows():
        if str(row.get("final")).strip() not in ("1", "1.0") or _blank(row.get("name")):
            continue
        if str(row["location"]).strip().upper() not in ("P", "N"):
            continue
        name = str(row["name"]).strip()
        table_default = None
        if default_col is not None:
            try:
                table_default = float(str(row[default_col]).strip())
            except ValueError:
                table_default = None  # "varies: ..." or blank
            if table_default is not None and math.isnan(table_default):
                table_default = None
        spec = _ppe_spec(name, row["location"], row["min"], row["max"], row.get("pft_mins"),
                         row.get("pft_maxs"), f"{path.name}: row {i + 2} ({name})", defaults, table_default)
        if not _blank(row.get("Units")) and not spec.units:
            spec.units = str(row["Units"]).strip()
        if not _blank(row.get("Description")):
            spec.description = " ".join(str(row["Description"]).split())
        specs.append(spec)
    return specs


def _load_camels(df, path) -> list[ParamSpec]:
    loc = {"param": "paramfile", "surfdata": "fsurdat", "namelist": "namelist"}
    method = {"multiplicative": "multiplicative", "additive": "additive"}
    specs = []
    for i, row in df.iterrows():
        name = str(row["Parameter"]).strip()
        where = f"{path.name}: row {i + 2} ({name})"
        source = str(row["Source"]).strip().lower()
        if source not in loc:
            raise UserError(f"{where}: Source {row['Source']!r} is not Param, Surfdata or Namelist")
        m = str(row["Method"]).strip().lower()
        if m not in method:
            raise UserError(f"{where}: Method {row['Method']!r} is not Multiplicative or Additive")
        rm = str(row.get("RangeMethod", "Absolute")).strip().lower()
        if rm != "absolute":
            raise UserError(f"{where}: RangeMethod {row['RangeMethod']!r} is not supported (only Absolute)")
        binding = [] if _blank(row["Binding"]) or str(row["Binding"]).strip() == "None" else \
            [b.strip() for b in str(row["Binding"]).split(",") if b.strip()]
        default = _float(row["Default"], f"{where}: Default")
        specs.append(ParamSpec(
            name=name, location=loc[source], default=default, min=_float(row["Lower"], f"{where}: Lower"),
            max=_float(row["Upper"], f"{where}: Upper"), transform=method[m], binding=binding,
            pft=name == "medlynslope", min_spec=str(row["Lower"]), max_spec=str(row["Upper"]),
            description=" ".join(str(row.get("Process", "")).split()), source=str(row.get("Type", "")).strip(),
            note="" if default is not None else "no default in the table: values are factors on the base field"))
    return specs


def _truthy(v) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "y")


def _load_ours(df, path, defaults) -> list[ParamSpec]:
    specs = []
    for i, row in df.iterrows():
        name = str(row["name"]).strip()
        where = f"{path.name}: row {i + 2} ({name})"
        lo, hi = str(row["min"]).strip(), str(row["max"]).strip()
        group = "group" in row and _truthy(row["group"])
        targets = [] if "binding" not in row or _blank(row["binding"]) else \
            [b.strip() for b in str(row["binding"]).split(",") if b.strip()]
        if group and not targets:
            raise UserError(f"{where}: a group parameter needs the variables it writes in its binding column")
        if group and (_PERCENT.match(lo) or _PERCENT.match(hi)):
            # as the PPE's KCN: XXpercent of each target's own value, theta the common multiplier
            spec = _group_spec(name, lo, hi, where, targets, str(row["location"]).strip())
        elif _PERCENT.match(lo) or lo.lower() == "pft":
            loc = {"paramfile": "P", "namelist": "N"}.get(str(row["location"]).strip())
            if loc is None:
                raise UserError(f"{where}: percent/pft bounds are only for paramfile or namelist parameters")
            spec = _ppe_spec(name, loc, lo, hi, row.get("pft_mins"), row.get("pft_maxs"), where, defaults,
                             _float(row.get("default"), f"{where}: default"))
        else:
            spec = ParamSpec(name=name, location=str(row["location"]).strip(),
                             default=_float(row.get("default"), f"{where}: default"),
                             min=_float(lo, f"{where}: min"), max=_float(hi, f"{where}: max"),
                             transform=str(row.get("transform", "value")).strip() or "value",
                             pft=_truthy(row.get("pft", "false")), min_spec=lo, max_spec=hi)
        for key in ("units", "long_name", "description", "source", "note"):
            if key in row and not _blank(row[key]):
                setattr(spec, key, " ".join(str(row[key]).split()))
        if targets:
            spec.binding = targets
        spec.group = spec.group or group
        if spec.min is not None and spec.max is not None and not spec.min <= spec.max:
            raise UserError(f"{where}: min {spec.min} is greater than max {spec.max}")
        specs.append(spec)
    return specs


def load_oaat_key(path: str | Path):
    """The OAAT member key (no header: member, param, min/max/none) as a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    df = pd.read_csv(path, header=None, names=["member", "param", "bound"], dtype=str)
    bad = df[~df["bound"].str.strip().isin(["min", "max", "none"])]
    if len(bad):
        raise UserError(f"{path}: row {bad.index[0] + 1}: third column must be min, max or none")
    return df.apply(lambda c: c.str.strip())


def load_param_table(path: str | Path, base_paramfile: str | Path | None = None) -> ParamTable:
    """Load a parameter table, detecting its format from the header.

    `base_paramfile` supplies defaults (for ``XXpercent`` bounds), units and long names of
    paramfile parameters.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: parameter table not found")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV table ({e})") from None
    cols = {str(c).strip() for c in df.columns}
    df.columns = [str(c).strip() for c in df.columns]
    defaults = _Defaults(base_paramfile)
    if {"param", "loc", "min", "max"} <= cols:
        specs = _load_lhc(df, path, defaults)
    elif {"name", "location", "final", "min", "max"} <= cols:
        specs = _load_ppe_params(df, path, defaults)
    elif {"Parameter", "Default", "Lower", "Upper", "Source", "Method"} <= cols:
        specs = _load_camels(df, path)
    elif {"name", "location", "min", "max"} <= cols:
        specs = _load_ours(df, path, defaults)
    elif len(df.columns) == 3 and str(df.columns[0]).startswith(("OAAT", "LHC")):
        raise UserError(f"{path}: this is an OAAT/LHC member key (member, param, min/max), not a parameter "
                        "table; read it with ppe_ingest.param_table.load_oaat_key")
    else:
        raise UserError(f"{path}: unknown parameter table format (columns: {', '.join(sorted(cols))})")
    if not specs:
        raise UserError(f"{path}: no parameters in the table")
    for spec in specs:
        _check_table_bounds(spec, path)
    return ParamTable(specs, source=path.name)


def _check_table_bounds(spec: ParamSpec, path: Path) -> None:
    """A table's own bounds must be finite and, where they are the written values themselves (value
    transform, per-PFT arrays), physically valid: a PPE or a calibration drawn from them would
    otherwise write what CTSM rejects."""
    where = f"{path.name}: parameter {spec.name}"
    if spec.pft_bounds:
        for which, arr in (("pft_mins", spec.pft_min), ("pft_maxs", spec.pft_max)):
            check_physical_values(spec.name, arr, spec.units, f"{where}: {which}")
        return
    for which, v in (("min", spec.min), ("max", spec.max)):
        if v is not None and not math.isfinite(v):
            raise UserError(f"{where}: {which} {v} is not a finite number")
    if spec.transform == "value" and spec.min is not None and spec.max is not None:
        for which, v in (("min", spec.min), ("max", spec.max)):
            check_physical_values(spec.name, v, spec.units, f"{where}: {which}")


def default_table_path() -> Path:
    """Our own default table for the quickstart: the shipped params_hydrology.csv (package data)."""
    from . import configs

    return configs.path("params_hydrology.csv")
