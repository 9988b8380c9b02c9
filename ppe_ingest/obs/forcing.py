"""Map source meteorology (CAMELS Daymet/NLDAS/Maurer basin means, PLUMBER2 met) onto CTSM's
forcing names and units: RAIN, SNOW (mm/s), TBOT (K), FSDS, FLDS (W/m^2), QBOT (kg/kg),
PBOT (Pa), WIND (m/s).  Derived or defaulted fields say so in their ``derived`` attribute.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import FORCING, hist_attrs

TFRZ = 273.15  # K, CTSM SHR_CONST_TKFRZ
STEBOL = 5.67e-8  # W/m2/K4, CTSM SHR_CONST_STEBOL
SECONDS_PER_DAY = 86400.0


# CTSM clm5 namelist defaults (atm2lnd_inparm) for non-glacier landunits, degrees C.
ALL_SNOW_T = 0.0  # precip_repartition_nonglc_all_snow_t
ALL_RAIN_T = 2.0  # precip_repartition_nonglc_all_rain_t
DEFAULT_WIND = 2.0  # m/s, used when a source has no wind (FAO-56's default for missing wind)


def partition_precip(precip, tbot, all_snow_t: float = ALL_SNOW_T, all_rain_t: float = ALL_RAIN_T):
    """Split total precipitation into (rain, snow) with CTSM's linear repartitioning ramp.

    As CTSM's atm2lnd repartition_rain_snow: frac_rain = (T - all_snow_t)/(all_rain_t - all_snow_t)
    clipped to 0..1, temperatures in degrees C converted to K.  Units of `precip` are kept.
    """
    if not all_rain_t > all_snow_t:
        raise UserError(f"precip_repartition_nonglc_all_rain_t ({all_rain_t}) must exceed "
                        f"precip_repartition_nonglc_all_snow_t ({all_snow_t})")
    frac_rain = (tbot - (all_snow_t + TFRZ)) / (all_rain_t - all_snow_t)
    frac_rain = np.clip(frac_rain, 0.0, 1.0)
    return precip * frac_rain, precip * (1.0 - frac_rain)


def pressure_from_elevation(z_m):
    """Surface pressure (Pa) from elevation (m): FAO-56 Eq. 7 (Allen et al. 1998),
    P = 101.3 ((293 - 0.0065 z)/293)^5.26 kPa, a standard-atmosphere approximation."""
    return 101.3e3 * ((293.0 - 0.0065 * np.asarray(z_m, dtype=float)) / 293.0) ** 5.26


def specific_humidity(vp_pa, pbot_pa):
    """Specific humidity (kg/kg) from vapour pressure and pressure (Pa): q = 0.622 e / (p - 0.378 e)."""
    return 0.622 * vp_pa / (pbot_pa - 0.378 * vp_pa)


def longwave_idso(tbot_k, vp_pa):
    """Clear-sky downward longwave (W/m2) by Idso (1981), eps = 0.70 + 5.95e-5 e[hPa] exp(1500/T),
    the formula CESM's DATM and CTSM use when a stream has no longwave."""
    eps = 0.70 + 5.95e-05 * 0.01 * vp_pa * np.exp(1500.0 / tbot_k)
    return eps * STEBOL * tbot_k ** 4


def longwave_brutsaert(tbot_k, vp_pa):
    """Clear-sky downward longwave (W/m2) by Brutsaert (1975, WRR 11:742), eps = 1.24 (e[hPa]/T)^(1/7)."""
    eps = 1.24 * (0.01 * vp_pa / tbot_k) ** (1.0 / 7.0)
    return eps * STEBOL * tbot_k ** 4


LONGWAVE = {"idso": longwave_idso, "brutsaert": longwave_brutsaert}


def clear_sky_shortwave(lat_deg: float, day_of_year, elevation: float):
    """Daily-mean clear-sky shortwave (W/m2): FAO-56 Eq. 37, Rso = (0.75 + 2e-5 z) Ra, with the
    extraterrestrial radiation Ra from latitude and day of year (FAO-56 Eqs. 21-25)."""
    j = np.asarray(day_of_year, dtype=float)
    phi = np.deg2rad(float(lat_deg))
    dr = 1.0 + 0.033 * np.cos(2 * np.pi * j / 365.0)
    delta = 0.409 * np.sin(2 * np.pi * j / 365.0 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(delta), -1.0, 1.0))
    ra = (1367.0 / np.pi) * dr * (ws * np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.sin(ws))
    return (0.75 + 2e-5 * float(elevation)) * np.clip(ra, 0.0, None)


def cloudy_sky_longwave(flds_clear, tbot_k, fsds, fsds_clear):
    """Downward longwave under cloud (W/m2), Crawford & Duchon (1999, J. Appl. Meteor. 38:474):
    eps = c + (1 - c) eps_clear, i.e. c sigma T^4 + (1 - c) FLDS_clear, with the cloud fraction
    c = 1 - FSDS / clear-sky FSDS (0..1). Where the clear-sky shortwave is under 10 W/m2 (polar
    night) the clear-sky value is kept."""
    c = np.where(fsds_clear > 10.0, np.clip(1.0 - fsds / np.maximum(fsds_clear, 1e-9), 0.0, 1.0), 0.0)
    return c * STEBOL * tbot_k ** 4 + (1.0 - c) * flds_clear


def _attrs(name: str, **extra) -> dict:
    a = hist_attrs(name)
    a.update(extra)
    return a


def daily_basin_to_ctsm(prcp, srad, tmax, tmin, vp, dayl, elevation: float, time, *,
                        wind: float = DEFAULT_WIND, longwave: str = "idso",
                        all_snow_t: float = ALL_SNOW_T, all_rain_t: float = ALL_RAIN_T,
                        source: str = "daymet", latitude: float | None = None) -> xr.Dataset:
    """CTSM forcing (time) from CAMELS-style daily basin means.

    prcp mm/day, srad W/m2 averaged over the daylight period (Daymet convention, also used in
    the CAMELS NLDAS/Maurer files), tmax/tmin degrees C, vp Pa, dayl s, elevation m.
    With `latitude` (degrees) the clear-sky longwave is raised by the cloud the shortwave implies
    (cloudy_sky_longwave); without it FLDS is the clear-sky formula's.
    """
    if longwave not in LONGWAVE:
        raise UserError(f"longwave: unknown method {longwave!r} (choose from {', '.join(LONGWAVE)})")
    prcp, srad, tmax, tmin, vp, dayl = (np.asarray(a, dtype=float) for a in (prcp, srad, tmax, tmin, vp, dayl))
    tbot = 0.5 * (tmax + tmin) + TFRZ
    precip = prcp / SECONDS_PER_DAY  # mm/day -> mm/s
    rain, snow = partition_precip(precip, tbot, all_snow_t, all_rain_t)
    fsds = srad * dayl / SECONDS_PER_DAY  # daylight-average -> 24 h mean
    pbot = np.full_like(tbot, pressure_from_elevation(elevation))
    qbot = specific_humidity(vp, pbot)
    flds = LONGWAVE[longwave](tbot, vp)
    sky = "clear-sky formula"
    if latitude is not None:
        doy = pd.DatetimeIndex(np.asarray(time)).day_of_year.values
        flds = cloudy_sky_longwave(flds, tbot, fsds, clear_sky_shortwave(latitude, doy, elevation))
        sky = "clear-sky formula raised by cloud (Crawford & Duchon 1999, cloud from FSDS / FAO-56 clear-sky FSDS)"
    ramp = f"CTSM repartitioning ramp on daily-mean TBOT, all snow <= {all_snow_t} C, all rain >= {all_rain_t} C"
    data = {
        "RAIN": (rain, _attrs("RAIN", derived=f"{source} prcp/86400; {ramp}")),
        "SNOW": (snow, _attrs("SNOW", derived=f"{source} prcp/86400; {ramp}")),
        "TBOT": (tbot, _attrs("TBOT", derived=f"{source} (tmax+tmin)/2 + 273.15")),
        "FSDS": (fsds, _attrs("FSDS", derived=f"{source} srad*dayl/86400 (daylight average to daily mean)")),
        "FLDS": (flds, _attrs("FLDS", derived=f"{longwave} {sky} from TBOT and vp (not observed)")),
        "QBOT": (qbot, _attrs("QBOT", derived=f"{source} vp with PBOT: 0.622 e/(p - 0.378 e)")),
        "PBOT": (pbot, _attrs("PBOT", derived=f"FAO-56 Eq. 7 from basin elevation {elevation:g} m (not observed)")),
        "WIND": (np.full_like(tbot, float(wind)),
                 _attrs("WIND", derived=f"constant default {float(wind):g} m/s (source has no wind)", filled=1)),
    }
    return xr.Dataset({k: ("time", v, a) for k, (v, a) in data.items()}, coords={"time": time})


# PLUMBER2 / ALMA met names -> CTSM names, with the units the file must carry.
PLUMBER_MET = {
    "Tair": ("TBOT", ("K",)),
    "SWdown": ("FSDS", ("W/m2", "W/m^2", "W m-2")),
    "LWdown": ("FLDS", ("W/m2", "W/m^2", "W m-2")),
    "Qair": ("QBOT", ("kg/kg", "kg kg-1", "1")),
    "Psurf": ("PBOT", ("Pa",)),
    "Wind": ("WIND", ("m/s", "m s-1")),
    "Rainf": ("RAIN", ("kg/m2/s", "kg m-2 s-1", "mm/s")),
    "Snowf": ("SNOW", ("kg/m2/s", "kg m-2 s-1", "mm/s")),
}


def plumber_met_to_ctsm(ds: xr.Dataset, source: str = "PLUMBER2 met", *,
                        all_snow_t: float = ALL_SNOW_T, all_rain_t: float = ALL_RAIN_T) -> xr.Dataset:
    """Rename ALMA met variables (1-D over time) to CTSM forcing names, checking their units.

    kg/m2/s equals mm/s for water.  Files with only total ``Precip`` (FluxnetLSM/FluxDataKit)
    are split into RAIN/SNOW with the CTSM ramp on ``Tair``.
    """
    out = {}
    for alma, (ctsm, ok_units) in PLUMBER_MET.items():
        if alma not in ds:
            continue
        units = ds[alma].attrs.get("units", "")
        if units not in ok_units:
            raise UserError(f"{source}: {alma}: units {units!r}, expected one of {', '.join(ok_units)}")
        out[ctsm] = (ds[alma].astype(float).values, _attrs(ctsm, derived=f"{source} {alma}"))
    if "RAIN" not in out and "Precip" in ds:
        units = ds["Precip"].attrs.get("units", "")
        if units not in PLUMBER_MET["Rainf"][1]:
            raise UserError(f"{source}: Precip: units {units!r}, expected kg/m2/s")
        if "TBOT" not in out:
            raise UserError(f"{source}: Precip: Tair is needed to split precipitation into RAIN and SNOW")
        ramp = f"{source} Precip split by CTSM ramp on Tair ({all_snow_t}..{all_rain_t} C)"
        rain, snow = partition_precip(ds["Precip"].astype(float).values, out["TBOT"][0], all_snow_t, all_rain_t)
        out["RAIN"] = (rain, _attrs("RAIN", derived=ramp))
        out["SNOW"] = (snow, _attrs("SNOW", derived=ramp))
    elif "RAIN" in out and "SNOW" not in out:
        out["SNOW"] = (np.zeros_like(out["RAIN"][0]), _attrs("SNOW", derived="no Snowf in file: zero", filled=1))
    missing = [v for v in FORCING if v not in out]
    if missing:
        need = {c: a for a, (c, _) in PLUMBER_MET.items()}
        raise UserError(f"{source}: met variables missing: {', '.join(need.get(m, m) for m in missing)}")
    return xr.Dataset({k: ("time", v, a) for k, (v, a) in out.items()}, coords={"time": ds["time"].values})
