"""Regridding weights and the ESMF offline weight-file format (what CESM's map_*.nc files use).

A file holds `S`, `row`, `col` (1-based) on `n_s`, the grids' `xc/yc/xv/yv/mask/area/frac`
with suffix `_a` (source) / `_b` (destination) on `n_a`/`n_b`, `src_grid_dims`/`dst_grid_dims`
(SCRIP order, fastest first) and the global attributes ESMF_RegridWeightGen writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ppe_ingest.base.errors import UserError

from .grids import Grid

METHOD_NAMES = {  # ours -> (map_method, ESMF_regrid_method) as ESMF writes them
    "conserve": ("Conservative remapping", "First-order Conservative"),
    "bilinear": ("Bilinear remapping", "Bilinear"),
    "nearest_s2d": ("Nearest source to destination", "Nearest source to destination"),
    "nearest_d2s": ("Nearest destination to source", "Nearest destination to source"),
}


@dataclass
class Weights:
    """A sparse matrix from n_a source cells to n_b destination cells, with ESMF's metadata.

    `row`/`col` are 0-based here; files store them 1-based.
    """

    S: np.ndarray
    row: np.ndarray
    col: np.ndarray
    n_a: int
    n_b: int
    frac_a: np.ndarray | None = None
    frac_b: np.ndarray | None = None
    area_a: np.ndarray | None = None
    area_b: np.ndarray | None = None
    src: Grid | None = None
    dst: Grid | None = None
    method: str = "unknown"
    normalization: str = "none"
    attrs: dict = field(default_factory=dict)
    src_shape: tuple | None = None
    dst_shape: tuple | None = None

    def __post_init__(self):
        self.S = np.asarray(self.S, dtype=np.float64)
        self.row = np.asarray(self.row, dtype=np.int64)
        self.col = np.asarray(self.col, dtype=np.int64)
        if self.src_shape is None:
            self.src_shape = self.src.shape if self.src is not None else (self.n_a,)
        if self.dst_shape is None:
            self.dst_shape = self.dst.shape if self.dst is not None else (self.n_b,)

    @property
    def n_s(self) -> int:
        return self.S.size

    def matrix(self):
        """scipy CSR matrix of shape (n_b, n_a)."""
        from scipy.sparse import csr_matrix

        return csr_matrix((self.S, (self.row, self.col)), shape=(self.n_b, self.n_a))

    def mapped(self) -> np.ndarray:
        """True for destination cells that receive any weight."""
        return np.bincount(self.row, minlength=self.n_b) > 0

    def renormalize(self, normalization: str) -> Weights:
        """Convert conservative weights between 'destarea' and 'fracarea' using frac_b (as ESMF)."""
        if normalization == self.normalization:
            return self
        if normalization not in ("destarea", "fracarea") or self.normalization not in ("destarea", "fracarea"):
            raise UserError(f"cannot convert {self.normalization} weights to '{normalization}' "
                            "(destarea and fracarea conservative weights only)")
        if self.frac_b is None:
            raise UserError("these weights carry no frac_b; cannot change their normalization")
        fb = self.frac_b[self.row]
        S = self.S / fb if normalization == "fracarea" else self.S * fb
        return Weights(S, self.row, self.col, self.n_a, self.n_b, self.frac_a, self.frac_b, self.area_a,
                       self.area_b, self.src, self.dst, self.method, normalization, dict(self.attrs),
                       self.src_shape, self.dst_shape)


def _grid_vars(grid: Grid | None, n: int, shape, s: str, io: str, area, frac) -> dict:
    v = {}
    if grid is not None:
        v[f"xc_{s}"] = ((f"n_{s}",), grid.lon,
                        {"long_name": f"longitude of grid cell center ({io})", "units": "degrees"})
        v[f"yc_{s}"] = ((f"n_{s}",), grid.lat,
                        {"long_name": f"latitude of grid cell center ({io})", "units": "degrees"})
        if grid.has_corners:
            v[f"xv_{s}"] = ((f"n_{s}", f"nv_{s}"), grid.corner_lon,
                            {"long_name": f"longitude of grid cell vertices ({io})", "units": "degrees"})
            v[f"yv_{s}"] = ((f"n_{s}", f"nv_{s}"), grid.corner_lat,
                            {"long_name": f"latitude of grid cell vertices ({io})", "units": "degrees"})
        v[f"mask_{s}"] = ((f"n_{s}",), grid.mask.astype(np.int32),
                          {"long_name": f"domain mask ({io})", "units": "unitless"})
    if area is not None:
        v[f"area_{s}"] = ((f"n_{s}",), np.asarray(area, float),
                          {"long_name": f"area of cell ({io})", "units": "square radians"})
    if frac is not None:
        v[f"frac_{s}"] = ((f"n_{s}",), np.asarray(frac, float),
                          {"long_name": f"fraction of cell covered ({io})", "units": "unitless"})
    rank = "src_grid_rank" if s == "a" else "dst_grid_rank"
    v["src_grid_dims" if s == "a" else "dst_grid_dims"] = ((rank,), np.asarray(shape[::-1], dtype=np.int32))
    return v


def write_weights(w: Weights, path: os.PathLike | str, inputs=(), extra_attrs: dict | None = None) -> Path:
    """Write `w` as an ESMF offline weight file (temporary name, then rename)."""
    import xarray as xr

    from ppe_ingest.base.atomic import atomic_path

    try:
        from esm_emu import __version__ as version
    except Exception:
        version = "unknown"
    vars_ = {}
    vars_.update(_grid_vars(w.src, w.n_a, w.src_shape, "a", "input", w.area_a, w.frac_a))
    vars_.update(_grid_vars(w.dst, w.n_b, w.dst_shape, "b", "output", w.area_b, w.frac_b))
    vars_["col"] = (("n_s",), (w.col + 1).astype(np.int32), {"long_name": "column (source cell), 1-based"})
    vars_["row"] = (("n_s",), (w.row + 1).astype(np.int32), {"long_name": "row (destination cell), 1-based"})
    vars_["S"] = (("n_s",), w.S, {"long_name": "sparse matrix for mapping S:a->b"})
    map_method, esmf_method = METHOD_NAMES.get(w.method, (w.method, w.method))
    attrs = {
        "title": "ESMF Offline Regridding Weight Generator",
        "normalization": w.normalization if w.method == "conserve" else "N/A",
        "map_method": map_method,
        "ESMF_regrid_method": esmf_method,
        "conventions": "NCAR-CSM",
        "domain_a": str(w.src.source) if w.src is not None else "",
        "domain_b": str(w.dst.source) if w.dst is not None else "",
        "grid_file_src": str(w.src.source) if w.src is not None else "",
        "grid_file_dst": str(w.dst.source) if w.dst is not None else "",
        "CVS_revision": f"esm-emu {version} native weights (not ESMF)",
    }
    attrs.update(w.attrs)
    attrs.update(extra_attrs or {})
    ds = xr.Dataset(vars_, attrs=attrs)
    # ESMF files have no _FillValue on these variables
    enc = {k: {"_FillValue": None} for k in ds.variables}
    with atomic_path(path, inputs) as tmp:
        ds.to_netcdf(tmp, encoding=enc)
    return Path(path)


def read_weights(path: os.PathLike | str) -> Weights:
    """Read an ESMF/SCRIP weight file (the full CESM `map_*.nc` form or just S, row, col)."""
    import netCDF4

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: weight file not found")
    try:
        nc = netCDF4.Dataset(path)
    except OSError as e:
        raise UserError(f"{path}: cannot be read as netCDF ({e})") from None
    with nc:
        v = nc.variables
        names = ("S", "row", "col") if "S" in v else ("remap_matrix", "dst_address", "src_address")
        for name in names:
            if name not in v:
                raise UserError(f"{path}: not a weight file: variable '{name}' is missing")
        S = np.asarray(v[names[0]][:], dtype=np.float64)
        S = S[:, 0] if S.ndim == 2 else S
        row = np.asarray(v[names[1]][:], dtype=np.int64) - 1
        col = np.asarray(v[names[2]][:], dtype=np.int64) - 1
        dims = nc.dimensions
        n_a = (len(dims["n_a"]) if "n_a" in dims
               else len(dims["src_grid_size"]) if "src_grid_size" in dims else int(col.max()) + 1)
        n_b = (len(dims["n_b"]) if "n_b" in dims
               else len(dims["dst_grid_size"]) if "dst_grid_size" in dims else int(row.max()) + 1)
        if S.size and (row.min() < 0 or col.min() < 0 or row.max() >= n_b or col.max() >= n_a):
            raise UserError(f"{path}: row/col indices outside 1..n_b / 1..n_a")
        if S.shape != row.shape or S.shape != col.shape:
            raise UserError(f"{path}: {names[0]}, {names[1]} and {names[2]} differ in length "
                            f"({S.size}, {row.size}, {col.size})")
        if not np.isfinite(S).all():
            raise UserError(f"{path}: {names[0]} holds {int((~np.isfinite(S)).sum())} non-finite weight(s), "
                            f"the first at entry {int(np.flatnonzero(~np.isfinite(S))[0])}")

        def get(name):
            return np.asarray(v[name][:]) if name in v else None

        def deg(name):
            """A coordinate in degrees (SCRIP-era map files may state radians)."""
            x = get(name)
            if x is None:
                return None
            x = np.asarray(x, dtype=np.float64)
            return np.degrees(x) if "rad" in str(getattr(v[name], "units", "")).lower() else x

        def grid(s, n, shape):
            if f"xc_{s}" not in v or f"yc_{s}" not in v:
                return None
            xv, yv = deg(f"xv_{s}"), deg(f"yv_{s}")
            mask = get(f"mask_{s}")
            return Grid(deg(f"xc_{s}"), deg(f"yc_{s}"), xv, yv, None if mask is None else mask != 0,
                        shape, (), None, f"{path}:{s}", "weights")

        def shape(name, n):
            d = get(name)
            if d is None or np.prod(d) != n:
                return (n,)
            return tuple(int(x) for x in d[::-1])

        src_shape, dst_shape = shape("src_grid_dims", n_a), shape("dst_grid_dims", n_b)
        attrs = {k: nc.getncattr(k) for k in nc.ncattrs()}
        method = {"Conservative remapping": "conserve", "Bilinear remapping": "bilinear",
                  "Nearest source to destination": "nearest_s2d"}.get(str(attrs.get("map_method")),
                                                                      str(attrs.get("map_method", "unknown")))
        return Weights(S, row, col, n_a, n_b, get("frac_a"), get("frac_b"), get("area_a"), get("area_b"),
                       grid("a", n_a, src_shape), grid("b", n_b, dst_shape), method,
                       str(attrs.get("normalization", "none")), attrs, src_shape, dst_shape)
