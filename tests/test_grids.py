"""Grid readers: the same mesh from SCRIP, ESMF mesh and UGRID; domain and history files; masks."""
import numpy as np
import pytest

from coupler import grids
from ppe_ingest.base.errors import UserError


@pytest.fixture(scope="module")
def mesh3x3(shared_data):
    d = shared_data("regrid", "esmf_testdata")
    return {fmt: grids.read_grid(d / f"test_sph_3x3_{fmt}.nc", use_mask=False) for fmt in ("scrip", "esmf", "ugrid")}


def test_three_formats_of_one_mesh_give_the_same_cells(mesh3x3):
    ref = mesh3x3["esmf"]
    assert [g.format for g in mesh3x3.values()] == ["SCRIP", "ESMFMESH", "UGRID"]
    for g in mesh3x3.values():
        assert g.n == 10
        np.testing.assert_allclose(g.lon, ref.lon)
        np.testing.assert_allclose(g.lat, ref.lat)
        P, n, a = g.polygons()
        Pr, nr, ar = ref.polygons()
        np.testing.assert_array_equal(n, nr)  # triangles (padded SCRIP corners) become 3-gons
        np.testing.assert_allclose(P, Pr, atol=1e-15)
        np.testing.assert_allclose(a, ar, rtol=1e-14)
    assert list(n) == [4] * 8 + [3, 3]
    # a 1x1 degree square at the equator: exact great-circle area
    assert a[0] == pytest.approx(np.deg2rad(1) * np.sin(np.deg2rad(1)), rel=1e-4)


def test_masks_are_read_from_each_format(shared_data):
    d = shared_data("regrid", "esmf_testdata")
    scrip = grids.read_grid(d / "test_sph_3x3_scrip.nc")
    esmf = grids.read_grid(d / "test_sph_3x3_esmf.nc")
    ugrid = grids.read_grid(d / "test_sph_3x3_ugrid.nc", mask_var="elemMask")
    assert list(np.flatnonzero(~scrip.mask)) == [1, 6, 8]  # grid_imask == 0
    assert list(np.flatnonzero(~esmf.mask)) == [1]  # elementMask == 0
    assert list(np.flatnonzero(~ugrid.mask)) == [0]  # first time slice of elemMask is 0 there
    assert grids.read_grid(d / "test_sph_3x3_scrip.nc", use_mask=False).mask.all()


def test_global_grids_tile_the_sphere(shared_data):
    d = shared_data("regrid", "esmf_testdata")
    t42 = grids.read_grid(d / "T42_grid.nc")
    assert t42.shape == (64, 128) and t42.dims == ("lat", "lon")
    for name in ("T42_grid.nc", "ll2.5deg_grid.nc", "ne4np4-esmf.nc", "ne4np4-pentagons.nc"):
        g = grids.read_grid(d / name)
        assert g.cell_area().sum() == pytest.approx(4 * np.pi, rel=1e-12), name
    pent = grids.read_grid(d / "ne4np4-pentagons.nc")
    # our great-circle areas against the areas HOMME2SCRIP wrote into the file
    np.testing.assert_allclose(pent.cell_area(), pent.file_area, rtol=2e-4)


def test_ctsm_domain_and_history_files(shared_data):
    dom = grids.read_grid(shared_data("ctsm", "pecan", "domain.lnd.1x1pt-brazil_navy.090715.nc"))
    assert dom.format == "domain" and dom.shape == (1, 1) and dom.mask.all()
    assert dom.cell_area()[0] == pytest.approx(dom.file_area[0], rel=1e-3)
    hist = grids.read_grid(shared_data("ctsm", "pecan", "case.clm2.h0.2004-01-01-00000.nc"))
    assert hist.format == "CTSM history 1-D" and hist.n == 1
    assert hist.file_area[0] == pytest.approx(772.8229 * 1e6 / grids.R_EARTH_M**2, rel=1e-6)
    with pytest.raises(UserError, match="no cell corners"):
        hist.cell_area()


def test_rectilinear_from_xarray_uses_cf_bounds():
    import xarray as xr

    ds = xr.Dataset(coords={"lat": ("lat", [-45.0, 45.0], {"bounds": "lat_bnds"}),
                            "lon": ("lon", [45.0, 135.0, 225.0, 315.0])})
    ds["lat_bnds"] = (("lat", "nb"), [[-90.0, 0.0], [0.0, 90.0]])
    g = grids.from_xarray(ds)
    assert g.shape == (2, 4)
    np.testing.assert_allclose(g.cell_area(), np.pi / 2, rtol=1e-14)  # eight octants


def test_esmf_mesh_written_reads_back(tmp_path, mesh3x3):
    g = mesh3x3["scrip"]
    out = grids.write_esmf_mesh(g, tmp_path / "mesh.nc")
    back = grids.read_grid(out)
    assert back.format == "ESMFMESH"
    np.testing.assert_allclose(back.cell_area(), g.cell_area(), rtol=1e-12)
    np.testing.assert_allclose(back.polygons()[0], g.polygons()[0], atol=1e-12)


def test_bad_grid_files_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="not found"):
        grids.read_grid(tmp_path / "missing.nc")
    import xarray as xr

    xr.Dataset({"grid_center_lat": ("grid_size", [0.0])}).to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(UserError, match="grid_center_lon"):
        grids.read_grid(tmp_path / "bad.nc")
