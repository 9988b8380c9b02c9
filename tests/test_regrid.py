"""Regridding: agreement with ESMF 8.4.2 weights, conservation, masks, weight files, dask."""
import numpy as np
import pytest
import xarray as xr

from coupler import grids
from coupler.esmpy_backend import available as esmpy_available
from coupler.regridder import Regridder, build_weights
from coupler.smm import apply_weights
from coupler.weights import read_weights, write_weights
from ppe_ingest.base.errors import UserError


def _field(g):
    lat, lon = np.deg2rad(g.lat), np.deg2rad(g.lon)
    return 2.0 + np.cos(lat) ** 2 * np.cos(3 * lon) + 0.5 * np.sin(lat)


def _rel_integral_error(w, f):
    g = apply_weights(w, f, keep_unmapped=True)
    ia = np.sum(f * w.area_a * w.frac_a)
    ib = np.sum(g * w.area_b * w.frac_b)
    return abs(ia - ib) / abs(ia)


@pytest.fixture(scope="module")
def esmf_data(shared_data):
    return shared_data("regrid", "esmf_testdata")


@pytest.fixture(scope="module")
def t42_ll(esmf_data):
    return grids.read_grid(esmf_data / "T42_grid.nc"), grids.read_grid(esmf_data / "ll2.5deg_grid.nc")


def test_native_weights_match_esmf_842(shared_data):
    """iris-esmf-regrid's stored ESMF 8.4.2 conservative weights (4x3 lat/lon -> 30-face UGRID)."""
    path = shared_data("regrid", "iris_esmf_regrid", "v0.9_regridder.nc")
    with xr.open_dataset(path) as ds:
        src = grids.from_bounds(ds.latitude_bnds.values, ds.longitude_bnds.values)
        ref_S = ds.regridder_weights.values
        ref_row, ref_col = ds.weight_matrix_rows.values, ds.weight_matrix_columns.values
        assert ds.attrs["ESMF_version"] == "8.4.2" and ds.attrs["normalization"] == "fracarea"
    dst = grids.read_grid(path)
    assert dst.format == "UGRID" and dst.n == 30
    w = build_weights(src, dst, "conserve", "fracarea")
    ours = w.matrix().toarray()
    ref = np.zeros((30, 12))
    nlat = 4  # iris flattens (lat, lon) in Fortran order: col = ilon * nlat + ilat
    ref[ref_row, (ref_col % nlat) * 3 + ref_col // nlat] = ref_S
    assert (ours != 0).sum() == ref_S.size
    # achieved: 1.7e-15 (round-off); the wide cells' great-circle edges matter here
    np.testing.assert_allclose(ours, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("direction", ["T42->2.5", "2.5->T42"])
def test_conservation_t42_and_25deg(t42_ll, direction):
    src, dst = t42_ll if direction == "T42->2.5" else t42_ll[::-1]
    w = build_weights(src, dst, "conserve")
    assert _rel_integral_error(w, _field(src)) < 1e-10
    np.testing.assert_allclose(w.frac_b, 1.0, atol=1e-12)
    # constant fields stay constant
    np.testing.assert_allclose(apply_weights(w, np.full(src.n, 7.5)), 7.5, rtol=1e-13)


@pytest.mark.parametrize("mesh", ["ne4np4-esmf.nc", "ne4np4-pentagons.nc"])
def test_conservation_ne4np4_and_latlon(esmf_data, mesh):
    ne = grids.read_grid(esmf_data / mesh)
    ll = grids.regular(45, 90)
    for w, f in ((build_weights(ne, ll), _field(ne)), (build_weights(ll, ne), _field(ll))):
        assert _rel_integral_error(w, f) < 1e-10
        np.testing.assert_allclose(apply_weights(w, np.ones(w.n_a)), 1.0, rtol=1e-13)


@pytest.mark.parametrize("method", ["conserve", "bilinear", "nearest_s2d"])
def test_scrip_esmf_ugrid_of_one_mesh_give_identical_weights(esmf_data, method):
    dst = grids.from_bounds(np.linspace(0, 3, 7), np.linspace(0, 3, 5))
    ws = [build_weights(grids.read_grid(esmf_data / f"test_sph_3x3_{f}.nc", use_mask=False), dst, method)
          for f in ("scrip", "esmf", "ugrid")]
    ref = ws[0].matrix().toarray()
    assert ref.any()
    for w in ws[1:]:
        np.testing.assert_allclose(w.matrix().toarray(), ref, atol=1e-14, rtol=0)


def test_masked_cells_stay_out(t42_ll):
    src, dst = t42_ll
    smask = np.ones(src.n, bool)
    smask[np.abs(src.lat) < 20] = False  # a band of masked source cells
    dmask = np.ones(dst.n, bool)
    dmask[:500] = False
    w = build_weights(src.with_mask(smask), dst.with_mask(dmask), "conserve")
    assert not np.isin(w.col, np.flatnonzero(~smask)).any()
    assert not np.isin(w.row, np.flatnonzero(~dmask)).any()
    f = np.where(smask, 1.0, 1e30)  # huge values on masked cells must not leak
    out = apply_weights(w, f)
    assert np.isnan(out[:500]).all()
    ok = np.isfinite(out)
    np.testing.assert_allclose(out[ok], 1.0, rtol=1e-12)  # fracarea: partial cells keep constants
    # dst cells straddling the masked band are only partly covered
    assert ((w.frac_b > 0.01) & (w.frac_b < 0.99)).any()
    wd = w.renormalize("destarea")
    part = (w.frac_b > 0) & (w.frac_b < 1)
    np.testing.assert_allclose(apply_weights(wd, np.ones(src.n))[part], w.frac_b[part], rtol=1e-12)
    for method in ("bilinear", "nearest_s2d"):
        wb = build_weights(src.with_mask(smask), dst, method)
        assert not np.isin(wb.col, np.flatnonzero(~smask)).any(), method


def test_weight_file_has_esmf_conventions_and_round_trips(tmp_path, esmf_data):
    src = grids.read_grid(esmf_data / "ne4np4-pentagons.nc")
    dst = grids.regular(18, 36)
    w = build_weights(src, dst, "conserve", "destarea")
    path = write_weights(w, tmp_path / "map_ne4_to_10x10.nc")
    with xr.open_dataset(path) as ds:
        for v in ("S", "row", "col", "frac_a", "frac_b", "area_a", "area_b", "xc_a", "yc_a", "xv_a", "yv_a",
                  "xc_b", "yc_b", "mask_a", "mask_b", "src_grid_dims", "dst_grid_dims"):
            assert v in ds, v
        assert ds.sizes["n_s"] == w.n_s and ds.sizes["n_a"] == src.n and ds.sizes["n_b"] == dst.n
        assert ds.row.min() == 1 and ds.col.min() == 1 and ds.row.max() <= dst.n  # 1-based
        assert list(ds.dst_grid_dims.values) == [36, 18]  # SCRIP order: lon fastest
        assert ds.attrs["normalization"] == "destarea" and ds.attrs["map_method"] == "Conservative remapping"
    back = read_weights(path)
    assert back.dst_shape == (18, 36) and back.method == "conserve"
    f = _field(src)
    np.testing.assert_array_equal(apply_weights(back, f), apply_weights(w, f))
    # reuse: a Regridder from the file needs no grids and gives the same field
    rg = Regridder(None, None, weights=path, normalization="destarea")
    da = xr.DataArray(f[None, :], dims=("time", "grid_size"))
    np.testing.assert_array_equal(rg(da).values.reshape(-1), apply_weights(w, f))


def test_minimal_esmf_weight_file_applies(esmf_data):
    w = read_weights(esmf_data / "weights_generic.nc")
    assert w.n_s == 36 and w.row.min() >= 0 and w.col.min() >= 0
    x = np.arange(w.n_a, dtype=float)
    expect = np.zeros(w.n_b)
    np.add.at(expect, w.row, w.S * x[w.col])
    np.testing.assert_allclose(apply_weights(w, x, keep_unmapped=True), expect)


def test_regridder_on_dask_dataset_is_lazy_and_equal(t42_ll):
    import dask.array as da

    src, dst = t42_ll
    rg = Regridder(src, dst, "conserve")
    data = np.random.default_rng(0).random((4, *src.shape))
    ds = xr.Dataset({"QRUNOFF": (("time", "lat", "lon"), da.from_array(data, chunks=(1, *src.shape))),
                     "time_only": (("time",), np.arange(4.0))})
    out = rg(ds)
    assert isinstance(out.QRUNOFF.data, da.Array)
    assert out.QRUNOFF.dims == ("time", "lat", "lon") and out.QRUNOFF.shape == (4, 72, 144)
    assert "time_only" in out
    np.testing.assert_allclose(out.QRUNOFF.values.reshape(4, -1), apply_weights(rg.weights, data.reshape(4, -1)))
    np.testing.assert_allclose(out.lat.values, np.arange(-88.75, 90, 2.5))
    # the sparse applier alone keeps dask arrays lazy, even with the horizontal axis chunked
    x = da.from_array(data.reshape(4, -1), chunks=(2, 1000))
    y = apply_weights(rg.weights, x)
    assert isinstance(y, da.Array) and y.shape == (4, dst.n)
    np.testing.assert_allclose(y.compute(), apply_weights(rg.weights, data.reshape(4, -1)))


def test_skipna_renormalises_over_missing_sources(t42_ll):
    src, dst = t42_ll
    rg = Regridder(src, dst, "conserve", skipna=True)
    f = np.full(src.n, 4.0)
    f[::7] = np.nan
    out = rg.regrid_array(f)
    np.testing.assert_allclose(out[np.isfinite(out)], 4.0, rtol=1e-12)
    assert np.isfinite(out).mean() > 0.9


def test_bilinear_and_nearest(t42_ll):
    src, dst = t42_ll
    f = _field(src)
    wb = build_weights(src, dst, "bilinear")
    assert wb.mapped().all()  # polar caps filled from the triangulation
    out = apply_weights(wb, f)
    assert np.abs(out - _field(dst)).max() < 0.02  # smooth field, ~2.8 degree source spacing
    np.testing.assert_allclose(apply_weights(wb, np.full(src.n, 3.0)), 3.0, rtol=1e-13)
    wn = build_weights(src, dst, "nearest_s2d")
    assert set(np.unique(apply_weights(wn, f))) <= set(f)


def test_bad_method_is_a_user_error(t42_ll):
    with pytest.raises(UserError, match="regrid method"):
        build_weights(*t42_ll, method="patchy")
    with pytest.raises(UserError, match="n_a"):
        apply_weights(build_weights(*t42_ll, method="nearest_s2d"), np.ones(5))


def test_esmpy_backend_matches_native(esmf_data):
    ok, why = esmpy_available()
    if not ok:
        pytest.skip(why)
    src = grids.read_grid(esmf_data / "ne4np4-pentagons.nc")
    dst = grids.regular(18, 36)
    wn = build_weights(src, dst, "conserve", backend="native")
    we = build_weights(src, dst, "conserve", backend="esmpy")
    np.testing.assert_allclose(we.matrix().toarray(), wn.matrix().toarray(), atol=1e-10)
