"""A DA parameter set as CTSM reads it: a paramfile copy holding the `paramfile` parameters and
`user_nl_clm` lines for the `namelist` ones."""
from __future__ import annotations

from pathlib import Path

from ppe_ingest.base.errors import UserError

from .config import CASE_DIR


def base_paramfile(cfg: dict) -> str | None:
    """The paramfile each cycle's copy starts from."""
    return cfg["da"]["base_paramfile"] or cfg["paramfile"]


def initial_parameters(cfg: dict, user_nl: dict) -> dict[str, float]:
    """First guess: `initial`, else the base paramfile's value, else the config's `namelist:` value
    (what PRERUN writes), else the case's user_nl_clm value. `esm-emu cime install` calls this too,
    so a parameter without a first guess is refused before the job is submitted."""
    from ppe_ingest.ctsmio.paramfile import read_paramfile
    from ppe_ingest.ctsmio.user_nl import setting_key

    user_nl = {**user_nl, **{setting_key(k): v for k, v in cfg["namelist"].items()}}
    out = {}
    for name, spec in cfg["da"]["parameters"].items():
        if spec["initial"] is not None:
            out[name] = float(spec["initial"])
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
    """Values of the forward model's parameters `names` that the DA does not update, where the
    base paramfile holds them as scalars."""
    from ppe_ingest.base.netcdf import open_dataset
    from ppe_ingest.ctsmio.paramfile import read_paramfile

    rest = [n for n in names if n not in cfg["da"]["parameters"]]
    base = base_paramfile(cfg)
    if not rest or not base:
        return {}
    with open_dataset(base) as ds:
        present = [n for n in rest if n in ds.variables]
    values = read_paramfile(base, present) if present else {}
    return {n: float(v.reshape(-1)[0]) for n, v in values.items() if v.size == 1}


def write_parameter_set(caseroot: Path, cfg: dict, values: dict[str, float], tag: str,
                        overwrite: bool = True) -> dict:
    """Write `CASEROOT/esm-emu/params/<tag>/` files for `values`; return the user_nl_clm settings.
    With overwrite=False an existing file is kept (so re-running PRERUN changes nothing)."""
    from ppe_ingest.ctsmio.paramfile import write_paramfile

    spec = cfg["da"]["parameters"]
    settings: dict[str, object] = {}
    in_file = {k: float(v) for k, v in values.items() if spec[k]["location"] == "paramfile"}
    if in_file:
        base = Path(base_paramfile(cfg))
        dst = Path(caseroot) / CASE_DIR / "params" / tag / base.name
        if overwrite or not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_paramfile(base, dst, in_file, history=f"esm-emu DA {tag}: " +
                            ", ".join(f"{k}={v:.6g}" for k, v in in_file.items()))
        settings["paramfile"] = str(dst)
    settings.update({k: float(v) for k, v in values.items() if spec[k]["location"] == "namelist"})
    return settings
