"""Source forcing -> CTSM forcing names and units (CAMELS Daymet/NLDAS, PLUMBER2 met)."""
from __future__ import annotations

import numpy as np
import pytest

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import FORCING as FORCING_VARS
from ppe_ingest.obs.camels import read_camels_forcing
from ppe_ingest.obs.forcing import (
    longwave_brutsaert,
    longwave_idso,
    partition_precip,
    pressure_from_elevation,
    specific_humidity,
)


def test_partition_follows_ctsm_ramp():
    t = np.array([-10.0, 0.0, 0.5, 1.0, 2.0, 15.0]) + 273.15
    p = np.full_like(t, 3.0)
    rain, snow = partition_precip(p, t)
    np.testing.assert_allclose(rain + snow, p)
    np.testing.assert_allclose(rain / p, [0.0, 0.0, 0.25, 0.5, 1.0, 1.0], atol=1e-12)
    # a calibrated all-rain threshold (CTSM_CAMELS precip_repartition_nonglc_all_rain_t) widens the ramp
    r4, _ = partition_precip(p, t, all_rain_t=4.0)
    assert r4[3] / p[3] == pytest.approx(0.25)
    with pytest.raises(UserError, match="precip_repartition_nonglc_all_rain_t"):
        partition_precip(p, t, all_snow_t=2.0, all_rain_t=1.0)


def test_humidity_pressure_longwave():
    e, p = 1200.0, 95000.0
    w = 0.622 * e / (p - e)  # mixing ratio, then q = w / (1 + w)
    assert specific_humidity(e, p) == pytest.approx(w / (1 + w), rel=1e-12)
    assert pressure_from_elevation(0.0) == pytest.approx(101300.0)
    # FAO-56 Annex 2 Table 2.1 gives 90.0 kPa at 1000 m and 79.8 kPa at 2000 m
    assert pressure_from_elevation(1000.0) == pytest.approx(90.0e3, abs=100)
    assert pressure_from_elevation(2000.0) == pytest.approx(79.8e3, abs=100)
    t = np.array([260.0, 280.0, 300.0])
    vp = np.array([200.0, 900.0, 2500.0])
    idso, brut = longwave_idso(t, vp), longwave_brutsaert(t, vp)
    sigma_t4 = 5.67e-8 * t ** 4
    assert np.all((idso > 0.6 * sigma_t4) & (idso < sigma_t4))  # clear-sky emissivity below 1
    # two independent clear-sky formulas agree at temperate conditions (they part in cold, dry air)
    np.testing.assert_allclose(idso[1:], brut[1:], rtol=0.1)


def test_daymet_mapping_on_real_file(shared_data):
    path = shared_data("camels_us", "neuralhydrology_test_data", "camels_us", "basin_mean_forcing",
                       "daymet", "01022500_lump_cida_forcing_leap.txt")
    ds, header = read_camels_forcing(path)
    assert header["source"] == "daymet" and ds.sizes["time"] == len(path.read_text().splitlines()) - 4
    for v in FORCING_VARS:
        assert ds[v].dims == ("time",) and np.isfinite(ds[v]).all()
    lines = path.read_text().splitlines()
    # a cold day and a warm day parsed by hand
    for line in (lines[4], lines[4 + 180]):
        y, mo, d, hr, dayl, prcp, srad, swe, tmax, tmin, vp = (float(x) for x in line.split())
        day = ds.sel(time=f"{int(y)}-{int(mo):02d}-{int(d):02d}")
        tmean = (tmax + tmin) / 2
        frac_rain = min(1.0, max(0.0, tmean / 2.0))
        assert day.RAIN.item() == pytest.approx(prcp / 86400 * frac_rain)
        assert day.SNOW.item() == pytest.approx(prcp / 86400 * (1 - frac_rain))
        assert day.FSDS.item() == pytest.approx(srad * dayl / 86400)
        assert day.PBOT.item() == pytest.approx(101300 * ((293 - 0.0065 * header["elevation"]) / 293) ** 5.26)
        assert day.QBOT.item() == pytest.approx(0.622 * vp / (day.PBOT.item() - 0.378 * vp))
    # daily-mean FSDS is well below the daylight-average srad (dayl < 86400 s)
    assert float(ds.FSDS.mean()) < 0.7 * float(np.mean([float(l.split()[6]) for l in lines[4:]]))
    assert ds.TBOT.attrs["units"] == "K" and ds.RAIN.attrs["units"] == "mm/s"


def test_plumber_met_to_ctsm_daily(shared_data, tmp_path):
    import shutil

    import netCDF4

    from ppe_ingest.obs.plumber import read_plumber_met

    path = shared_data("insitu", "fluxnet_plumber", "DK-Fou_2005-2005_FLUXNET2015_Met.nc")
    ds = read_plumber_met(path)
    assert ds.site.values.tolist() == ["DK-Fou"] and ds.sizes["time"] == 365
    assert set(FORCING_VARS) <= set(ds.data_vars)
    with netCDF4.Dataset(path) as nc:
        raw = {v: np.asarray(nc[v][:], dtype=float).ravel() for v in ("Tair", "Precip", "SWdown", "Psurf", "Qair")}
    day = slice(40 * 48, 41 * 48)  # 2005-02-10, half-hourly local time
    d = ds.isel(site=0, time=40)
    assert d.TBOT.item() == pytest.approx(raw["Tair"][day].mean())
    assert d.FSDS.item() == pytest.approx(raw["SWdown"][day].mean())
    assert d.PBOT.item() == pytest.approx(raw["Psurf"][day].mean())
    # no Rainf/Snowf in this FluxnetLSM file: Precip split half-hourly with the CTSM ramp
    assert (d.RAIN + d.SNOW).item() == pytest.approx(raw["Precip"][day].mean(), rel=1e-6)
    cold = raw["Tair"] < 273.15
    assert float(ds.SNOW.sum()) > 0 and np.any(cold)
    # the observed longwave is near the clear-sky Idso estimate from the same met (clouds add some)
    e = raw["Qair"] * raw["Psurf"] / (0.622 + 0.378 * raw["Qair"])
    ratio = float(ds.FLDS.mean()) / float(longwave_idso(raw["Tair"], e).mean())
    assert 0.95 < ratio < 1.25
    native = read_plumber_met(path, freq=None)
    assert native.sizes["time"] == 17520
    bad = tmp_path / "DK-Fou_bad_Met.nc"
    shutil.copy(path, bad)
    with netCDF4.Dataset(bad, "a") as nc:
        nc["Tair"].units = "degC"
    with pytest.raises(UserError, match=r"DK-Fou_bad_Met.nc: Tair: units 'degC'"):
        read_plumber_met(bad)


def test_clear_sky_shortwave_matches_fao56_and_clouds_raise_longwave():
    """FAO-56 Example 8: Ra on 3 September (day 246) at 20 S is 32.2 MJ/m2/day, so the clear-sky
    shortwave at sea level is 0.75 of it. Under full cloud (no shortwave reaching the ground) the
    longwave is that of a black body at the air temperature; under a clear sky it is unchanged."""
    from ppe_ingest.obs.forcing import clear_sky_shortwave, cloudy_sky_longwave

    rso = clear_sky_shortwave(-20.0, 246, 0.0)
    assert rso == pytest.approx(0.75 * 32.2e6 / 86400, rel=0.005)
    assert clear_sky_shortwave(60.0, 172, 0.0) > clear_sky_shortwave(60.0, 355, 0.0) > 0
    t, vp = np.array([268.0, 268.0, 268.0]), np.array([300.0, 300.0, 300.0])
    clear = longwave_idso(t, vp)
    lw = cloudy_sky_longwave(clear, t, np.array([200.0, 100.0, 0.0]), np.array([200.0, 200.0, 200.0]))
    assert lw[0] == pytest.approx(clear[0])
    assert lw[2] == pytest.approx(5.67e-8 * 268.0 ** 4)
    assert lw[1] == pytest.approx(0.5 * (clear[1] + lw[2]))


def test_camels_longwave_counts_the_clouds_its_shortwave_implies(shared_data):
    """On a real Daymet file, the cloud-raised FLDS is never below the clear-sky value, and is
    well above it on the dullest days (the ones a clear-sky formula gets most wrong)."""
    path = shared_data("camels_us", "neuralhydrology_test_data", "camels_us", "basin_mean_forcing",
                       "daymet", "01022500_lump_cida_forcing_leap.txt")
    cloudy, _ = read_camels_forcing(path)
    clear, _ = read_camels_forcing(path, clouds=False)
    gain = (cloudy.FLDS - clear.FLDS).values
    assert np.all(gain >= -1e-9)
    dull = cloudy.FSDS.values < np.quantile(cloudy.FSDS.values, 0.1)
    assert gain[dull].mean() > 30.0
    assert "Crawford & Duchon" in cloudy.FLDS.attrs["derived"] and "raised" not in clear.FLDS.attrs["derived"]
