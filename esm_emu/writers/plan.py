"""What `write_ctsm_files` writes, decided and checked before any file exists.

Values come from ``--set NAME=VALUE`` or from a parameter map ``theta(gridcell|site, param)``
(the inverse's output). Each name goes where CTSM reads it, by the parameter table's location
(or, for names not in the table, where the variable exists): the surface dataset (per gridcell),
the paramfile, or user_nl_clm. Each input file gives a new file of the same name in the output
folder; inputs are never overwritten.

Scalar paramfile and namelist parameters cannot vary in space inside one CTSM case, so a map's
values are reduced to their median across gridcells/sites by default (a note says so), or written
as one paramfile per gridcell/site or per k-means cluster. A map's parameters whose file was not
given are skipped with a note; an explicit ``--set`` of one is an error (except namelist names,
which go into a new ``user_nl_clm`` when no user_nl is given).

`plan_ctsm_files` reads each input once and returns a `WritePlan` holding the exact values of
every output, checked against the table's bounds, the surface dataset's physics and each
variable's dtype; `apply.apply_plan` only writes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ppe_ingest.base.atomic import refuse_overwrite
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.user_nl import format_namelist_value

TOL_DEG = 1.0  # how far (degrees) a map's lat/lon may be from its fsurdat gridcell
BOUNDS_RTOL = 1e-6  # theta this far outside the table's bounds (relative to the range) is rounding, not an error
CLUSTER_KEY = "paramfile_clusters.csv"  # entity -> cluster -> paramfile, beside per-cluster paramfiles


@dataclass(frozen=True)
class Assignment:
    """One parameter: where it goes and how.

    `origin` is ``--set`` or ``map``; `value` the value given (a scalar, ``{PFT: value}``, or theta
    per map gridcell/site); `mode` ``value`` (written as given), ``field`` (a fsurdat field per
    gridcell), ``median`` (one value for the whole map; namelist values also per cluster with
    per-cluster files) or ``paramfile per <gridcell|site|cluster>``.
    """

    name: str
    kind: str
    origin: str
    value: Any
    mode: str
    entity: str = ""  # gridcell or site: what a map's values are given over

    def summary(self) -> str:
        """The value in a few words."""
        if isinstance(self.value, Mapping):
            return ", ".join(f"[{k}] {v:.6g}" for k, v in self.value.items())
        v = np.asarray(self.value)
        if v.ndim == 0:
            return format_namelist_value(self.value) if self.kind == "namelist" else f"{float(v):.6g}"
        what = f"{v.min():.4g}..{v.max():.4g} over {v.size} {self.entity}s"
        if self.mode.startswith("median"):
            return f"median {float(np.median(v)):.6g} of {what}{self.mode[len('median'):]}"
        return f"{self.mode}, {what}"


@dataclass
class Output:
    """One file to write: a copy of `src` (a new user_nl_clm when `src` is None) with `changes`.

    netCDF `changes` are ``name -> (index, value cast to the variable's dtype)`` for
    `copy_and_modify`; user_nl `changes` are ``name -> value``. `history` is the line appended to
    the netCDF history, or the comment above the user_nl settings added.
    """

    kind: str  # fsurdat | paramfile | user_nl
    src: Path | None
    dst: Path
    changes: dict
    history: str


@dataclass
class WritePlan:
    """Every output of one `write_ctsm_files` call, checked; nothing written yet."""

    out_dir: Path
    inputs: list[Path]
    assignments: list[Assignment]
    outputs: list[Output]
    notes: list[str] = field(default_factory=list)
    cluster_key: Any = None  # a DataFrame (gridcell|site, cluster, paramfile) written as CLUSTER_KEY

    def routes(self) -> dict[str, str]:
        """Parameter name -> the kind of file it goes into."""
        return {a.name: a.kind for a in self.assignments}

    def files(self, kind: str) -> list[Path]:
        """The outputs of one kind (fsurdat, paramfile, user_nl), in writing order."""
        return [o.dst for o in self.outputs if o.kind == kind]

    def describe(self) -> str:
        """The plan as text: `esm-emu write-ctsm --dry-run`."""
        lines = [f"{len(self.assignments)} parameter(s), {len(self.outputs)} file(s) in {self.out_dir}"]
        width = max([len(a.name) for a in self.assignments] + [4])
        lines += [f"  {a.name:<{width}}  {a.kind:<9}  {a.origin:<5}  {a.summary()}" for a in self.assignments]
        for o in self.outputs:
            lines.append(f"  {o.dst}  from {o.src if o.src is not None else '(new)'}: {', '.join(o.changes)}")
        if self.cluster_key is not None:
            lines.append(f"  {self.out_dir / CLUSTER_KEY}: {self.cluster_key.columns[0]} -> cluster -> paramfile")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def plan_ctsm_files(out_dir, fsurdat=None, paramfile=None, user_nl=None, values=None, table=None,
                    settings: Mapping | None = None, per_gridcell_paramfiles: bool = False,
                    per_cluster_paramfiles: bool = False, tol_deg: float = TOL_DEG,
                    allow_outside_table: bool = False) -> WritePlan:
    """The checked `WritePlan` of `write_ctsm_files` (same arguments); reads each input once, writes nothing.

    With `allow_outside_table`, values outside the table's bounds (still physically valid) are
    planned, and every output records the flag and those values (netCDF history, a user_nl_clm
    comment); physically invalid values are refused either way.
    """
    from .inputs import open_inputs

    out_dir = Path(out_dir)
    settings = dict(settings or {})
    if fsurdat is None and paramfile is None and user_nl is None:
        raise UserError("write-ctsm: give at least one of --fsurdat, --paramfile, --user-nl")
    if not settings and values is None:
        raise UserError("write-ctsm: nothing to write: give --set NAME=VALUE or --values MAP.nc")
    table = _table(table, paramfile)
    values, map_path = _load_map(values)
    if not (isinstance(tol_deg, (int, float)) and 0 <= tol_deg <= 180):
        raise UserError(f"write-ctsm: --tol-deg {tol_deg} must be a distance in degrees within 0..180")
    if per_gridcell_paramfiles and per_cluster_paramfiles:
        raise UserError("write-ctsm: choose one of --per-gridcell-paramfiles and --per-cluster-paramfiles")
    if values is not None:
        if per_cluster_paramfiles and not {"cluster", "theta_cluster"} <= set(values.variables):
            raise UserError("parameter map: --per-cluster-paramfiles needs cluster and theta_cluster "
                            "(set inverse.clusters when inverting)")
        if "theta" not in values or "param" not in values["theta"].dims or \
                not ({"gridcell", "site"} & set(values["theta"].dims)):
            raise UserError("parameter map: needs a variable theta(gridcell|site, param)")
    inputs = [Path(p) for p in (fsurdat, paramfile, user_nl, map_path) if p is not None]
    with open_inputs(fsurdat, paramfile) as (fs, pf):
        planner = _Planner(out_dir, inputs, fs, pf, user_nl, table, values,
                           "cluster" if per_cluster_paramfiles else "entity" if per_gridcell_paramfiles else None,
                           tol_deg, allow_outside_table)
        planner.route(settings)
        return planner.plan()


def _table(table, paramfile):
    from ppe_ingest.param_table import ParamTable, default_table_path, load_param_table

    if isinstance(table, ParamTable):
        return table
    return load_param_table(table or default_table_path(), base_paramfile=paramfile)


def _load_map(values):
    """(map Dataset or None, its path or None)."""
    import xarray as xr

    if values is None or isinstance(values, xr.Dataset):
        return values, None
    path = Path(values)
    if not path.is_file():
        raise UserError(f"{path}: parameter map not found")
    return xr.load_dataset(path), path


def _number(name, value, where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise UserError(f"{where}: {name} = {value!r} is not a number")
    if not np.isfinite(float(value)):
        raise UserError(f"{where}: {name} = {value} is a non-finite value (NaN or inf), never written")
    return float(value)


def _physical_ok(name, values, units) -> np.ndarray:
    from ppe_ingest.ctsmio.physical import physical_range

    rule = physical_range(name, units)
    return rule.ok(values) if rule is not None else np.isfinite(np.asarray(values, dtype=float))


def _pft_name(ds, k: int) -> str:
    import netCDF4

    if "pftname" in ds.variables:
        try:
            return str(netCDF4.chartostring(ds.variables["pftname"][k])).strip()
        except (IndexError, ValueError):
            pass
    return f"pft {k}"


def _bounds(spec) -> tuple[float, float] | None:
    """(min, max) of theta for a table parameter, None when the table gives none."""
    if spec is None:
        return None
    if spec.pft_bounds:
        return 0.0, 1.0
    if spec.min is None or spec.max is None:
        return None
    return spec.bounds()  # (lowest, highest), whichever order the table writes them in


class _Planner:
    """Routes the values to their files and builds the outputs, with the inputs open."""

    def __init__(self, out_dir, inputs, fs, pf, user_nl, table, values, per_file, tol_deg, allow_outside=False):
        self.out_dir, self.inputs, self.fs, self.pf, self.table = out_dir, inputs, fs, pf, table
        self.user_nl = None if user_nl is None else Path(user_nl)
        self.values, self.per_file, self.tol_deg = values, per_file, tol_deg
        self.dim = None if values is None else "gridcell" if "gridcell" in values["theta"].dims else "site"
        self.assignments: list[Assignment] = []
        self.notes: list[str] = []
        self.fields: dict = {}  # fsurdat name -> new field (..., gridcell)
        self.pf_values: dict = {}  # paramfile name -> value for every paramfile written
        self.pf_each: dict = {}  # paramfile name -> theta per map entity (one paramfile per entity or cluster)
        self.nl: dict = {}  # namelist name -> value
        self.nl_map: list = []  # namelist names from the map (per cluster: their cluster's value)
        self.checks: list = []  # (name, spec, values, where) checked against the table's bounds at the end
        self.pft_set: set = set()  # paramfile names given per PFT with --set (file values, not theta)
        self.allow_outside = allow_outside
        self.outside: list[str] = []  # values outside the table's bounds, written with --allow-outside-table
        self.owner: dict[str, str] = {}  # file variable -> the parameter that writes it (a group: its targets)
        self.noted: set = set()  # parameters whose targets a note names
        self._nl_in = None  # the input user_nl_clm's settings, read when a namelist target needs its base

    def _spec(self, name):
        return self.table[name] if name in self.table else None

    def _kind(self, name) -> str:
        if name in self.table:
            return self.table[name].location
        if self.fs is not None and name in self.fs.variables:
            return "fsurdat"
        if self.pf is not None and name in self.pf.variables:
            return "paramfile"
        from ppe_ingest.param_table import PPE_GROUPS

        if name in PPE_GROUPS:
            raise UserError(f"{name}: a CLM5 PPE group parameter (a common multiplier of "
                            f"{', '.join(PPE_GROUPS[name])}) not in the table {self.table.source}; give --table "
                            "with its row (e.g. the PPE's "
                            "lhc_220926.csv) so its bounds and convention are known")
        raise UserError(f"{name}: not a parameter of the table ({self.table.source}) and not a variable of the "
                        "given fsurdat or paramfile")

    def _targets(self, name) -> list[str]:
        """The file variables a value of `name` is written to: the table's `targets` (a group parameter
        such as the PPE's KCN: only its member variables, never its own name; a parameter with bound
        variables: itself and those), or the name itself when it is not in the table."""
        spec = self._spec(name)
        return spec.targets if spec is not None else [name]

    def _claim(self, name, variables) -> None:
        """Each file variable is written by one parameter: a group and one of its targets both given
        (KCN and kc_nonmyc) would leave which value CTSM gets to the order of the arguments."""
        for var in variables:
            other = self.owner.setdefault(var, name)
            if other != name:
                a, b = sorted((other, name))
                raise UserError(f"{var}: written by both {a} and {b} ({self._via(a)}; {self._via(b)}); give one")

    def _via(self, name) -> str:
        targets = self._targets(name)
        if targets == [name]:
            return f"{name} itself"
        return f"{name} writes {', '.join(targets)}"

    def _note_targets(self, name) -> None:
        """A note naming what a group (or bound) parameter writes, once per parameter."""
        spec = self._spec(name)
        if spec is None or spec.targets == [name] or name in self.noted:
            return
        self.noted.add(name)
        ref = 1.0 if spec.default is None else float(spec.default)
        how = {"multiplicative": "each its base value x theta" + (f"/{ref:g}" if ref != 1 else ""),
               "additive": f"each its base value + (theta - {ref:g})",
               "value": "each set to theta"}[spec.transform]
        what = "group parameter" if spec.group else "parameter with bound variables"
        self.notes.append(f"note: {name} is a {what} of {self.table.source}: written to "
                          f"{', '.join(spec.targets)} ({'per-PFT bounds' if spec.pft_bounds else how})")

    def _written(self, name, kind, theta) -> dict:
        """{file variable: value} that theta of `name` writes: every target, each transformed against its
        own base value (`ParamSpec.to_field`), as the PPE wrote a flagged group into its members (one
        unit-cube position, each variable perturbed from its own default)."""
        spec = self._spec(name)
        targets = self._targets(name)
        if kind == "paramfile":
            _require(self.pf, "the paramfile", name, targets)
            return {t: spec.to_field(theta, self.pf.base(t)) if spec else theta for t in targets}
        if kind == "fsurdat":
            _require(self.fs, "the surface dataset", name, targets)
            return {t: spec.to_field(theta, self.fs.field(t)) if spec else
                    np.broadcast_to(theta, self.fs.field(t).shape) for t in targets}
        if spec is None or targets == [name]:
            return {name: theta}  # a namelist parameter's theta is its value
        if self._nl_in is None:
            from ppe_ingest.ctsmio.user_nl import read_user_nl

            self._nl_in = read_user_nl(self.user_nl) if self.user_nl is not None and self.user_nl.is_file() else {}
        return spec.namelist_values(theta, self._nl_in, str(self.user_nl) if self.user_nl else "no --user-nl given")

    def _set_text(self, variables) -> str:
        """The variables set, each group's under its name: ``fff, KCN (kc_nonmyc, ..., ekn_active)``."""
        by: dict[str, list[str]] = {}
        for var in variables:
            by.setdefault(self.owner.get(var, var), []).append(var)
        return ", ".join(n if vs == [n] else f"{n} ({', '.join(vs)})" for n, vs in by.items())

    def route(self, settings: Mapping) -> None:
        """Assignments and values from ``--set`` and the map."""
        for name, value in settings.items():
            self._set(name, value)
        if self.values is not None:
            self._map(settings)

    def _set(self, name, value) -> None:
        kind = self._kind(name)
        if kind != "namelist" and {"fsurdat": self.fs, "paramfile": self.pf}[kind] is None:
            raise UserError(f"{name}: is a {kind} parameter; give --{kind} to write it")
        spec = self._spec(name)
        targets = self._targets(name)
        if kind == "namelist":
            if _bounds(spec) is not None:
                self.checks.append((name, spec, _number(name, value, "--set"), None))
            self._claim(name, targets)
            self.nl.update(self._written(name, kind, value))
        elif isinstance(value, Mapping):
            # per-PFT entries are values of the file, not theta: the paramfile's dtype checks them
            if kind != "paramfile":
                raise UserError(f"--set {name}[...]: per-PFT values are only for paramfile parameters")
            if targets != [name]:
                raise UserError(f"--set {name}[...]: {name} is written to {', '.join(targets)}; per-PFT values "
                                f"are values of one variable: give {name} one value (theta), or set a variable "
                                "per PFT by its own name")
            self._claim(name, targets)
            self.pf_values[name] = {k: _number(name, v, "--set") for k, v in value.items()}
            self.pft_set.add(name)
        else:
            v = _number(name, value, "--set")
            self.checks.append((name, spec, v, None))
            self._claim(name, targets)
            if kind == "paramfile":
                self.pf_values.update(self._written(name, kind, v))
            else:
                self.fields.update(self._written(name, kind, v))
        self._note_targets(name)
        self.assignments.append(Assignment(name, kind, "--set", value, "value"))

    def _map(self, settings: Mapping) -> None:
        values, dim = self.values, self.dim
        theta = values["theta"].transpose(dim, "param").values
        labels = [str(x) for x in values[dim].values]
        cells = None
        for j, name in enumerate(str(p) for p in values["param"].values):
            if name in settings:
                raise UserError(f"{name}: given both by --set and in the parameter map")
            if name in ("UH_SHAPE", "UH_SCALE") and name not in self.table:  # esm_emu.routing: not CTSM's
                self.notes.append(f"note: {name} (routing from runoff to the gauge, not a CTSM parameter) "
                                  "from the parameter map not written")
                continue
            kind = self._kind(name)
            if {"fsurdat": self.fs, "paramfile": self.pf, "namelist": self.user_nl}[kind] is None:
                # a map usually holds every inferred parameter; write those whose file was given
                self.notes.append(f"note: {name} ({kind}) from the parameter map not written: "
                                  f"no --{kind.replace('namelist', 'user-nl')} given")
                continue
            spec = self._spec(name)
            col = theta[:, j]
            if not np.all(np.isfinite(col)):
                raise UserError(f"parameter map: theta of {name} has missing (NaN) values")
            self.checks.append((name, spec, col, labels))
            self._claim(name, self._targets(name))
            self._note_targets(name)
            if kind == "fsurdat":
                if cells is None:
                    cells = self._map_cells()
                for target in self._targets(name):
                    self._map_field(target, spec, col, cells)
                mode = "field"
            elif kind == "paramfile" and self.per_file:
                self._written(name, kind, float(np.median(col)))  # every target is in the paramfile
                self.pf_each[name] = col
                mode = f"paramfile per {'cluster' if self.per_file == 'cluster' else dim}"
            else:
                v = float(np.median(col))
                if np.ptp(col) > 0:
                    self.notes.append(
                        f"note: {name} varies across {col.size} {dim}s ({col.min():.4g}..{col.max():.4g}); "
                        f"one CTSM case takes one value, writing the median {v:.6g}"
                        + (" (use --per-gridcell-paramfiles for one paramfile per gridcell)"
                           if kind == "paramfile" else ""))
                if kind == "paramfile":
                    self.pf_values.update(self._written(name, kind, v))
                    mode = "median"
                else:
                    self.nl.update(self._written(name, kind, v))
                    self.nl_map.append(name)
                    mode = "median" + (", per cluster in user_nl_clm_cluster<k>" if self.per_file == "cluster" else "")
            self.assignments.append(Assignment(name, kind, "map", col, mode, dim))

    def _map_cells(self) -> np.ndarray:
        """Indices into the fsurdat gridcells of the map's entities (by lat/lon, else by index)."""
        values, fs = self.values, self.fs
        for la, lo in (("grid1d_lat", "grid1d_lon"), ("site_lat", "site_lon"), ("lat", "lon")):
            if la in values and lo in values:
                return fs.cells(list(zip(values[la].values.astype(float), values[lo].values.astype(float))),
                                self.tol_deg)
        ids = values[self.dim].values
        if np.issubdtype(ids.dtype, np.integer) and ids.size and ids.min() >= 0 and ids.max() < fs.lat.size:
            return ids.astype(int)
        raise UserError(f"parameter map: its {self.dim}s have no lat/lon (grid1d_lat/grid1d_lon or site_lat/site_lon) "
                        f"and are not gridcell indices of {fs.path}")

    def _map_field(self, name, spec, col, cells) -> None:
        """The map's values into the fsurdat field `name` (the parameter or one of its targets) at its
        gridcells (the mean where several share one)."""
        if name not in self.fs.variables:
            raise UserError(f"{self.fs.path}: variable {name} not found in the surface dataset")
        base = self.fs.field(name)
        uniq = np.unique(cells)
        if uniq.size < cells.size:
            self.notes.append(f"note: {cells.size} {self.dim}s fall in {uniq.size} fsurdat gridcells; "
                              f"{name} takes their mean")
        col_u = np.array([col[cells == c].mean() for c in uniq])
        new = base.copy()
        new[..., uniq] = spec.to_field(col_u, base[..., uniq]) if spec else \
            np.broadcast_to(col_u, base[..., uniq].shape)
        self.fields[name] = new

    def _paramfile_values(self, thetas: Mapping) -> dict:
        """{file variable: value} of parameter -> theta (each parameter's every target)."""
        out: dict = {}
        for name, theta in thetas.items():
            out.update(self._written(name, "paramfile", float(theta)))
        return out

    def _cluster_value(self, name, k) -> float:
        v = float(self.values["theta_cluster"].sel(param=name).sel(cluster_id=k))
        self.checks.append((name, self._spec(name), v, f"cluster {k}"))
        return v

    # ------------------------------------------------------------------ outputs

    def plan(self) -> WritePlan:
        outputs: list[Output] = []
        cluster_key = None
        if self.fs is not None:
            if self.fields:
                outputs.append(Output("fsurdat", self.fs.path, self.out_dir / self.fs.path.name,
                                      self.fs.changes(self.fields), f"write-ctsm: set {self._set_text(self.fields)}"))
            else:
                self.notes.append(f"note: no surface dataset parameters given; {self.fs.path.name} not written")
        cluster_paramfiles: dict[int, Path] = {}
        if self.pf is not None:
            src = self.pf.path
            shared = self.pf.changes(self.pf_values)
            if self.pf_each and self.per_file == "cluster":
                cluster = self.values["cluster"].values.astype(int)
                for k in (int(c) for c in np.unique(cluster)):
                    each = self._paramfile_values({n: self._cluster_value(n, k) for n in self.pf_each})
                    dst = self.out_dir / f"{src.stem}_cluster{k}{src.suffix}"
                    outputs.append(Output("paramfile", src, dst, {**shared, **self.pf.changes(each)},
                                          f"write-ctsm: cluster {k}"))
                    cluster_paramfiles[k] = dst
                cluster_key = self._cluster_key(cluster, cluster_paramfiles)
            elif self.pf_each:
                for i, label in enumerate(str(x) for x in self.values[self.dim].values):
                    each = self._paramfile_values({n: col[i] for n, col in self.pf_each.items()})
                    dst = self.out_dir / f"{src.stem}_{self.dim}{label}{src.suffix}"
                    outputs.append(Output("paramfile", src, dst, {**shared, **self.pf.changes(each)},
                                          f"write-ctsm: {self.dim} {label}"))
            elif self.pf_values:
                outputs.append(Output("paramfile", src, self.out_dir / src.name, shared,
                                      f"write-ctsm: set {self._set_text(self.pf_values)}"))
            else:
                self.notes.append(f"note: no paramfile parameters given; {src.name} not written")
        outputs += self._user_nl(outputs, cluster_paramfiles)
        if not outputs:
            raise UserError("write-ctsm: no file was written: none of the given names belong to the given files")
        for dst in [o.dst for o in outputs] + ([self.out_dir / CLUSTER_KEY] if cluster_key is not None else []):
            refuse_overwrite(dst, self.inputs)
        for name, spec, v, where in self.checks:
            self._check_bounds(name, spec, v, where)
        for o in outputs:
            self._check_written(o)
        if self.outside:
            record = (f"--allow-outside-table: outside the bounds of {self.table.source}: "
                      f"{'; '.join(self.outside)}")
            self.notes.append(f"note: {record}")
            for o in outputs:
                o.history = f"{o.history} ({record})"
        return WritePlan(self.out_dir, self.inputs, self.assignments, outputs, self.notes, cluster_key)

    def _check_written(self, out: Output) -> None:
        """Every value an output changes, as it will be written: physically valid (always), and per-PFT
        values given with --set within what the table's bounds give at that PFT."""
        from ppe_ingest.ctsmio.physical import check_physical_values, physical_range

        if out.kind == "user_nl":
            for name, v in out.changes.items():
                if name in ("fsurdat", "paramfile") or isinstance(v, (str, bool)) or v is None:
                    continue
                spec = self._spec(name)
                check_physical_values(name, v, spec.units if spec else "", f"{out.dst.name}")
            return
        for name, (_, new) in out.changes.items():
            if out.kind == "paramfile":
                base = np.asarray(self.pf.base(name), dtype=float).ravel()
                units = str(getattr(self.pf.ds.variables[name], "units", ""))
            else:
                base = np.asarray(self.fs.field(name), dtype=float).ravel()
                units = str(getattr(self.fs.ds.variables[name], "units", ""))
            new = np.asarray(new, dtype=float).ravel()
            if new.size != base.size:
                continue  # shapes are the dtype check's business (paramfile_changes)
            changed = ~((new == base) | (np.isnan(new) & np.isnan(base)))
            if not changed.any():
                continue
            spec = self._spec(name)
            units = units or (spec.units if spec else "")
            full = np.where(changed, new, np.nan)
            idx = np.flatnonzero(changed)
            ok = _physical_ok(name, new[idx], units)
            if not ok.all():
                i = int(idx[~ok][0])
                rule = physical_range(name, units)
                by = self.owner.get(name, name)
                raise UserError(f"{out.dst.name}: {name} = {new[i]:.6g}{self._element(out.kind, name, i)}"
                                f"{f' (written by {by})' if by != name else ''} is not physically valid: it must be "
                                f"{rule.text() if rule is not None else 'finite'}")
            if out.kind == "paramfile" and name in self.pft_set and _bounds(spec) is not None:
                self._check_pft_values(name, spec, full, base)

    def _element(self, kind: str, name: str, i: int) -> str:
        """' at PFT <name>' / ' at gridcell i' for the i-th element of a flattened variable."""
        if kind == "paramfile":
            var = self.pf.ds.variables[name]
            if "pft" in var.dimensions:
                shape = tuple(n for d, n in zip(var.dimensions, var.shape) if d != "allpfts")
                dims = [d for d in var.dimensions if d != "allpfts"]
                k = int(np.unravel_index(i, shape)[dims.index("pft")])
                return f" at PFT {k} ({_pft_name(self.pf.ds, k)})"
            return f" at index {i}" if var.ndim else ""
        n = self.fs.lat.size
        g = i % n
        return f" at gridcell {g} (lat {self.fs.lat[g]:.4g}, lon {self.fs.lon[g]:.4g})"

    def _check_pft_values(self, name, spec, new, base) -> None:
        """Per-PFT values given with --set, against the range the table's bounds give at each PFT."""
        lo, hi = _bounds(spec)
        a = np.asarray(spec.to_field(lo, base.reshape(self.pf.base(name).shape)), dtype=float).ravel()
        b = np.asarray(spec.to_field(hi, base.reshape(self.pf.base(name).shape)), dtype=float).ravel()
        lo_v, hi_v = np.minimum(a, b), np.maximum(a, b)
        tol = BOUNDS_RTOL * np.maximum(hi_v - lo_v, np.maximum(abs(lo_v), abs(hi_v)))
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(np.isfinite(new) & ((new < lo_v - tol) | (new > hi_v + tol)))
        for i in bad:
            var = self.pf.ds.variables[name]
            at = self._element("paramfile", name, int(i)) if var.ndim else ""
            text = f"{name} = {new[i]:.6g}{at} is outside {lo_v[i]:.6g}..{hi_v[i]:.6g}"
            if not self.allow_outside:
                raise UserError(f"--set {text}, the range its bounds {lo:.6g}..{hi:.6g} in {self.table.source} "
                                "give at that PFT (--allow-outside-table writes it anyway)")
            self.outside.append(text)

    def _cluster_key(self, cluster, paths: Mapping[int, Path]):
        import pandas as pd

        return pd.DataFrame({self.dim: [str(x) for x in self.values[self.dim].values], "cluster": cluster,
                             "paramfile": [paths[k].name for k in cluster]})

    def _user_nl(self, outputs: list[Output], cluster_paramfiles: Mapping[int, Path]) -> list[Output]:
        """user_nl_clm with the namelist values, pointed at the new fsurdat/paramfile; one per cluster too."""
        if self.user_nl is None and not self.nl:
            return []
        src = self.user_nl
        dst = self.out_dir / (src.name if src is not None else "user_nl_clm")
        nl = dict(self.nl)
        fsurdat = [o.dst for o in outputs if o.kind == "fsurdat"]
        paramfiles = [o.dst for o in outputs if o.kind == "paramfile"]
        if fsurdat:
            nl["fsurdat"] = str(fsurdat[0].resolve())
        if len(paramfiles) == 1:
            nl["paramfile"] = str(paramfiles[0].resolve())
        out = [Output("user_nl", src, dst, nl, "set by esm-emu write-ctsm")] if nl else []
        if self.per_file == "cluster" and self.values is not None and (self.nl_map or cluster_paramfiles):
            # one case per cluster: its namelist values and its paramfile
            for k in sorted({int(c) for c in self.values["cluster"].values}):
                nk = dict(nl)
                for name in self.nl_map:
                    nk.update(self._written(name, "namelist", self._cluster_value(name, k)))
                if k in cluster_paramfiles:
                    nk["paramfile"] = str(cluster_paramfiles[k].resolve())
                out.append(Output("user_nl", src, dst.with_name(f"{dst.name}_cluster{k}"), nk,
                                  f"set by esm-emu write-ctsm (cluster {k})"))
        for o in out:
            for name, v in o.changes.items():
                try:
                    format_namelist_value(v)
                except UserError as e:
                    raise UserError(f"{o.dst}: {name}: {e}") from None
        return out

    def _check_bounds(self, name, spec, v, where) -> None:
        """theta within the table's bounds (to rounding): a value outside was never calibrated."""
        bounds = _bounds(spec)
        if bounds is None:
            return
        lo, hi = bounds
        tol = BOUNDS_RTOL * max(hi - lo, abs(lo), abs(hi))
        v = np.atleast_1d(np.asarray(v, dtype=float))

        def at(i):
            if where is None:
                return "--set"
            if isinstance(where, str):
                return f"parameter map: {where}:"
            return f"parameter map: {self.dim} {where[i]}:"

        nonfinite = np.flatnonzero(~np.isfinite(v))
        if nonfinite.size:  # NaN compares inside every bound; never written, --allow-outside-table or not
            i = int(nonfinite[0])
            raise UserError(f"{at(i)} {name} = {v[i]} is a non-finite value (NaN or inf), never written")
        bad = np.flatnonzero((v < lo - tol) | (v > hi + tol))
        if not bad.size:
            return
        i = int(bad[0])
        if self.allow_outside:
            more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
            self.outside.append(f"{name} = {v[i]:.6g}{more} (bounds {lo:.6g}..{hi:.6g})")
            return
        raise UserError(f"{at(i)} {name} = {v[i]:.6g} is outside its bounds {lo:.6g}..{hi:.6g} in {self.table.source} "
                        "(--allow-outside-table writes it anyway)")


def _require(ds, what: str, name: str, targets: list) -> None:
    """One line naming the first of `name`'s target variables that `ds` (a paramfile or fsurdat) lacks."""
    missing = [t for t in targets if t not in ds.variables]
    if missing:
        raise UserError(f"{ds.path}: {name}: variable {missing[0]} not found in {what}"
                        + (f" (one of the variables {name} writes: {', '.join(targets)})" if targets != [name] else ""))
