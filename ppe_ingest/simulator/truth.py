"""The "truth" of the twin experiment: spatially smooth, attribute-correlated parameter maps and
synthetic in-situ observations made from a run of the built-in simulator (NOT CTSM) with them.

Observations are written in the real formats the readers in `ppe_ingest.obs` take:
streamflow as CAMELS-US text (`usgs_streamflow/<id>_streamflow_qc.txt` plus a Daymet-style
`basin_mean_forcing/daymet/<id>_lump_cida_forcing_leap.txt` whose header carries the basin
area in m2, so cfs <-> mm/s is exact), latent heat as PLUMBER2-style netCDF (`Qle`, `Qle_qc`),
and soil moisture as ISMN "header+values" `.stm` files (0-0.10 m).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtr

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .sites import smooth_field

CFS_TO_M3S = 0.0283168466  # m3/s per ft3/s

# Which attribute each parameter's truth leans on, and how strongly (correlation of the latent
# Gaussian field with the standardised attribute; sign gives the direction).
ATTRIBUTE_LINKS = {
    "hksat_sf": ("PCT_SAND", 0.6),
    "FMAX": ("log_SLOPE", -0.6),
    "fff": ("log_SLOPE", 0.4),
    "baseflow_scalar": ("log_SLOPE", 0.5),
    "zbedrock": ("log_SLOPE", -0.5),
    "watsat_sf": ("ORGANIC", 0.5),
    "bsw_sf": ("PCT_CLAY", 0.4),
    "medlynslope": ("aridity", -0.5),
    "n_melt_coef": ("STD_ELEV", -0.4),
    "d_max": ("aridity", 0.4),
    "liq_canopy_storage_scalar": ("LAI_MAX", 0.4),
}


def _standardise(x):
    x = np.asarray(x, float)
    return (x - x.mean()) / (x.std() + 1e-12)


def linked_attribute(sites: xr.Dataset, name: str) -> tuple[np.ndarray, float]:
    """(the standardised attribute parameter ``name``'s truth leans on, the correlation r); zeros and 0
    for a parameter without a link (ATTRIBUTE_LINKS)."""
    link = ATTRIBUTE_LINKS.get(name)
    if link is None:
        return np.zeros(sites.sizes["gridcell"]), 0.0
    attr, r = link
    a = np.log(sites["SLOPE"].values) if attr == "log_SLOPE" else sites[attr].values
    return _standardise(a), r


def true_parameter_maps(sites: xr.Dataset, table, names, seed: int = 0, length_deg: float = 6.0,
                        margin: float = 0.0) -> xr.Dataset:
    """theta(gridcell, param): a smooth Gaussian-process-like field per parameter, correlated with
    a gridcell attribute (ATTRIBUTE_LINKS), mapped into [min, max] of the table by the normal CDF
    (kept ``margin`` of the range inside the bounds). With no margin each value is uniform over the
    range, as the PPE design's members are: the calibration's prior is then the truths' own
    distribution, and a prior-wide 90 % interval holds 90 % of them, not all."""
    rng = np.random.default_rng([seed, 21])
    lat, lon = sites["grid1d_lat"].values, sites["grid1d_lon"].values
    rows = []
    for name in names:
        lo, hi = table.bounds(name)
        z = smooth_field(lat, lon, rng, length_deg=length_deg)
        if name in ATTRIBUTE_LINKS and lat.size > 2:
            a, r = linked_attribute(sites, name)
            z = r * a + np.sqrt(1 - r ** 2) * z
        u = margin + (1 - 2 * margin) * ndtr(z)
        rows.append(lo + (hi - lo) * u)
    theta = np.stack(rows, 1) if rows else np.zeros((lat.size, 0))
    ds = xr.Dataset(
        {"theta": (("gridcell", "param"), theta, {"long_name": "true parameter value (twin experiment)"})},
        coords={"gridcell": sites["gridcell"].values, "param": np.array(list(names), dtype=object),
                "grid1d_lat": ("gridcell", lat, {"units": "degrees_north"}),
                "grid1d_lon": ("gridcell", lon, {"units": "degrees_east"})})
    ds["param_min"] = ("param", np.array([table.bounds(n)[0] for n in names], float))
    ds["param_max"] = ("param", np.array([table.bounds(n)[1] for n in names], float))
    ds.attrs.update(title="True parameter maps of the esm-emu twin experiment (built-in simulator, not CTSM)",
                    links="; ".join(f"{n}~{ATTRIBUTE_LINKS[n][0]} (r={ATTRIBUTE_LINKS[n][1]:+.1f})"
                                    for n in names if n in ATTRIBUTE_LINKS),
                    seed=int(seed), margin=float(margin))
    return ds


# ------------------------------------------------------------------------ observation writers
def synthetic_ids(n: int) -> list[str]:
    """8-digit ids that cannot be real USGS gauges (prefix 99)."""
    return [f"99{i:06d}" for i in range(n)]


def _dates(time) -> list[tuple[int, int, int]]:
    return [(t.year, t.month, t.day) for t in time]


def _day_length(lat, dates) -> np.ndarray:
    """Daylight duration (s), FAO-56 Eq. 34 with the sunset hour angle."""
    doy = np.array([pd.Timestamp(y, m, d).day_of_year for y, m, d in dates], float)
    dec = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    ws = np.arccos(np.clip(-np.tan(np.deg2rad(lat)) * np.tan(dec), -1, 1))
    return 24 / np.pi * ws * 3600.0


def write_streamflow(out_dir: Path, site_id: str, lat: float, elev: float, area_km2: float, weather: xr.Dataset,
                     q_mm_s: np.ndarray, swe: np.ndarray, sigma: float, gap_fraction: float,
                     rng: np.random.Generator) -> tuple[Path, Path]:
    """CAMELS-US streamflow (cfs, log-normal noise, gaps as -999 flag M) and its basin forcing file."""
    area_m2 = int(round(area_km2 * 1e6))
    dates = _dates(weather["time"].values)
    q_cfs = q_mm_s * 1e-3 * area_m2 / CFS_TO_M3S
    noisy = q_cfs * np.exp(rng.normal(-0.5 * sigma ** 2, sigma, q_cfs.size))   # mean-preserving
    gaps = rng.random(q_cfs.size) < gap_fraction
    sf = out_dir / "usgs_streamflow" / f"{site_id}_streamflow_qc.txt"
    lines = []
    for (y, m, d), q, g in zip(dates, noisy, gaps):
        lines.append(f"{site_id} {y:04d} {m:02d} {d:02d} {(-999.0 if g else q):12.4f} {'M' if g else 'A'}")
    with atomic_path(sf) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    # Daymet-style basin forcing written from the simulator's forcing (so a reader recovers it).
    w = weather
    tbot_c = w["TBOT"].values - 273.15
    dayl = _day_length(lat, dates)
    prcp = (w["RAIN"].values + w["SNOW"].values) * 86400.0
    srad = w["FSDS"].values * 86400.0 / dayl
    q = w["QBOT"].values
    vp = q * w["PBOT"].values / (0.622 + 0.378 * q)
    ff = out_dir / "basin_mean_forcing" / "daymet" / f"{site_id}_lump_cida_forcing_leap.txt"
    body = [f"{lat:7.2f}", f"{elev:7.2f}", f"{area_m2:d}",
            "Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm) tmax(C) tmin(C) vp(Pa)"]
    for i, (y, m, d) in enumerate(dates):
        body.append(f"{y:04d} {m:02d} {d:02d} 12\t{dayl[i]:.2f}\t{prcp[i]:.4f}\t{srad[i]:.4f}\t{swe[i]:.2f}\t"
                    f"{tbot_c[i] + 5.0:.4f}\t{tbot_c[i] - 5.0:.4f}\t{vp[i]:.4f}")
    with atomic_path(ff) as tmp:
        tmp.write_text("\n".join(body) + "\n")
    return sf, ff


def write_camels_topo(out_dir: Path, ids, lat, lon, elev, slope_deg, area_km2) -> Path:
    """A `camels_topo.txt`-format table for the synthetic basins (gauge location and area)."""
    p = out_dir / "camels_attributes_v2.0" / "camels_topo.txt"
    lines = ["gauge_id;gauge_lat;gauge_lon;elev_mean;slope_mean;area_gages2;area_geospa_fabric"]
    for i, g in enumerate(ids):
        slope_mkm = np.tan(np.deg2rad(slope_deg[i])) * 1000.0
        lines.append(f"{g};{lat[i]:.5f};{lon[i]:.5f};{elev[i]:.2f};{slope_mkm:.5f};{area_km2[i]:.6f};{area_km2[i]:.6f}")
    with atomic_path(p) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return p


def write_plumber_flux(out_dir: Path, site_id: str, lat: float, lon: float, elev: float, time,
                       le: np.ndarray, sigma: float, gap_fraction: float, rng: np.random.Generator) -> Path:
    """PLUMBER2-style flux netCDF (time, y, x): Qle W/m2 with additive noise and Qle_qc
    (0 = measured; gap days carry a smoothed value with qc 3, as FluxnetLSM gap-fills them)."""
    n = le.size
    noisy = le + rng.normal(0, sigma, n)
    gaps = rng.random(n) < gap_fraction
    filled = pd.Series(np.where(gaps, np.nan, noisy)).interpolate(limit_direction="both").values
    qle = np.where(gaps, filled, noisy).astype(np.float32)
    qc = np.where(gaps, 3, 0).astype(np.float32)
    y0, y1 = time[0].year, time[-1].year
    path = out_dir / "fluxnet_plumber" / f"{site_id}_{y0}-{y1}_SIMULATED_Flux.nc"
    days = np.arange(n, dtype=np.float64) * 86400.0
    ds = xr.Dataset(
        {"Qle": (("time", "y", "x"), qle[:, None, None],
                 {"units": "W/m2", "long_name": "Latent heat flux from surface",
                  "standard_name": "surface_upward_latent_heat_flux", "CMIP_short_name": "hfls",
                  "Fluxnet_name": "LE_F_MDS (synthetic)"}),
         "Qle_qc": (("time", "y", "x"), qc[:, None, None],
                    {"units": "-", "long_name": "Qle quality control flag"}),
         "latitude": (("y", "x"), np.array([[lat]], np.float32), {"units": "degrees_north"}),
         "longitude": (("y", "x"), np.array([[lon]], np.float32), {"units": "degrees_east"}),
         "elevation": (("y", "x"), np.array([[elev]], np.float32), {"units": "m"})},
        coords={"time": ("time", days, {"units": f"seconds since {y0:04d}-01-01 00:00:00", "calendar": "noleap"}),
                "y": [1.0], "x": [1.0]})
    ds.attrs.update(site_code=site_id, site_name=f"esm-emu synthetic site {site_id}",
                    QC_flag_descriptions="Measured: 0, Good-quality gapfilling: 1, Medium-quality gapfilling: 2, "
                                         "Poor-quality gapfilling: 3",
                    source="esm-emu built-in simulator (stand-in for CTSM) with synthetic noise; not observed")
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, format="NETCDF4")
    return path


def write_ismn(out_dir: Path, site_id: str, lat: float, lon: float, elev: float, time,
               sw10: np.ndarray, sigma: float, gap_fraction: float, rng: np.random.Generator) -> Path:
    """ISMN header+values `.stm` daily soil moisture of 0-0.10 m (m3/m3 = SOILWATER_10CM / 100 kg/m2)."""
    theta = sw10 / 100.0 + rng.normal(0, sigma, sw10.size)
    gaps = rng.random(sw10.size) < gap_fraction
    t0, t1 = time[0], time[-1]
    name = (f"SIM_SIMULATED_{site_id}_sm_0.000000_0.100000_Synthetic_"
            f"{t0.year:04d}{t0.month:02d}{t0.day:02d}_{t1.year:04d}{t1.month:02d}{t1.day:02d}.stm")
    path = out_dir / "ismn" / name
    lines = [f"SIM SIMULATED {site_id} {lat:.5f} {lon:.5f} {elev:.2f} 0.00 0.10 Synthetic"]
    for t, v, g in zip(time, theta, gaps):
        if g:
            continue
        lines.append(f"{t.year:04d}/{t.month:02d}/{t.day:02d} 12:00 {max(v, 0.0):.4f} G M")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def check_obs_sites(cfg: dict, n_gridcells: int) -> int:
    """The number of observation sites, one per gridcell: asking for more sites than gridcells is
    refused (naming simulate.truth.n_obs_sites) rather than silently giving fewer."""
    n = int(cfg["n_obs_sites"])
    if n > n_gridcells:
        raise UserError(f"simulate.truth.n_obs_sites: {n} observation sites asked for, but the grid has "
                        f"{n_gridcells} gridcells and each site is one gridcell; give at most {n_gridcells}")
    return n


def write_observations(out_dir: Path, sites: xr.Dataset, weather: xr.Dataset, sim: xr.Dataset, cfg: dict,
                       seed: int) -> pd.DataFrame:
    """Observations at `cfg['n_obs_sites']` gridcells from the noise-free truth run `sim`."""
    n = check_obs_sites(cfg, sites.sizes["gridcell"])
    rng = np.random.default_rng([seed, 31])
    cells = np.sort(rng.choice(sites.sizes["gridcell"], n, replace=False))
    ids = synthetic_ids(n)
    time = weather["time"].values
    rows = []
    for g, sid in zip(cells, ids):
        lat, lon = float(sites.grid1d_lat[g]), float(sites.grid1d_lon[g])
        elev, area = float(sites.elev_mean[g]), float(sites.area[g])
        row = dict(site_id=sid, gridcell=int(g), lat=lat, lon=lon, elev_mean=elev, area_km2=round(area * 1e6) / 1e6)
        if "site_id" in sites:
            row["source_site"] = str(sites.site_id.values[g])
        wx = weather.isel(gridcell=g)
        if "QRUNOFF" in cfg["variables"]:
            write_streamflow(out_dir, sid, lat, elev, row["area_km2"], wx, sim.QRUNOFF.values[g], sim.H2OSNO.values[g],
                             cfg["streamflow_log_sigma"], cfg["gap_fraction"], rng)
        if "EFLX_LH_TOT" in cfg["variables"]:
            write_plumber_flux(out_dir, sid, lat, lon, elev, time, sim.EFLX_LH_TOT.values[g],
                               cfg["latent_heat_sigma"], cfg["gap_fraction"], rng)
        if "SOILWATER_10CM" in cfg["variables"]:
            write_ismn(out_dir, sid, lat, lon, elev, time, sim.SOILWATER_10CM.values[g],
                       cfg["soil_moisture_sigma"], cfg["gap_fraction"], rng)
        rows.append(row)
    table = pd.DataFrame(rows)
    if "QRUNOFF" in cfg["variables"] and n:
        write_camels_topo(out_dir, ids, table.lat.values, table.lon.values, table.elev_mean.values,
                          sites.SLOPE.values[cells], table.area_km2.values)
    p = out_dir / "obs_sites.csv"
    with atomic_path(p) as tmp:
        table.to_csv(tmp, index=False)
    return table


def check_names(names, table) -> None:
    for n in names:
        if n not in table:
            raise UserError(f"truth: parameter {n} is not in the parameter table {table.source}")


def read_observations(truth_dir: str | Path, variables=("QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM")) -> xr.Dataset:
    """Read the synthetic observations of `write_observations` back through the real format
    readers (CAMELS-US streamflow, PLUMBER2 flux, ISMN soil moisture) into one observation schema."""
    from ..obs.camels import read_camels_streamflow
    from ..obs.io import merge_obs
    from ..obs.ismn import read_ismn_stm
    from ..obs.plumber import read_plumber_flux

    truth_dir = Path(truth_dir)
    sites_csv = truth_dir / "obs_sites.csv"
    if not sites_csv.is_file():
        raise UserError(f"{sites_csv}: not found; is {truth_dir} the truth/ folder of `esm-emu simulate`?")
    ids = [str(s) for s in pd.read_csv(sites_csv, dtype={"site_id": str})["site_id"]]
    parts = []
    if "QRUNOFF" in variables:
        parts.append(read_camels_streamflow(truth_dir / "usgs_streamflow", ids,
                                            forcing_dir=truth_dir / "basin_mean_forcing" / "daymet",
                                            attributes=truth_dir / "camels_attributes_v2.0"))
    if "EFLX_LH_TOT" in variables:
        files = sorted((truth_dir / "fluxnet_plumber").glob("*_Flux.nc"))
        if files:
            parts.append(read_plumber_flux(files))
    if "SOILWATER_10CM" in variables:
        sm = [read_ismn_stm(p) for p in sorted((truth_dir / "ismn").glob("*.stm"))]
        if sm:
            sm = merge_obs(sm, source=str(truth_dir / "ismn"))
            # ISMN names a sensor network.station.depth; each synthetic station has one 0-10 cm sensor.
            sm = sm.assign_coords(site=[str(s).split(".")[1] for s in sm.site.values])
            sm = sm.drop_vars([c for c in ("depth_from", "depth_to", "H2OSOI", "H2OSOI_mask") if c in sm.variables])
            parts.append(sm)
    if not parts:
        raise UserError(f"{truth_dir}: no observations of {', '.join(variables)} found")
    return parts[0] if len(parts) == 1 else merge_obs(parts, source=str(truth_dir))
