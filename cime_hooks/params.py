"""A DA parameter set as CTSM reads it: a paramfile copy holding the `paramfile` parameters and
`user_nl_clm` lines for the `namelist` ones.

Parameters are written the way `esm-emu write-ctsm` writes them (`esm_emu.writers.plan_ctsm_files`,
by the parameter table `da.table`): a group parameter such as the CLM5 PPE's KCN goes to each of
its target variables, every value is checked against the table's bounds and physics before any
file is written, and the paramfile copy is written atomically from the untouched base paramfile.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ppe_ingest.base.errors import UserError

from .config import CASE_DIR

BOUNDS_RTOL = 1e-9  # DA bounds this far outside the table's (relative to its range) are the same bounds


def base_paramfile(cfg: dict) -> str | None:
    """The paramfile each cycle's copy starts from."""
    return cfg["da"]["base_paramfile"] or cfg["paramfile"]


def da_table(cfg: dict):
    """The parameter table the DA writes by: `da.table`, else the shipped one (percent bounds and
    defaults resolved against the base paramfile, as write-ctsm resolves them)."""
    from ppe_ingest.param_table import default_table_path, load_param_table

    return load_param_table(cfg["da"]["table"] or default_table_path(), base_paramfile=base_paramfile(cfg))


def reference(spec) -> float | None:
    """theta that leaves the files as they are for a table parameter written through a transform or
    to other variables (a group such as KCN: the multiplier 1), None when theta is the value itself
    (read it from the file) or a position in per-PFT bounds (no theta leaves them unchanged)."""
    if spec.pft_bounds or (spec.transform == "value" and not spec.group):
        return None
    return 1.0 if spec.default is None else float(spec.default)


def check_table(cfg: dict, table) -> None:
    """The DA parameters against the table: where CTSM reads each one, its [min, max] inside the
    table's bounds (the values the DA can reach are all writable), and group parameters the hook
    can write each cycle. One line naming the key otherwise."""
    from ppe_ingest.param_table import PPE_GROUPS

    for name, p in cfg["da"]["parameters"].items():
        where = f"da.parameters.{name}"
        if name not in table:
            if name in PPE_GROUPS:
                raise UserError(f"{where}: a CLM5 PPE group parameter (a common multiplier of "
                                f"{', '.join(PPE_GROUPS[name])}) not in the table {table.source}; give da.table "
                                "with its row (e.g. the PPE's lhc_220926.csv)")
            continue
        spec = table[name]
        if p["location"] != spec.location:
            raise UserError(f"{where}.location: {p['location']}, but {table.source} writes {name} to the "
                            f"{spec.location}")
        if spec.location == "namelist" and spec.group and spec.transform != "value":
            raise UserError(f"{where}: a namelist group written as a {spec.transform} transform of the current "
                            f"values of {', '.join(spec.targets)}; the DA rewrites them every cycle and has no "
                            "fixed base for them: update the targets by name")
        if spec.pft_bounds:
            continue  # theta is a position in per-PFT bounds: 0..1
        lo, hi = spec.bounds()
        tol = BOUNDS_RTOL * max(hi - lo, abs(lo), abs(hi))
        if p["min"] < lo - tol or p["max"] > hi + tol:
            raise UserError(f"{where}: [min, max] = [{p['min']:g}, {p['max']:g}] reaches outside its bounds "
                            f"{lo:g}..{hi:g} in {table.source}; the DA could not write such a value")


def initial_parameters(cfg: dict, user_nl: dict) -> dict[str, float]:
    """First guess: `initial`, else for a group (or transformed) table parameter the theta that
    leaves the files as they are, else the base paramfile's value, else the config's `namelist:`
    value (what PRERUN writes), else the case's user_nl_clm value. `esm-emu cime install` calls
    this too, so a parameter without a first guess is refused before the job is submitted."""
    from ppe_ingest.ctsmio.paramfile import read_paramfile
    from ppe_ingest.ctsmio.user_nl import setting_key

    table = da_table(cfg)
    check_table(cfg, table)
    user_nl = {**user_nl, **{setting_key(k): v for k, v in cfg["namelist"].items()}}
    out = {}
    for name, spec in cfg["da"]["parameters"].items():
        row = table[name] if name in table else None
        ref = reference(row) if row is not None else None
        if spec["initial"] is not None:
            out[name] = float(spec["initial"])
        elif ref is not None:
            out[name] = ref
        elif row is not None and row.pft_bounds:
            raise UserError(f"da.parameters.{name}.initial: required: {name}'s theta is a position in per-PFT "
                            f"bounds ({table.source}), which no value leaves the paramfile as it is")
        elif spec["location"] == "paramfile":
            value = read_paramfile(base_paramfile(cfg), [name])[name]
            if value.size != 1:
                raise UserError(f"da.parameters.{name}: {base_paramfile(cfg)} holds an array of shape "
                                f"{value.shape}; the DA hook updates scalar parameters only")
            out[name] = float(value.reshape(()))
        elif isinstance(user_nl.get(name.lower()), (int, float)) and not isinstance(user_nl[name.lower()], bool):
            out[name] = float(user_nl[name.lower()])
        else:
            raise UserError(f"da.parameters.{name}.initial: required for a namelist parameter "
                            "not set in user_nl_clm (CTSM's default cannot be read from the case)")
        spec_lo, spec_hi = spec["min"], spec["max"]
        if not spec_lo <= out[name] <= spec_hi:
            raise UserError(f"da.parameters.{name}: first guess {out[name]:g} lies outside [{spec_lo:g}, {spec_hi:g}]")
    return out


def fixed_parameters(cfg: dict, names) -> dict[str, float]:
    """Values of the forward model's parameters `names` that the DA does not update: where the base
    paramfile holds them as scalars, or, for a group (or transformed) table parameter, the theta
    that leaves the files as they are."""
    from ppe_ingest.base.netcdf import open_dataset
    from ppe_ingest.ctsmio.paramfile import read_paramfile

    rest = [n for n in names if n not in cfg["da"]["parameters"]]
    base = base_paramfile(cfg)
    if not rest:
        return {}
    table = da_table(cfg)
    out = {n: reference(table[n]) for n in rest if n in table and reference(table[n]) is not None}
    rest = [n for n in rest if n not in out]
    if not rest or not base:
        return out
    with open_dataset(base) as ds:
        present = [n for n in rest if n in ds.variables]
    values = read_paramfile(base, present) if present else {}
    out.update({n: float(v.reshape(-1)[0]) for n, v in values.items() if v.size == 1})
    return out


def plan_parameter_set(caseroot: Path, cfg: dict, values: dict[str, float], tag: str):
    """(the checked write-ctsm plan of `values`, or None; the namelist settings it gives) for the
    parameter set `CASEROOT/esm-emu/params/<tag>/`. Every paramfile parameter and every table
    parameter goes through `esm_emu.writers.plan_ctsm_files` (targets, transforms, table bounds,
    physics, dtypes); a namelist name the table does not know is set as it is. Writes nothing."""
    from esm_emu.writers import plan_ctsm_files

    spec = cfg["da"]["parameters"]
    table = da_table(cfg)
    routed = {k: float(v) for k, v in values.items() if spec[k]["location"] == "paramfile" or k in table}
    settings: dict[str, object] = {k: float(v) for k, v in values.items() if k not in routed}
    if not routed:
        return None, settings
    in_file = any(spec[k]["location"] == "paramfile" for k in routed)
    in_nl = any(spec[k]["location"] == "namelist" for k in routed)
    plan = plan_ctsm_files(Path(caseroot) / CASE_DIR / "params" / tag,
                           paramfile=base_paramfile(cfg) if in_file else None,
                           user_nl=Path(caseroot) / "user_nl_clm" if in_nl else None,
                           settings=routed, table=table)
    text = ", ".join(f"{k}={v:.6g}" for k, v in routed.items() if spec[k]["location"] == "paramfile")
    for out in plan.outputs:
        if out.kind == "paramfile":
            out.history = f"esm-emu DA {tag}: {text}"
            settings["paramfile"] = str(out.dst)
        elif out.kind == "user_nl":  # the case's user_nl_clm is updated by the hook, not copied
            settings.update({k: v for k, v in out.changes.items() if k not in ("paramfile", "fsurdat")})
    return plan, settings


def write_parameter_set(caseroot: Path, cfg: dict, values: dict[str, float], tag: str,
                        overwrite: bool = True) -> dict:
    """Write `CASEROOT/esm-emu/params/<tag>/` files for `values`; return the user_nl_clm settings.
    With overwrite=False an existing file is kept (so re-running PRERUN changes nothing)."""
    from esm_emu.writers.apply import apply_plan

    plan, settings = plan_parameter_set(caseroot, cfg, values, tag)
    if plan is None:
        return settings
    files = [o for o in plan.outputs if o.kind == "paramfile" and (overwrite or not o.dst.exists())]
    if files:
        files[0].dst.parent.mkdir(parents=True, exist_ok=True)
        apply_plan(dataclasses.replace(plan, outputs=files, cluster_key=None))
    return settings
