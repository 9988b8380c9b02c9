"""Parameter values each member actually ran with, read from its paramfile and namelist_mods file.

The files are the truth of what ran; the design table (``design.csv`` or a member x parameter CSV)
is only checked against them. theta is one float per (member, parameter): the value itself for a
scalar parameter; for a parameter with per-PFT bounds in the parameter table, the unit-cube
position s that gives the member's array (the `ParamSpec` convention, least-squares fit over the
PFTs); for a multiplicative/additive array parameter, default x median(array / base array) (or
default + median difference) against the PPE's default paramfile (``paramfile_default.nc`` or the
``*0000`` member); for other arrays, the mean over the array (``theta_reduction`` says which).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ppe_ingest.base.errors import UserError

from .checks import Report

RTOL = 1e-5  # design tables are written with ~6 significant digits in some PPEs


def _as_float(value, where: str) -> float:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise UserError(f"{where}: expected one value, got {len(value)}")
        value = value[0]
    try:
        if isinstance(value, (int, float)):
            return float(value)
        return float(str(value).replace("d", "e").replace("D", "e"))
    except ValueError:
        raise UserError(f"{where}: value {value!r} is not a number") from None


def _reduce(name: str, arr: np.ndarray, spec, base=None) -> tuple[float, str]:
    arr = np.asarray(arr, dtype="f8")
    if arr.ndim == 0 or arr.size == 1:
        return float(arr.reshape(())), "value"
    if (spec is not None and spec.default is not None and base is not None and spec.transform != "value"
            and np.shape(base) == arr.shape):
        base = np.asarray(base, dtype="f8")
        nz = base != 0
        if spec.transform == "multiplicative" and nz.any():
            return (float(spec.default * np.median(arr[nz] / base[nz])),
                    "multiplicative: default x median(array / base array)")
        if spec.transform == "additive":
            return float(spec.default + np.median(arr - base)), "additive: default + median(array - base array)"
    if spec is not None and spec.pft_bounds and spec.pft_min.shape == arr.shape[-1:]:
        d = np.broadcast_to(spec.pft_max - spec.pft_min, arr.shape)
        lo = np.broadcast_to(spec.pft_min, arr.shape)
        den = float((d * d).sum())
        return (float(((arr - lo) * d).sum() / den) if den > 0 else np.nan), "unit-cube position s (per-PFT bounds)"
    return float(arr.mean()), "mean over the array"


def _perturbed(paramfiles: dict[str, Path], names_nl: set[str]) -> list[str]:
    """Paramfile variables whose values differ between members, plus namelist_mods keys."""
    from ..ctsmio.paramfile import read_paramfile

    ref = None
    differ: set[str] = set()
    for path in paramfiles.values():
        vals = read_paramfile(path)
        if ref is None:
            ref = vals
            continue
        for k, v in vals.items():
            r = ref.get(k)
            if r is None or r.shape != v.shape or not np.array_equal(r, v, equal_nan=True):
                differ.add(k)
    return sorted(differ) + sorted(names_nl - differ)


FROM_DESIGN = "design table (not in the member's paramfile or namelist_mods, e.g. an fsurdat parameter)"


def member_theta(ppe, table=None, params=None, report: Report | None = None):
    """theta(member, param) DataFrame and per-parameter (location, reduction) from the member files.

    Which parameters: `params` if given, else the design table's columns, else the rows of
    `table` (a ParamTable, also the source of bounds/transforms), else whatever differs between members.
    """
    from ..ctsmio.user_nl import read_user_nl

    report = report or ppe.report
    nl = {}
    for m in ppe.members:
        p = ppe.namelist_mods.get(m)
        if p is not None:
            try:
                nl[m] = dict(read_user_nl(p))
            except UserError as e:
                report.add(p, m, f"unreadable namelist_mods file ({e})")
    design = read_design(ppe.design) if ppe.design is not None else None
    if params is None and design is not None:
        params = list(design.columns)
    if params is None and table is not None:
        params = list(table.names)
    if params is None:
        params = _perturbed({m: ppe.paramfiles[m] for m in ppe.members if m in ppe.paramfiles},
                            set().union(*[set(d) for d in nl.values()]) if nl else set())
    from ..ctsmio.paramfile import read_paramfile

    # the paramfile variable that carries each parameter (a group such as KCN: its first member)
    var = {p: table[p].targets[0] if table is not None and p in table and table[p].group else p for p in params}
    base = {}
    base_file = ppe.root / "paramfile_default.nc"
    if not base_file.is_file():
        base_file = next((ppe.paramfiles[m] for m in sorted(ppe.paramfiles) if m.endswith("0000")), None)
    if base_file is not None and table is not None:
        import netCDF4

        with netCDF4.Dataset(base_file) as ds:
            have = [var[p] for p in params if var[p] in ds.variables]
        base = read_paramfile(base_file, have)
    rows, location, reduction = {}, {}, {}
    for m in ppe.members:
        if m in report.bad_members():
            continue
        pf_path = ppe.paramfiles.get(m)
        pf = {}
        if pf_path is not None:
            try:
                import netCDF4

                with netCDF4.Dataset(pf_path) as ds:
                    present = [var[p] for p in params if var[p] in ds.variables]
                pf = read_paramfile(pf_path, present)
            except (OSError, UserError) as e:
                report.add(pf_path, m, f"unreadable paramfile ({e})")
                continue
        row = {}
        for p in params:
            spec = table[p] if table is not None and p in table else None
            if p in nl.get(m, {}):
                row[p] = _as_float(nl[m][p], f"{ppe.namelist_mods[m]}: {p}")
                location[p] = "namelist"
                reduction.setdefault(p, "value")
            elif var[p] in pf:
                row[p], reduction[p] = _reduce(p, pf[var[p]], spec, base.get(var[p]))
                location.setdefault(p, "paramfile")
            elif design is not None and p in design.columns and m in design.index:
                row[p] = float(design.at[m, p])
                reduction[p] = FROM_DESIGN
                location.setdefault(p, spec.location if spec is not None else "unknown")
            elif spec is not None and spec.location == "namelist" and spec.default is not None:
                row[p] = float(spec.default)  # a namelist parameter left at its default
                location.setdefault(p, spec.location)
            else:
                row[p] = np.nan
        rows[m] = row
    theta = pd.DataFrame.from_dict(rows, orient="index", columns=params).astype("f8")
    theta.index.name = "member"
    for p in params:
        if p not in location:
            location[p] = table[p].location if table is not None and p in table else "unknown"
        reduction.setdefault(p, "value")
    return theta, location, reduction


def ppe_table(ppe):
    """The PPE's own parameter table ``params.csv`` (as the simulator writes it), or None."""
    path = ppe.root / "params.csv"
    if not path.is_file():
        return None
    from ..param_table import load_param_table

    base = ppe.root / "paramfile_default.nc"
    return load_param_table(path, base_paramfile=base if base.is_file() else None)


def read_design(path: str | Path) -> pd.DataFrame:
    """A member x parameter design table (CSV or whitespace text), indexed by member."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: design table not found")
    try:
        df = pd.read_csv(path, sep=None, engine="python")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a readable design table ({e})") from None
    key = "member" if "member" in df.columns else df.columns[0]
    df = df.set_index(key)
    df.index = df.index.astype(str)
    df.index.name = "member"
    if df.index.duplicated().any():
        raise UserError(f"{path}: member {df.index[df.index.duplicated()][0]} appears twice (duplicate member)")
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise UserError(f"{path}: column {bad[0]} is not numeric")
    return df.astype("f8")


def check_design(theta: pd.DataFrame, design: pd.DataFrame, source: str, report: Report,
                 reduction: dict | None = None) -> None:
    """Report every member whose files disagree with the design table (member, parameter, both values).

    Parameters taken from the design itself (`reduction` == FROM_DESIGN) are not checked.
    """
    reduction = reduction or {}
    for m in theta.index:
        if m not in design.index:
            report.add(source, m, "member is not in the design table")
            continue
        for p in design.columns:
            if p not in theta.columns or reduction.get(p) == FROM_DESIGN:
                continue
            want, got = float(design.at[m, p]), float(theta.at[m, p])
            if np.isnan(got) or not np.isclose(got, want, rtol=RTOL, atol=0):
                report.add(source, m, f"parameter {p}: design table has {want:.8g}, the member's files have {got:.8g}")
                break
