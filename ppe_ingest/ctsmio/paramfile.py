"""CTSM parameter files (paramfile): read, modify a copy, or create one in the ctsm51 layout.

Two real layouts are handled: ctsm51 (0-d scalars, ``(pft)``, ``(segment, pft)``,
``(variants, pft)``) and clm5_params.c171117 (size-1 ``(allpfts,)`` "scalars"), both with
``pftname(pft, string_length)`` naming the 79 CTSM PFTs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import netCDF4
import numpy as np

from ppe_ingest.base.atomic import atomic_path, refuse_overwrite
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.netcdf import cast_to, copy_and_modify, history_line, open_dataset

# The 79 CTSM PFTs in paramfile order (pftname of ctsm51_params.c210217_kwo.c210222.nc).
PFT_NAMES = (
    "not_vegetated", "needleleaf_evergreen_temperate_tree", "needleleaf_evergreen_boreal_tree",
    "needleleaf_deciduous_boreal_tree", "broadleaf_evergreen_tropical_tree",
    "broadleaf_evergreen_temperate_tree", "broadleaf_deciduous_tropical_tree",
    "broadleaf_deciduous_temperate_tree", "broadleaf_deciduous_boreal_tree",
    "broadleaf_evergreen_shrub", "broadleaf_deciduous_temperate_shrub",
    "broadleaf_deciduous_boreal_shrub", "c3_arctic_grass", "c3_non-arctic_grass", "c4_grass",
    "c3_crop", "c3_irrigated", "temperate_corn", "irrigated_temperate_corn", "spring_wheat",
    "irrigated_spring_wheat", "winter_wheat", "irrigated_winter_wheat", "temperate_soybean",
    "irrigated_temperate_soybean", "barley", "irrigated_barley", "winter_barley",
    "irrigated_winter_barley", "rye", "irrigated_rye", "winter_rye", "irrigated_winter_rye",
    "cassava", "irrigated_cassava", "citrus", "irrigated_citrus", "cocoa", "irrigated_cocoa",
    "coffee", "irrigated_coffee", "cotton", "irrigated_cotton", "datepalm", "irrigated_datepalm",
    "foddergrass", "irrigated_foddergrass", "grapes", "irrigated_grapes", "groundnuts",
    "irrigated_groundnuts", "millet", "irrigated_millet", "oilpalm", "irrigated_oilpalm",
    "potatoes", "irrigated_potatoes", "pulses", "irrigated_pulses", "rapeseed",
    "irrigated_rapeseed", "rice", "irrigated_rice", "sorghum", "irrigated_sorghum", "sugarbeet",
    "irrigated_sugarbeet", "sugarcane", "irrigated_sugarcane", "sunflower", "irrigated_sunflower",
    "miscanthus", "irrigated_miscanthus", "switchgrass", "irrigated_switchgrass", "tropical_corn",
    "irrigated_tropical_corn", "tropical_soybean", "irrigated_tropical_soybean",
)
NPFT = len(PFT_NAMES)  # 79: natural PFTs 0..14, then crop functional types 15..78
SCALAR_DIMS = ("allpfts",)  # clm5_params.c171117 stores global scalars as (allpfts=1,)


def _numeric(var: netCDF4.Variable) -> bool:
    return var.dtype != str and np.dtype(var.dtype).kind in "iuf"


def _logical_shape(var: netCDF4.Variable) -> tuple[int, ...]:
    """Shape with size-1 `allpfts` dropped, so both layouts present scalars as 0-d."""
    return tuple(n for d, n in zip(var.dimensions, var.shape) if d not in SCALAR_DIMS)


def pft_names(path: str | Path) -> list[str]:
    """The PFT names of a paramfile, decoded from `pftname` (padding stripped)."""
    with open_dataset(path) as ds:
        if "pftname" not in ds.variables:
            raise UserError(f"{path}: variable pftname not found (is this a CTSM paramfile?)")
        raw = ds.variables["pftname"][:]
    return [str(s).strip() for s in netCDF4.chartostring(raw)]


def read_paramfile(path: str | Path, names=None) -> dict[str, np.ndarray]:
    """Numeric variables of a paramfile as arrays (scalars 0-d, `allpfts` squeezed)."""
    path = Path(path)
    with open_dataset(path) as ds:
        return paramfile_values(ds, path, names)


def paramfile_values(ds, path, names=None) -> dict[str, np.ndarray]:
    """`read_paramfile` on an open paramfile `ds` (all numeric variables when `names` is None)."""
    if names is None:
        names = [n for n, v in ds.variables.items() if _numeric(v)]
    out = {}
    for name in names:
        if name not in ds.variables:
            raise UserError(f"{path}: variable {name} not found in the paramfile")
        var = ds.variables[name]
        if not _numeric(var):
            raise UserError(f"{path}: variable {name} is not numeric")
        data = np.asarray(var[...]) if var.ndim else np.asarray(var.getValue())
        out[name] = data.reshape(_logical_shape(var))
    return out


def paramfile_attrs(path: str | Path, name: str) -> dict:
    """The attributes (long_name, units, ...) of one paramfile variable."""
    with open_dataset(path) as ds:
        if name not in ds.variables:
            raise UserError(f"{path}: variable {name} not found in the paramfile")
        var = ds.variables[name]
        return {a: var.getncattr(a) for a in var.ncattrs()}


def _pft_index(key, names: list[str], name: str, path: Path) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not 0 <= key < len(names):
            raise UserError(f"{path}: variable {name}: PFT index {key} out of range 0..{len(names) - 1}")
        return int(key)
    key = str(key).strip()
    if key in names:
        return names.index(key)
    raise UserError(f"{path}: variable {name}: unknown PFT {key!r} (see pftname)")


def _plan_update(ds, name: str, value, path: Path, names: list[str] | None):
    """Turn one user value into (index, cast array) for `copy_and_modify`."""
    if name not in ds.variables:
        raise UserError(f"{path}: variable {name} not found in the paramfile")
    var = ds.variables[name]
    if not _numeric(var):
        raise UserError(f"{path}: variable {name} is not numeric and cannot be set")
    if isinstance(value, Mapping):
        if "pft" not in var.dimensions:
            raise UserError(f"{path}: variable {name} has no pft dimension; per-PFT values not allowed")
        if names is None:
            names = list(PFT_NAMES[: len(ds.dimensions["pft"])])
        full = np.array(var[...])
        axis = var.dimensions.index("pft")
        for key, v in value.items():
            i = _pft_index(key, names, name, path)
            sl = [slice(None)] * var.ndim
            sl[axis] = i
            target = full[tuple(sl)]
            v = np.asarray(v, dtype=float)
            if v.ndim and v.shape != target.shape:
                raise UserError(f"{path}: variable {name}: value for PFT {key!r} has shape {v.shape}, "
                                f"expected a scalar or {target.shape}")
            full[tuple(sl)] = cast_to(var, np.broadcast_to(v, target.shape), name, path)
        return Ellipsis, full
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" and arr.dtype != bool:
        raise UserError(f"{path}: variable {name}: value {value!r} is not a number")
    shape = _logical_shape(var)
    if arr.ndim == 0:
        # A scalar sets a scalar, or every element of an array (e.g. every PFT).
        arr = np.broadcast_to(arr, shape)
    elif arr.shape != shape:
        raise UserError(f"{path}: variable {name}: value has shape {arr.shape}, expected {shape or 'a scalar'}")
    arr = cast_to(var, arr, name, path).reshape(var.shape)
    return Ellipsis, arr


def paramfile_changes(ds, path, values: Mapping) -> dict[str, tuple]:
    """`copy_and_modify` updates that set `values` (as `write_paramfile` takes them) in the open paramfile
    `ds`: checked and cast to each variable's dtype; nothing is written."""
    names = None
    if any(isinstance(v, Mapping) for v in values.values()) and "pftname" in ds.variables:
        names = [str(s).strip() for s in netCDF4.chartostring(ds.variables["pftname"][:])]
    return {name: _plan_update(ds, name, v, path, names) for name, v in values.items()}


def write_paramfile(src: str | Path, dst: str | Path, values: Mapping, history: str | None = None) -> Path:
    """Copy paramfile `src` to `dst` changing only the variables in `values`.

    Each value is a scalar (sets a scalar, or all elements of an array), a whole array of the
    variable's shape, or a mapping ``{pft name or index: value}`` for chosen PFTs. Format,
    dtypes, fill values and attributes are kept; a line is appended to `history`; atomic.
    """
    src, dst = Path(src), Path(dst)
    refuse_overwrite(dst, [src])
    with open_dataset(src) as ds:
        updates = paramfile_changes(ds, src, values)
    line = history or f"write_paramfile: set {', '.join(values) or 'nothing'} (from {src.name})"
    return copy_and_modify(src, dst, updates, history_line(line))


def create_paramfile(dst: str | Path, values: Mapping, attrs: Mapping[str, dict] | None = None,
                     history: str | None = None) -> Path:
    """Write a NEW paramfile in the ctsm51 layout holding only `values` (plus pftname/pftnum).

    Scalars become 0-d float64 variables, length-79 arrays `(pft)` with ``coordinates='pftname'``,
    (4, 79) arrays `(segment, pft)` and (2, 79) arrays `(variants, pft)`. `attrs[name]` gives
    long_name/units etc. The file is NETCDF3_CLASSIC like the real ctsm51 paramfile.
    """
    dst = Path(dst)
    attrs = attrs or {}
    unknown = sorted(set(attrs) - set(values))
    if unknown:
        raise UserError(f"{dst}: attrs given for {unknown[0]} which is not among the values")
    dims_for = {(): (), (NPFT,): ("pft",), (4, NPFT): ("segment", "pft"), (2, NPFT): ("variants", "pft")}
    planned = {}
    for name, v in values.items():
        arr = np.asarray(v, dtype=np.float64)
        if arr.shape not in dims_for:
            raise UserError(f"{dst}: variable {name}: shape {arr.shape} is not a scalar, (79,), (4, 79) or (2, 79)")
        if not np.all(np.isfinite(arr)):
            raise UserError(f"{dst}: variable {name}: non-finite value (NaN or inf) given")
        planned[name] = (dims_for[arr.shape], arr)
    with atomic_path(dst) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF3_CLASSIC") as ds:
            ds.createDimension("pft", NPFT)
            ds.createDimension("segment", 4)
            ds.createDimension("string_length", 40)
            ds.createDimension("variants", 2)
            ds.setncattr("title", "Vegetation (Plant Function Type or PFT) constants")
            ds.setncattr("Conventions", "CF-1.0")
            ds.setncattr("history", history_line(history or "create_paramfile: new paramfile in the ctsm51 layout"))
            pn = ds.createVariable("pftname", "S1", ("pft", "string_length"))
            pn.setncattr("long_name", "Description of plant type")
            pn.setncattr("units", "unitless")
            pn[:] = netCDF4.stringtochar(np.array([n.ljust(40) for n in PFT_NAMES], dtype="S40"))
            pnum = ds.createVariable("pftnum", "i2", ("pft",))
            pnum.setncattr("long_name", "Plant Functional Type number")
            pnum.setncattr("units", "unitless")
            pnum[:] = np.arange(NPFT, dtype=np.int16)
            for name in sorted(planned):
                dims, arr = planned[name]
                if name in ds.variables:
                    raise UserError(f"{dst}: variable {name} is reserved")
                var = ds.createVariable(name, "f8", dims)
                for k, a in attrs.get(name, {}).items():
                    var.setncattr(k, a)
                if "pft" in dims and "coordinates" not in attrs.get(name, {}):
                    var.setncattr("coordinates", "pftname")
                if dims:
                    var[:] = arr
                else:
                    var.assignValue(arr)
    return dst
