"""CAMELS-US readers on the real sample: streamflow -> QRUNOFF mm/s, forcing header, attributes."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from ppe_ingest.base.errors import UserError
from ppe_ingest.obs.camels import read_camels_attributes, read_camels_forcing, read_camels_streamflow
from ppe_ingest.obs.io import read_obs, write_obs
from ppe_ingest.obs.schema import make_obs

BASINS = ["01022500", "01547700", "02064000", "03015500"]


@pytest.fixture
def camels(shared_data):
    return shared_data("camels_us", "neuralhydrology_test_data", "camels_us")


def _header_area_m2(path):
    with open(path) as f:
        lines = f.read().splitlines()
    return float(lines[2])


def test_streamflow_matches_raw_lines_and_header_area(camels):
    ds = read_camels_streamflow(camels / "usgs_streamflow", BASINS)
    assert list(ds.site.values) == BASINS
    assert ds.QRUNOFF.attrs["units"] == "mm/s"
    for b in BASINS:
        raw = (camels / "usgs_streamflow" / f"{b}_streamflow_qc.txt").read_text().splitlines()
        area_m2 = _header_area_m2(camels / "basin_mean_forcing" / "daymet" / f"{b}_lump_cida_forcing_leap.txt")
        assert ds.area.sel(site=b).item() == pytest.approx(area_m2 / 1e6)
        assert "forcing file header" in ds.area_source.sel(site=b).item()
        for line in (raw[0], raw[400], raw[-1]):
            gid, y, m, d, q, flag = line.split()
            assert gid == b
            # ft3 = 0.3048^3 m3; mm/s = m3/s / m2 * 1000
            expect = float(q) * 0.3048 ** 3 / area_m2 * 1000.0
            got = ds.QRUNOFF.sel(site=b, time=f"{y}-{m}-{d}").item()
            assert got == pytest.approx(expect, rel=1e-9)
    # gauge location from camels_topo.txt beside usgs_streamflow
    topo = (camels / "camels_attributes_v2.0" / "camels_topo.txt").read_text().splitlines()
    row = next(r.split(";") for r in topo if r.startswith("01547700;"))
    assert ds.site_lat.sel(site="01547700").item() == pytest.approx(float(row[1]))
    assert ds.site_lon.sel(site="01547700").item() == pytest.approx(float(row[2]))
    assert bool(ds.QRUNOFF_mask.all())  # the sample has no missing days


def test_area_argument_and_int_basin_id(camels):
    ds = read_camels_streamflow(camels / "usgs_streamflow" / "01022500_streamflow_qc.txt", 1022500,
                                area_km2=573.6)
    assert ds.site.values.tolist() == ["01022500"]
    assert ds.area_source.item() == "argument area_km2"
    q = float((camels / "usgs_streamflow" / "01022500_streamflow_qc.txt").read_text().split()[4])
    assert ds.QRUNOFF.isel(time=0).item() == pytest.approx(q * 0.3048 ** 3 / 573.6e6 * 1e3)


def test_missing_gaps_and_estimated_flags(camels, tmp_path):
    src = camels / "usgs_streamflow" / "01547700_streamflow_qc.txt"
    lines = src.read_text().splitlines()
    lines[10] = "01547700 2000 01 11  -999.00 M"
    est = lines[30].split()
    lines[30] = " ".join(est[:5] + ["A:e"])  # 2000-01-31 estimated
    del lines[20]  # 2000-01-21 absent from the file
    (tmp_path / "usgs_streamflow").mkdir()
    (tmp_path / "usgs_streamflow" / src.name).write_text("\n".join(lines) + "\n")
    forcing = camels / "basin_mean_forcing" / "daymet"
    ds = read_camels_streamflow(tmp_path / "usgs_streamflow", "01547700", forcing_dir=forcing)
    q = ds.QRUNOFF.sel(site="01547700")
    m = ds.QRUNOFF_mask.sel(site="01547700")
    assert np.isnan(q.sel(time="2000-01-11").item()) and not m.sel(time="2000-01-11").item()
    assert np.isnan(q.sel(time="2000-01-21").item()) and not m.sel(time="2000-01-21").item()
    assert ds.sizes["time"] == 1096  # the gap is an explicit NaN day
    assert m.sel(time="2000-01-31").item()  # estimated kept by default
    strict = read_camels_streamflow(tmp_path / "usgs_streamflow", "01547700", forcing_dir=forcing,
                                    mask_estimated=True)
    assert not strict.QRUNOFF_mask.sel(site="01547700", time="2000-01-31").item()
    n_est = sum(1 for l in lines if l.split()[-1].endswith(":e"))
    assert int((~strict.QRUNOFF_mask).sum()) == 2 + n_est


def test_streamflow_bad_input(camels, tmp_path):
    with pytest.raises(UserError, match="gauge 01022500 but basin 01547700"):
        read_camels_streamflow(camels / "usgs_streamflow" / "01022500_streamflow_qc.txt", "01547700",
                               area_km2=100.0)
    bad = tmp_path / "01022500_streamflow_qc.txt"
    bad.write_text("01022500 2000 01 01 lots A\n")
    with pytest.raises(UserError, match=r"01022500_streamflow_qc.txt: line 1"):
        read_camels_streamflow(bad, "01022500", area_km2=100.0)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(camels / "usgs_streamflow" / "01022500_streamflow_qc.txt", lone)
    with pytest.raises(UserError, match="no area"):
        read_camels_streamflow(lone, "01022500")


def test_qrunoff_unit_mixups_rejected(camels):
    ds = read_camels_streamflow(camels / "usgs_streamflow", "01022500")
    mm_day = ds.QRUNOFF.values * 86400.0
    with pytest.raises(UserError, match=r"cfs\.nc: QRUNOFF: values .* plausible range"):
        make_obs(mm_day, "QRUNOFF", "mm/s", ["01022500"], 44.6, -67.9, time=ds.time.values, source="cfs.nc")
    raw_cfs = np.array([float(l.split()[4]) for l in
                        (camels / "usgs_streamflow" / "01022500_streamflow_qc.txt").read_text().splitlines()])
    with pytest.raises(UserError, match="QRUNOFF"):
        make_obs(raw_cfs, "QRUNOFF", "mm/s", ["01022500"], 44.6, -67.9, time=ds.time.values, source="cfs.nc")
    with pytest.raises(UserError, match=r"QRUNOFF: units 'mm/day'"):
        make_obs(mm_day, "QRUNOFF", "mm/day", ["01022500"], 44.6, -67.9, time=ds.time.values, source="x")


def test_forcing_header_and_values(camels):
    path = camels / "basin_mean_forcing" / "nldas" / "03015500_lump_nldas_forcing_leap.txt"
    ds, header = read_camels_forcing(path)
    lines = path.read_text().splitlines()
    assert header["lat"] == float(lines[0]) and header["elevation"] == float(lines[1])
    assert header["area_m2"] == float(lines[2]) and header["source"] == "nldas"
    assert header["basin"] == "03015500"
    y, mo, d, hr, dayl, prcp, srad, swe, tmax, tmin, vp = (float(x) for x in lines[4 + 200].split())
    day = ds.sel(time=f"{int(y)}-{int(mo):02d}-{int(d):02d}")
    assert day.FSDS.item() == pytest.approx(srad * dayl / 86400.0)
    assert day.TBOT.item() == pytest.approx((tmax + tmin) / 2 + 273.15)
    assert (day.RAIN + day.SNOW).item() == pytest.approx(prcp / 86400.0)
    assert set(ds.data_vars) == {"RAIN", "SNOW", "TBOT", "FSDS", "FLDS", "QBOT", "PBOT", "WIND"}
    assert ds.WIND.attrs["filled"] == 1 and "constant default" in ds.WIND.attrs["derived"]


def test_forcing_bad_units_named(camels, tmp_path):
    src = camels / "basin_mean_forcing" / "daymet" / "01022500_lump_cida_forcing_leap.txt"
    lines = src.read_text().splitlines()
    lines[3] = lines[3].replace("prcp(mm/day)", "prcp(in/day)")
    bad = tmp_path / src.name
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"01022500_lump_cida_forcing_leap.txt: prcp\(in/day\): units"):
        read_camels_forcing(bad)


def test_attributes_merged_with_leading_zeros(camels, shared_data):
    d = camels / "camels_attributes_v2.0"
    df = read_camels_attributes(d)
    assert len(df) == 671 and df.index[0] == "01013500"
    assert all(len(i) == 8 for i in df.index)
    # one value per table, against a hand-split line
    for table, col in (("soil", "sand_frac"), ("topo", "area_gages2"), ("clim", "p_mean"), ("name", "huc_02")):
        text = (d / f"camels_{table}.txt").read_text().splitlines()
        cols = text[0].split(";")
        row = next(r.split(";") for r in text if r.startswith("02064000;"))
        raw = row[cols.index(col)]
        got = df.at["02064000", col]
        assert (got == raw) if isinstance(got, str) else got == pytest.approx(float(raw))
    sel = read_camels_attributes(d, basins=[2064000, "1022500"],
                                 dictionary=shared_data("camels_us", "ctsm_calibration", "camels_attributes_table.csv"))
    assert sel.index.tolist() == ["02064000", "01022500"]
    assert sel.attrs["units"]["p_mean"] == "mm/day"
    with pytest.raises(UserError, match="99999999"):
        read_camels_attributes(d, basins=["99999999"])


def test_streamflow_round_trip(camels, tmp_path):
    ds = read_camels_streamflow(camels / "usgs_streamflow", BASINS[:2])
    back = read_obs(write_obs(ds, tmp_path / "qobs.nc"))
    assert back.identical(ds)
    assert back.site.values.tolist() == BASINS[:2]  # leading zeros survive netCDF
