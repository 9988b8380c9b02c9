"""CTSM surface datasets (fsurdat): read and modify the soil and hydrology fields, or create a 1-D one.

Both forms are handled: CLM5.0 ``(..., lsmlat, lsmlon)`` (gridcells flattened in C order, i.e.
gridcell = ilat * nlon + ilon) and the CTSM 5.2+ unstructured 1-D ``(..., gridcell)`` form.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import netCDF4
import numpy as np

from ..atomic import atomic_path, refuse_overwrite
from ..errors import UserError
from ._ncfile import cast_to, copy_and_modify, history_line, open_dataset

SOIL_FIELDS = ("PCT_SAND", "PCT_CLAY", "ORGANIC")
DEFAULT_FIELDS = ("PCT_SAND", "PCT_CLAY", "ORGANIC", "FMAX", "zbedrock", "SLOPE", "STD_ELEV")
NLEVSOI = 10

# name: (per soil level?, dtype in CTSM 5.2+ files, long_name, units), as in FORMAT.md
FIELD_SPECS = {
    "PCT_SAND": (True, "f4", "percent sand", "unitless"),
    "PCT_CLAY": (True, "f4", "percent clay", "unitless"),
    "ORGANIC": (True, "f4", "organic matter density at soil levels",
                "kg/m3 (assumed carbon content 0.58 gC per gOM)"),
    "FMAX": (False, "f8", "maximum fractional saturated area", "unitless"),
    "zbedrock": (False, "f8", "soil depth", "m"),
    "SLOPE": (False, "f4", "mean topographic slope", "degrees"),
    "STD_ELEV": (False, "f4", "standard deviation of elevation", "m"),
    "SOIL_COLOR": (False, "i4", "soil color", "unitless"),
}


def _form(ds, path) -> tuple[str, tuple[str, ...], int]:
    """('2d', ('lsmlat', 'lsmlon'), n) or ('1d', ('gridcell',), n)."""
    if "gridcell" in ds.dimensions:
        return "1d", ("gridcell",), len(ds.dimensions["gridcell"])
    if "lsmlat" in ds.dimensions and "lsmlon" in ds.dimensions:
        return "2d", ("lsmlat", "lsmlon"), len(ds.dimensions["lsmlat"]) * len(ds.dimensions["lsmlon"])
    raise UserError(f"{path}: not a CTSM surface dataset (no gridcell or lsmlat/lsmlon dimension)")


def _spatial_var(ds, name, sdims, path):
    if name not in ds.variables:
        raise UserError(f"{path}: variable {name} not found in the surface dataset")
    var = ds.variables[name]
    if tuple(var.dimensions[-len(sdims):]) != sdims:
        raise UserError(f"{path}: variable {name} has dims {var.dimensions}, not (..., {', '.join(sdims)})")
    return var


def _latlon(ds, sdims, n, path) -> tuple[np.ndarray, np.ndarray]:
    for la, lo in (("LATIXY", "LONGXY"), ("lat", "lon"), ("grid1d_lat", "grid1d_lon")):
        if la in ds.variables and lo in ds.variables:
            lat, lon = np.asarray(ds.variables[la][...], float), np.asarray(ds.variables[lo][...], float)
            if lat.size == n and lon.size == n:
                return lat.reshape(n), lon.reshape(n)
            if sdims[0] == "lsmlat" and lat.ndim == 1 and lon.ndim == 1:
                lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
                return lat2.reshape(n), lon2.reshape(n)
    raise UserError(f"{path}: no gridcell coordinates (LATIXY/LONGXY) in the surface dataset")


def read_surfdata(path: str | Path, fields: Sequence[str] = DEFAULT_FIELDS):
    """Fields of a surface dataset as an xarray Dataset over `gridcell` (and `nlevsoi`), with lat/lon."""
    import xarray as xr

    path = Path(path)
    with open_dataset(path) as ds:
        form, sdims, n = _form(ds, path)
        lat, lon = _latlon(ds, sdims, n, path)
        out = {}
        for name in fields:
            var = _spatial_var(ds, name, sdims, path)
            data = np.asarray(var[...]).reshape(var.shape[: var.ndim - len(sdims)] + (n,))
            dims = tuple(var.dimensions[: var.ndim - len(sdims)]) + ("gridcell",)
            out[name] = xr.Variable(dims, data, {a: var.getncattr(a) for a in var.ncattrs()})
        attrs = {"source_file": str(path), "surfdata_form": form}
        if form == "2d":
            attrs["lsmlat"], attrs["lsmlon"] = len(ds.dimensions["lsmlat"]), len(ds.dimensions["lsmlon"])
    return xr.Dataset(out, coords={"lat": ("gridcell", lat, {"units": "degrees_north"}),
                                   "lon": ("gridcell", lon, {"units": "degrees_east"})}, attrs=attrs)


def _angdist(lat1, lon1, lat2, lon2):
    """Great-circle distance in degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2) - lon1)
    c = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def resolve_gridcells(gridcells, lat: np.ndarray, lon: np.ndarray, path, tol_deg: float = 1.0) -> np.ndarray:
    """Gridcell indices from indices or (lat, lon) pairs (nearest cell within `tol_deg` degrees)."""
    n = lat.size
    if gridcells is None:
        return np.arange(n)
    items = list(gridcells)
    if items and all(isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in items):
        idx = np.asarray(items, dtype=int)
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise UserError(f"{path}: gridcell index {bad[0]} out of range 0..{n - 1}")
        return idx
    idx = []
    for g in items:
        try:
            la, lo = (float(x) for x in g)
        except (TypeError, ValueError):
            raise UserError(f"{path}: gridcell {g!r} is neither an index nor a (lat, lon) pair") from None
        d = _angdist(la, lo, lat, lon)
        k = int(np.argmin(d))
        if d[k] > tol_deg:
            raise UserError(f"{path}: no gridcell within {tol_deg} degrees of lat {la}, lon {lo} "
                            f"(nearest is gridcell {k} at lat {lat[k]:.4g}, lon {lon[k]:.4g})")
        idx.append(k)
    return np.asarray(idx, dtype=int)


def _where(path, i, lat, lon) -> str:
    return f"gridcell {i} (lat {lat[i]:.4g}, lon {lon[i]:.4g})"


def check_physical(fields: Mapping[str, np.ndarray], lat, lon, path, cells=None) -> None:
    """Refuse physically invalid soil/hydrology values; fields are (..., gridcell) arrays."""
    cells = np.arange(np.asarray(lat).size) if cells is None else np.asarray(cells)
    rules = {
        "PCT_SAND": (lambda v: (v >= 0) & (v <= 100), "must be within 0..100"),
        "PCT_CLAY": (lambda v: (v >= 0) & (v <= 100), "must be within 0..100"),
        "FMAX": (lambda v: (v >= 0) & (v <= 1), "must be within 0..1"),
        "zbedrock": (lambda v: v > 0, "must be > 0"),
        "ORGANIC": (lambda v: v >= 0, "must be >= 0"),
    }
    for name, (ok, msg) in rules.items():
        if name not in fields:
            continue
        v = np.asarray(fields[name], dtype=float)[..., cells]
        good = ok(v) & np.isfinite(v)
        if not good.all():
            j = np.argwhere(~good)[0]
            i = cells[j[-1]]
            raise UserError(f"{path}: {name} = {v[tuple(j)]:.6g} at {_where(path, i, lat, lon)} {msg}")
    if "PCT_SAND" in fields and "PCT_CLAY" in fields:
        s = np.asarray(fields["PCT_SAND"], float)[..., cells] + np.asarray(fields["PCT_CLAY"], float)[..., cells]
        if (s > 100).any():
            j = np.argwhere(s > 100)[0]
            i = cells[j[-1]]
            raise UserError(f"{path}: PCT_SAND + PCT_CLAY = {s[tuple(j)]:.6g} at {_where(path, i, lat, lon)} "
                            "must be <= 100")


def write_surfdata(src: str | Path, dst: str | Path, updates: Mapping[str, object], gridcells=None,
                   history: str | None = None, tol_deg: float = 1.0) -> Path:
    """Copy surface dataset `src` to `dst` changing only the fields in `updates`.

    Each update is a scalar, an array over the selected gridcells, or for multi-level fields
    (e.g. PCT_SAND over nlevsoi) an array (level, gridcell); a per-gridcell array is applied to all
    levels. `gridcells` selects cells by index or by (lat, lon) pairs (nearest within `tol_deg`);
    default all. Physical validity is checked before anything is written.
    """
    src, dst = Path(src), Path(dst)
    refuse_overwrite(dst, [src])
    if not updates:
        raise UserError(f"{src}: no surface dataset fields to set")
    with open_dataset(src) as ds:
        form, sdims, n = _form(ds, src)
        lat, lon = _latlon(ds, sdims, n, src)
        cells = resolve_gridcells(gridcells, lat, lon, src, tol_deg)
        new, planned = {}, {}
        for name, value in updates.items():
            var = _spatial_var(ds, name, sdims, src)
            lead = var.shape[: var.ndim - len(sdims)]
            full = np.array(var[...], dtype=float).reshape(lead + (n,))
            v = np.asarray(value, dtype=float)
            want = lead + (cells.size,)
            if v.ndim == 0 or v.shape == (cells.size,):
                v = np.broadcast_to(v, want)
            elif v.shape != want:
                raise UserError(f"{src}: variable {name}: value has shape {v.shape}, expected ({cells.size},) "
                                f"or {want} for {cells.size} gridcell(s)")
            full[..., cells] = v
            new[name] = full
            planned[name] = var
        merged = dict(new)
        for other in ("PCT_SAND", "PCT_CLAY"):
            if other not in merged and ("PCT_SAND" in new or "PCT_CLAY" in new) and other in ds.variables:
                var = _spatial_var(ds, other, sdims, src)
                merged[other] = np.asarray(var[...], float).reshape(var.shape[: var.ndim - len(sdims)] + (n,))
        check_physical(merged, lat, lon, src, cells)
        changes = {}
        for name, full in new.items():
            var = planned[name]
            changes[name] = (Ellipsis, cast_to(var, full, name, src).reshape(var.shape))
    where = "all gridcells" if gridcells is None else f"{cells.size} gridcell(s)"
    line = history or f"write_surfdata: set {', '.join(updates)} at {where} (from {src.name})"
    return copy_and_modify(src, dst, changes, history_line(line))


def create_surfdata_1d(dst: str | Path, lat, lon, fields: Mapping[str, object], area=None,
                       history: str | None = None) -> Path:
    """A NEW surface dataset in the CTSM 5.2+ 1-D `gridcell` form holding the given fields.

    Soil fields (PCT_SAND, PCT_CLAY, ORGANIC) are (nlevsoi=10, gridcell) float32; a per-gridcell
    array is repeated on all levels. Others (FMAX, zbedrock, SLOPE, STD_ELEV, SOIL_COLOR) are
    (gridcell). LATIXY, LONGXY and AREA (km^2, when given) are written with CTSM long names/units.
    """
    dst = Path(dst)
    lat = np.atleast_1d(np.asarray(lat, dtype=float))
    lon = np.atleast_1d(np.asarray(lon, dtype=float))
    if lat.ndim != 1 or lat.shape != lon.shape or lat.size == 0:
        raise UserError(f"{dst}: lat and lon must be 1-D arrays of equal, non-zero length")
    if (np.abs(lat) > 90).any():
        raise UserError(f"{dst}: latitude {lat[np.abs(lat) > 90][0]} outside -90..90")
    n = lat.size
    data = {}
    for name, value in fields.items():
        if name not in FIELD_SPECS:
            raise UserError(f"{dst}: field {name} is not one of {', '.join(FIELD_SPECS)}")
        soil, _, _, _ = FIELD_SPECS[name]
        v = np.asarray(value, dtype=float)
        if soil and v.shape == (n,):
            v = np.broadcast_to(v, (NLEVSOI, n))
        want = (NLEVSOI, n) if soil else (n,)
        if v.ndim == 0:
            v = np.broadcast_to(v, want)
        if v.shape != want:
            raise UserError(f"{dst}: field {name} has shape {v.shape}, expected {want}")
        data[name] = v
    check_physical(data, lat, lon, dst)
    if area is not None:
        area = np.broadcast_to(np.asarray(area, dtype=float), (n,))
        if (area <= 0).any() or not np.isfinite(area).all():
            raise UserError(f"{dst}: AREA must be positive and finite")
    with atomic_path(dst) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF3_64BIT_OFFSET") as ds:
            ds.createDimension("gridcell", n)
            ds.createDimension("nlevsoi", NLEVSOI)
            ds.setncattr("Conventions", "NCAR-CSM")
            ds.setncattr("title", "Surface dataset in the CTSM 5.2+ 1-D gridcell form")
            ds.setncattr("Source", "esm-emu create_surfdata_1d (not mksurfdata)")
            ds.setncattr("history", history_line(history or f"create_surfdata_1d: {n} gridcell(s)"))
            coords = [("LATIXY", lat, "latitude", "degrees north"), ("LONGXY", lon, "longitude", "degrees east")]
            if area is not None:
                coords.append(("AREA", area, "area", "km^2"))
            for name, v, ln, un in coords:
                var = ds.createVariable(name, "f8", ("gridcell",))
                var.setncattr("long_name", ln)
                var.setncattr("units", un)
                var[:] = v
            for name in sorted(data):
                soil, dtype, ln, un = FIELD_SPECS[name]
                var = ds.createVariable(name, dtype, ("nlevsoi", "gridcell") if soil else ("gridcell",))
                var.setncattr("long_name", ln)
                var.setncattr("units", un)
                var[:] = cast_to(var, data[name], name, dst)
    return dst
