"""Latent heat from PLUMBER2 netCDF, FLUXNET2015 daily CSV and AmeriFlux BASE CSV on the real samples."""
from __future__ import annotations

import csv
import shutil

import netCDF4
import numpy as np
import pytest

from ppe_ingest.base.errors import UserError
from ppe_ingest.obs.ameriflux import read_ameriflux_base
from ppe_ingest.obs.fluxnet import read_fluxnet_daily
from ppe_ingest.obs.io import read_obs, write_obs
from ppe_ingest.obs.plumber import read_plumber_flux


@pytest.fixture
def fp(shared_data):
    return shared_data("insitu", "fluxnet_plumber")


def _dd_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_plumber_daily_matches_fluxnet_dd(fp):
    """PLUMBER2 half-hours averaged by the reader equal FLUXNET2015's own daily product."""
    ds = read_plumber_flux(fp / "US-Wi7_2005-2005_FLUXNET2015_Flux.nc")
    assert ds.site.values.tolist() == ["US-Wi7"]
    assert ds.EFLX_LH_TOT.attrs["units"] == "W/m^2" and ds.sizes["time"] == 365
    rows = _dd_rows(fp / "FLX_US-Wi7_FLUXNET2015_FULLSET_DD_2005-2005_1-4.csv")
    le = np.array([float(r["LE_F_MDS"]) for r in rows])
    qc = np.array([float(r["LE_F_MDS_QC"]) for r in rows])
    np.testing.assert_allclose(ds.EFLX_LH_TOT.values[0], le, atol=2e-3)
    np.testing.assert_array_equal(ds.EFLX_LH_TOT_mask.values[0], qc >= 0.8 - 1e-6)
    with netCDF4.Dataset(fp / "US-Wi7_2005-2005_FLUXNET2015_Flux.nc") as nc:
        assert ds.site_lat.item() == pytest.approx(float(nc["latitude"][:].ravel()[0]))
        raw = np.asarray(nc["Qle"][:], dtype=float).ravel()
    assert ds.EFLX_LH_TOT.values[0, 100] == pytest.approx(raw[100 * 48:101 * 48].mean(), rel=1e-6)


def test_plumber_qc_threshold_and_other_site(fp):
    loose = read_plumber_flux(fp / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc", min_good_fraction=0.0)
    strict = read_plumber_flux(fp / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc", min_good_fraction=1.0)
    assert loose.EFLX_LH_TOT_mask.all() and strict.EFLX_LH_TOT_mask.sum() < loose.EFLX_LH_TOT_mask.sum()
    with netCDF4.Dataset(fp / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc") as nc:
        q = np.asarray(nc["Qle_qc"][:], dtype=float).ravel().reshape(365, 48)
    np.testing.assert_array_equal(strict.EFLX_LH_TOT_mask.values[0], np.isin(q, (0, 1)).all(axis=1))
    both = read_plumber_flux([fp / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc", fp / "US-Wi7_2005-2005_FLUXNET2015_Flux.nc"])
    assert both.site.values.tolist() == ["DK-Fou", "US-Wi7"]
    np.testing.assert_array_equal(both.EFLX_LH_TOT.sel(site="DK-Fou").values, loose.EFLX_LH_TOT.values[0])
    fsh = read_plumber_flux(fp / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc", var="Qh")
    assert "FSH" in fsh and fsh.FSH.attrs["source_variable"] == "Qh"


def test_plumber_bad_units_rejected(fp, tmp_path):
    bad = tmp_path / "US-Wi7_badunits_Flux.nc"
    shutil.copy(fp / "US-Wi7_2005-2005_FLUXNET2015_Flux.nc", bad)
    with netCDF4.Dataset(bad, "a") as nc:
        nc["Qle"].units = "mm/day"
    with pytest.raises(UserError, match=r"US-Wi7_badunits_Flux.nc.*EFLX_LH_TOT: units 'mm/day'"):
        read_plumber_flux(bad)
    # evaporation in kg/m2/s written with a W/m2 label: caught by the plausible range
    with netCDF4.Dataset(bad, "a") as nc:
        nc["Qle"].units = "W/m2"
        nc["Qle"][:] = nc["Qle"][:] / 2.45e6
    with pytest.raises(UserError, match=r"EFLX_LH_TOT: all \|values\| < 1"):
        read_plumber_flux(bad)


def test_fluxnet_dd_values_missing_and_location(fp, shared_data):
    path = fp / "FLX_US-Wi7_FLUXNET2015_FULLSET_DD_2005-2005_1-4.csv"
    rows = _dd_rows(path)
    ds = read_fluxnet_daily(path, variables=("LE_F_MDS", "H_F_MDS"), lat=46.6491, lon=-91.0693)
    assert set(ds.data_vars) == {"EFLX_LH_TOT", "EFLX_LH_TOT_mask", "FSH", "FSH_mask"}
    for i in (0, 150, 364):
        r = rows[i]
        day = f"{r['TIMESTAMP'][:4]}-{r['TIMESTAMP'][4:6]}-{r['TIMESTAMP'][6:]}"
        assert ds.EFLX_LH_TOT.sel(site="US-Wi7", time=day).item() == pytest.approx(float(r["LE_F_MDS"]))
        assert ds.EFLX_LH_TOT_mask.sel(site="US-Wi7", time=day).item() == (float(r["LE_F_MDS_QC"]) >= 0.8)
    assert ds.site_lat.item() == pytest.approx(46.6491)
    # LE_CORR is -9999 on every day of this file: all NaN, all masked
    corr = read_fluxnet_daily(path, variables=("LE_CORR",))
    assert all(r["LE_CORR"] == "-9999" for r in rows)
    assert corr.EFLX_LH_TOT.isnull().all() and not corr.EFLX_LH_TOT_mask.any()
    assert np.isnan(corr.site_lat.item()) and "unknown" in corr.EFLX_LH_TOT.attrs["location"]
    table = shared_data("insitu", "ctsm_site_lists", "PLUMBER2_sites.csv")
    with pytest.raises(UserError, match="site US-Wi7 is not in the site table"):
        read_fluxnet_daily(path, sites=table)
    with pytest.raises(UserError, match="LE_F_MDS and LE_CORR both map to EFLX_LH_TOT"):
        read_fluxnet_daily(path, variables=("LE_F_MDS", "LE_CORR"))


def test_ameriflux_daily_coverage(shared_data):
    path = shared_data("insitu", "ameriflux", "AMF_US-CRT_BASE_HH_2-5.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    ds = read_ameriflux_base(path, min_coverage=0.5)
    assert ds.site.values.tolist() == ["US-CRT"]
    for day in ("20110101", "20110102"):
        le = [float(r["LE"]) for r in rows if r["TIMESTAMP_START"].startswith(day) and r["LE"] != "-9999"]
        swc = [float(r["SWC"]) for r in rows if r["TIMESTAMP_START"].startswith(day) and r["SWC"] != "-9999"]
        t = f"{day[:4]}-{day[4:6]}-{day[6:]}"
        got = ds.EFLX_LH_TOT.sel(site="US-CRT", time=t).item()
        if len(le) / 48 >= 0.5:
            assert got == pytest.approx(np.mean(le)) and ds.EFLX_LH_TOT_mask.sel(site="US-CRT", time=t).item()
        else:  # a few daytime half-hours are not a daily mean
            assert np.isnan(got) and not ds.EFLX_LH_TOT_mask.sel(site="US-CRT", time=t).item()
        assert ds.H2OSOI.sel(site="US-CRT", time=t).item() == pytest.approx(np.mean(swc) / 100.0)
    assert ds.H2OSOI.attrs["units"] == "mm3/mm3"
    strict = read_ameriflux_base(path, min_coverage=0.9)
    assert not strict.EFLX_LH_TOT_mask.any()


def test_flux_round_trip(fp, tmp_path):
    ds = read_plumber_flux(fp / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc")
    out = write_obs(ds, tmp_path / "obs" / "dkfou.nc")
    back = read_obs(out)
    assert back.identical(ds)
    assert back.EFLX_LH_TOT_mask.dtype == bool
    src = fp / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc"
    with pytest.raises(UserError, match="refusing to overwrite an input"):
        write_obs(ds, src, inputs=[src])
