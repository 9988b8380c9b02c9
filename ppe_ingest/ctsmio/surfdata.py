"""CTSM surface datasets (fsurdat): read and modify the soil and hydrology fields, or create a 1-D one.

Both forms are handled: CLM5.0 ``(..., lsmlat, lsmlon)`` (gridcells flattened in C order, i.e.
gridcell = ilat * nlon + ilon) and the CTSM 5.2+ unstructured 1-D ``(..., gridcell)`` form.
Vegetation: ``MONTHLY_LAI(time=12, lsmpft, ...)`` with ``PCT_NAT_PFT(natpft, ...)`` and the
annual LAI extremes of the natural vegetation derived from them (`natural_lai`, `lai_extremes`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import netCDF4
import numpy as np

from ppe_ingest.base.atomic import atomic_path, refuse_overwrite
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.geometry import nearest_gridcell
from ppe_ingest.base.netcdf import NC_LOCK, cast_to, copy_and_modify, history_line, open_dataset

from .physical import physical_range
from .vocabulary import LAI_FIELDS, STATIC_ATTRS, STATIC_FIELDS

NLEVSOI = 10
# CLM5 PFT layout (FORMAT.md): natural PFTs 0..14 (0 = not_vegetated), crop CFTs 15..78.
NATPFT = 15
LSMPFT = 79
NMONTHS = 12
LAI_ATTRS = {"long_name": "monthly leaf area index", "units": "unitless"}
PCT_NAT_PFT_ATTRS = {"long_name": "percent plant functional type on the natural veg landunit (% of landunit)",
                     "units": "unitless"}

# name: (per soil level?, dtype in CTSM 5.2+ files, as in FORMAT.md); long_name and units: vocabulary
_LAYOUT = {"PCT_SAND": (True, "f4"), "PCT_CLAY": (True, "f4"), "ORGANIC": (True, "f4"), "FMAX": (False, "f8"),
           "zbedrock": (False, "f8"), "SLOPE": (False, "f4"), "STD_ELEV": (False, "f4")}
FIELD_SPECS = {name: (*_LAYOUT[name], *STATIC_ATTRS[name]) for name in STATIC_FIELDS}
FIELD_SPECS["SOIL_COLOR"] = (False, "i4", "soil color", "unitless")


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


def read_surfdata(path: str | Path, fields: Sequence[str] = STATIC_FIELDS):
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
        k_, d_ = nearest_gridcell(la, lo, lat, lon)
        k, dk = int(k_[0]), float(d_[0])
        if dk > tol_deg:
            raise UserError(f"{path}: no gridcell within {tol_deg} degrees of lat {la}, lon {lo} "
                            f"(nearest is gridcell {k} at lat {lat[k]:.4g}, lon {lon[k]:.4g})")
        idx.append(k)
    return np.asarray(idx, dtype=int)


def _where(path, i, lat, lon) -> str:
    return f"gridcell {i} (lat {lat[i]:.4g}, lon {lon[i]:.4g})"


def check_physical(fields: Mapping[str, np.ndarray], lat, lon, path, cells=None) -> None:
    """Refuse physically invalid surface-dataset values (`physical.physical_range` of each field, and
    sand plus clay at most 100%); fields are (..., gridcell) arrays."""
    cells = np.arange(np.asarray(lat).size) if cells is None else np.asarray(cells)
    for name, values in fields.items():
        rule = physical_range(name)
        if rule is None:
            continue
        v = np.asarray(values, dtype=float)[..., cells]
        good = rule.ok(v)
        if not good.all():
            j = np.argwhere(~good)[0]
            i = cells[j[-1]]
            raise UserError(f"{path}: {name} = {v[tuple(j)]:.6g} at {_where(path, i, lat, lon)} must be {rule.text()}")
    if "PCT_SAND" in fields and "PCT_CLAY" in fields:
        s = np.asarray(fields["PCT_SAND"], float)[..., cells] + np.asarray(fields["PCT_CLAY"], float)[..., cells]
        if (s > 100).any():
            j = np.argwhere(s > 100)[0]
            i = cells[j[-1]]
            raise UserError(f"{path}: PCT_SAND + PCT_CLAY = {s[tuple(j)]:.6g} at {_where(path, i, lat, lon)} "
                            "must be <= 100")


def surfdata_grid(ds, path) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of the gridcells of an open surface dataset, flattened in C order."""
    _, sdims, n = _form(ds, path)
    return _latlon(ds, sdims, n, path)


def surfdata_field(ds, name: str, path) -> np.ndarray:
    """One field of an open surface dataset as float64 (..., gridcell), raw values."""
    _, sdims, n = _form(ds, path)
    var = _spatial_var(ds, name, sdims, path)
    return np.array(var[...], dtype=float).reshape(var.shape[: var.ndim - len(sdims)] + (n,))


def surfdata_changes(ds, path, fields: Mapping[str, np.ndarray], cells=None) -> dict[str, tuple]:
    """`copy_and_modify` updates that write whole `fields` (..., gridcell) into the open surface dataset.

    Checked with `check_physical` at `cells` (default all), with the unchanged partner of
    PCT_SAND/PCT_CLAY read from `ds`, and cast to each variable's dtype; nothing is written.
    """
    _, sdims, n = _form(ds, path)
    lat, lon = _latlon(ds, sdims, n, path)
    merged = dict(fields)
    for other in ("PCT_SAND", "PCT_CLAY"):
        if other not in merged and ("PCT_SAND" in fields or "PCT_CLAY" in fields) and other in ds.variables:
            merged[other] = surfdata_field(ds, other, path)
    check_physical(merged, lat, lon, path, cells)
    changes = {}
    for name, full in fields.items():
        var = _spatial_var(ds, name, sdims, path)
        changes[name] = (Ellipsis, cast_to(var, full, name, path).reshape(var.shape))
    return changes


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
        lat, lon = surfdata_grid(ds, src)
        cells = resolve_gridcells(gridcells, lat, lon, src, tol_deg)
        new = {}
        for name, value in updates.items():
            full = surfdata_field(ds, name, src)
            v = np.asarray(value, dtype=float)
            want = full.shape[:-1] + (cells.size,)
            if v.ndim == 0 or v.shape == (cells.size,):
                v = np.broadcast_to(v, want)
            elif v.shape != want:
                raise UserError(f"{src}: variable {name}: value has shape {v.shape}, expected ({cells.size},) "
                                f"or {want} for {cells.size} gridcell(s)")
            full[..., cells] = v
            new[name] = full
        changes = surfdata_changes(ds, src, new, cells)
    where = "all gridcells" if gridcells is None else f"{cells.size} gridcell(s)"
    line = history or f"write_surfdata: set {', '.join(updates)} at {where} (from {src.name})"
    return copy_and_modify(src, dst, changes, history_line(line))


def natural_lai(monthly_lai, pct_nat_pft) -> np.ndarray:
    """(12, gridcell) LAI of the natural-vegetation landunit: MONTHLY_LAI (12, lsmpft, gridcell) of the
    natural PFTs averaged with the PCT_NAT_PFT (natpft, gridcell) weights; 0 where no PFT has weight."""
    lai = np.asarray(monthly_lai, dtype="f8")
    w = np.asarray(pct_nat_pft, dtype="f8")
    n_nat = w.shape[0]
    total = w.sum(0)
    num = np.einsum("tpg,pg->tg", lai[:, :n_nat], w)
    return np.where(total > 0, num / np.where(total > 0, total, 1.0), 0.0)


def lai_extremes(monthly_lai, pct_nat_pft) -> tuple[np.ndarray, np.ndarray]:
    """(LAI_MAX, LAI_MIN) per gridcell: max and min over the 12 months of `natural_lai`."""
    lai = natural_lai(monthly_lai, pct_nat_pft)
    return lai.max(0), lai.min(0)


def single_pft_vegetation(pft, lai, lsmpft: int = LSMPFT) -> tuple[np.ndarray, np.ndarray]:
    """(MONTHLY_LAI (12, lsmpft, gridcell), PCT_NAT_PFT (natpft, gridcell)) for gridcells covered by one
    natural PFT each: `pft` (gridcell,) indices 0..14 at 100 %, `lai` (12, gridcell) its monthly LAI;
    every other PFT has 0 % and LAI 0."""
    pft = np.atleast_1d(np.asarray(pft))
    lai = np.asarray(lai, dtype="f8")
    n = pft.size
    if pft.ndim != 1 or not np.issubdtype(pft.dtype, np.integer) or ((pft < 0) | (pft >= NATPFT)).any():
        raise UserError(f"single_pft_vegetation: pft must be integer natural PFT indices 0..{NATPFT - 1}")
    if lai.shape != (NMONTHS, n):
        raise UserError(f"single_pft_vegetation: lai has shape {lai.shape}, expected ({NMONTHS}, {n})")
    full = np.zeros((NMONTHS, lsmpft, n))
    full[:, pft, np.arange(n)] = lai
    pct = np.zeros((NATPFT, n))
    pct[pft, np.arange(n)] = 100.0
    return full, pct


def _vegetation(dst, n, monthly_lai, pct_nat_pft):
    """Checked (MONTHLY_LAI, PCT_NAT_PFT) float64 arrays for create_surfdata_1d (None if not given)."""
    lai = pct = None
    if pct_nat_pft is not None:
        pct = np.asarray(pct_nat_pft, dtype="f8")
        if pct.shape != (NATPFT, n):
            raise UserError(f"{dst}: PCT_NAT_PFT has shape {pct.shape}, expected (natpft={NATPFT}, {n})")
        if not np.isfinite(pct).all() or (pct < 0).any() or (pct > 100).any():
            raise UserError(f"{dst}: PCT_NAT_PFT must be finite and within 0..100")
        bad = np.flatnonzero(np.abs(pct.sum(0) - 100.0) > 1e-6)
        if bad.size:
            raise UserError(f"{dst}: PCT_NAT_PFT sums to {pct[:, bad[0]].sum():.6g} at gridcell {bad[0]}, "
                            "must be 100 (% of the natural vegetation landunit)")
    if monthly_lai is not None:
        if pct is None:
            raise UserError(f"{dst}: MONTHLY_LAI needs PCT_NAT_PFT (the PFT weights) as well")
        lai = np.asarray(monthly_lai, dtype="f8")
        if lai.ndim != 3 or lai.shape[0] != NMONTHS or lai.shape[2] != n or lai.shape[1] < NATPFT:
            raise UserError(f"{dst}: MONTHLY_LAI has shape {lai.shape}, expected (time={NMONTHS}, "
                            f"lsmpft>={NATPFT}, {n})")
        if not np.isfinite(lai).all() or (lai < 0).any():
            raise UserError(f"{dst}: MONTHLY_LAI must be finite and >= 0")
    return lai, pct


def _write_vegetation(ds, lai, pct) -> None:
    """natpft, time, PCT_NAT_PFT and MONTHLY_LAI as in CLM5 surfdata (FORMAT.md)."""
    ds.createDimension("natpft", NATPFT)
    v = ds.createVariable("natpft", "i4", ("natpft",))
    v.setncatts({"long_name": "indices of natural PFTs", "units": "index"})
    v[:] = np.arange(NATPFT, dtype="i4")
    v = ds.createVariable("PCT_NAT_PFT", "f8", ("natpft", "gridcell"))
    v.setncatts(PCT_NAT_PFT_ATTRS)
    v[:] = pct
    if lai is None:
        return
    ds.createDimension("time", NMONTHS)
    ds.createDimension("lsmpft", lai.shape[1])
    v = ds.createVariable("time", "i4", ("time",))
    v.setncatts({"long_name": "Calendar month", "units": "month"})
    v[:] = np.arange(1, NMONTHS + 1, dtype="i4")
    v = ds.createVariable("MONTHLY_LAI", "f8", ("time", "lsmpft", "gridcell"))
    v.setncatts(LAI_ATTRS)
    v[:] = lai


def create_surfdata_1d(dst: str | Path, lat, lon, fields: Mapping[str, object], area=None,
                       history: str | None = None, monthly_lai=None, pct_nat_pft=None) -> Path:
    """A NEW surface dataset in the CTSM 5.2+ 1-D `gridcell` form holding the given fields.

    Soil fields (PCT_SAND, PCT_CLAY, ORGANIC) are (nlevsoi=10, gridcell) float32; a per-gridcell
    array is repeated on all levels. Others (FMAX, zbedrock, SLOPE, STD_ELEV, SOIL_COLOR) are
    (gridcell). LATIXY, LONGXY and AREA (km^2, when given) are written with CTSM long names/units.
    Vegetation, optional: `pct_nat_pft` (natpft=15, gridcell) percent of the natural vegetation
    landunit (sums to 100) and `monthly_lai` (time=12, lsmpft, gridcell) written as CTSM's
    PCT_NAT_PFT and MONTHLY_LAI, float64 like CLM5 files (`single_pft_vegetation` builds both).
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
    lai, pct = _vegetation(dst, n, monthly_lai, pct_nat_pft)
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
            if pct is not None:
                _write_vegetation(ds, lai, pct)
    return dst


# ---------------------------------------------------------------- static fields at gridcells

# Surfdata rows and history gridcells of one grid sit at the same centres: a larger gap is a mismatch.
MATCH_TOL_DEG = 1e-3


def read_static(surfdata: Path | None, lat: np.ndarray, lon: np.ndarray):
    """static(gridcell, field) of a 1-D or (lsmlat, lsmlon) surfdata at the gridcells (lat, lon).

    Returns (values (gridcell, field), field names, units). Fields are vocabulary.STATIC_FIELDS
    present in the file; soil fields on nlevsoi are reduced by an unweighted mean over the levels
    (SOIL_LAYER_REDUCTION); LAI_MAX and LAI_MIN come from MONTHLY_LAI and PCT_NAT_PFT when the
    surfdata has MONTHLY_LAI (LAI_DERIVATION). Rows are matched by great-circle distance.
    """
    if surfdata is None:
        return np.zeros((np.size(lat), 0)), [], {}
    with NC_LOCK, netCDF4.Dataset(surfdata) as ds:
        fields = [f for f in STATIC_FIELDS if f in ds.variables]
        if "LATIXY" not in ds.variables or "LONGXY" not in ds.variables:
            raise UserError(f"{surfdata}: LATIXY/LONGXY not found; cannot match surfdata to history gridcells")
        slat = np.asarray(ds.variables["LATIXY"][...], dtype="f8").ravel()
        slon = np.asarray(ds.variables["LONGXY"][...], dtype="f8").ravel()
        cols, units = [], {}
        for f in fields:
            var = ds.variables[f]
            a = np.ma.filled(np.ma.asarray(var[...], dtype="f8"), np.nan)
            if "nlevsoi" in var.dimensions:
                a = a.mean(axis=var.dimensions.index("nlevsoi"))
            cols.append(a.ravel())
            units[f] = getattr(var, "units", "")
        if "MONTHLY_LAI" in ds.variables:
            lai, pct = _lai_inputs(ds, surfdata, slat.size)
            cols.extend(lai_extremes(lai, pct))
            fields += list(LAI_FIELDS)
            units.update(dict.fromkeys(LAI_FIELDS, getattr(ds.variables["MONTHLY_LAI"], "units", "")))
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    idx, _ = nearest_gridcell(lat, lon, slat, slon, max_deg=MATCH_TOL_DEG)
    if (idx < 0).any():
        g = int(np.flatnonzero(idx < 0)[0])
        raise UserError(f"{surfdata}: no surfdata gridcell at history gridcell {g} "
                        f"(lat {lat[g]:.4f}, lon {lon[g]:.4f}); mismatched gridcell sets")
    return np.stack([c[idx] for c in cols], axis=1) if cols else np.zeros((lat.size, 0)), fields, units


def static_field_names(surfdata: Path | None) -> list[str]:
    """The static fields `read_static` gives for this surfdata (LAI_MAX/LAI_MIN when it has MONTHLY_LAI)."""
    if surfdata is None:
        return []
    with NC_LOCK, netCDF4.Dataset(surfdata) as ds:
        names = [f for f in STATIC_FIELDS if f in ds.variables]
        return names + (list(LAI_FIELDS) if "MONTHLY_LAI" in ds.variables else [])


def _lai_inputs(ds, surfdata, n: int) -> tuple[np.ndarray, np.ndarray]:
    """MONTHLY_LAI as (time, lsmpft, n) and PCT_NAT_PFT as (natpft, n), spatial dims flattened in C order."""
    lai_var = ds.variables["MONTHLY_LAI"]
    if "PCT_NAT_PFT" not in ds.variables:
        raise UserError(f"{surfdata}: MONTHLY_LAI is present but PCT_NAT_PFT (its PFT weights) is not")
    pct_var = ds.variables["PCT_NAT_PFT"]
    lai = np.ma.filled(np.ma.asarray(lai_var[...], dtype="f8"), np.nan)
    pct = np.ma.filled(np.ma.asarray(pct_var[...], dtype="f8"), np.nan)
    if lai.ndim < 3 or lai.size != lai.shape[0] * lai.shape[1] * n or pct.size != pct.shape[0] * n:
        raise UserError(f"{surfdata}: MONTHLY_LAI {lai_var.dimensions} / PCT_NAT_PFT {pct_var.dimensions} "
                        f"do not cover the {n} gridcells of LATIXY")
    lai, pct = lai.reshape(lai.shape[0], lai.shape[1], n), pct.reshape(pct.shape[0], n)
    if lai.shape[0] != 12 or lai.shape[1] < pct.shape[0]:
        raise UserError(f"{surfdata}: MONTHLY_LAI has shape {lai.shape[:2]} over (time, lsmpft); expected 12 months "
                        f"and at least the {pct.shape[0]} natural PFTs of PCT_NAT_PFT")
    return lai, pct
