"""`Regridder`: xarray in, xarray out, with weights built (native or ESMPy) or read from a file.

    rg = Regridder(read_grid("T42.nc"), read_grid("ll2.5deg.nc"), "conserve")
    out = rg(ds)                 # Dataset or DataArray with the source grid's dims last or anywhere
    rg.to_netcdf("map_T42_to_2.5deg.nc")  # ESMF weight file, reusable by CESM and xESMF
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ppe_ingest.base.errors import UserError

from .grids import Grid
from .smm import apply_weights
from .weights import Weights, read_weights, write_weights

METHODS = ("conserve", "bilinear", "nearest_s2d", "nearest_d2s")
ALIASES = {"conservative": "conserve", "nearest": "nearest_s2d", "patch": None}


def build_weights(src: Grid, dst: Grid, method: str = "conserve", normalization: str = "fracarea",
                  backend: str = "auto", progress=None) -> Weights:
    """Weights from `src` to `dst` by `method`; backend 'native', 'esmpy' or 'auto' (native).

    'auto' stays native so results do not depend on what happens to be installed; ask for
    'esmpy' to use ESMF itself.
    """
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise UserError(f"regrid method '{method}': expected one of {', '.join(METHODS)}")
    if backend == "esmpy":
        from .esmpy_backend import esmpy_weights

        return esmpy_weights(src, dst, method, normalization)
    if backend not in ("auto", "native"):
        raise UserError(f"regrid backend '{backend}': expected native, esmpy or auto")
    if method == "conserve":
        from .conservative import conservative_weights

        return conservative_weights(src, dst, normalization, progress=progress)
    if method == "bilinear":
        from .bilinear import bilinear_weights

        return bilinear_weights(src, dst)
    from .nearest import nearest_weights

    return nearest_weights(src, dst, method.split("_")[1])


COORD_TOL_DEG = 1e-3  # how far (degrees) an input's cell centres may be from those the weights record
_LAT_NAMES = ("lat", "latitude", "yc", "LATIXY", "grid1d_lat", "nav_lat", "grid_center_lat")
_LON_NAMES = ("lon", "longitude", "xc", "LONGXY", "grid1d_lon", "nav_lon", "grid_center_lon")


def _input_latlon(obj, dims: tuple, sizes: dict):
    """(lat, lon) of the cells of `dims` in `obj` (flattened in `dims` order), or None when `obj`
    carries no such coordinates."""
    import xarray as xr

    have = set(obj.variables) if isinstance(obj, xr.Dataset) else set(obj.coords)
    n = int(np.prod([sizes[d] for d in dims]))
    for la, lo in zip(_LAT_NAMES, _LON_NAMES):
        if la not in have or lo not in have:
            continue
        a, b = obj[la], obj[lo]
        if not (set(a.dims) <= set(dims) and set(b.dims) <= set(dims)) or not a.dims or not b.dims:
            continue
        a2, b2 = xr.broadcast(a.reset_coords(drop=True), b.reset_coords(drop=True))
        if set(a2.dims) != set(dims):
            continue
        lat = np.asarray(a2.transpose(*dims).values, dtype=np.float64).ravel()
        lon = np.asarray(b2.transpose(*dims).values, dtype=np.float64).ravel()
        if lat.size == n:
            return lat, lon
    return None


class Regridder:
    """Regrid xarray objects from `src_grid` to `dst_grid`.

    weights: None (build them), a `Weights`, or the path of an ESMF weight file to reuse.
    normalization: for conservative weights, 'fracarea' (built by default) or 'destarea'; weights
    given or read keep theirs unless one is named here (converted with frac_b, as ESMF defines them).
    input_dims: the names of the source grid's dimensions in the data when they differ from
    `src_grid.dims` (e.g. ('lat', 'lon') for a SCRIP grid read with ('nj', 'ni')).
    skipna / na_thres: see `smm.apply_weights`.
    coord_tol_deg: data that carry cell-centre coordinates are checked against those the weights
    record (ESMF's xc_a/yc_a); a mismatch beyond this many degrees is refused (`check_coordinates`).
    """

    def __init__(self, src_grid: Grid | None, dst_grid: Grid | None, method: str = "conserve",
                 weights: Weights | os.PathLike | str | None = None, normalization: str | None = None,
                 backend: str = "auto", input_dims: tuple | None = None, output_dims: tuple | None = None,
                 skipna: bool = False, na_thres: float = 1.0, coord_tol_deg: float = COORD_TOL_DEG):
        if weights is None:
            if src_grid is None or dst_grid is None:
                raise UserError("Regridder: give both grids, or a weight file")
            weights = build_weights(src_grid, dst_grid, method, normalization or "fracarea", backend)
        weights_path = None
        if weights is not None and not isinstance(weights, Weights):
            weights_path = weights
            weights = read_weights(weights)
        if isinstance(weights, Weights) and weights.normalization in ("destarea", "fracarea") \
                and normalization in ("destarea", "fracarea") and weights.normalization != normalization \
                and weights.frac_b is not None:
            weights = weights.renormalize(normalization)
        self.weights = weights
        self.src_grid = src_grid if src_grid is not None else weights.src
        self.dst_grid = dst_grid if dst_grid is not None else weights.dst
        for g, n, side in ((self.src_grid, weights.n_a, "source"), (self.dst_grid, weights.n_b, "destination")):
            if g is not None and g.n != n:
                raise UserError(f"the {side} grid has {g.n} cells, the weights {n}")
        self.method = weights.method
        self.skipna, self.na_thres = skipna, na_thres
        self.coord_tol_deg = coord_tol_deg
        self.weights_source = str(weights_path) if weights_path is not None else "the weights"
        self.input_dims = (tuple(input_dims) if input_dims
                           else (self.src_grid.dims if self.src_grid is not None else None))
        if output_dims:
            self.output_dims = tuple(output_dims)
        elif self.dst_grid is not None:
            self.output_dims = self.dst_grid.dims
        else:
            self.output_dims = ("lat", "lon") if len(weights.dst_shape) == 2 else ("n_b",)
        self.dst_shape = self.dst_grid.shape if self.dst_grid is not None else weights.dst_shape
        self.src_shape = self.src_grid.shape if self.src_grid is not None else weights.src_shape

    def __repr__(self):
        return (f"Regridder({self.method}, {self.weights.normalization}, {self.weights.n_a} -> "
                f"{self.weights.n_b} cells, {self.weights.n_s} weights)")

    def to_netcdf(self, path: os.PathLike | str) -> Path:
        """Write the weights as an ESMF weight file."""
        return write_weights(self.weights, path)

    def _find_dims(self, da) -> tuple:
        dims = self.input_dims
        if dims and all(d in da.dims for d in dims):
            return tuple(dims)
        # fall back to trailing dims whose sizes multiply to n_a
        for k in (1, 2):
            if da.ndim >= k and int(np.prod(da.shape[-k:])) == self.weights.n_a:
                return tuple(da.dims[-k:])
        return ()

    def check_coordinates(self, obj, source=None) -> None:
        """Refuse data on another grid than the weights': where `obj` (a Dataset or DataArray) carries
        cell-centre coordinates for the dims the weights apply to, and the weights record their source
        grid (xc_a/yc_a), every centre must agree within `coord_tol_deg` degrees (longitudes modulo 360).
        `source` names the data (default: the file it was read from)."""
        import xarray as xr

        src = self.weights.src
        if src is None:
            return
        source = source or obj.encoding.get("source") or getattr(obj, "name", None) or "input"
        variables = obj.data_vars.items() if isinstance(obj, xr.Dataset) else [(obj.name, obj)]
        done = set()
        for name, da in variables:
            dims = self._find_dims(da)
            if not dims or dims in done:
                continue
            done.add(dims)
            ll = _input_latlon(obj, dims, dict(da.sizes))
            if ll is None or ll[0].size != src.n:
                continue
            lat, lon = ll
            with np.errstate(invalid="ignore"):
                dlat = np.abs(lat - src.lat)
                dlon = np.abs((lon - src.lon + 180.0) % 360.0 - 180.0)
                dlon = np.where(np.abs(lat) >= 90.0 - self.coord_tol_deg, 0.0, dlon)  # poles: any longitude
                bad = ~((dlat <= self.coord_tol_deg) & (dlon <= self.coord_tol_deg))
            bad &= np.isfinite(src.lat) & np.isfinite(src.lon)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise UserError(
                    f"{source}: {name}: {int(bad.sum())} of {src.n} cells are not on the grid of "
                    f"{self.weights_source}: cell {i} is at lat {lat[i]:.6g}, lon {lon[i]:.6g} in the input "
                    f"and lat {src.lat[i]:.6g}, lon {src.lon[i]:.6g} in the weights (tolerance "
                    f"{self.coord_tol_deg:g} degrees)")

    def regrid_array(self, x):
        """numpy/dask array with the flattened source grid last -> (..., n_b)."""
        return apply_weights(self.weights, x, self.skipna, self.na_thres)

    def __call__(self, obj):
        import xarray as xr

        if isinstance(obj, (xr.Dataset, xr.DataArray)):
            self.check_coordinates(obj)
        if isinstance(obj, xr.Dataset):
            out = {}
            for name, da in obj.data_vars.items():
                dims = self._find_dims(da)
                if dims:
                    out[name] = self._regrid_da(da, dims)
                elif not any(d in da.dims for d in (self.input_dims or ())):
                    out[name] = da
            return xr.Dataset(out, attrs=dict(obj.attrs))
        if isinstance(obj, xr.DataArray):
            dims = self._find_dims(obj)
            if not dims:
                raise UserError(f"{obj.name or 'DataArray'}: no dimensions {self.input_dims} matching the "
                                f"source grid ({self.weights.n_a} cells) in {obj.dims}")
            return self._regrid_da(obj, dims)
        raise UserError(f"Regridder: expected an xarray Dataset or DataArray, got {type(obj).__name__}")

    def _regrid_da(self, da, dims):
        import xarray as xr

        if int(np.prod([da.sizes[d] for d in dims])) != self.weights.n_a:
            raise UserError(f"{da.name}: dims {dims} hold {int(np.prod([da.sizes[d] for d in dims]))} cells, "
                            f"the weights expect {self.weights.n_a}")
        dst_shape, out_dims = self.dst_shape, self.output_dims
        nb = self.weights.n_b

        def func(x):
            y = self.regrid_array(x.reshape(*x.shape[: x.ndim - len(dims)], -1))
            return y.reshape(*y.shape[:-1], *dst_shape)

        tmp_dims = tuple(f"__out_{d}" for d in out_dims)
        res = xr.apply_ufunc(
            func, da, input_core_dims=[list(dims)], output_core_dims=[list(tmp_dims)],
            dask="parallelized", output_dtypes=[np.float64],
            dask_gufunc_kwargs={"output_sizes": dict(zip(tmp_dims, dst_shape)), "allow_rechunk": True},
            keep_attrs=True,
        )
        res = res.rename(dict(zip(tmp_dims, out_dims)))
        if self.dst_grid is not None:
            res = res.assign_coords({k: v for k, v in self.dst_grid.coords().items()})
        assert int(np.prod(dst_shape)) == nb
        res.attrs["regrid_method"] = f"{self.method} ({self.weights.normalization})"
        return res
