"""Surface datasets: both forms on the real CLM5 surfdata and a 1-D one; validity checks."""
from __future__ import annotations

import hashlib

import netCDF4
import numpy as np
import pytest
from test_paramfile import assert_same_except

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.surfdata import create_surfdata_1d, read_surfdata, write_surfdata

BRAZIL = ("ctsm", "pecan", "surfdata_1x1_brazil_16pfts_Irrig_CMIP6_simyr2000_c171214.nc")
FIELDS = ("PCT_SAND", "PCT_CLAY", "ORGANIC", "FMAX", "zbedrock", "SLOPE", "STD_ELEV")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_read_2d_form(shared_data):
    ds = read_surfdata(shared_data(*BRAZIL))
    assert ds.sizes == {"nlevsoi": 10, "gridcell": 1}
    assert ds.PCT_SAND.dims == ("nlevsoi", "gridcell") and ds.FMAX.dims == ("gridcell",)
    assert float(ds.lat[0]) == -7.0 and float(ds.lon[0]) == -55.0
    assert ds.FMAX.attrs["long_name"] == "maximum fractional saturated area"


def test_write_2d_keeps_everything_else(shared_data, tmp_path):
    src = shared_data(*BRAZIL)
    before = sha(src)
    dst = tmp_path / "surfdata_x.nc"
    clay = np.arange(10, 20, dtype=float)[:, None]
    write_surfdata(src, dst, {"FMAX": 0.3, "PCT_CLAY": clay, "zbedrock": [2.5]}, gridcells=[(-7.2, -55.1)])
    assert sha(src) == before
    assert_same_except(src, dst, {"FMAX", "PCT_CLAY", "zbedrock"})
    with netCDF4.Dataset(dst) as ds:
        assert ds.file_format == "NETCDF3_64BIT_OFFSET"
        assert "write_surfdata" in ds.history  # the CLM5.0 file had none: one is started
    new = read_surfdata(dst)
    assert float(new.FMAX[0]) == 0.3 and float(new.zbedrock[0]) == 2.5
    assert np.array_equal(new.PCT_CLAY.values[:, 0], clay[:, 0])


def _one_d_from_real(shared_data, tmp_path, n=3):
    real = read_surfdata(shared_data(*BRAZIL))
    lat = np.array([-7.0, 10.0, 45.5])[:n]
    lon = np.array([305.0, 20.0, 250.0])[:n]
    fields = {f: np.repeat(real[f].values, n, axis=-1) for f in FIELDS}
    return create_surfdata_1d(tmp_path / "surfdata_1d.nc", lat, lon, fields, area=np.full(n, 1e4)), real


def test_create_1d_from_real_fields(shared_data, tmp_path):
    p, real = _one_d_from_real(shared_data, tmp_path)
    with netCDF4.Dataset(p) as ds:
        assert set(ds.dimensions) == {"gridcell", "nlevsoi"} and len(ds.dimensions["gridcell"]) == 3
        assert ds["PCT_SAND"].dimensions == ("nlevsoi", "gridcell") and ds["PCT_SAND"].dtype == np.float32
        assert ds["SLOPE"].dtype == np.float32 and ds["FMAX"].dimensions == ("gridcell",)
        assert ds["ORGANIC"].units.startswith("kg/m3") and ds["LATIXY"].units == "degrees north"
        assert ds["AREA"].units == "km^2"
    back = read_surfdata(p)
    assert np.allclose(back.PCT_SAND.values[:, 1], real.PCT_SAND.values[:, 0])
    assert np.allclose(back.FMAX.values, real.FMAX.values[0])
    assert list(back.lat.values) == [-7.0, 10.0, 45.5]


def test_write_1d_by_index_and_latlon_keeps_float32(shared_data, tmp_path):
    src, _ = _one_d_from_real(shared_data, tmp_path)
    before = sha(src)
    dst = tmp_path / "out.nc"
    write_surfdata(src, dst, {"PCT_SAND": [30.0, 20.0], "SLOPE": [5.0, 6.0]}, gridcells=[2, 0])
    assert sha(src) == before
    assert_same_except(src, dst, {"PCT_SAND", "SLOPE"})
    new = read_surfdata(dst)
    assert new.PCT_SAND.dtype == np.float32
    assert np.all(new.PCT_SAND.values[:, 2] == 30) and np.all(new.PCT_SAND.values[:, 0] == 20)
    assert new.SLOPE.values[1] == read_surfdata(src).SLOPE.values[1]
    write_surfdata(src, tmp_path / "ll.nc", {"FMAX": [0.1]}, gridcells=[(45.0, -110.2)])  # lon 250 == -110
    assert read_surfdata(tmp_path / "ll.nc").FMAX.values[2] == pytest.approx(0.1)


@pytest.mark.parametrize("updates, words", [
    ({"PCT_SAND": [101.0, 10, 10]}, ["PCT_SAND", "gridcell 0", "lat -7"]),
    ({"PCT_CLAY": [10, 10, -1.0]}, ["PCT_CLAY", "gridcell 2", "lat 45.5"]),
    ({"PCT_SAND": [10, 80, 10], "PCT_CLAY": [10, 30, 10]}, ["PCT_SAND + PCT_CLAY", "gridcell 1"]),
    ({"FMAX": [0.5, 1.2, 0.5]}, ["FMAX", "gridcell 1"]),
    ({"zbedrock": [0.0, 1, 1]}, ["zbedrock", "gridcell 0"]),
    ({"ORGANIC": [1, 1, -3]}, ["ORGANIC", "gridcell 2"]),
    ({"NOPE": [1, 1, 1]}, ["NOPE", "surfdata_1d.nc"]),
    ({"FMAX": [0.1, 0.2]}, ["FMAX", "shape"]),
])
def test_invalid_values_refused(shared_data, tmp_path, updates, words):
    src, _ = _one_d_from_real(shared_data, tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(UserError) as e:
        write_surfdata(src, out / "bad.nc", updates)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    assert list(out.iterdir()) == []


def test_sand_clay_sum_checked_against_existing_values(shared_data, tmp_path):
    # PCT_CLAY in the real file is 35..45, so sand 60 breaks the sum
    with pytest.raises(UserError, match="PCT_SAND \\+ PCT_CLAY .* gridcell 0 \\(lat -7, lon -55\\)"):
        write_surfdata(shared_data(*BRAZIL), tmp_path / "x.nc", {"PCT_SAND": 60.0})


def test_latlon_too_far_and_overwrite(shared_data, tmp_path):
    src, _ = _one_d_from_real(shared_data, tmp_path)
    with pytest.raises(UserError, match="no gridcell within"):
        write_surfdata(src, tmp_path / "x.nc", {"FMAX": [0.2]}, gridcells=[(0.0, 0.0)])
    with pytest.raises(UserError, match="overwrite"):
        write_surfdata(src, src, {"FMAX": 0.2})


def test_create_refuses_invalid(tmp_path):
    with pytest.raises(UserError, match="PCT_SAND \\+ PCT_CLAY .* gridcell 1"):
        create_surfdata_1d(tmp_path / "s.nc", [0, 1], [0, 1], {"PCT_SAND": [50, 70], "PCT_CLAY": [20, 40]})
    with pytest.raises(UserError, match="field FOO"):
        create_surfdata_1d(tmp_path / "s.nc", [0], [0], {"FOO": [1]})
    assert list(tmp_path.iterdir()) == []


def test_monthly_lai_written_and_read_as_ctsm_does(tmp_path):
    from ppe_ingest.ctsmio.surfdata import LSMPFT, lai_extremes, single_pft_vegetation

    months = np.arange(12)
    lai12 = np.stack([1.0 + 3.0 * np.sin(np.pi * months / 11), 0.5 + 0.1 * months], 1)   # (12, 2)
    lai, pct = single_pft_vegetation(np.array([7, 14]), lai12)
    p = create_surfdata_1d(tmp_path / "s.nc", [40.0, 10.0], [-100.0, 20.0], {"FMAX": [0.3, 0.2]},
                           monthly_lai=lai, pct_nat_pft=pct)
    with netCDF4.Dataset(p) as ds:
        assert {k: len(v) for k, v in ds.dimensions.items()} == {"gridcell": 2, "nlevsoi": 10, "natpft": 15,
                                                                 "time": 12, "lsmpft": LSMPFT}
        v = ds["MONTHLY_LAI"]
        assert v.dimensions == ("time", "lsmpft", "gridcell") and v.dtype == np.float64
        assert v.long_name == "monthly leaf area index" and v.units == "unitless"
        assert ds["PCT_NAT_PFT"].dimensions == ("natpft", "gridcell") and ds["PCT_NAT_PFT"].dtype == np.float64
        assert list(ds["time"][:]) == list(range(1, 13)) and list(ds["natpft"][:]) == list(range(15))
        raw = v[:]
    assert np.array_equal(raw[:, 7, 0], lai12[:, 0]) and np.array_equal(raw[:, 14, 1], lai12[:, 1])
    assert np.count_nonzero(raw) == np.count_nonzero(lai12)                  # every other PFT has LAI 0
    back = read_surfdata(p, fields=("MONTHLY_LAI", "PCT_NAT_PFT"))
    assert back.MONTHLY_LAI.dims == ("time", "lsmpft", "gridcell")
    assert np.array_equal(back.MONTHLY_LAI.values, lai)
    assert back.PCT_NAT_PFT.values[[7, 14], [0, 1]].tolist() == [100, 100]
    mx, mn = lai_extremes(back.MONTHLY_LAI.values, back.PCT_NAT_PFT.values)
    np.testing.assert_allclose(mx, lai12.max(0), rtol=1e-15)
    np.testing.assert_allclose(mn, lai12.min(0), rtol=1e-15)


def test_monthly_lai_refused_when_inconsistent(tmp_path):
    from ppe_ingest.ctsmio.surfdata import single_pft_vegetation

    lai, pct = single_pft_vegetation(np.array([1]), np.ones((12, 1)))
    bad_pct = pct.copy()
    bad_pct[1, 0] = 90.0
    with pytest.raises(UserError, match="PCT_NAT_PFT sums to 90 at gridcell 0"):
        create_surfdata_1d(tmp_path / "s.nc", [0], [0], {}, monthly_lai=lai, pct_nat_pft=bad_pct)
    with pytest.raises(UserError, match="MONTHLY_LAI needs PCT_NAT_PFT"):
        create_surfdata_1d(tmp_path / "s.nc", [0], [0], {}, monthly_lai=lai)
    with pytest.raises(UserError, match="MONTHLY_LAI must be finite and >= 0"):
        create_surfdata_1d(tmp_path / "s.nc", [0], [0], {}, monthly_lai=-lai, pct_nat_pft=pct)
    with pytest.raises(UserError, match="MONTHLY_LAI has shape \\(11, 79, 1\\)"):
        create_surfdata_1d(tmp_path / "s.nc", [0], [0], {}, monthly_lai=lai[1:], pct_nat_pft=pct)
    with pytest.raises(UserError, match="natural PFT indices 0..14"):
        single_pft_vegetation(np.array([20]), np.ones((12, 1)))
    assert list(tmp_path.iterdir()) == []


def test_lai_extremes_of_the_real_clm5_surfdata(shared_data):
    """The ingest's LAI_MAX/LAI_MIN of the real 2-D CLM5 surfdata equal a hand computation from the file."""
    from ppe_ingest.ctsmio.surfdata import read_static

    path = shared_data(*BRAZIL)
    with netCDF4.Dataset(path) as ds:
        lai = ds["MONTHLY_LAI"][:, :, 0, 0]          # (12 months, lsmpft=17)
        pct = ds["PCT_NAT_PFT"][:, 0, 0]             # (natpft=15,), % of the natural vegetation landunit
        lat, lon = float(ds["LATIXY"][0, 0]), float(ds["LONGXY"][0, 0])
    monthly = [sum(pct[p] * lai[m, p] for p in range(15)) / sum(pct) for m in range(12)]
    values, fields, units = read_static(path, np.array([lat]), np.array([lon]))
    got = dict(zip(fields, values[0]))
    assert fields[-2:] == ["LAI_MAX", "LAI_MIN"] and units["LAI_MAX"] == "unitless"
    assert got["LAI_MAX"] == pytest.approx(max(monthly), rel=1e-12)
    assert got["LAI_MIN"] == pytest.approx(min(monthly), rel=1e-12)
    assert 4.5 < got["LAI_MIN"] < got["LAI_MAX"] < 6.5                       # mostly tropical evergreen forest (PFT 4)
