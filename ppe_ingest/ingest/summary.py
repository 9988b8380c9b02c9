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
from ppe_ingest.store import ATTR_TITLE, MEMBER, PARAM, PARAM_LOCATION, THETA, THETA_MAX, THETA_MIN

# The outputs file states no units; these are CLM's history units for global annual means
# (TLAI m2/m2, GPP gC/m2/s, SOILWATER_10CM kg/m2, EFLX_LH_TOT W/m2, QHR mm/s) - assumed, see attr.
ASSUMED_UNITS = {"TLAI": "m^2/m^2", "GPP": "gC/m^2/s", "SOILWATER_10CM": "kg/m2", "EFLX_LH_TOT": "W/m^2",
                 "QHR": "mm/s"}


def _dataarray(path: Path, dims: tuple[str, str]):
    import xarray as xr

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        ds = xr.open_dataset(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable netCDF file ({e})") from None
    names = [v for v in ds.data_vars if set(ds[v].dims) == set(dims)]
    if len(names) != 1:
        raise UserError(f"{path}: expected one variable with dims {dims}, found {list(ds.data_vars)}")
    return ds[names[0]].load()


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
    y = _dataarray(outputs_nc, ("var", "ens"))
    s = _dataarray(design_nc, ("param", "ens"))
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
    outputs = [str(v) for v in y.coords[y.dims[0]].values]
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
         "y": ((MEMBER, "output"), yv, {"long_name": "global-mean annual-mean output 2005-2014"}),
         THETA_MIN: (PARAM, np.array(lo)), THETA_MAX: (PARAM, np.array(hi)),
         "theta_kind": (PARAM, np.array(kind, dtype=object)),
         PARAM_LOCATION: (PARAM, np.array([table[p].location for p in params], dtype=object)),
         "output_units": ("output", np.array([ASSUMED_UNITS.get(o, "") for o in outputs], dtype=object),
                          {"comment": "not stated in the outputs file; CLM history units assumed"})},
        coords={MEMBER: np.array(s_members, dtype=object), PARAM: np.array(params, dtype=object),
                "output": np.array(outputs, dtype=object)},
        attrs={ATTR_TITLE: "esm-emu summary-PPE store (tabular)", "source_outputs": str(outputs_nc),
               "source_design": str(design_nc), "source_table": str(table_csv),
               "members_without_design": " ".join(defaults),
               "member_alignment": "by member name; outputs members without a design row are the default run",
               "skipped": report.to_json()})
    if defaults:
        ds["y_default"] = ("output", default_y,
                           {"long_name": f"outputs of {defaults[0]} (default parameters)"})
    if out is not None:
        with atomic_path(out, inputs=[outputs_nc, design_nc, table_csv]) as tmp:
            ds.to_netcdf(tmp, format="NETCDF4")
    return ds
