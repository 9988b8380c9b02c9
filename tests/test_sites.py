"""Sites and basins to gridcells by area fraction and back."""
import json

import numpy as np
import pytest
import xarray as xr

from coupler import grids, sites
from ppe_ingest.base.errors import UserError


@pytest.fixture(scope="module")
def grid():
    return grids.from_bounds(np.arange(30.0, 50.01, 1.0), np.arange(-110.0, -80.0 + 0.01, 1.0))


def _square(lon0, lat0, d):
    return [[lon0, lat0], [lon0 + d, lat0], [lon0 + d, lat0 + d], [lon0, lat0 + d], [lon0, lat0]]


def test_points_to_cells_and_back(grid):
    m = sites.from_points(grid, [35.5, 35.6, 44.2], [-100.5, -100.4, -90.1], names=["US-A", "US-B", "US-C"])
    obs = xr.DataArray([1.0, 3.0, 5.0], dims="site")
    g = m.to_grid(obs)
    assert g.dims == ("lat", "lon")
    assert g.sel(lat=35.5, lon=-100.5).item() == 2.0  # two towers in one cell average
    assert g.sel(lat=44.5, lon=-90.5).item() == 5.0
    assert np.isnan(g.values).sum() == grid.n - 2
    field = xr.DataArray(np.arange(grid.n, dtype=float).reshape(grid.shape), dims=("lat", "lon"),
                         coords={"lat": g.lat, "lon": g.lon})
    back = m.to_units(field)
    assert list(back.site.values) == ["US-A", "US-B", "US-C"]
    assert back.sel(site="US-C").item() == field.sel(lat=44.5, lon=-90.5).item()
    with pytest.raises(UserError, match="US-X"):
        sites.from_points(grid, [0.0], [0.0], names=["US-X"])


def test_geojson_basins_by_exact_area_fraction(tmp_path, grid):
    gj = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"gauge_id": "A"},
         "geometry": {"type": "Polygon", "coordinates": [_square(-100.3, 35.2, 1.5)]}},
        {"type": "Feature", "properties": {"gauge_id": "B"},  # 2x2 degrees with a 1x1 hole
         "geometry": {"type": "Polygon", "coordinates": [_square(-95.0, 40.0, 2.0), _square(-94.5, 40.5, 1.0)[::-1]]}},
    ]}
    path = tmp_path / "basins.geojson"
    path.write_text(json.dumps(gj))
    m = sites.from_geojson(grid, path, name_property="gauge_id")
    assert m.names == ["A", "B"] and not m.approximate
    np.testing.assert_allclose(m.attrs["covered_fraction"], 1.0, rtol=1e-12)
    area = np.asarray(m.A.sum(axis=1)).ravel()
    np.testing.assert_allclose(area, m.attrs["basin_area_sr"], rtol=1e-12)
    assert m.A[0].nnz == 6  # lon -100.3..-98.8 spans 3 cells, lat 35.2..36.7 spans 2
    # basin A: cells weighted by overlap; a field linear in cell index is averaged by those weights
    field = xr.DataArray(np.arange(grid.n, dtype=float).reshape(grid.shape), dims=("lat", "lon"))
    vals = m.to_units(field)
    row = m.A[0].toarray().ravel()
    assert vals.sel(basin="A").item() == pytest.approx((row * np.arange(grid.n)).sum() / row.sum())
    np.testing.assert_allclose(m.to_units(field * 0 + 3.0).values, 3.0)
    # back to the grid: a basin value lands on the cells it covers
    g = m.to_grid(xr.DataArray([1.0, 2.0], dims="basin"))
    assert g.sel(lat=40.5, lon=-94.5).item() == 2.0
    assert np.isnan(g.sel(lat=45.5, lon=-85.5).item())


def test_basins_from_a_mesh_file(shared_data):
    basins = grids.read_grid(shared_data("regrid", "esmf_testdata", "test_sph_3x3_esmf.nc"), use_mask=False)
    fine = grids.from_bounds(np.arange(-1, 4.01, 0.25), np.arange(-1, 4.01, 0.25))
    m = sites.from_polygons(fine, basins)
    np.testing.assert_allclose(m.attrs["covered_fraction"], 1.0, rtol=1e-12)
    # the triangles (elements 9, 10) each cover half of the 1x1 degree square (2..3, 2..3)
    a = m.attrs["basin_area_sr"]
    assert a[8] == pytest.approx(a[9], rel=1e-3) and a[8] == pytest.approx(a[7] / 2, rel=1e-3)


def test_camels_centroid_area_approximation_says_so(shared_data, grid):
    topo = shared_data("camels_us", "neuralhydrology_test_data", "camels_us", "camels_attributes_v2.0",
                       "camels_topo.txt")
    import pandas as pd

    t = pd.read_csv(topo, sep=";", dtype={"gauge_id": str})
    world = grids.regular(180, 360, lon0=-180.0)
    m = sites.from_camels(world, topo)
    assert m.approximate and "approximation" in m.note and "gauge" in m.note
    got_km2 = np.asarray(m.A.sum(axis=1)).ravel() * grids.R_EARTH_M**2 / 1e6
    np.testing.assert_allclose(got_km2, t["area_gages2"].values, rtol=1e-10)
    out = m.to_units(xr.DataArray(np.ones(world.shape), dims=("lat", "lon")))
    assert "approximation" in out.attrs["mapping_note"]
    assert list(out.basin.values) == list(t["gauge_id"])
    with pytest.raises(UserError, match="gauge_id 99999999"):
        sites.from_camels(world, topo, gauge_ids=["99999999"])
