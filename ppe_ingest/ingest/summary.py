"""Summary-PPE store: the CLM5 PPE's per-member global means as a (member, param) -> (member, output) table.

Inputs are the real files in ``ppe/outputs``: ``fivevars_gmean_amean_2005-2014.nc`` (var x ens,
LHC0000..LHC0500, no units attributes), the design ``lhc220926.nc`` (param x ens, unit-cube s,
LHC0001..LHC0500) and the table ``lhc_220926.csv`` (bounds). What was found in them: member ids
align by name (outputs hold LHC0000, the default run, which has no design row and is left out
of the table but kept as ``y_default``); the 32 design parameters equal the table's rows.
theta is ``min + (max - min) * s`` where the table has numeric bounds; for ``XXpercent`` bounds
the default comes from a base paramfile when given (else theta = s and ``theta_kind`` says so);
for per-PFT bounds theta is s (the `ParamSpec` convention).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.netcdf import open_xarray
from ppe_ingest.store import ATTR_TITLE, MEMBER, PARAM, PARAM_LOCATION, THETA, THETA_MAX, THETA_MIN

# The outputs file states no units; these are CLM's history units for global annual means
# (TLAI m2/m2, GPP gC/m2/s, SOILWATER_10CM kg/m2, EFLX_LH_TOT W/m2, QHR mm/s) - assumed, see attr.
ASSUMED_UNITS = {"TLAI": "m^2/m^2", "GPP": "gC/m^2/s", "SOILWATER_10CM": "kg/m2", "EFLX_LH_TOT": "W/m^2",
                 "QHR": "mm/s"}


def _dataarray(path: Path, dims: tuple[str, str]):
    ds = open_xarray(path)
    names = [v for v in ds.data_vars if set(ds[v].dims) == set(dims)]
    if len(names) != 1:
        raise UserError(f"{path}: expected one variable with dims {dims}, found {list(ds.data_vars)}")
    return ds[names[0]].load()


def _outputs(path: Path, design_members: list[str]):
    """The outputs file as y(ens, var) with named members and output names, each output's CLM variable,
    and how members were aligned.

    One variable with an `ens` dimension; further dimensions are flattened into outputs named
    ``<VAR>_pft<p>_biome<b>`` (PFT x biome means: `pxb` with pft/biome coordinates),
    ``<VAR>_m<MM>`` (monthly climatology: `month`) or ``<VAR>_<dim><i>``; a `var` dimension names
    the variable. An outputs file without member names on `ens` (the pxb files) is aligned by
    position: with one more entry than the design, the first is the default run.
    """
    import itertools

    import xarray as xr

    ds = open_xarray(path)
    names = [v for v in ds.data_vars if "ens" in ds[v].dims]
    if len(names) != 1:
        raise UserError(f"{path}: expected one variable with an 'ens' dimension, found {list(ds.data_vars)}")
    da = ds[names[0]].load()
    if "ens" in da.coords:
        members, how = [str(m) for m in da["ens"].values], "by member name"
    elif design_members and da.sizes["ens"] == len(design_members) + 1:
        stem = design_members[0].rstrip("0123456789")
        default = stem + "0" * (len(design_members[0]) - len(stem))
        members, how = [default, *design_members], "by position (the file names no members; first = default run)"
    elif da.sizes["ens"] == len(design_members):
        members, how = list(design_members), "by position (the file names no members)"
    else:
        raise UserError(f"{path}: variable {names[0]} has {da.sizes['ens']} unnamed members, the design "
                        f"{len(design_members)}")
    other = [d for d in da.dims if d != "ens"]
    da = da.transpose("ens", *other)
    labels: list[list[str]] = []
    var_of: list[list[str]] = []
    for d in other:
        n = da.sizes[d]
        if d == "var":
            lab = [str(v) for v in da[d].values] if d in da.coords else [f"var{i}" for i in range(n)]
            var_of.append(lab)
        elif d == "pxb" and "pft" in da.coords and "biome" in da.coords:
            lab = [f"pft{int(p)}_biome{int(b)}" for p, b in zip(da["pft"].values, da["biome"].values)]
            var_of.append([""] * n)
        elif d == "month":
            lab = [f"m{i + 1:02d}" for i in range(n)]
            var_of.append([""] * n)
        else:
            lab = [f"{d}{i}" for i in range(n)]
            var_of.append([""] * n)
        labels.append(lab)
    if "var" not in other:
        labels.insert(0, [str(names[0])])
        var_of.insert(0, [str(names[0])])
    outs = ["_".join(t) for t in itertools.product(*labels)]
    vars_ = ["".join(t) for t in itertools.product(*var_of)]
    yv = da.values.reshape(da.sizes["ens"], -1)
    empty = ~np.isfinite(yv).any(0)  # e.g. a PFT x biome pair no gridcell has: no output, not a bad member
    if empty.all():
        raise UserError(f"{path}: variable {names[0]} has no finite value")
    if empty.any():
        how += f"; outputs with no finite value in any member left out: {' '.join(np.array(outs)[empty])}"
    keep = np.flatnonzero(~empty)
    y = xr.DataArray(yv[:, keep], dims=("ens", "var"), coords={"ens": members, "var": [outs[i] for i in keep]})
    return y, [vars_[i] for i in keep], how


def build_summary_store(outputs_nc, design_nc, table_csv, out=None, base_paramfile=None, report=None):
    """(member, param) theta and s, and (member, output) y, from the summary PPE files; written to `out` if given.

    A member whose outputs or parameters are not finite (NaN, Inf) is refused, naming the member and
    the variable; with a skipping `report` (``--skip-bad``, `checks.Report`) it is left out and
    recorded in the store's ``skipped`` attribute instead.
    """
    import xarray as xr

    from ..param_table import load_param_table
    from .checks import Report

    report = report if report is not None else Report(False)

    outputs_nc, design_nc, table_csv = Path(outputs_nc), Path(design_nc), Path(table_csv)
    s = _dataarray(design_nc, ("param", "ens"))
    y, out_vars, alignment = _outputs(outputs_nc, [str(m) for m in s.ens.values])
    table = load_param_table(table_csv, base_paramfile=base_paramfile)
    y_members = [str(m) for m in y.ens.values]
    s_members = [str(m) for m in s.ens.values]
    if len(set(s_members)) != len(s_members):
        raise UserError(f"{design_nc}: duplicate member in ens")
    missing = [m for m in s_members if m not in y_members]
    if missing:
        raise UserError(f"{outputs_nc}: member {missing[0]} of the design has no outputs ({len(missing)} missing)")
    params = [str(p) for p in s.param.values]
    unknown = [p for p in params if p not in table]
    if unknown:
        raise UserError(f"{table_csv}: parameter {unknown[0]} of the design is not in the table")
    sv = s.transpose("ens", "param").values.astype("f8")
    if np.isnan(sv).any() or (sv < 0).any() or (sv > 1).any():
        raise UserError(f"{design_nc}: unit-cube values outside [0, 1] or NaN")
    theta = np.empty_like(sv)
    kind, lo, hi = [], [], []
    for j, p in enumerate(params):
        spec = table[p]
        try:
            a, b = spec.bounds()
            k = "s (per-PFT bounds)" if spec.pft_bounds else "value"
        except UserError:
            a, b, k = 0.0, 1.0, f"s ({spec.min_spec}/{spec.max_spec} bounds need the default; no base paramfile)"
        theta[:, j] = a + (b - a) * sv[:, j]
        kind.append(k)
        lo.append(a)
        hi.append(b)
    outputs = [str(v) for v in y["var"].values]
    yv = y.sel(ens=s_members).transpose("ens", "var").values.astype("f8")
    keep = np.ones(len(s_members), bool)
    for i, j in np.argwhere(~np.isfinite(yv)):
        if keep[i]:
            keep[i] = False
            report.add(outputs_nc, s_members[i], f"output {outputs[j]} = {yv[i, j]} is not finite")
    for i, j in np.argwhere(~np.isfinite(theta)):
        if keep[i]:
            keep[i] = False
            report.add(design_nc, s_members[i], f"parameter {params[j]} = {theta[i, j]} is not finite")
    if not keep.any():
        raise UserError(f"{outputs_nc}: no member has finite outputs and parameters")
    defaults = [m for m in y_members if m not in s_members]
    default_y = y.sel(ens=defaults[0]).values.astype("f8") if defaults else None
    if default_y is not None and not np.isfinite(default_y).all():
        j = int(np.flatnonzero(~np.isfinite(default_y))[0])
        raise UserError(f"{outputs_nc}: member {defaults[0]} (the default run): output {outputs[j]} = "
                        f"{default_y[j]} is not finite")
    s_members = [m for m, k in zip(s_members, keep) if k]
    theta, sv, yv = theta[keep], sv[keep], yv[keep]
    ds = xr.Dataset(
        {THETA: ((MEMBER, PARAM), theta, {"long_name": "parameter value (see theta_kind)"}),
         "s": ((MEMBER, PARAM), sv, {"long_name": "unit-cube position in the LHC design"}),
         "y": ((MEMBER, "output"), yv, {"long_name": f"summary outputs of {outputs_nc.name}"}),
         "output_variable": ("output", np.array(out_vars, dtype=object)),
         THETA_MIN: (PARAM, np.array(lo)), THETA_MAX: (PARAM, np.array(hi)),
         "theta_kind": (PARAM, np.array(kind, dtype=object)),
         PARAM_LOCATION: (PARAM, np.array([table[p].location for p in params], dtype=object)),
         "output_units": ("output", np.array([ASSUMED_UNITS.get(v, "") for v in out_vars], dtype=object),
                          {"comment": "not stated in the outputs file; CLM history units assumed"})},
        coords={MEMBER: np.array(s_members, dtype=object), PARAM: np.array(params, dtype=object),
                "output": np.array(outputs, dtype=object)},
        attrs={ATTR_TITLE: "esm-emu summary-PPE store (tabular)", "source_outputs": str(outputs_nc),
               "source_design": str(design_nc), "source_table": str(table_csv),
               "members_without_design": " ".join(defaults),
               "member_alignment": f"{alignment}; outputs members without a design row are the default run",
               "skipped": report.to_json()})
    if defaults:
        ds["y_default"] = ("output", default_y,
                           {"long_name": f"outputs of {defaults[0]} (default parameters)"})
    if out is not None:
        with atomic_path(out, inputs=[outputs_nc, design_nc, table_csv]) as tmp:
            ds.to_netcdf(tmp, format="NETCDF4")
    return ds
