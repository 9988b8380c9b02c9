"""A tiny PPE in the real CLM5 PPE layout for the ingest tests.

Member paramfiles are copies of the real PPE paramfile (OAAT0000.nc) with fff and d_max set
through the CTSM-I/O writer, namelist_mods set jmaxb1, and the daily history files are 1-D
gridcell files written as CTSM writes them: ``time`` in days since with the noleap calendar, one
file per year, grid1d_lat/lon, float32 with the 1e36 fill value, CTSM units and attrs.
"""
from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd

from ppe_ingest.ctsmio.paramfile import write_paramfile

UNITS = {"RAIN": "mm/s", "TBOT": "K", "FSDS": "W/m^2", "QRUNOFF": "mm/s", "EFLX_LH_TOT": "W/m^2",
         "SOILWATER_10CM": "kg/m2"}
FORCING = ("RAIN", "TBOT", "FSDS")
CASE = "PPEn11_test"


def hist_values(var: str, member_i: int, fff: float, year: int, G: int) -> np.ndarray:
    """Deterministic daily values (365, G): forcing shared by members, responses depend on fff."""
    t = np.arange(365)[:, None] + 365 * year
    g = np.arange(G)[None, :]
    base = {"RAIN": 3e-5 * (1 + np.sin(t / 20.0 + g)) , "TBOT": 280 + 10 * np.sin(2 * np.pi * t / 365) + g,
            "FSDS": 150 + 100 * np.sin(2 * np.pi * t / 365) ** 2 + g}
    if var in base:
        return base[var].astype("f4")
    rain = base["RAIN"]
    if var == "QRUNOFF":
        return (rain * fff / 5.0).astype("f4")
    if var == "EFLX_LH_TOT":
        return (40 + 10 * fff + np.cos(t / 30.0) + g).astype("f4")
    return (20 + fff + 0 * t + g).astype("f4")  # SOILWATER_10CM


def write_hist(path: Path, values: dict, year0: int, year: int, lat, lon, units=UNITS) -> None:
    with netCDF4.Dataset(path, "w", format="NETCDF4_CLASSIC") as ds:
        ds.title = "CLM History file information"
        ds.source = "Community Terrestrial Systems Model"
        ds.time_period_freq = "day_1"
        ds.createDimension("time", None)
        ds.createDimension("gridcell", len(lat))
        ds.createDimension("hist_interval", 2)
        t = ds.createVariable("time", "f8", ("time",))
        t.long_name, t.units, t.calendar = "time", f"days since {year0:04d}-01-01 00:00:00", "noleap"
        t.bounds = "time_bounds"
        days = np.arange(365) + 365 * (year - year0)
        t[:] = days + 1.0  # CTSM stamps daily means at the end of the day
        b = ds.createVariable("time_bounds", "f8", ("time", "hist_interval"))
        b[:] = np.stack([days, days + 1.0], axis=1)
        ds.createVariable("mcdate", "i4", ("time",))[:] = 0
        for name, vals, u in (("grid1d_lat", lat, "degrees_north"), ("grid1d_lon", lon, "degrees_east")):
            v = ds.createVariable(name, "f8", ("gridcell",))
            v[:], v.units, v.long_name = vals, u, name
        for name, vals in values.items():
            v = ds.createVariable(name, "f4", ("time", "gridcell"), fill_value=np.float32(1e36))
            v.long_name, v.units, v.cell_methods = name, units[name], "time: mean"
            v.missing_value = np.float32(1e36)
            v[:] = vals


def make_ppe(root: Path, real_paramfile: Path, members=("LHC0001", "LHC0002", "LHC0003", "LHC0004"),
             G: int = 6, years: int = 2, year0: int = 2000, variables=tuple(UNITS)) -> dict:
    """Write the PPE under `root`; return {'fff': {...}, 'd_max': {...}, 'jmaxb1': {...}} per member."""
    root = Path(root)
    for d in ("paramfiles", "namelist_mods", "hist"):
        (root / d).mkdir(parents=True, exist_ok=True)
    lat = np.linspace(30, 45, G)
    lon = np.linspace(250, 280, G)
    theta = {}
    for i, m in enumerate(members):
        fff, dmax, jm = 0.5 + i, 10.0 + 5 * i, 0.05 + 0.01 * i
        theta[m] = {"fff": fff, "d_max": dmax, "jmaxb1": jm}
        write_paramfile(real_paramfile, root / "paramfiles" / f"{m}.nc", {"fff": fff, "d_max": dmax})
        (root / "namelist_mods" / f"{m}.txt").write_text(
            f"! user_nl_clm namelist options written by generate_params:\njmaxb1={jm!r}\n")
        for y in range(years):
            vals = {v: hist_values(v, i, fff, y, G) for v in variables}
            write_hist(root / "hist" / f"{CASE}_{m}.clm2.h1.{year0 + y:04d}-01-01-00000.nc", vals, year0, year0 + y,
                       lat, lon)
    pd.DataFrame(theta).T.rename_axis("member").to_csv(root / "design.csv")
    with netCDF4.Dataset(root / "surfdata_test.nc", "w") as ds:
        ds.createDimension("gridcell", G)
        ds.createDimension("nlevsoi", 10)
        for name, vals in (("LATIXY", lat), ("LONGXY", lon)):
            ds.createVariable(name, "f8", ("gridcell",))[:] = vals
        s = ds.createVariable("PCT_SAND", "f8", ("nlevsoi", "gridcell"))
        s[:] = np.tile(np.linspace(10, 60, G), (10, 1))
        s.units = "unitless"
        f = ds.createVariable("FMAX", "f8", ("gridcell",))
        f[:] = np.linspace(0.1, 0.4, G)
        f.units = "unitless"
    return theta


REPO = Path(__file__).resolve().parents[1]
SIM = dict(n_members=3, n_gridcells=5, n_years=2, spinup_years=0, compress=False, seed=7)


def sim_ppe(tmp_path_factory) -> Path:
    """A tiny PPE written by `esm-emu simulate` (3 members x 5 gridcells x 2 years, netCDF-3 history
    files as real CTSM writes them), built once per test session however many modules ask for it."""
    from esm_emu.cli import main

    root = tmp_path_factory.getbasetemp() / "sim_ppe"
    if not (root / "complete").is_file():
        root.mkdir(exist_ok=True)
        cfg = root / "simulate.yaml"
        lines = [f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in SIM.items()]
        cfg.write_text("\n".join(["simulate:", *lines, f"  table: {REPO / 'configs' / 'params_hydrology.csv'}"]) + "\n")
        assert main(["simulate", str(cfg), "--out", str(root / "ppe"), "--quiet"]) == 0
        (root / "complete").touch()
    return root / "ppe"
