"""Gridcell attributes for the built-in simulator (a stand-in for CTSM, not CTSM).

Three sources, all returning one xarray Dataset over `gridcell` with `grid1d_lat`/`grid1d_lon`,
the static surface fields the simulator reads (CTSM fsurdat names: PCT_SAND, PCT_CLAY, ORGANIC,
FMAX, zbedrock, SLOPE, STD_ELEV; LAI_MAX/LAI_MIN) and climate attributes for the weather
generator (CAMELS names: p_mean mm/day, p_seasonality, aridity, frac_snow; plus elev_mean m,
tmean and tamp degC, area km2):

- `builtin_sites`: spatially smooth random fields over the conterminous US (needs no files);
- `camels_sites`: the real CAMELS attribute tables;
- `sparsegrid_sites`: the CLM5 PPE's 400-cell sparse grid (`whitkey.nc`) locations with the
  built-in smooth fields evaluated there.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import ALL_STATIC_FIELDS, STATIC_ATTRS

CLIMATE_FIELDS = ("p_mean", "p_seasonality", "aridity", "frac_snow", "elev_mean", "tmean", "tamp", "area")
ATTRS = {
    **STATIC_ATTRS,
    "p_mean": ("mean daily precipitation", "mm/day"),
    "p_seasonality": ("precipitation seasonality (CAMELS; >0 summer peak)", "1"),
    "aridity": ("PET/P (CAMELS)", "1"),
    "frac_snow": ("fraction of precipitation falling as snow", "1"),
    "elev_mean": ("mean elevation", "m"),
    "tmean": ("annual mean air temperature", "degC"),
    "tamp": ("half the annual range of monthly air temperature", "degC"),
    "area": ("gridcell or basin area", "km2"),
    "grid1d_lat": ("gridcell latitude", "degrees_north"),
    "grid1d_lon": ("gridcell longitude", "degrees_east"),
}


def field_coords(lat, lon) -> np.ndarray:
    """(n, 2) the points in roughly isotropic degrees (longitude shrunk by cos(latitude)): the metric
    of `smooth_field` and `field_kernel`."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    return np.stack([lon * np.cos(np.deg2rad(lat)), lat], -1)


def field_kernel(lat, lon, length_deg: float) -> np.ndarray:
    """(n, n) the Gaussian kernel whose process `smooth_field` draws from (random Fourier features)."""
    x = field_coords(lat, lon)
    return np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * length_deg ** 2))


def smooth_field(lat, lon, rng: np.random.Generator, length_deg: float = 8.0, n_features: int = 64):
    """A zero-mean, unit-variance, spatially smooth random field (random Fourier features of a
    Gaussian-kernel process with correlation length `length_deg`) at the given points."""
    x = field_coords(lat, lon)
    w = rng.normal(0.0, 1.0 / length_deg, size=(n_features, 2))
    b = rng.uniform(0, 2 * np.pi, n_features)
    a = rng.normal(size=n_features)
    z = np.cos(x @ w.T + b) @ a * math.sqrt(2.0 / n_features)
    return (z - z.mean()) / (z.std() + 1e-12) if z.size > 1 else z


def climate_temperature(lat, elev):
    """Annual mean and half-range of air temperature (degC) from latitude and elevation."""
    alat = np.abs(np.asarray(lat, float))
    tmean = 28.0 - 0.6 * np.maximum(alat - 12.0, 0.0) - 0.0065 * np.asarray(elev, float)
    tamp = 3.0 + 0.3 * alat
    return tmean, tamp


def _logistic(z):
    return 1.0 / (1.0 + np.exp(-z))


def attributes_at(lat, lon, seed: int) -> dict[str, np.ndarray]:
    """Built-in smooth, mutually consistent soil, terrain, vegetation and climate fields."""
    rng = np.random.default_rng(seed)
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    n = lat.size
    z = {k: smooth_field(lat, lon, rng) for k in ("wet", "relief", "sand", "clay", "org", "depth", "seas")}

    def noise(s):
        return rng.normal(0, s, n)

    elev = np.clip(600 + 500 * z["relief"] + noise(80), 0, 3500)
    slope = np.clip(np.exp(1.0 + 0.9 * z["relief"] + noise(0.3)), 0.2, 25.0)        # degrees
    p_mean = np.clip(np.exp(0.9 + 0.5 * z["wet"] + noise(0.1)), 0.3, 9.0)            # mm/day
    aridity = np.clip(np.exp(0.0 - 0.6 * z["wet"] + noise(0.1)), 0.2, 5.0)
    sand = np.clip(45 + 18 * z["sand"] + noise(4), 5, 90)
    clay = np.clip(22 + 9 * z["clay"] - 0.2 * (sand - 45) + noise(3), 3, 60)
    clay = np.minimum(clay, 97 - sand)
    tmean, tamp = climate_temperature(lat, elev)
    lai_max = np.clip(1.0 + 4.0 * _logistic(1.5 * z["wet"] + 0.2 * (tmean - 10) / 5) + noise(0.2), 0.8, 6.5)
    return {
        "PCT_SAND": sand, "PCT_CLAY": clay,
        "ORGANIC": np.clip(np.exp(3.0 + 0.6 * z["org"] + 0.03 * (10 - tmean)), 2, 120),
        # Flat, wet terrain saturates more easily (FMAX), steep terrain has thin soils.
        "FMAX": np.clip(0.45 * _logistic(0.8 * z["wet"] - 0.9 * np.log(slope)) + 0.03, 0.02, 0.8),
        "zbedrock": np.clip(np.exp(0.6 + 0.5 * z["depth"] - 0.3 * np.log(slope)), 0.4, 8.0),
        "SLOPE": slope,
        "STD_ELEV": np.clip(12 * slope + noise(5), 10, 800),
        "LAI_MAX": lai_max, "LAI_MIN": np.clip(lai_max * (0.15 + 0.1 * _logistic(tmean - 15)), 0.1, None),
        "p_mean": p_mean,
        "p_seasonality": np.clip(0.25 * z["seas"] + noise(0.05), -0.9, 0.9),
        "aridity": aridity,
        "frac_snow": np.clip(_logistic(-(tmean - 2) / 3), 0, 1),
        "elev_mean": elev, "tmean": tmean, "tamp": tamp,
        "area": np.exp(rng.uniform(np.log(100), np.log(2000), n)),
    }


def _dataset(lat, lon, fields: dict, ids=None, source: str = "") -> xr.Dataset:
    n = len(lat)
    ds = xr.Dataset(coords={"gridcell": np.arange(n)})
    ds["grid1d_lat"] = ("gridcell", np.asarray(lat, float))
    ds["grid1d_lon"] = ("gridcell", np.asarray(lon, float))
    for k, v in fields.items():
        ds[k] = ("gridcell", np.asarray(v, float))
    for k in ds.data_vars:
        if k in ATTRS:
            ds[k].attrs.update(long_name=ATTRS[k][0], units=ATTRS[k][1])
    if ids is not None:
        ds["site_id"] = ("gridcell", np.asarray(ids, dtype=str))
    ds.attrs["source"] = source
    return ds


def builtin_sites(n_gridcells: int, seed: int = 0) -> xr.Dataset:
    """`n_gridcells` random locations over the conterminous US with built-in smooth attributes."""
    if n_gridcells < 1:
        raise UserError(f"n_gridcells: must be >= 1, got {n_gridcells}")
    rng = np.random.default_rng([seed, 1])
    lat = rng.uniform(30.0, 48.5, n_gridcells)
    lon = rng.uniform(-122.0, -70.0, n_gridcells)
    return _dataset(lat, lon, attributes_at(lat, lon, seed),
                    source="esm-emu built-in simulator: synthetic smooth attribute fields")


def sparsegrid_sites(whitkey: str | Path, n_gridcells: int | None = None, seed: int = 0) -> xr.Dataset:
    """Gridcells on the CLM5 PPE sparse grid (`whitkey.nc` grid1d_lat/lon), built-in attributes."""
    path = Path(whitkey)
    try:
        with xr.open_dataset(path) as w:
            lat, lon = w["grid1d_lat"].values.astype(float), w["grid1d_lon"].values.astype(float)
            biome = w["biome"].values if "biome" in w else None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the sparse grid: {e}") from None
    except KeyError as e:
        raise UserError(f"{path}: variable {e.args[0]} is missing (expected whitkey.nc with grid1d_lat/lon)") from None
    idx = np.arange(lat.size)
    if n_gridcells is not None and n_gridcells < lat.size:
        idx = np.sort(np.random.default_rng([seed, 2]).choice(lat.size, n_gridcells, replace=False))
    lon = np.where(lon > 180, lon - 360, lon)
    ds = _dataset(lat[idx], lon[idx], attributes_at(lat[idx], lon[idx], seed),
                  ids=[f"sg{i:03d}" for i in idx], source=f"CLM5 PPE sparse grid {path.name}; built-in attributes")
    ds["sparsegrid_index"] = ("gridcell", idx)
    if biome is not None:
        ds["biome"] = ("gridcell", biome[idx])
    # PBOT etc. for sparse-grid cells over ice sheets are extreme; keep the fields bounded anyway.
    return ds


def camels_sites(attributes: str | Path, n_gridcells: int | None = None, basins=None, seed: int = 0) -> xr.Dataset:
    """Gridcells at CAMELS basins with their real attributes (camels_*.txt tables).

    Mapping: sand_frac, clay_frac -> PCT_SAND, PCT_CLAY; organic_frac (%) -> ORGANIC as that
    fraction of organic_max (130 kg/m3); soil_depth_pelletier -> zbedrock (clipped 0.3-8 m);
    slope_mean (m/km) -> SLOPE (degrees); lai_max, lai_max - lai_diff -> LAI_MAX, LAI_MIN;
    area_gages2 -> area. FMAX and STD_ELEV have no CAMELS attribute and come from slope.
    """
    from ..obs.camels import read_camels_attributes

    df = read_camels_attributes(attributes, basins=basins)
    need = ["gauge_lat", "gauge_lon", "p_mean", "p_seasonality", "aridity", "frac_snow", "elev_mean",
            "slope_mean", "sand_frac", "clay_frac", "organic_frac", "soil_depth_pelletier", "lai_max",
            "lai_diff", "area_gages2"]
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise UserError(f"{attributes}: CAMELS attribute {absent[0]} is missing")
    df = df[need].dropna()
    if n_gridcells is not None and n_gridcells < len(df):
        pick = np.sort(np.random.default_rng([seed, 3]).choice(len(df), n_gridcells, replace=False))
        df = df.iloc[pick]
    slope = np.degrees(np.arctan(df.slope_mean.values / 1000.0))
    sand = df.sand_frac.values.clip(0, 100)
    clay = np.minimum(df.clay_frac.values.clip(0, 100), 100 - sand)
    tmean, tamp = climate_temperature(df.gauge_lat.values, df.elev_mean.values)
    lai_max = df.lai_max.values.clip(0.3, None)
    fields = {
        "PCT_SAND": sand, "PCT_CLAY": clay,
        "ORGANIC": (df.organic_frac.values / 100.0 * 130.0).clip(0, 130),
        "FMAX": (0.45 / (1.0 + slope / 2.0) + 0.03).clip(0.02, 0.8),
        "zbedrock": df.soil_depth_pelletier.values.clip(0.3, 8.0),
        "SLOPE": slope.clip(0.05, None),
        "STD_ELEV": (12.0 * slope).clip(10, 800),
        "LAI_MAX": lai_max, "LAI_MIN": (lai_max - df.lai_diff.values).clip(0.1, None),
        "p_mean": df.p_mean.values, "p_seasonality": df.p_seasonality.values,
        "aridity": df.aridity.values, "frac_snow": df.frac_snow.values,
        "elev_mean": df.elev_mean.values, "tmean": tmean, "tamp": tamp, "area": df.area_gages2.values,
    }
    return _dataset(df.gauge_lat.values, df.gauge_lon.values, fields, ids=list(df.index),
                    source=f"CAMELS attributes ({Path(attributes).name})")


# CLM5 natural PFT indices (paramfile pftname) used for a gridcell's one dominant PFT.
PFT_NAMES = {1: "needleleaf_evergreen_temperate_tree", 2: "needleleaf_evergreen_boreal_tree",
             4: "broadleaf_evergreen_tropical_tree", 6: "broadleaf_deciduous_tropical_tree",
             7: "broadleaf_deciduous_temperate_tree", 9: "broadleaf_evergreen_shrub",
             12: "c3_arctic_grass", 13: "c3_non-arctic_grass", 14: "c4_grass"}
# The simulator's phenology (physics._terms): LAI = LAI_MIN + (LAI_MAX - LAI_MIN) * phase,


def dominant_pft(sites: xr.Dataset) -> np.ndarray:
    """One natural CLM5 PFT per gridcell from its climate and LAI_MAX (a label for the surfdata; the
    simulator's physics does not use it). LAI_MAX >= 3.5: trees, by tmean (degC) and aridity:
    >= 20 evergreen (4) if LAI_MAX >= 4.5 else deciduous (6) tropical broadleaf; < 5 boreal needleleaf (2);
    otherwise temperate needleleaf (1) if aridity >= 1 else broadleaf deciduous (7). Below 3.5: evergreen
    shrub (9) if aridity >= 2, else grass: C4 (14) if tmean >= 20, arctic C3 (12) if < -5, else C3 (13)."""
    t, lai, arid = (sites[k].values for k in ("tmean", "LAI_MAX", "aridity"))
    warm, cold = t >= 20.0, t < 5.0
    forest = np.select([warm & (lai >= 4.5), warm, cold, arid >= 1.0], [4, 6, 2, 1], 7)
    open_ = np.select([arid >= 2.0, warm, t < -5.0], [9, 14, 12], 13)
    return np.where(lai >= 3.5, forest, open_).astype(int)


def monthly_lai(sites: xr.Dataset, weather: xr.Dataset) -> np.ndarray:
    """(12, gridcell) LAI of each site's seasonal cycle for the surfdata's MONTHLY_LAI.

    The months follow the simulator's phenology on the run's own forcing: the month's mean of
    phase(T30) (T30 as in physics.run_land, after one spin-up pass over the first year), stretched
    so the year's extremes are exactly LAI_MIN and LAI_MAX, the simulator's static inputs; so
    LAI_MAX/LAI_MIN derived from MONTHLY_LAI give back the values the simulator ran with.
    """
    from .physics import PHENOLOGY_T0, PHENOLOGY_WIDTH

    tbot = np.asarray(weather["TBOT"].transpose("gridcell", "time").values, dtype="f8")
    month = np.asarray(weather["time"].dt.month.values)
    t30 = tbot[:, 0].copy()
    for row in tbot[:, :365].T:             # spin-up pass (physics.spin_up repeats year 1)
        t30 += (row - t30) / 30.0
    phase = np.empty_like(tbot)
    for i, row in enumerate(tbot.T):
        t30 += (row - t30) / 30.0
        phase[:, i] = 1.0 / (1.0 + np.exp(-(t30 - PHENOLOGY_T0) / PHENOLOGY_WIDTH))
    missing = sorted(set(range(1, 13)) - set(month.tolist()))
    if missing:
        raise UserError(f"monthly_lai: the forcing covers no day of month {missing[0]}; simulate at least one year")
    p = np.stack([phase[:, month == m].mean(1) for m in range(1, 13)])        # (12, G)
    lo, hi = p.min(0), p.max(0)
    span = hi - lo
    # A year with no phenology signal at all (never seen in practice) gets the temperature cycle's shape.
    tm = np.stack([tbot[:, month == m].mean(1) for m in range(1, 13)])
    flat = span < 1e-12
    p = np.where(flat, tm - tm.min(0), p - lo)
    span = np.where(flat, np.ptp(tm, 0), span)
    shape = p / np.where(span > 0, span, 1.0)
    lai_min, lai_max = sites["LAI_MIN"].values, sites["LAI_MAX"].values
    lai = lai_min + (lai_max - lai_min) * shape
    # the stretch hits the extremes up to round-off; set them exactly
    lai[shape.argmax(0), np.arange(lai.shape[1])] = lai_max
    lai[shape.argmin(0), np.arange(lai.shape[1])] = lai_min
    return lai


def static_tensors(sites: xr.Dataset):
    """The simulator's static fields as float64 torch tensors (gridcell,)."""
    import torch

    return {k: torch.as_tensor(sites[k].values, dtype=torch.float64) for k in ALL_STATIC_FIELDS if k in sites}


def camels_soil_comparison(attributes: str | Path, basins, scale_factors: dict) -> list[dict]:
    """Per basin: effective soil properties with the inferred scale factors beside the CAMELS soil
    attributes. `scale_factors`: name (hksat_sf, watsat_sf, bsw_sf, sucsat_sf) -> (basin,) values;
    a factor not given is 1 (default).

    ksat: Cosby (1984) hksat of the basin's sand fraction (CTSM's pedotransfer function) in cm/h,
    against CAMELS soil_conductivity (cm/h, STATSGO); porosity: watsat against soil_porosity.
    """
    import torch

    from ..ctsmio.vocabulary import SOIL_FIELDS
    from ..obs.camels import read_camels_attributes
    from .physics import soil_properties

    sites = camels_sites(attributes, basins=list(basins))
    attrs = read_camels_attributes(attributes, basins=list(basins))
    st = {k: torch.as_tensor(sites[k].values, dtype=torch.float64) for k in SOIL_FIELDS}
    n = len(sites["gridcell"])
    one = torch.ones(n, dtype=torch.float64)
    base = soil_properties(st, {k: one for k in ("watsat_sf", "bsw_sf", "sucsat_sf", "hksat_sf")})
    inf = soil_properties(st, {k: torch.as_tensor(np.asarray(scale_factors.get(k, np.ones(n)), dtype=float))
                               for k in ("watsat_sf", "bsw_sf", "sucsat_sf", "hksat_sf")})
    out = []
    for i, b in enumerate(sites["site_id"].values):
        # hksat mm/s -> cm/h: * 0.1 cm/mm * 3600 s/h
        out.append({"basin": str(b),
                    "ksat_cm_per_h": {"camels": float(attrs.loc[b, "soil_conductivity"]),
                                      "default": float(base["hksat"][i]) * 360.0,
                                      "inferred": float(inf["hksat"][i]) * 360.0},
                    "porosity": {"camels": float(attrs.loc[b, "soil_porosity"]),
                                 "default": float(base["watsat"][i]), "inferred": float(inf["watsat"][i])}})
    return out
