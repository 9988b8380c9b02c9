"""The hook configuration: which calibrated files go into the case, what to assimilate, how.

`esm-emu cime install` validates the user's YAML, resolves its paths to absolute ones and stores
the result as ``CASEROOT/esm-emu/config.yaml``; every hook reads that copy.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from ppe_ingest.base.config import Field, load_config, section_type
from ppe_ingest.base.errors import UserError

CASE_DIR = "esm-emu"  # everything esm-emu keeps in a case lives under CASEROOT/esm-emu
CONFIG_NAME = "config.yaml"
STATE_NAME = "da_state.json"

OBS_SCHEMA = {
    "file": Field(str, path=True, help="observations in the esm-emu obs schema (netCDF, (site, time))"),
    "variable": Field(str, "QRUNOFF", help="response variable, CTSM name and units"),
    "mask": Field(str, None, nullable=True, help="quality-mask variable in the obs file (1 = good)"),
    "max_distance_deg": Field(float, 0.5, gt=0, help="farthest gridcell centre matched to a site"),
    # streamflow at a gauge: runoff routed through a gamma unit hydrograph (esm_emu.routing; the bounds
    # and defaults are its ROUTING_BOUNDS; take the values `esm-emu invert` put in the parameter map)
    "routing": Field(str, "none", choices=("gamma", "none"), help="gamma: route QRUNOFF before comparing"),
    "uh_shape": Field(float, 1.0, min=0.1, max=3.0, help="gamma unit hydrograph shape (UH_SHAPE)"),
    "uh_scale": Field(float, 1.5, min=0.5, max=7.0, help="gamma unit hydrograph scale, days (UH_SCALE)"),
}

FORWARD_SCHEMA = {
    "kind": Field(str, "emulator", choices=("emulator", "simulator")),
    "checkpoint": Field(str, None, nullable=True, path=True, help="emulator checkpoint (kind: emulator)"),
}

PARAM_SCHEMA = {
    "location": Field(str, choices=("paramfile", "namelist")),
    "min": Field(float),
    "max": Field(float),
    "initial": Field(float, None, nullable=True,
                     help="first-guess value (default: the paramfile's value or the mid-range)"),
}

DA_SCHEMA = {
    "forward": Field(dict, schema=FORWARD_SCHEMA),
    "parameters": Field(dict, each=PARAM_SCHEMA, help="name -> {location, min, max[, initial]}"),
    "base_paramfile": Field(str, None, nullable=True, path=True,
                            help="paramfile copied and edited each cycle (default: top-level paramfile)"),
    "table": Field(str, None, nullable=True, path=True,
                   help="parameter table (CSV) the DA writes by: locations, bounds, transforms, group "
                        "parameters such as the CLM5 PPE's KCN (default: the shipped table)"),
    "steps": Field(int, 40, min=1, max=10000),
    "lr": Field(float, 0.05, gt=0),
}

SCHEMA = {
    "paramfile": Field(str, None, nullable=True, path=True, help="calibrated CTSM paramfile"),
    "fsurdat": Field(str, None, nullable=True, path=True, help="calibrated CTSM surface dataset"),
    "parameter_map": Field(str, None, nullable=True, path=True,
                           help="theta(gridcell, param) netCDF written into a copy of fsurdat"),
    "namelist": Field(dict, {}, help="extra user_nl_clm settings, name -> number, logical, string or a list"),
    "history_tape": Field(str, "h1", help="CTSM history tape the DA and report read (h0, h1, ...)"),
    "observations": Field(dict, None, nullable=True, schema=OBS_SCHEMA),
    "da": Field(dict, None, nullable=True, schema=DA_SCHEMA),
}


MANAGED = ("paramfile", "fsurdat")  # user_nl_clm settings the top-level keys of the same name own
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def known_locations() -> dict[str, tuple[str, str]]:
    """Where CTSM reads each name the shipped parameter table or the surface-field vocabulary knows:
    lower-cased name -> (paramfile | fsurdat | namelist, the list that says so)."""
    from ppe_ingest.ctsmio.vocabulary import ALL_STATIC_FIELDS
    from ppe_ingest.param_table import default_table_path, load_param_table

    out = {n.lower(): ("fsurdat", "the surface dataset fields") for n in ALL_STATIC_FIELDS}
    table = load_param_table(default_table_path())
    out.update({p.name.lower(): (p.location, table.source) for p in table})
    return out


def _check_namelist(cfg, source: str) -> None:
    """The one check of everything that becomes a user_nl_clm line: the `namelist:` settings and
    the `location: namelist` DA parameters (names, values, where CTSM reads the name)."""
    from ppe_ingest.ctsmio.user_nl import check_namelist_name, check_namelist_settings, setting_key, show

    known = known_locations()
    check_namelist_settings(cfg["namelist"], f"{source}: namelist")

    def misplaced(name: str, where: str) -> None:
        loc, listed = known.get(setting_key(name).split("(")[0], ("namelist", ""))
        if loc != "namelist":
            raise UserError(f"{where}: {name} is read from the {loc} ({listed}), not the namelist; "
                            "CTSM's build-namelist refuses it in user_nl_clm")

    for name in cfg["namelist"]:
        misplaced(name, f"{source}: namelist.{name}")
        base = setting_key(name)
        if base in MANAGED and cfg[base]:
            raise UserError(f"{source}: namelist.{name}: also given by the top-level {base} key; give it once")
    da = cfg["da"]
    if da is None:
        return
    seen: dict[str, str] = {}
    for name, p in da["parameters"].items():
        where = f"{source}: da.parameters.{show(name)}"
        check_namelist_name(name, f"{source}: da.parameters")
        key = setting_key(name)
        if "(" in key:
            raise UserError(f"{where}: the DA updates whole scalar parameters; give the name without an index")
        if key in seen:
            raise UserError(f"{where}: the same parameter as {seen[key]} (Fortran ignores case); keep one")
        seen[key] = name
        if key in MANAGED:
            raise UserError(f"{where}: {name} names a file, not a number the DA can update")
        if p["location"] == "namelist":
            misplaced(name, where)


def _check(cfg, source: str) -> None:
    """Checks the declarative schema cannot express (free-form values, cross-key rules)."""
    if cfg["parameter_map"] and not cfg["fsurdat"]:
        raise UserError(f"{source}: parameter_map: needs fsurdat (the surface dataset it is written into)")
    if not re.fullmatch(r"h[0-9]", cfg["history_tape"]):
        raise UserError(f"{source}: history_tape: {cfg['history_tape']!r} is not a tape name like h0 or h1")
    obs = cfg["observations"]
    if obs is not None:
        for key in ("variable", "mask"):
            if obs[key] is not None and not _VARIABLE.fullmatch(obs[key]):
                raise UserError(f"{source}: observations.{key}: {obs[key]!r:.60} is not a netCDF variable name")
    _check_namelist(cfg, source)
    da = cfg["da"]
    if da is not None:
        if cfg["observations"] is None:
            raise UserError(f"{source}: observations: required when da is given")
        if da["forward"]["kind"] == "emulator" and not da["forward"]["checkpoint"]:
            raise UserError(f"{source}: da.forward.checkpoint: required when da.forward.kind is emulator")
        params = da["parameters"]
        if not params:
            raise UserError(f"{source}: da.parameters: list at least one parameter to update")
        for name, p in params.items():
            if not (math.isfinite(p["min"]) and math.isfinite(p["max"]) and p["min"] < p["max"]):
                raise UserError(f"{source}: da.parameters.{name}: min must be below max")
            if p["initial"] is not None and not p["min"] <= p["initial"] <= p["max"]:
                raise UserError(f"{source}: da.parameters.{name}.initial: outside [min, max]")
        needs_paramfile = any(p["location"] == "paramfile" for p in params.values())
        if needs_paramfile and not (da["base_paramfile"] or cfg["paramfile"]):
            raise UserError(f"{source}: da.base_paramfile: required when a da parameter's location is "
                            "paramfile and no top-level paramfile is given")


HookConfig = section_type(SCHEMA, "HookConfig")


def parse_config(path: str | Path) -> HookConfig:
    """Read and validate a hook config; paths become absolute (relative ones are to the file)."""
    cfg = load_config(path, SCHEMA)
    _check(cfg, Path(path).name)
    return cfg


def case_config_path(caseroot: Path) -> Path:
    return Path(caseroot) / CASE_DIR / CONFIG_NAME


def load_case_config(caseroot: Path) -> HookConfig:
    """The config stored in the case by `esm-emu cime install`; one-line error when absent."""
    path = case_config_path(caseroot)
    if not path.is_file():
        raise UserError(f"{path}: esm-emu hook configuration missing; run "
                        f"`esm-emu cime install {caseroot} --config FILE` first")
    return parse_config(path)


def dump_config(cfg: HookConfig) -> str:
    """YAML text of a validated config (absolute paths), as stored in the case."""
    return ("# Written by `esm-emu cime install`; the hooks read this file. Edit it here or re-install.\n"
            + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
