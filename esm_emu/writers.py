"""CTSM files from parameter values: the `esm-emu write-ctsm` command and `write_ctsm_files`.

Values come from ``--set NAME=VALUE`` or from a parameter map ``theta(gridcell|site, param)``
(the inverse's output). Each name goes where CTSM reads it, by the parameter table's location
(or, for names not in the table, where the variable exists): the surface dataset (per gridcell),
the paramfile, or user_nl_clm. Each input file gives a new file of the same name in the output
folder; inputs are never overwritten.

Scalar paramfile and namelist parameters cannot vary in space inside one CTSM case, so a map's
values are reduced to their median across gridcells/sites by default (a note says so), or written
as one paramfile per gridcell with ``per_gridcell_paramfiles``. A map's parameters whose file
was not given are skipped with a note; an explicit ``--set`` of one is an error (except namelist
names, which go into a new ``user_nl_clm`` when no --user-nl is given).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Mapping

from ppe_ingest.base.errors import UserError

_SET = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)(?:\[([^\]]+)\])?\s*=(.*)$")


def parse_set(items) -> dict:
    """``NAME=VALUE`` / ``NAME[PFT]=VALUE`` strings to a dict (value parsed as Fortran/number text)."""
    from ppe_ingest.ctsmio.user_nl import parse_namelist_value

    out: dict = {}
    for item in items or ():
        m = _SET.match(item)
        if not m or not m.group(3).strip():
            raise UserError(f"--set {item!r}: expected NAME=VALUE (or NAME[PFT]=VALUE), e.g. --set FMAX=0.3")
        name, pft, text = m.group(1), m.group(2), m.group(3).strip()
        value = parse_namelist_value(text)
        if pft is not None:
            key = int(pft) if pft.strip().isdigit() else pft.strip()
            out.setdefault(name, {})
            if not isinstance(out[name], dict):
                raise UserError(f"--set {item!r}: {name} is set both whole and per PFT")
            out[name][key] = value
        else:
            out[name] = value
    return out


def _number(name, value, where):
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise UserError(f"{where}: {name} = {value!r} is not a number")
    return float(value)


def _route(name, table, fsur_vars, pf_vars) -> str:
    if name in table:
        return table[name].location
    if name in fsur_vars:
        return "fsurdat"
    if name in pf_vars:
        return "paramfile"
    raise UserError(f"{name}: not a parameter of the table ({table.source}) and not a variable of the "
                    "given fsurdat or paramfile")


def _map_cells(values, lat, lon, n, fsurdat, tol_deg):
    """Indices into the fsurdat gridcells of the map's entities (by lat/lon, else by index)."""
    import numpy as np

    from ppe_ingest.ctsmio.surfdata import resolve_gridcells

    dim = "gridcell" if "gridcell" in values.dims else "site"
    for la, lo in (("grid1d_lat", "grid1d_lon"), ("site_lat", "site_lon"), ("lat", "lon")):
        if la in values and lo in values:
            pairs = list(zip(values[la].values.astype(float), values[lo].values.astype(float)))
            return dim, resolve_gridcells(pairs, lat, lon, fsurdat, tol_deg)
    ids = values[dim].values
    if np.issubdtype(ids.dtype, np.integer) and ids.size and ids.min() >= 0 and ids.max() < n:
        return dim, ids.astype(int)
    raise UserError(f"parameter map: its {dim}s have no lat/lon (grid1d_lat/grid1d_lon or site_lat/site_lon) "
                    f"and are not gridcell indices of {fsurdat}")


def write_ctsm_files(out_dir, fsurdat=None, paramfile=None, user_nl=None, values=None, table=None,
                     settings: Mapping | None = None, per_gridcell_paramfiles: bool = False,
                     per_cluster_paramfiles: bool = False, tol_deg: float = 1.0, log=print) -> dict[str, list[Path]]:
    """Write new CTSM files in `out_dir` from `settings` (name -> value) and/or a parameter map.

    `values` is a Dataset (or a path to one) ``theta(gridcell|site, param)``; `table` a
    ParamTable or a path (default: configs/params_hydrology.csv). Returns
    ``{"fsurdat": [...], "paramfile": [...], "user_nl": [...]}`` of the paths written.
    Paramfile parameters that vary across the map go, per option, into one paramfile per
    gridcell/site, one per cluster (the map's ``cluster``/``theta_cluster`` from k-means, as
    CTSM is calibrated over basins), or else their median into one paramfile.
    """
    import numpy as np
    import xarray as xr

    from ppe_ingest.base.netcdf import open_dataset
    from ppe_ingest.ctsmio.paramfile import read_paramfile, write_paramfile
    from ppe_ingest.ctsmio.surfdata import read_surfdata, write_surfdata
    from ppe_ingest.ctsmio.user_nl import set_user_nl
    from ppe_ingest.param_table import ParamTable, default_table_path, load_param_table

    out_dir = Path(out_dir)
    settings = dict(settings or {})
    if fsurdat is None and paramfile is None and user_nl is None:
        raise UserError("write-ctsm: give at least one of --fsurdat, --paramfile, --user-nl")
    if not settings and values is None:
        raise UserError("write-ctsm: nothing to write: give --set NAME=VALUE or --values MAP.nc")
    if not isinstance(table, ParamTable):
        table = load_param_table(table or default_table_path(), base_paramfile=paramfile)
    if values is not None and not isinstance(values, xr.Dataset):
        path = Path(values)
        if not path.is_file():
            raise UserError(f"{path}: parameter map not found")
        values = xr.load_dataset(path)
    if per_gridcell_paramfiles and per_cluster_paramfiles:
        raise UserError("write-ctsm: choose one of --per-gridcell-paramfiles and --per-cluster-paramfiles")
    if values is not None:
        if per_cluster_paramfiles and not {"cluster", "theta_cluster"} <= set(values.variables):
            raise UserError("parameter map: --per-cluster-paramfiles needs cluster and theta_cluster "
                            "(set inverse.clusters when inverting)")
        if "theta" not in values or "param" not in values["theta"].dims or \
                not ({"gridcell", "site"} & set(values["theta"].dims)):
            raise UserError("parameter map: needs a variable theta(gridcell|site, param)")

    fsur_vars, pf_vars = set(), set()
    if fsurdat is not None:
        with open_dataset(fsurdat) as ds:
            fsur_vars = set(ds.variables)
    if paramfile is not None:
        with open_dataset(paramfile) as ds:
            pf_vars = set(ds.variables)

    fsur_updates: dict = {}  # name -> array over all gridcells
    pf_updates: dict = {}
    nl_updates: dict = {}
    per_cell_pf: dict = {}  # name -> (entity labels, values)
    map_nl: list = []  # namelist parameters taken from the map (their median goes to user_nl)
    cluster_pf: dict = {}  # cluster id -> its paramfile
    fs = read_surfdata(fsurdat, fields=()) if fsurdat is not None else None
    base_pf = read_paramfile(paramfile) if paramfile is not None else {}

    def need(kind, name):
        given = {"fsurdat": fsurdat, "paramfile": paramfile}.get(kind, True)
        if given is None:
            raise UserError(f"{name}: is a {kind} parameter; give --{kind} to write it")

    for name, value in settings.items():
        kind = _route(name, table, fsur_vars, pf_vars)
        need(kind, name)
        spec = table[name] if name in table else None
        if kind == "namelist":
            nl_updates[name] = value
        elif isinstance(value, dict):
            if kind != "paramfile":
                raise UserError(f"--set {name}[...]: per-PFT values are only for paramfile parameters")
            pf_updates[name] = {k: _number(name, v, "--set") for k, v in value.items()}
        elif kind == "paramfile":
            v = _number(name, value, "--set")
            if name not in base_pf:
                raise UserError(f"{paramfile}: variable {name} not found in the paramfile")
            pf_updates[name] = spec.to_field(v, base_pf[name]) if spec else v
        else:
            v = _number(name, value, "--set")
            if name not in fsur_vars:
                raise UserError(f"{fsurdat}: variable {name} not found in the surface dataset")
            base = read_surfdata(fsurdat, fields=(name,))[name].values
            fsur_updates[name] = spec.to_field(v, base) if spec else np.broadcast_to(v, base.shape)

    if values is not None:
        params = [str(p) for p in values["param"].values]
        dim = "gridcell" if "gridcell" in values["theta"].dims else "site"
        theta = values["theta"].transpose(dim, "param").values
        cells = None
        for j, name in enumerate(params):
            if name in settings:
                raise UserError(f"{name}: given both by --set and in the parameter map")
            kind = _route(name, table, fsur_vars, pf_vars)
            target = {"fsurdat": fsurdat, "paramfile": paramfile, "namelist": user_nl}[kind]
            if target is None:
                # a map usually holds every inferred parameter; write those whose file was given
                log(f"note: {name} ({kind}) from the parameter map not written: no --{kind.replace('namelist', 'user-nl')} given")
                continue
            spec = table[name] if name in table else None
            col = theta[:, j]
            if not np.all(np.isfinite(col)):
                raise UserError(f"parameter map: theta of {name} has missing (NaN) values")
            if kind == "fsurdat":
                if cells is None:
                    _, cells = _map_cells(values, fs.lat.values, fs.lon.values, fs.sizes["gridcell"], fsurdat,
                                          tol_deg)
                base = read_surfdata(fsurdat, fields=(name,))[name].values
                uniq = np.unique(cells)
                if uniq.size < cells.size:
                    log(f"note: {cells.size} {dim}s fall in {uniq.size} fsurdat gridcells; {name} takes their mean")
                col_u = np.array([col[cells == c].mean() for c in uniq])
                new = base.copy()
                new[..., uniq] = spec.to_field(col_u, base[..., uniq]) if spec else \
                    np.broadcast_to(col_u, base[..., uniq].shape)
                fsur_updates[name] = new
            elif kind == "paramfile" and (per_gridcell_paramfiles or per_cluster_paramfiles):
                per_cell_pf[name] = col
            else:
                v = float(np.median(col))
                if np.ptp(col) > 0:
                    log(f"note: {name} varies across {col.size} {dim}s ({col.min():.4g}..{col.max():.4g}); "
                        f"one CTSM case takes one value, writing the median {v:.6g}"
                        + (" (use --per-gridcell-paramfiles for one paramfile per gridcell)"
                           if kind == "paramfile" else ""))
                if kind == "paramfile":
                    if name not in base_pf:
                        raise UserError(f"{paramfile}: variable {name} not found in the paramfile")
                    pf_updates[name] = spec.to_field(v, base_pf[name]) if spec else v
                else:
                    nl_updates[name] = v
                    map_nl.append(name)

    written: dict[str, list[Path]] = {"fsurdat": [], "paramfile": [], "user_nl": []}
    if fsurdat is not None:
        fsurdat = Path(fsurdat)
        if fsur_updates:
            written["fsurdat"].append(write_surfdata(fsurdat, out_dir / fsurdat.name, fsur_updates,
                                                     history=f"write-ctsm: set {', '.join(fsur_updates)}"))
        else:
            log(f"note: no surface dataset parameters given; {fsurdat.name} not written")
    if paramfile is not None:
        paramfile = Path(paramfile)
        if per_cell_pf and per_cluster_paramfiles:
            cluster_pf = _cluster_paramfiles(paramfile, out_dir, values, dim, per_cell_pf, pf_updates, table, base_pf)
            written["paramfile"] += [cluster_pf[k] for k in sorted(cluster_pf)]
        elif per_cell_pf:
            from ppe_ingest.base.progress import progress

            labels = [str(x) for x in values[dim].values]
            for i in progress(range(len(labels)), desc="paramfiles", unit=dim, enabled=len(labels) >= 20):
                vals = dict(pf_updates)
                for name, col in per_cell_pf.items():
                    spec = table[name] if name in table else None
                    vals[name] = spec.to_field(col[i], base_pf[name]) if spec else float(col[i])
                dst = out_dir / f"{paramfile.stem}_{dim}{labels[i]}{paramfile.suffix}"
                written["paramfile"].append(write_paramfile(paramfile, dst, vals,
                                                            history=f"write-ctsm: {dim} {labels[i]}"))
        elif pf_updates:
            written["paramfile"].append(write_paramfile(paramfile, out_dir / paramfile.name, pf_updates,
                                                        history=f"write-ctsm: set {', '.join(pf_updates)}"))
        else:
            log(f"note: no paramfile parameters given; {paramfile.name} not written")
    if user_nl is not None or nl_updates:
        src = Path(user_nl) if user_nl is not None else None
        dst = out_dir / (src.name if src is not None else "user_nl_clm")
        nl = dict(nl_updates)
        if src is not None or nl:
            # point the case at the new files
            if written["fsurdat"]:
                nl["fsurdat"] = str(written["fsurdat"][0].resolve())
            if len(written["paramfile"]) == 1:
                nl["paramfile"] = str(written["paramfile"][0].resolve())
        if nl:
            written["user_nl"].append(set_user_nl(src, dst, nl, history_comment="set by esm-emu write-ctsm"))
        if per_cluster_paramfiles and values is not None and (map_nl or cluster_pf):
            # one case per cluster: its namelist values and its paramfile
            centers = values["theta_cluster"]
            for k in sorted({int(c) for c in values["cluster"].values}):
                nk = dict(nl)
                for name in map_nl:
                    nk[name] = float(centers.sel(param=name).sel(cluster_id=k))
                if k in cluster_pf:
                    nk["paramfile"] = str(cluster_pf[k].resolve())
                written["user_nl"].append(set_user_nl(src, dst.with_name(f"{dst.name}_cluster{k}"), nk,
                                                      history_comment=f"set by esm-emu write-ctsm (cluster {k})"))
    if not any(written.values()):
        raise UserError("write-ctsm: no file was written: none of the given names belong to the given files")
    return written


def _cluster_paramfiles(paramfile: Path, out_dir: Path, values, dim: str, per_cell_pf: dict, pf_updates: dict,
                        table, base_pf: dict) -> dict[int, Path]:
    """One paramfile per cluster of the map, plus ``paramfile_clusters.csv``: entity -> cluster -> file."""
    import numpy as np
    import pandas as pd

    from ppe_ingest.base.atomic import atomic_path
    from ppe_ingest.ctsmio.paramfile import write_paramfile

    cluster = values["cluster"].values.astype(int)
    centers = values["theta_cluster"]
    paths = {}
    for k in (int(c) for c in np.unique(cluster)):
        vals = dict(pf_updates)
        for name in per_cell_pf:
            v = float(centers.sel(param=name).sel(cluster_id=k))
            spec = table[name] if name in table else None
            vals[name] = spec.to_field(v, base_pf[name]) if spec else v
        dst = out_dir / f"{paramfile.stem}_cluster{k}{paramfile.suffix}"
        paths[k] = write_paramfile(paramfile, dst, vals, history=f"write-ctsm: cluster {k}")
    table_path = out_dir / "paramfile_clusters.csv"
    frame = pd.DataFrame({dim: [str(x) for x in values[dim].values], "cluster": cluster,
                          "paramfile": [paths[k].name for k in cluster]})
    with atomic_path(table_path) as tmp:
        frame.to_csv(tmp, index=False)
    return paths


def _handler(args) -> int:
    written = write_ctsm_files(args.out, fsurdat=args.fsurdat, paramfile=args.paramfile, user_nl=args.user_nl,
                               values=args.values, table=args.table, settings=parse_set(args.set),
                               per_gridcell_paramfiles=args.per_gridcell_paramfiles,
                               per_cluster_paramfiles=args.per_cluster_paramfiles, tol_deg=args.tol_deg)
    for paths in written.values():
        for p in paths:
            print(p)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "write-ctsm", help="write CTSM fsurdat/paramfile/user_nl_clm from parameter values or a parameter map",
        description="Write new CTSM files in --out, named after their inputs, with the given parameter "
                    "values. Each name goes where CTSM reads it (the parameter table's location, or where "
                    "the variable exists). Paramfile/namelist values from a map are reduced to their median "
                    "across gridcells unless --per-gridcell-paramfiles is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (new files are named after their inputs)")
    p.add_argument("--fsurdat", help="base surface dataset (both 2-D lsmlat/lsmlon and 1-D gridcell forms)")
    p.add_argument("--paramfile", help="base CTSM parameter file")
    p.add_argument("--user-nl", dest="user_nl", help="base user_nl_clm (gets fsurdat/paramfile pointed at the new files)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a parameter value, e.g. --set FMAX=0.3 --set medlynslope[c4_grass]=1.6 (repeatable)")
    p.add_argument("--values", metavar="MAP.nc", help="parameter map netCDF: theta(gridcell|site, param)")
    p.add_argument("--table", help="parameter table CSV (default: configs/params_hydrology.csv)")
    p.add_argument("--per-gridcell-paramfiles", action="store_true",
                   help="one paramfile per gridcell/site of the map instead of the median value")
    p.add_argument("--per-cluster-paramfiles", action="store_true",
                   help="one paramfile per k-means cluster of the map (its cluster/theta_cluster variables), "
                   "with paramfile_clusters.csv mapping each gridcell/site to its file")
    p.add_argument("--tol-deg", type=float, default=1.0,
                   help="max distance (degrees) matching map lat/lon to fsurdat gridcells")
    p.set_defaults(func=_handler)
