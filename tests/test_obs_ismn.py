"""ISMN .stm soil moisture -> H2OSOI (and SOILWATER_10CM for top-10-cm sensors); merge and I/O."""
from __future__ import annotations

import numpy as np
import pytest

from ppe_ingest.base.errors import UserError
from ppe_ingest.obs.camels import read_camels_streamflow
from ppe_ingest.obs.io import merge_obs, read_obs, write_obs
from ppe_ingest.obs.ismn import read_ismn_stm

COSMOS = "COSMOS_COSMOS_ARM-1_sm_0.000000_0.190000_Cosmic-ray-Probe_20170810_20180809.stm"
SMOS = "SMOSMANIA_SMOSMANIA_Narbonne_sm_0.050000_0.050000_ThetaProbe-ML2X_20070101_20070131.stm"


@pytest.fixture
def ismn(shared_data):
    return shared_data("insitu", "ismn")


def _records(path):
    text = path.read_bytes().decode().replace("\r\n", "\n").replace("\r", "\n")
    return [ln.split() for ln in text.split("\n")[1:] if ln.strip()]


def test_cosmos_daily_mean_of_good_records(ismn):
    ds = read_ismn_stm(ismn / COSMOS)
    site = ds.site.item()
    assert site == "COSMOS.ARM-1.0-0.19m"
    assert ds.depth_from.item() == 0.0 and ds.depth_to.item() == pytest.approx(0.19)
    assert ds.site_lat.item() == pytest.approx(36.6054) and ds.site_lon.item() == pytest.approx(-97.4878)
    assert "SOILWATER_10CM" not in ds  # 0-19 cm is not the top 10 cm
    recs = _records(ismn / COSMOS)
    by_day = {}
    for d, _, v, flag, *_ in recs:
        by_day.setdefault(d, []).append((float(v), flag))
    checked = 0
    for d, vals in list(by_day.items())[::37]:
        good = [v for v, f in vals if f == "G"]
        t = d.replace("/", "-")
        if len(good) >= 12:
            assert ds.H2OSOI.sel(site=site, time=t).item() == pytest.approx(np.mean(good))
            assert ds.H2OSOI_mask.sel(site=site, time=t).item()
            checked += 1
        else:
            assert not ds.H2OSOI_mask.sel(site=site, time=t).item()
    assert checked >= 5
    assert ds.H2OSOI.attrs["units"] == "mm3/mm3"


def test_cr_line_endings_flags_and_top_10cm(ismn):
    path = ismn / SMOS
    assert b"\n" not in path.read_bytes()  # this sample uses CR-only line ends
    ds = read_ismn_stm(path)
    site = ds.site.item()
    assert ds.depth_to.item() == pytest.approx(0.05)
    np.testing.assert_allclose(ds.SOILWATER_10CM.values, ds.H2OSOI.values * 100.0)
    assert ds.SOILWATER_10CM.attrs["units"] == "kg/m2"
    day = [r for r in _records(path) if r[0] == "2007/01/16"]
    kept = [float(r[2]) for r in day if not r[3].startswith("D")]
    assert len(kept) < len(day)  # the day has D05 (dubious) records, which are left out
    assert ds.H2OSOI.sel(site=site, time="2007-01-16").item() == pytest.approx(np.mean(kept))
    strict = read_ismn_stm(path, reject_flags=("C", "D", "M", "U"))  # U: not checked by ISMN
    assert not strict.H2OSOI_mask.any()


def test_bad_ismn_files(ismn, tmp_path):
    text = (ismn / SMOS).read_bytes()
    renamed = tmp_path / SMOS.replace("0.050000_0.050000", "0.100000_0.200000")
    renamed.write_bytes(text)
    with pytest.raises(UserError, match=r"depth \(0.1, 0.2\) m in the file name differs"):
        read_ismn_stm(renamed)
    lines = text.decode().split("\r")
    pct = [lines[0]] + [" ".join(ln.split()[:2] + [f"{float(ln.split()[2]) * 100:.2f}"] + ln.split()[3:])
                        for ln in lines[1:] if ln.strip()]
    bad = tmp_path / SMOS
    bad.write_text("\n".join(pct) + "\n")
    with pytest.raises(UserError, match=rf"{SMOS}: H2OSOI: values .*percent"):
        read_ismn_stm(bad)


def test_merge_sources_and_round_trip(ismn, shared_data, tmp_path):
    camels = shared_data("camels_us", "neuralhydrology_test_data", "camels_us", "usgs_streamflow")
    q = read_camels_streamflow(camels, ["01022500", "03015500"])
    sm = read_ismn_stm(ismn / SMOS)
    cos = read_ismn_stm(ismn / COSMOS)
    m = merge_obs([q, sm, cos])
    assert m.site.values.tolist() == ["01022500", "03015500", sm.site.item(), cos.site.item()]
    assert {"QRUNOFF", "H2OSOI", "SOILWATER_10CM"} <= set(m.data_vars)
    np.testing.assert_array_equal(m.QRUNOFF.sel(site="01022500", time=q.time).values,
                                  q.QRUNOFF.sel(site="01022500").values)
    assert np.isnan(m.area.sel(site=cos.site.item()).item())
    assert not m.QRUNOFF_mask.sel(site=cos.site.item()).any()
    back = read_obs(write_obs(m, tmp_path / "merged.nc"))
    assert back.identical(m)
    with pytest.raises(UserError, match="QRUNOFF comes from two inputs"):
        merge_obs([q, q])
    moved = sm.assign_coords(site_lat=("site", [10.0]))
    with pytest.raises(UserError, match="site_lat differs"):
        merge_obs([sm.drop_vars(["SOILWATER_10CM", "SOILWATER_10CM_mask"]),
                   moved.drop_vars(["H2OSOI", "H2OSOI_mask"])])


def test_read_obs_rejects_wrong_units(ismn, tmp_path):
    ds = read_ismn_stm(ismn / SMOS)
    ds["H2OSOI"].attrs["units"] = "%"
    import xarray as xr
    path = tmp_path / "bad_units.nc"
    xr.Dataset.to_netcdf(ds, path)
    with pytest.raises(UserError, match=r"bad_units.nc: H2OSOI: units '%'"):
        read_obs(path)
