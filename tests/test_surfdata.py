"""Surface datasets: both forms on the real CLM5 surfdata and a 1-D one; validity checks."""
from __future__ import annotations

import hashlib

import netCDF4
import numpy as np
import pytest

from ppe_ingest.ctsmio.surfdata import create_surfdata_1d, read_surfdata, write_surfdata
from ppe_ingest.errors import UserError
from test_paramfile import assert_same_except

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
