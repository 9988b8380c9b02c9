"""Daily forcing for the built-in simulator (a stand-in for CTSM): a stochastic weather generator
driven by per-gridcell climate attributes, or real CAMELS basin forcing.

Both return an xarray Dataset over (gridcell, time) with CTSM's forcing names and units
(RAIN, SNOW mm/s; TBOT K; FSDS, FLDS W/m^2; QBOT kg/kg; PBOT Pa; WIND m/s) on a `noleap`
daily calendar, as CTSM history files carry it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ppe_ingest.base.errors import UserError

from ..ctsmio.vocabulary import FORCING, hist_attrs
from ..obs.forcing import (
    SECONDS_PER_DAY,
    STEBOL,
    TFRZ,
    longwave_brutsaert,
    partition_precip,
    pressure_from_elevation,
    specific_humidity,
)

SOLAR_CONSTANT = 1361.0  # W/m2


def noleap_days(start_year: int, n_years: int):
    """Daily cftime noleap dates at 00:00 covering n_years from Jan 1 of start_year."""
    import cftime

    return cftime.num2date(np.arange(365 * n_years), f"days since {start_year:04d}-01-01 00:00:00",
                           calendar="noleap", only_use_cftime_datetimes=True)


def toa_insolation(lat, doy):
    """Daily-mean top-of-atmosphere shortwave (W/m2), FAO-56 Eqs. 21-25 (lat deg, doy 1..365)."""
    phi = np.deg2rad(np.asarray(lat, float))[:, None]
    doy = np.asarray(doy, float)[None, :]
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365)
    dec = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(dec), -1, 1))
    return SOLAR_CONSTANT / np.pi * dr * (ws * np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.sin(ws))


def _esat(tc):
    return 611.2 * np.exp(17.67 * tc / (tc + 243.5))   # Pa, Bolton (1980)


def generate_weather(sites: xr.Dataset, start_year: int, n_years: int, seed: int = 0) -> xr.Dataset:
    """Stochastic daily weather (gridcell, time) from climate attributes of `sites`.

    Precipitation: a two-state Markov chain (wet-day persistence) with gamma-distributed amounts
    whose seasonal mean is p_mean*(1 + p_seasonality*sin(...)) (CAMELS' seasonality convention,
    peak in summer for p_seasonality > 0). Temperature: annual sine (tmean, tamp) plus AR(1)
    anomalies, cooler on wet days. FSDS: top-of-atmosphere insolation times a clearness that
    drops on wet days. FLDS: Brutsaert clear-sky emissivity raised by cloud. QBOT from a relative
    humidity set by aridity. PBOT from elevation. RAIN/SNOW by CTSM's repartitioning ramp.
    """
    for k in ("grid1d_lat", "p_mean", "p_seasonality", "aridity", "elev_mean", "tmean", "tamp"):
        if k not in sites:
            raise UserError(f"sites: attribute {k} is missing (needed by the weather generator)")
    if n_years < 1:
        raise UserError(f"n_years: must be >= 1, got {n_years}")
    rng = np.random.default_rng([seed, 11])
    lat = sites["grid1d_lat"].values.astype(float)
    n, T = lat.size, 365 * n_years
    doy = (np.arange(T) % 365) + 1
    # Seasonal phase: warmest around day 201 in the north, day 18 in the south.
    phase = np.sin(2 * np.pi * (doy[None, :] - 110) / 365) * np.where(lat < 0, -1.0, 1.0)[:, None]

    p_mean = sites["p_mean"].values[:, None]
    p_clim = p_mean * np.clip(1 + sites["p_seasonality"].values[:, None] * phase, 0.05, None)
    # Wet-day probability grows with wetness; wet spells persist (lag-1 correlation 0.35).
    pi_wet = np.clip(0.12 + 0.08 * p_clim, 0.08, 0.75)
    p11 = pi_wet + 0.35 * (1 - pi_wet)
    p01 = pi_wet * (1 - p11) / (1 - pi_wet)
    u = rng.random((n, T))
    wet = np.zeros((n, T), bool)
    state = u[:, 0] < pi_wet[:, 0]
    for t in range(T):
        state = u[:, t] < np.where(state, p11[:, t], p01[:, t])
        wet[:, t] = state
    shape = 0.75
    amount = rng.gamma(shape, 1.0, (n, T)) * (p_clim / pi_wet) / shape
    prcp = np.where(wet, amount, 0.0)                                   # mm/day

    tmean, tamp = sites["tmean"].values[:, None], sites["tamp"].values[:, None]
    anom = np.empty((n, T))
    eps = rng.normal(0, 1, (n, T))
    a = 0.0
    for t in range(T):
        a = 0.7 * a + np.sqrt(1 - 0.7 ** 2) * 3.0 * eps[:, t]
        anom[:, t] = a
    tbot = TFRZ + tmean + tamp * phase + anom - 1.5 * wet

    clear = np.clip(np.where(wet, 0.35, 0.70) + rng.normal(0, 0.06, (n, T)), 0.15, 0.8)
    fsds = toa_insolation(lat, doy) * clear
    rh = np.clip(0.85 - 0.12 * sites["aridity"].values[:, None], 0.3, 0.85)
    rh = np.clip(np.where(wet, 0.92, rh) + rng.normal(0, 0.04, (n, T)), 0.2, 0.98)
    vp = rh * _esat(tbot - TFRZ)
    pbot = np.broadcast_to(pressure_from_elevation(sites["elev_mean"].values)[:, None], (n, T))
    qbot = specific_humidity(vp, pbot)
    cloud = np.where(wet, 0.85, 0.25)
    flds = longwave_brutsaert(tbot, vp) * (1 - cloud) + cloud * STEBOL * tbot ** 4
    wind = np.clip(rng.gamma(4.0, 0.8, (n, T)), 0.3, 20)
    rain, snow = partition_precip(prcp / SECONDS_PER_DAY, tbot)

    data = dict(RAIN=rain, SNOW=snow, TBOT=tbot, FSDS=fsds, FLDS=flds, QBOT=qbot, PBOT=np.array(pbot), WIND=wind)
    ds = xr.Dataset({k: (("gridcell", "time"), data[k], hist_attrs(k)) for k in FORCING},
                    coords={"gridcell": sites["gridcell"].values, "time": noleap_days(start_year, n_years)})
    ds.attrs["source"] = "esm-emu built-in stochastic weather generator (synthetic, not observed)"
    return ds


def camels_forcing(sites: xr.Dataset, forcing_dir: str | Path, start_year: int, n_years: int) -> xr.Dataset:
    """Real CAMELS basin-mean forcing (Daymet/NLDAS text files) for sites with a `site_id`
    (8-digit gauge id), mapped to CTSM names by ppe_ingest.obs, with Feb 29 dropped (noleap)."""
    from ..obs.camels import find_forcing_file, read_camels_forcing

    if "site_id" not in sites:
        raise UserError("sites: site_id is missing; real CAMELS forcing needs CAMELS gauge ids (grid: camels)")
    time = noleap_days(start_year, n_years)
    arrays = {k: [] for k in FORCING}
    for gid in sites["site_id"].values:
        ds, _ = read_camels_forcing(find_forcing_file(forcing_dir, gid))
        idx = pd.DatetimeIndex(ds["time"].values)
        keep = ~((idx.month == 2) & (idx.day == 29)) & (idx.year >= start_year) & (idx.year < start_year + n_years)
        ds = ds.isel(time=np.flatnonzero(keep))
        if ds.sizes["time"] != time.size:
            raise UserError(f"{forcing_dir}: forcing of basin {gid} covers {ds.sizes['time']} of the "
                            f"{time.size} noleap days {start_year}-{start_year + n_years - 1}")
        for k in FORCING:
            arrays[k].append(ds[k].values)
    out = xr.Dataset({k: (("gridcell", "time"), np.stack(v), hist_attrs(k)) for k, v in arrays.items()},
                     coords={"gridcell": sites["gridcell"].values, "time": time})
    out.attrs["source"] = f"CAMELS basin-mean forcing from {Path(forcing_dir).name}"
    return out


def forcing_tensors(weather: xr.Dataset, repeat: int = 1):
    """Forcing as float64 torch tensors (gridcell*repeat, time), each gridcell block repeated."""
    import torch

    return {k: torch.as_tensor(np.tile(weather[k].values, (repeat, 1)), dtype=torch.float64) for k in FORCING}
