"""Sites (points) and basins (polygons) to gridcells by area fraction, and back.

An `AreaMap` holds the overlap of each unit (site or basin) with each gridcell. It carries
observations and inferred parameters from units to the grid (area-weighted mean over the units
covering a cell) and gridded fields to units (area-weighted mean over a basin's cells).
Basins come as polygon files (SCRIP unstructured, ESMF mesh, UGRID), GeoJSON, or, where only
an outlet/centroid and an area are known (CAMELS attribute tables), as an approximation that
takes the cells nearest the given point until they hold the basin's area, and says so.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from ppe_ingest.base.errors import UserError

from . import sphere
from .conservative import overlap_areas
from .grids import R_EARTH_M, Grid

APPROX_NOTE = ("approximation: the basin outline is unknown; the cells nearest the given point were "
               "taken until they hold the basin's area (centroid + area, not an overlay of the outline)")


@dataclass
class AreaMap:
    """Overlap weights A (n_units x n_cells) between units and the cells of `grid`.

    For basins A holds overlap areas (sr); for points a 1 at the cell holding the point.
    """

    A: csr_matrix
    grid: Grid
    names: list
    kind: str  # "points", "polygons" or "centroid+area"
    approximate: bool = False
    note: str = ""
    attrs: dict = field(default_factory=dict)

    @property
    def unit_dim(self) -> str:
        return "site" if self.kind == "points" else "basin"

    def cell_fraction(self) -> np.ndarray:
        """(n_units, n_cells) share of each unit in each cell (rows sum to 1 where mapped)."""
        tot = np.asarray(self.A.sum(axis=1)).ravel()
        return np.asarray(self.A.multiply(1.0 / np.where(tot > 0, tot, 1.0)[:, None]).todense())

    def to_units(self, da, dim: str | None = None):
        """Gridded DataArray (grid dims anywhere) -> values per unit: area-weighted cell mean."""
        return self._apply(da, self.A, tuple(self.grid.dims), (dim or self.unit_dim,), len(self.names),
                           coords={dim or self.unit_dim: list(self.names)})

    def to_grid(self, da, dim: str | None = None):
        """Values per unit (dim `site`/`basin`) -> gridded DataArray; cells no unit covers are NaN."""
        dim = dim or self.unit_dim
        if dim not in da.dims:
            raise UserError(f"{da.name or 'DataArray'}: no '{dim}' dimension to map to the grid")
        if da.sizes[dim] != len(self.names):
            raise UserError(f"{da.name or 'DataArray'}: {da.sizes[dim]} {dim}s, the map has {len(self.names)}")
        coords = {k: v for k, v in self.grid.coords().items()}
        return self._apply(da, self.A.T.tocsr(), (dim,), tuple(self.grid.dims), self.grid.shape, coords=coords)

    def _apply(self, da, M, in_dims, out_dims, out_shape, coords):
        import xarray as xr

        for d in in_dims:
            if d not in da.dims:
                raise UserError(f"{da.name or 'DataArray'}: dimension '{d}' missing (has {da.dims})")
        out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)

        def func(x):
            flat = x.reshape(*x.shape[: x.ndim - len(in_dims)], -1)
            valid = np.isfinite(flat)
            num = (M @ np.where(valid, flat, 0.0).reshape(-1, flat.shape[-1]).T).T
            den = (M @ valid.reshape(-1, flat.shape[-1]).T.astype(float)).T
            y = np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)
            return y.reshape(*flat.shape[:-1], *out_shape)

        tmp = [f"__o_{d}" for d in out_dims]
        res = xr.apply_ufunc(func, da, input_core_dims=[list(in_dims)], output_core_dims=[tmp],
                             dask="parallelized", output_dtypes=[np.float64],
                             dask_gufunc_kwargs={"output_sizes": dict(zip(tmp, out_shape))}, keep_attrs=True)
        res = res.rename(dict(zip(tmp, out_dims))).assign_coords(coords)
        if self.approximate:
            res.attrs["mapping_note"] = self.note
        return res


def locate_points(grid: Grid, lat, lon) -> np.ndarray:
    """Index of the active cell holding each point (-1 if none); nearest centre for grids without corners."""
    pts = sphere.lonlat_to_xyz(lon, lat).reshape(-1, 3)
    active = np.flatnonzero(grid.mask)
    if active.size == 0:
        raise UserError(f"{grid.source or 'grid'}: no active cells")
    if not grid.has_corners:
        _, k = cKDTree(grid.centers_xyz()[active]).query(pts)
        return active[k]
    P, nv, _ = grid.polygons()
    c, r = sphere.centroid_radius(P[active], nv[active])
    hits = cKDTree(c).query_ball_point(pts, 2 * np.sin(min(r.max() + 1e-9, np.pi) / 2))
    found = np.full(len(pts), -1)
    for i, h in enumerate(hits):
        for k in h:
            Q = P[active[k]]
            d = np.einsum("vk,k->v", np.cross(Q, np.roll(Q, -1, axis=0)), pts[i])
            zero = np.linalg.norm(Q - np.roll(Q, -1, axis=0), axis=-1) < sphere.VERTEX_TOL
            if (d[~zero] >= -1e-12).all():
                found[i] = active[k]
                break
    return found


def from_points(grid: Grid, lat, lon, names=None) -> AreaMap:
    """Sites (flux towers, stations) to the cells that hold them."""
    lat, lon = np.atleast_1d(lat).astype(float), np.atleast_1d(lon).astype(float)
    idx = locate_points(grid, lat, lon)
    names = list(names) if names is not None else [f"site{i}" for i in range(lat.size)]
    bad = np.flatnonzero(idx < 0)
    if bad.size:
        raise UserError(f"site '{names[bad[0]]}' ({lat[bad[0]]}, {lon[bad[0]]}) lies in no active cell of "
                        f"{grid.source or 'the grid'}")
    A = csr_matrix((np.ones(lat.size), (np.arange(lat.size), idx)), shape=(lat.size, grid.n))
    return AreaMap(A, grid, names, "points")


def from_polygons(grid: Grid, basins: Grid, names=None, signs=None, groups=None) -> AreaMap:
    """Basin polygons (a Grid whose cells are basins) to gridcells by exact overlap area.

    `groups` maps polygons to units (multi-part basins), `signs` = -1 marks holes.
    """
    i_cell, j_poly, area = overlap_areas(basins, grid)  # basins are clipped by convex gridcells
    n_poly = basins.n
    groups = np.arange(n_poly) if groups is None else np.asarray(groups)
    signs = np.ones(n_poly) if signs is None else np.asarray(signs, float)
    n_units = int(groups.max()) + 1 if groups.size else 0
    A = csr_matrix((area * signs[j_poly], (groups[j_poly], i_cell)), shape=(n_units, grid.n))
    A.sum_duplicates()
    A.data = np.clip(A.data, 0, None)
    A.eliminate_zeros()
    names = list(names) if names is not None else [f"basin{i}" for i in range(n_units)]
    m = AreaMap(A, grid, names, "polygons")
    poly_area = np.bincount(groups, basins.cell_area() * signs, minlength=n_units)
    m.attrs["basin_area_sr"] = poly_area
    m.attrs["covered_fraction"] = np.asarray(A.sum(axis=1)).ravel() / np.where(poly_area > 0, poly_area, 1)
    return m


def read_geojson(path: os.PathLike | str, name_property: str | None = None):
    """Polygons of a GeoJSON file as (Grid of rings, unit names, signs, groups); holes get sign -1."""
    path = Path(path)
    try:
        gj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable GeoJSON file ({e})") from None
    feats = gj.get("features", [gj] if gj.get("type") == "Feature" else [])
    rings, signs, groups, names = [], [], [], []
    for k, f in enumerate(feats):
        geom = f.get("geometry") or {}
        props = f.get("properties") or {}
        if geom.get("type") == "Polygon":
            parts = [geom["coordinates"]]
        elif geom.get("type") == "MultiPolygon":
            parts = geom["coordinates"]
        else:
            raise UserError(f"{path}: feature {k} has geometry type {geom.get('type')!r}; "
                            "Polygon or MultiPolygon expected")
        for poly in parts:
            for r, ring in enumerate(poly):
                ring = np.asarray(ring, float)[:, :2]
                if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
                    ring = ring[:-1]
                if len(ring) < 3:
                    raise UserError(f"{path}: feature {k} has a ring with fewer than 3 points")
                rings.append(ring)
                signs.append(1.0 if r == 0 else -1.0)
                groups.append(len(names))
        names.append(str(props.get(name_property, k)) if name_property else str(props.get("name", props.get("id", k))))
    if not rings:
        raise UserError(f"{path}: no polygons found")
    nv = max(len(r) for r in rings)
    clon = np.array([np.concatenate([r[:, 0], np.repeat(r[-1:, 0], nv - len(r))]) for r in rings])
    clat = np.array([np.concatenate([r[:, 1], np.repeat(r[-1:, 1], nv - len(r))]) for r in rings])
    g = Grid(clon.mean(1), clat.mean(1), clon, clat, source=str(path), format="GeoJSON")
    return g, names, np.array(signs), np.array(groups)


def from_geojson(grid: Grid, path, name_property: str | None = None) -> AreaMap:
    """Basins from GeoJSON Polygon/MultiPolygon features (lon/lat; holes subtracted)."""
    basins, names, signs, groups = read_geojson(path, name_property)
    return from_polygons(grid, basins, names, signs, groups)


def from_centroids(grid: Grid, lat, lon, area_km2, names=None) -> AreaMap:
    """Basins known only by a point (outlet or centroid) and an area: the approximation.

    The cells nearest the point are taken in order of distance until their area reaches the
    basin's; the last one contributes only the remainder. The map's `approximate` flag and
    `note` (copied to every result's attrs) say so.
    """
    lat, lon = np.atleast_1d(lat).astype(float), np.atleast_1d(lon).astype(float)
    area_sr = np.atleast_1d(area_km2).astype(float) * 1e6 / R_EARTH_M**2
    if (area_sr <= 0).any() or not np.isfinite(area_sr).all():
        raise UserError("basin areas must be positive and finite (area_km2)")
    active = np.flatnonzero(grid.mask)
    if grid.has_corners:
        cell_area = grid.cell_area()
    elif grid.file_area is not None:
        cell_area = grid.file_area
    else:
        raise UserError(f"{grid.source or 'grid'}: cell areas are needed (corners or an area variable)")
    tree = cKDTree(grid.centers_xyz()[active])
    pts = sphere.lonlat_to_xyz(lon, lat)
    rows, cols, vals = [], [], []
    for u in range(lat.size):
        k = 4
        while True:
            k = min(k, active.size)
            _, idx = tree.query(pts[u], k=k)
            idx = np.atleast_1d(idx)
            cells = active[idx]
            cum = np.cumsum(cell_area[cells])
            if cum[-1] >= area_sr[u] or k == active.size:
                break
            k *= 4
        n = int(np.searchsorted(cum, area_sr[u])) + 1
        n = min(n, cells.size)
        take = cell_area[cells[:n]].copy()
        take[-1] -= max(cum[n - 1] - area_sr[u], 0.0)
        rows += [u] * n
        cols += list(cells[:n])
        vals += list(take)
    A = csr_matrix((vals, (rows, cols)), shape=(lat.size, grid.n))
    names = list(names) if names is not None else [f"basin{i}" for i in range(lat.size)]
    return AreaMap(A, grid, names, "centroid+area", approximate=True, note=APPROX_NOTE)


def from_camels(grid: Grid, topo_file: os.PathLike | str, gauge_ids=None, area: str = "area_gages2") -> AreaMap:
    """CAMELS basins from `camels_topo.txt` (gauge_lat, gauge_lon, area in km^2): the approximation.

    CAMELS gives the gauge (outlet) location, not the centroid; the map says so.
    """
    import pandas as pd

    topo_file = Path(topo_file)
    try:
        t = pd.read_csv(topo_file, sep=";", dtype={"gauge_id": str})
    except (OSError, pd.errors.ParserError) as e:
        raise UserError(f"{topo_file}: cannot read the CAMELS topography table ({e})") from None
    for c in ("gauge_id", "gauge_lat", "gauge_lon", area):
        if c not in t.columns:
            raise UserError(f"{topo_file}: column '{c}' missing")
    if gauge_ids is not None:
        want = [str(g).zfill(8) for g in gauge_ids]
        missing = sorted(set(want) - set(t["gauge_id"]))
        if missing:
            raise UserError(f"{topo_file}: gauge_id {missing[0]} not found")
        t = t.set_index("gauge_id").loc[want].reset_index()
    m = from_centroids(grid, t["gauge_lat"].values, t["gauge_lon"].values, t[area].values, t["gauge_id"].tolist())
    m.note = APPROX_NOTE + "; the point is the CAMELS gauge (outlet) location"
    return m
