"""PPE designs: Latin hypercube samples over a parameter table, and the per-member files the PPE writes.

Members are named like the CLM5 PPE (``LHC0001``...; ``LHC0000`` is the default member) and each gets
``paramfiles/<member>.nc`` and ``namelist_mods/<member>.txt``, with ``value = min + (max - min) * s``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .param_table import ParamTable

NAMELIST_HEADER = "! user_nl_clm namelist options written by generate_params:"


def latin_hypercube(n: int, d: int, seed: int | None = None) -> np.ndarray:
    """An (n, d) Latin hypercube in [0, 1): one point in each of n equal strata per dimension."""
    if n < 1 or d < 1:
        raise UserError(f"latin_hypercube: need n >= 1 and d >= 1 (got n={n}, d={d})")
    rng = np.random.default_rng(seed)
    u = rng.random((n, d))
    perms = np.stack([rng.permutation(n) for _ in range(d)], axis=1)
    return (perms + u) / n


def member_names(prefix: str, n: int, start: int = 1) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(start, start + n)]


def make_design(table: ParamTable, n_members: int, seed: int | None = None, prefix: str = "LHC",
                names: Sequence[str] | None = None, include_default: bool = False) -> xr.Dataset:
    """A Latin hypercube design: `s(member, param)` in the unit cube and `theta(member, param)`.

    theta is the table's value at s (for per-PFT multiplicative parameters the reference value;
    for per-PFT bounds the position s itself). With `include_default`, member ``<prefix>0000``
    holds the defaults (theta NaN where the table has none: the base file's value is kept).
    """
    table = table.subset(names) if names is not None else table
    params = table.names
    for p in table:
        p.bounds()  # every parameter needs usable bounds
    s = latin_hypercube(n_members, len(params), seed)
    theta = np.column_stack([table[p].theta(s[:, j]) for j, p in enumerate(params)])
    members = member_names(prefix, n_members)
    if include_default:
        lo = np.array([table.bounds(p)[0] for p in params])
        hi = np.array([table.bounds(p)[1] for p in params])
        d = np.array([np.nan if table[p].default is None or table[p].pft_bounds else table[p].default
                      for p in params], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            s0 = np.where(hi != lo, (d - lo) / (hi - lo), 0.0)
        s, theta = np.vstack([s0, s]), np.vstack([d, theta])
        members = [f"{prefix}0000"] + members

    def str_attr(f):
        return np.array([f(table[p]) for p in params], dtype=object)

    ds = xr.Dataset(
        {
            "s": (("member", "param"), s, {"long_name": "unit-hypercube position", "units": "1"}),
            "theta": (("member", "param"), theta, {"long_name": "parameter value (min + (max - min) * s)"}),
            "theta_min": (("param",), np.array([table.bounds(p)[0] for p in params])),
            "theta_max": (("param",), np.array([table.bounds(p)[1] for p in params])),
            "default": (("param",), np.array([np.nan if table[p].default is None else table[p].default
                                                for p in params], dtype=float)),
            "location": (("param",), str_attr(lambda q: q.location)),
            "transform": (("param",), str_attr(lambda q: "pft_bounds" if q.pft_bounds else q.transform)),
            "units": (("param",), str_attr(lambda q: q.units)),
        },
        coords={"member": np.array(members, dtype=object), "param": np.array(params, dtype=object)},
        attrs={"title": "PPE design (Latin hypercube)", "seed": -1 if seed is None else int(seed),
               "param_table": table.source, "prefix": prefix},
    )
    return ds


def write_member_files(design: xr.Dataset, out_dir: str | Path, base_paramfile: str | Path,
                       table: ParamTable, progress: bool = False) -> list[Path]:
    """Per member, `paramfiles/<member>.nc` and `namelist_mods/<member>.txt`; returns all paths written.

    Paramfile parameters are written into a full copy of `base_paramfile` (transformed against the
    base value, see `ParamSpec.to_field`; a group parameter such as the PPE's KCN is written to each
    of its `targets`); namelist parameters become ``name=value`` lines under the
    PPE's header. fsurdat parameters are not written here (they belong in a surface dataset); a
    comment line lists them. A NaN theta keeps the base value.
    """
    from .ctsmio.paramfile import read_paramfile, write_paramfile
    from .ctsmio.user_nl import format_namelist_value

    out_dir = Path(out_dir)
    params = [str(p) for p in design["param"].values]
    specs = [table[p] for p in params]
    pf = [p for p in specs if p.location == "paramfile"]
    base = read_paramfile(base_paramfile, [t for p in pf for t in p.targets]) if pf else {}
    fsur = [p.name for p in specs if p.location == "fsurdat"]
    nl_source = "a PPE member's namelist_mods (CTSM's defaults are not known here)"
    for p in specs:  # a namelist group's targets: refused before any member file exists when one can't be written
        if p.location == "namelist":
            p.namelist_values(1.0, source=nl_source)
    (out_dir / "paramfiles").mkdir(parents=True, exist_ok=True)
    (out_dir / "namelist_mods").mkdir(parents=True, exist_ok=True)
    theta = design["theta"].transpose("member", "param").values
    members = [str(m) for m in design["member"].values]
    it = members
    if progress:
        from ppe_ingest.base.progress import progress as _progress

        it = _progress(members, desc="member files", unit="member")
    written = []
    for m in it:
        i = members.index(m)
        row = dict(zip(params, theta[i]))
        values = {t: p.to_field(row[p.name], base[t]) for p in pf if np.isfinite(row[p.name]) for t in p.targets}
        written.append(write_paramfile(base_paramfile, out_dir / "paramfiles" / f"{m}.nc", values,
                                       history=f"PPE member {m}: set {', '.join(values) or 'nothing'}"))
        lines = [NAMELIST_HEADER]
        if fsur:
            lines.append(f"! fsurdat parameters not set here (they go in the surface dataset): {', '.join(fsur)}")
        for p in specs:
            if p.location == "namelist" and np.isfinite(row[p.name]):
                for var, v in p.namelist_values(float(row[p.name]), source=nl_source).items():
                    lines.append(f"{var}={format_namelist_value(v)}")
        nl = out_dir / "namelist_mods" / f"{m}.txt"
        with atomic_path(nl, inputs=[base_paramfile]) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        written.append(nl)
    return written


def design_frame(design: xr.Dataset):
    """theta as a member x parameter DataFrame (the ``design.csv`` that ingest checks members against)."""
    df = design["theta"].transpose("member", "param").to_pandas()
    df.index = [str(m) for m in df.index]
    df.columns = [str(p) for p in df.columns]
    return df.rename_axis("member").rename_axis(None, axis=1)


def write_design(design: xr.Dataset, out_dir: str | Path) -> list[Path]:
    """`design.nc` (s, theta, bounds, locations) and `design.csv` (theta per member) in `out_dir`."""
    out_dir = Path(out_dir)
    nc, csv = out_dir / "design.nc", out_dir / "design.csv"
    ds = design.copy()
    for v in ("member", "param", "location", "transform", "units"):
        ds[v] = ds[v].astype(str)
    with atomic_path(nc) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
    with atomic_path(csv) as tmp:
        design_frame(design).to_csv(tmp, float_format="%.17g")
    return [nc, csv]


def write_ppe_context(out_dir: str | Path, table_path: str | Path, base_paramfile: str | Path) -> list[Path]:
    """`params.csv` (the parameter table) and `paramfile_default.nc` (the base paramfile) beside the
    members: what ingest needs to read each member's theta back from its files (percent bounds, group
    and multiplicative parameters are resolved against them)."""
    import shutil

    out_dir = Path(out_dir)
    written = []
    for src, name in ((table_path, "params.csv"), (base_paramfile, "paramfile_default.nc")):
        with atomic_path(out_dir / name, inputs=[src]) as tmp:
            shutil.copyfile(src, tmp)
        written.append(out_dir / name)
    return written
