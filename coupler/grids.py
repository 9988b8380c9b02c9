"""Horizontal grids of CESM components read from the files that describe them.

One `Grid` type for every source: SCRIP (regular and unstructured), ESMF mesh (`ESMFMESH`),
UGRID, CTSM domain files, CTSM 1-D history (`grid1d_lat/lon` or `lat/lon` on `lndgrid`) and
rectilinear lat/lon coordinates of an xarray object. Cells are flattened in C order of the
grid's logical `shape` (SCRIP's lon-fastest order for 2-D grids).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ppe_ingest.base.errors import UserError

from . import sphere

# CTSM's Earth radius (shr_const_mod SHR_CONST_REARTH), m: converts km^2 areas to steradians.
R_EARTH_M = 6.37122e6


@dataclass
class Grid:
    """Cell centres, corners (degrees) and mask of a horizontal grid, flattened to `n` cells."""

    lon: np.ndarray
    lat: np.ndarray
    corner_lon: np.ndarray | None = None  # (n, nv), padded by repeating the last corner
    corner_lat: np.ndarray | None = None
    mask: np.ndarray | None = None  # (n,) bool, True where the cell is active
    shape: tuple = ()
    dims: tuple = ()
    file_area: np.ndarray | None = None  # steradians, as stated by the file (not recomputed)
    source: str = ""
    format: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.lon = np.asarray(self.lon, dtype=np.float64).ravel()
        self.lat = np.asarray(self.lat, dtype=np.float64).ravel()
        n = self.lon.size
        if self.lat.size != n:
            raise UserError(f"{self.source or 'grid'}: {self.lat.size} latitudes for {n} longitudes")
        if self.mask is None:
            self.mask = np.ones(n, dtype=bool)
        self.mask = np.asarray(self.mask).ravel().astype(bool)
        if not self.shape:
            self.shape = (n,)
        self.shape = tuple(int(s) for s in self.shape)
        if int(np.prod(self.shape)) != n:
            raise UserError(f"{self.source or 'grid'}: shape {self.shape} does not hold {n} cells")
        if not self.dims:
            self.dims = ("lat", "lon") if len(self.shape) == 2 else ("gridcell",)
        if self.corner_lon is not None:
            self.corner_lon = np.asarray(self.corner_lon, dtype=np.float64).reshape(n, -1)
            self.corner_lat = np.asarray(self.corner_lat, dtype=np.float64).reshape(n, -1)

    @property
    def n(self) -> int:
        return self.lon.size

    @property
    def has_corners(self) -> bool:
        return self.corner_lon is not None

    def centers_xyz(self) -> np.ndarray:
        return sphere.lonlat_to_xyz(self.lon, self.lat)

    def polygons(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Counter-clockwise corner unit vectors (n, V, 3), vertex counts and exact areas (sr)."""
        if "poly" not in self._cache:
            if not self.has_corners:
                raise UserError(f"{self.source or 'grid'}: the grid has no cell corners "
                                "(needed for conservative regridding or area fractions)")
            P = sphere.lonlat_to_xyz(self.corner_lon, self.corner_lat)
            P, nv = sphere.dedupe(P)
            P, area = sphere.orient_ccw(P)
            area[nv < 3] = 0.0
            self._cache["poly"] = (P, nv, area)
        return self._cache["poly"]

    def cell_area(self) -> np.ndarray:
        """Area (steradians) of each cell with great-circle edges, as ESMF computes it."""
        return self.polygons()[2]

    def with_mask(self, mask) -> Grid:
        """The same grid with another mask (True = active); `None` makes every cell active."""
        m = np.ones(self.n, dtype=bool) if mask is None else np.asarray(mask).ravel().astype(bool)
        g = replace(self, mask=m, _cache=self._cache)
        return g

    def coords(self) -> dict:
        """lat/lon coordinates for xarray output on this grid."""
        if len(self.shape) == 2:
            lat2 = self.lat.reshape(self.shape)
            lon2 = self.lon.reshape(self.shape)
            if np.allclose(lat2, lat2[:, :1]) and np.allclose(lon2, lon2[:1, :]):
                return {self.dims[0]: (self.dims[0], lat2[:, 0], {"units": "degrees_north"}),
                        self.dims[1]: (self.dims[1], lon2[0, :], {"units": "degrees_east"})}
            names = ("lat", "lon") if not {"lat", "lon"} & set(self.dims) else ("yc", "xc")
            return {names[0]: (self.dims, lat2, {"units": "degrees_north"}),
                    names[1]: (self.dims, lon2, {"units": "degrees_east"})}
        if {"lat", "lon"} & set(self.dims):
            return {}
        return {"lat": (self.dims, self.lat.reshape(self.shape), {"units": "degrees_north"}),
                "lon": (self.dims, self.lon.reshape(self.shape), {"units": "degrees_east"})}


# ----------------------------------------------------------------------------- constructors

def from_bounds(lat_bounds, lon_bounds, lat=None, lon=None, dims=("lat", "lon"), mask=None,
                source="rectilinear") -> Grid:
    """A rectilinear grid from 1-D cell edges (n+1,) or CF bounds (n, 2), degrees."""
    lat_b = _edges(np.asarray(lat_bounds, dtype=np.float64))
    lon_b = _edges(np.asarray(lon_bounds, dtype=np.float64))
    lat_c = 0.5 * (lat_b[:-1] + lat_b[1:]) if lat is None else np.asarray(lat, dtype=np.float64)
    lon_c = 0.5 * (lon_b[:-1] + lon_b[1:]) if lon is None else np.asarray(lon, dtype=np.float64)
    ny, nx = lat_c.size, lon_c.size
    LON, LAT = np.meshgrid(lon_c, lat_c)
    # corners counter-clockwise: (w,s) (e,s) (e,n) (w,n)
    clon = np.stack([lon_b[:-1][None, :].repeat(ny, 0), lon_b[1:][None, :].repeat(ny, 0),
                     lon_b[1:][None, :].repeat(ny, 0), lon_b[:-1][None, :].repeat(ny, 0)], -1)
    clat = np.stack([lat_b[:-1][:, None].repeat(nx, 1), lat_b[:-1][:, None].repeat(nx, 1),
                     lat_b[1:][:, None].repeat(nx, 1), lat_b[1:][:, None].repeat(nx, 1)], -1)
    return Grid(LON, LAT, clon.reshape(-1, 4), clat.reshape(-1, 4), mask=mask, shape=(ny, nx),
                dims=tuple(dims), source=source, format="rectilinear")


def regular(nlat: int, nlon: int, lon0: float = 0.0, dims=("lat", "lon")) -> Grid:
    """A global regular lat/lon grid with `nlat` x `nlon` cells starting at `lon0` (cell edge)."""
    return from_bounds(np.linspace(-90, 90, nlat + 1), lon0 + np.linspace(0, 360, nlon + 1),
                       dims=dims, source=f"regular {nlat}x{nlon}")


def _edges(b: np.ndarray) -> np.ndarray:
    if b.ndim == 2 and b.shape[1] == 2:
        return np.concatenate([b[:, 0], b[-1:, 1]])
    if b.ndim == 1:
        return b
    raise UserError(f"cell bounds must be (n+1,) edges or (n, 2) bounds, got shape {b.shape}")


def _guess_edges(c: np.ndarray, clip=None) -> np.ndarray:
    mid = 0.5 * (c[:-1] + c[1:])
    first = c[0] - (mid[0] - c[0]) if c.size > 1 else c[0] - 0.5
    last = c[-1] + (c[-1] - mid[-1]) if c.size > 1 else c[0] + 0.5
    e = np.concatenate([[first], mid, [last]])
    return np.clip(e, *clip) if clip else e


LAT_NAMES = ("lat", "latitude", "lsmlat", "nlat", "y", "yc", "LATIXY")
LON_NAMES = ("lon", "longitude", "lsmlon", "nlon", "x", "xc", "LONGXY")


def from_xarray(obj, lat: str | None = None, lon: str | None = None, mask=None) -> Grid:
    """A rectilinear grid from 1-D lat/lon coordinates of a Dataset or DataArray.

    Cell edges come from a CF `bounds` attribute when present, else from midpoints (latitudes
    clipped to +-90).
    """
    lat = lat or next((n for n in LAT_NAMES if n in obj.coords or (hasattr(obj, "data_vars") and n in obj)), None)
    lon = lon or next((n for n in LON_NAMES if n in obj.coords or (hasattr(obj, "data_vars") and n in obj)), None)
    if lat is None or lon is None:
        raise UserError("no 1-D latitude/longitude coordinates found (looked for "
                        f"{', '.join(LAT_NAMES)} / {', '.join(LON_NAMES)})")
    la, lo = obj[lat], obj[lon]
    if la.ndim != 1 or lo.ndim != 1:
        raise UserError(f"{lat}/{lon}: only 1-D (rectilinear) coordinates can be read this way")

    def bounds(c, clip):
        b = c.attrs.get("bounds")
        if b and hasattr(obj, "data_vars") and b in obj:
            return obj[b].values
        return _guess_edges(c.values.astype(np.float64), clip)

    return from_bounds(bounds(la, (-90.0, 90.0)), bounds(lo, None), la.values, lo.values,
                       dims=(la.dims[0], lo.dims[0]), mask=mask, source=f"{lat}/{lon} coordinates")


# ----------------------------------------------------------------------------- file readers

def _degrees(values, units: str | None, where: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if units and "rad" in units.lower():
        return np.rad2deg(v)
    return v


def _pad_conn(conn: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Replace fill entries of a connectivity table by the last valid node of each row."""
    conn = np.array(conn, dtype=np.int64)
    valid = conn >= 0
    if counts is not None:
        valid &= np.arange(conn.shape[1])[None, :] < np.asarray(counts)[:, None]
    nvalid = valid.sum(1)
    if (nvalid < 3).any():
        raise UserError(f"element {int(np.argmax(nvalid < 3))} has fewer than 3 nodes")
    last = np.take_along_axis(conn, (nvalid - 1)[:, None], 1)
    return np.where(np.arange(conn.shape[1])[None, :] < nvalid[:, None], conn, last)


def _read_scrip(ds, path, use_mask):
    g = ds
    units = g["grid_center_lat"].attrs.get("units", "degrees")
    lat = _degrees(g["grid_center_lat"].values, units, path)
    lon = _degrees(g["grid_center_lon"].values, g["grid_center_lon"].attrs.get("units", units), path)
    clat = clon = None
    if "grid_corner_lat" in g:
        cu = g["grid_corner_lat"].attrs.get("units", units)
        clat = _degrees(g["grid_corner_lat"].values, cu, path)
        clon = _degrees(g["grid_corner_lon"].values, g["grid_corner_lon"].attrs.get("units", cu), path)
        bad = ~np.isfinite(clat) | ~np.isfinite(clon) | (np.abs(clat) > 1e3)
        if bad.any():  # fill values: repeat the previous corner
            for j in range(1, clat.shape[1]):
                clat[:, j] = np.where(bad[:, j], clat[:, j - 1], clat[:, j])
                clon[:, j] = np.where(bad[:, j], clon[:, j - 1], clon[:, j])
    dims = np.atleast_1d(g["grid_dims"].values) if "grid_dims" in g else np.array([lat.size])
    if dims.dtype.kind == "f" and not np.isfinite(dims).all():
        raise UserError(f"{path}: grid_dims {dims.tolist()} is not a list of sizes")
    dims = dims.astype(np.int64)
    # an unstructured grid (rank 1) may carry grid_dims = [1] as a placeholder (ESMF ignores it there,
    # e.g. its ne4np4-pentagons.nc); any other disagreement with the number of cells is refused
    placeholder = dims.size == 1 and int(dims[0]) == 1
    if dims.size not in (1, 2) or (dims < 1).any() or (int(np.prod(dims)) != lat.size and not placeholder):
        raise UserError(f"{path}: grid_dims {dims.tolist()} does not match grid_size {lat.size} "
                        "(their product must equal the number of cells)")
    if dims.size == 2:
        shape = (int(dims[1]), int(dims[0]))  # SCRIP dims are (nlon, nlat)
        la, lo = lat.reshape(shape), lon.reshape(shape)
        rect = np.allclose(la, la[:, :1]) and np.allclose(lo, lo[:1, :])
        dnames = ("lat", "lon") if rect else ("nj", "ni")
    else:
        shape, dnames = (lat.size,), ("grid_size",)
    mask = None
    if use_mask and "grid_imask" in g:
        mask = np.nan_to_num(np.asarray(g["grid_imask"].values, dtype=float)) != 0
    area = g["grid_area"].values.astype(np.float64) if "grid_area" in g else None
    return Grid(lon, lat, clon, clat, mask, shape, dnames, area, str(path), "SCRIP")


def _read_esmfmesh(ds, path, use_mask):
    units = ds["nodeCoords"].attrs.get("units", "degrees")
    nodes = _degrees(ds["nodeCoords"].values, units, path)
    conn = np.asarray(ds["elementConn"].values)
    conn = np.where(np.isfinite(conn), conn, -1).astype(np.int64) if conn.dtype.kind == "f" else conn.astype(np.int64)
    start = int(ds["elementConn"].attrs.get("start_index", 1))
    counts = ds["numElementConn"].values.astype(int) if "numElementConn" in ds else None
    conn = _pad_conn(np.where(conn >= start, conn - start, -1), counts)
    clon, clat = nodes[conn, 0], nodes[conn, 1]
    if "centerCoords" in ds:
        cc = _degrees(ds["centerCoords"].values, ds["centerCoords"].attrs.get("units", units), path)
        lon, lat = cc[:, 0], cc[:, 1]
    else:
        lon, lat = _poly_centres(clon, clat)
    mask = ds["elementMask"].values != 0 if use_mask and "elementMask" in ds else None
    area = ds["elementArea"].values.astype(np.float64) if "elementArea" in ds else None
    return Grid(lon, lat, clon, clat, mask, (lon.size,), ("elementCount",), area, str(path), "ESMFMESH")


def _read_ugrid(ds, path, use_mask, mask_var=None):
    topo = next(v for v in ds.variables if ds[v].attrs.get("cf_role") == "mesh_topology")
    t = ds[topo].attrs
    try:
        xname, yname = t["node_coordinates"].split()[:2]
        cname = t["face_node_connectivity"]
    except KeyError as e:
        raise UserError(f"{path}: UGRID mesh '{topo}' lacks the attribute {e.args[0]}") from None
    x, y = ds[xname], ds[yname]
    if x.attrs.get("standard_name") == "latitude" or "lat" in xname.lower() and "lon" not in xname.lower():
        x, y = y, x
    nlon, nlat = _degrees(x.values, x.attrs.get("units"), path), _degrees(y.values, y.attrs.get("units"), path)
    cv = ds[cname]
    conn = np.asarray(cv.values)
    fill = cv.attrs.get("_FillValue", cv.encoding.get("_FillValue", -1))
    conn = np.where(np.isfinite(conn), conn, -1) if conn.dtype.kind == "f" else conn
    conn = np.where(conn == fill, -1, conn).astype(np.int64)
    start = int(cv.attrs.get("start_index", 0))
    conn = _pad_conn(np.where(conn >= start, conn - start, -1))
    clon, clat = nlon[conn], nlat[conn]
    lon = lat = None
    if "face_coordinates" in t:
        fx, fy = t["face_coordinates"].split()[:2]
        if fx in ds and fy in ds:
            a, b = ds[fx], ds[fy]
            if a.attrs.get("standard_name") == "latitude":
                a, b = b, a
            lon, lat = _degrees(a.values, a.attrs.get("units"), path), _degrees(b.values, b.attrs.get("units"), path)
    if lon is None:
        lon, lat = _poly_centres(clon, clat)
    mask = None
    if use_mask and mask_var:
        if mask_var not in ds:
            raise UserError(f"{path}: mask variable '{mask_var}' not found")
        m = np.asarray(ds[mask_var].values, dtype=float)
        mask = np.nan_to_num(m.reshape(-1, lon.size)[0]) != 0
    return Grid(lon, lat, clon, clat, mask, (lon.size,), (cv.dims[0],), None, str(path), "UGRID")


def _read_domain(ds, path, use_mask):
    xc, yc = ds["xc"].values, ds["yc"].values
    shape = xc.shape
    clon = clat = None
    if "xv" in ds and "yv" in ds:
        clon, clat = ds["xv"].values.reshape(xc.size, -1), ds["yv"].values.reshape(xc.size, -1)
    mask = ds["mask"].values != 0 if use_mask and "mask" in ds else None
    area = ds["area"].values.astype(np.float64).ravel() if "area" in ds else None
    dims = ds["xc"].dims if len(shape) == 2 else (ds["xc"].dims[0],)
    return Grid(xc, yc, clon, clat, mask, shape, dims, area, str(path), "domain")


def _read_history1d(ds, path, use_mask):
    if "grid1d_lon" in ds:
        lon, lat = ds["grid1d_lon"], ds["grid1d_lat"]
    else:
        lon, lat = ds["lon"], ds["lat"]
    area = None
    if "area" in ds and ds["area"].dims == lon.dims:
        a = np.asarray(ds["area"].values, dtype=np.float64)
        units = ds["area"].attrs.get("units", "km^2")
        area = a * 1e6 / R_EARTH_M**2 if "km" in units else a
    mask = None
    if use_mask and "landmask" in ds and ds["landmask"].dims == lon.dims:
        mask = np.nan_to_num(ds["landmask"].values.astype(float)) != 0
    return Grid(lon.values, lat.values, None, None, mask, (lon.size,), lon.dims, area, str(path), "CTSM history 1-D")


def detect_format(ds) -> str:
    """Name the grid format of an open Dataset: SCRIP, ESMFMESH, UGRID, domain, history1d, rectilinear."""
    if "grid_center_lat" in ds:
        return "SCRIP"
    if "nodeCoords" in ds and "elementConn" in ds:
        return "ESMFMESH"
    if any(ds[v].attrs.get("cf_role") == "mesh_topology" for v in ds.variables):
        return "UGRID"
    if "xc" in ds and "yc" in ds:
        return "domain"
    if "grid1d_lat" in ds or ("lndgrid" in ds.dims and "lat" in ds and ds["lat"].dims == ("lndgrid",)):
        return "history1d"
    return "rectilinear"


def read_grid(path: os.PathLike | str, format: str | None = None, use_mask: bool = True,
              mask_var: str | None = None) -> Grid:
    """Read a grid file (format detected unless given). `use_mask=False` makes all cells active."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: grid file not found")
    try:
        ds = xr.open_dataset(path, decode_times=False, mask_and_scale=False)
    except Exception as e:  # any reader failure is a bad input file
        raise UserError(f"{path}: cannot be read as netCDF ({e.__class__.__name__}: {e})") from None
    with ds:
        fmt = format or detect_format(ds)
        try:
            if fmt == "SCRIP":
                g = _read_scrip(ds, path, use_mask)
            elif fmt == "ESMFMESH":
                g = _read_esmfmesh(ds, path, use_mask)
            elif fmt == "UGRID":
                g = _read_ugrid(ds, path, use_mask, mask_var)
            elif fmt == "domain":
                g = _read_domain(ds, path, use_mask)
            elif fmt == "history1d":
                g = _read_history1d(ds, path, use_mask)
            elif fmt == "rectilinear":
                g = from_xarray(ds, mask=None)
                if use_mask and mask_var:
                    g = g.with_mask(ds[mask_var].values != 0)
            else:
                raise UserError(f"{path}: unknown grid format '{fmt}' "
                                "(SCRIP, ESMFMESH, UGRID, domain, history1d, rectilinear)")
        except KeyError as e:
            raise UserError(f"{path}: {fmt} grid file lacks the variable {e.args[0]}") from None
    g.source = str(path)
    validate_grid(g, path)
    return g


# the variables holding each format's centres and corners, to name them in messages
_COORD_NAMES = {"SCRIP": ("grid_center_lat", "grid_center_lon", "grid_corner_lat", "grid_corner_lon"),
                "ESMFMESH": ("centerCoords", "centerCoords", "nodeCoords", "nodeCoords"),
                "UGRID": ("face latitude", "face longitude", "node latitude", "node longitude"),
                "domain": ("yc", "xc", "yv", "xv"),
                "CTSM history 1-D": ("grid1d_lat", "grid1d_lon", "", "")}


def validate_grid(g: Grid, path=None) -> Grid:
    """Refuse a grid CTSM or ESMF would reject: non-finite centres or corners, latitudes beyond
    +-90 degrees, longitudes outside -360..720, a mask or area of another size, negative or
    non-finite areas. One check for every format `read_grid` reads; returns `g`."""
    where = str(path or g.source or "grid")
    lat_name, lon_name, clat_name, clon_name = _COORD_NAMES.get(g.format, ("latitude", "longitude",
                                                                           "corner latitude", "corner longitude"))

    def check(values, name, lo, hi, what):
        v = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            i = np.unravel_index(int(np.flatnonzero(bad)[0]), v.shape)[0]
            raise UserError(f"{where}: {name} of cell {i} is {v[bad][0]} (every {what} must be a finite number)")
        out = (v < lo - 1e-6) | (v > hi + 1e-6)
        if out.any():
            i = np.unravel_index(int(np.flatnonzero(out)[0]), v.shape)[0]
            raise UserError(f"{where}: {name} of cell {i} is {v[out][0]:.6g}, outside {lo:g}..{hi:g} degrees")

    check(g.lat, lat_name, -90.0, 90.0, "latitude")
    check(g.lon, lon_name, -360.0, 720.0, "longitude")
    if g.corner_lat is not None:
        check(g.corner_lat, clat_name, -90.0, 90.0, "corner latitude")
        check(g.corner_lon, clon_name, -360.0, 720.0, "corner longitude")
    if g.mask.size != g.n:
        raise UserError(f"{where}: the mask has {g.mask.size} values for {g.n} cells")
    if g.file_area is not None:
        a = np.asarray(g.file_area, dtype=np.float64).ravel()
        if a.size != g.n:
            raise UserError(f"{where}: the cell areas have {a.size} values for {g.n} cells")
        bad = ~np.isfinite(a) | (a < 0)
        if bad.any():
            raise UserError(f"{where}: cell {int(np.flatnonzero(bad)[0])} has area {a[bad][0]} "
                            "(areas must be finite and >= 0)")
    return g


def _poly_centres(clon, clat):
    P = sphere.lonlat_to_xyz(clon, clat)
    P, n = sphere.dedupe(P)
    c, _ = sphere.centroid_radius(P, n)
    return sphere.xyz_to_lonlat(c)


# ----------------------------------------------------------------------------- writers

def write_scrip(grid: Grid, path, title: str | None = None) -> Path:
    """Write `grid` as a SCRIP grid file (degrees; grid_area as exact great-circle areas)."""
    import xarray as xr

    from ppe_ingest.base.atomic import atomic_path

    dims = list(grid.shape[::-1]) if len(grid.shape) == 2 else [grid.n]
    vars_ = {
        "grid_dims": (("grid_rank",), np.asarray(dims, dtype=np.int32)),
        "grid_center_lat": (("grid_size",), grid.lat, {"units": "degrees"}),
        "grid_center_lon": (("grid_size",), grid.lon, {"units": "degrees"}),
        "grid_imask": (("grid_size",), grid.mask.astype(np.int32), {"units": "unitless"}),
    }
    if grid.has_corners:
        vars_["grid_corner_lat"] = (("grid_size", "grid_corners"), grid.corner_lat, {"units": "degrees"})
        vars_["grid_corner_lon"] = (("grid_size", "grid_corners"), grid.corner_lon, {"units": "degrees"})
        vars_["grid_area"] = (("grid_size",), grid.cell_area(), {"units": "radians^2", "long_name": "area weights"})
    ds = xr.Dataset(vars_, attrs={"title": title or f"SCRIP grid written by esm-emu from {grid.source}"})
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp)
    return Path(path)


def write_esmf_mesh(grid: Grid, path, inputs=()) -> Path:
    """Write `grid` as an ESMF unstructured mesh file (the `*_ESMFmesh*.nc` CMEPS and CDEPS read)."""
    import xarray as xr

    from ppe_ingest.base.atomic import atomic_path

    P, nv, area = grid.polygons()
    lon, lat = sphere.xyz_to_lonlat(P)
    # merge coincident corners into shared nodes
    key = np.round(P.reshape(-1, 3) / sphere.VERTEX_TOL * 10).astype(np.int64)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(P.shape[:2])
    nodes = np.zeros((uniq.shape[0], 2))
    nodes[inv.ravel(), 0] = lon.ravel()
    nodes[inv.ravel(), 1] = lat.ravel()
    conn = np.where(np.arange(P.shape[1])[None, :] < nv[:, None], inv + 1, -1).astype(np.int32)
    ds = xr.Dataset({
        "nodeCoords": (("nodeCount", "coordDim"), nodes, {"units": "degrees"}),
        "elementConn": (("elementCount", "maxNodePElement"), conn,
                        {"long_name": "Node Indices that define the element connectivity", "_FillValue": np.int32(-1)}),
        "numElementConn": (("elementCount",), nv.astype(np.int32), {"long_name": "Number of nodes per element"}),
        "centerCoords": (("elementCount", "coordDim"), np.stack([grid.lon % 360.0, grid.lat], 1), {"units": "degrees"}),
        "elementArea": (("elementCount",), area, {"units": "radians^2", "long_name": "area weights"}),
        "elementMask": (("elementCount",), grid.mask.astype(np.int32)),
    }, attrs={"gridType": "unstructured mesh", "version": "0.9", "inputFile": str(grid.source)})
    for v in ("nodeCoords", "centerCoords", "elementArea", "elementMask", "numElementConn"):
        ds[v].encoding["_FillValue"] = None
    with atomic_path(path, inputs) as tmp:
        ds.to_netcdf(tmp)
    return Path(path)
