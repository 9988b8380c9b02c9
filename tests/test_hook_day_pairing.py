"""The CIME hooks pair CTSM history with observations on the day each record describes.

CTSM stamps a daily mean at the END of its interval (the mean of Mar 1 at Mar 2 00:00, bounds
[Mar 1, Mar 2]); observations are dated by the day they describe. `ctsmio.history.record_days`
is the one answer to "which day does this record describe", used by the hooks (through
`read_history`), the inverse pipeline (`interval_start`) and the store's held-out years. Here the
observations are the model's own series, so the misfit is zero only when every day meets its own
day; each test also checks that a one-day shift would give a clearly non-zero misfit.

Real files: USGS streamflow read by the CAMELS reader; CTSM's own hourly single-point history
(`lndgrid` output, the nstep-0 record with bounds [-dt/2, 0]) from the shared data folder. The
hooks run as CIME runs them: the installed scripts in a fresh interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml
from cime_case_util import make_case

from esm_emu.cli import main
from esm_emu.metrics import nse, pooled_nse
from ppe_ingest.ctsmio.history import interval_start, read_history, record_days, write_history
from ppe_ingest.ctsmio.paramfile import create_paramfile
from ppe_ingest.ctsmio.surfdata import create_surfdata_1d
from ppe_ingest.obs.io import read_obs, write_obs
from ppe_ingest.obs.schema import make_obs

HOOKS = Path("esm-emu") / "hooks"
BASINS = ["01022500", "01547700"]
FIRST_DAY, N_DAYS = "2001-03-01", 40  # 2001 has no Feb 29: noleap and the gauge's calendar agree
DAY0 = 59  # 2001-03-01 as days since 2001-01-01 on the noleap calendar
REAL_HIST = ("ctsm", "pecan", "case.clm2.h0.2004-01-01-00000.nc")


def run_hook(script: Path, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def gauges(shared_data):
    """Real USGS daily streamflow (CAMELS reader, QRUNOFF mm/s) at two gauges, as an obs dataset."""
    from ppe_ingest.obs.camels import read_camels_streamflow

    root = shared_data("camels_us", "neuralhydrology_test_data", "camels_us", "usgs_streamflow")
    return read_camels_streamflow(root, BASINS)


def _drop_bounds(path: Path) -> None:
    """The same history without time_bounds (end stamps only, as after tools that drop bounds)."""
    with xr.open_dataset(path, decode_times=False) as ds:
        out = ds.drop_vars("time_bounds").load()
    out["time"].attrs.pop("bounds", None)
    tmp = path.with_suffix(".tmp.nc")
    out.to_netcdf(tmp)
    os.replace(tmp, path)


@pytest.mark.parametrize("layout", ["time_bounds", "end_stamps_only"])
def test_da_and_postrun_pair_each_day_with_its_own_observation(tmp_path, gauges, layout):
    """CTSM's QRUNOFF equal to the gauges' observed series: the DA objective (1 - pooled NSE) is 0
    and POSTRUN's NSE is 1 at both gauges only when each history day meets its own observation."""
    obs_path = write_obs(gauges, tmp_path / "usgs_qobs.nc")
    obs = read_obs(obs_path)
    days = np.datetime64(FIRST_DAY) + np.arange(N_DAYS)
    q = obs["QRUNOFF"].sel(time=days).values  # (site, day) mm/s
    assert np.isfinite(q).all()
    # A one-day shift is far from zero misfit on these series (so the zero below means something).
    assert 1.0 - pooled_nse(q[:, 1:], q[:, :-1]) > 0.02

    root = make_case(tmp_path / "cases", name="ctsm_gauges")
    lat, lon = gauges["site_lat"].values, gauges["site_lon"].values
    static = {"PCT_SAND": np.array([40.0, 60.0]), "PCT_CLAY": np.array([20.0, 10.0]),
              "ORGANIC": np.array([15.0, 10.0]), "FMAX": np.array([0.3, 0.4]),
              "zbedrock": np.array([2.0, 1.5]), "SLOPE": np.array([2.0, 5.0])}
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    create_paramfile(inputs / "params.nc", {"fff": 0.5, "d_max": 15.0, "n_baseflow": 1.0})
    create_surfdata_1d(inputs / "surfdata.nc", lat, lon, static)
    cfg = {"paramfile": str(inputs / "params.nc"), "fsurdat": str(inputs / "surfdata.nc"),
           "namelist": {"baseflow_scalar": 1e-3},
           "observations": {"file": str(obs_path), "variable": "QRUNOFF"},
           "da": {"forward": {"kind": "simulator"}, "steps": 1, "lr": 0.05,
                  "parameters": {"fff": {"location": "paramfile", "min": 0.1, "max": 5.0}}}}
    (inputs / "hooks.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(inputs / "hooks.yaml"), "--cycles", "1"]) == 0

    forcing = {name: np.full(q.shape, value) for name, value in (
        ("RAIN", 2e-5), ("SNOW", 0.0), ("TBOT", 280.0), ("FSDS", 150.0), ("FLDS", 300.0), ("QBOT", 0.005),
        ("PBOT", 95000.0), ("WIND", 3.0))}
    hist = write_history(root / "run" / f"ctsm_gauges.clm2.h1.{FIRST_DAY}-00000.nc", dict(forcing, QRUNOFF=q),
                         lat, lon, 2001, "ctsm_gauges", "test: gauges' own series", day0=DAY0)
    with netCDF4.Dataset(hist) as ds:  # CTSM's stamps: the end of each day, bounds [day, day + 1]
        assert ds["time"][0] == DAY0 + 1 and list(ds["time_bounds"][0]) == [DAY0, DAY0 + 1]
        assert ds["mcdate"][0] == 20010302
    if layout == "end_stamps_only":
        _drop_bounds(hist)

    run_hook(root / HOOKS / "esm_emu_da", root, 0)
    record = json.loads((root / "esm-emu" / "da_state.json").read_text())["cycles"][0]
    assert (record["first_day"], record["last_day"]) == (FIRST_DAY, str(days[-1]))
    assert record["n_obs"] == q.size
    assert record["objective"] == pytest.approx(0.0, abs=1e-9)

    run_hook(root / HOOKS / "esm_emu_postrun.py", root)
    report = json.loads((root / "run" / "esm_emu_report" / "metrics.json").read_text())
    assert report["period"] == [FIRST_DAY, str(days[-1])]
    for b in BASINS:
        assert report["sites"][b]["n_days"] == N_DAYS
        assert report["sites"][b]["nse"] == pytest.approx(1.0, abs=1e-9)


def _independent_daily_means(path: Path, var: str):
    """Daily means from CTSM's own date of each record (mcdate/mcsec, noleap): a record stamped at
    00:00 closes the previous day. Not through any esm-emu time code."""
    import datetime

    import cftime

    with netCDF4.Dataset(path) as ds:
        mcdate, mcsec = ds["mcdate"][:], ds["mcsec"][:]
        values = np.asarray(ds[var][:, 0], float)
        lat, lon = float(ds["lat"][0]), float(ds["lon"][0])
    labels = []
    for d, s in zip(mcdate, mcsec):
        day = cftime.DatetimeNoLeap(int(d) // 10000, int(d) // 100 % 100, int(d) % 100)
        labels.append((day - datetime.timedelta(days=1) if s == 0 else day).isoformat()[:10])
    labels = np.array(labels)
    days = np.unique(labels)
    return days, np.array([values[labels == x].mean() for x in days]), lat, lon


def test_postrun_on_ctsms_own_hourly_lndgrid_history(tmp_path, shared_data):
    """A real CTSM history (hourly, single point, `lndgrid` output): POSTRUN's NSE is 1 against
    observations that are the file's own daily latent heat means dated by CTSM's mcdate/mcsec,
    and the one-day-shifted pairing would not be."""
    real = shared_data(*REAL_HIST)
    days, le, lat, lon = _independent_daily_means(real, "EFLX_LH_TOT")
    assert days[0] == "2003-12-31" and days[1] == "2004-01-01" and days[-1] == "2004-12-31"
    assert nse(le[1:], le[:-1]) < 0.9  # a one-day shift is visible in this series

    root = make_case(tmp_path / "cases", name="case")
    (root / "run" / real.name).symlink_to(real)  # RUNDIR as CTSM left it (read, never copied or changed)
    obs_path = tmp_path / "le_obs.nc"
    make_obs(le[None, :], "EFLX_LH_TOT", "W/m^2", ["tower"], [lat], [lon - 360.0],
             time=days.astype("datetime64[D]"), source="the history's own daily means").to_netcdf(obs_path)
    cfg = {"history_tape": "h0", "observations": {"file": str(obs_path), "variable": "EFLX_LH_TOT"}}
    (tmp_path / "hooks.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(tmp_path / "hooks.yaml")]) == 0
    before = real.stat().st_mtime_ns

    run_hook(root / HOOKS / "esm_emu_postrun.py", root)
    report = json.loads((root / "run" / "esm_emu_report" / "metrics.json").read_text())
    assert report["period"] == [str(days[0]), str(days[-1])]
    site = report["sites"]["tower"]
    assert site["n_days"] == days.size == 366  # 365 noleap days and the nstep-0 record's
    assert site["nse"] == pytest.approx(1.0, abs=1e-9)
    assert real.stat().st_mtime_ns == before


def test_one_definition_of_the_day_a_record_describes(shared_data):
    """The reader, the inverse pipeline's relabelling and the raw bounds agree on the real file,
    with and without its bounds, and on a store-like axis of daily end stamps."""
    from esm_emu.inverse import pipeline

    assert not hasattr(pipeline, "interval_start") or pipeline.interval_start is interval_start
    real = shared_data(*REAL_HIST)
    h = read_history(real, ["EFLX_LH_TOT"])
    with xr.open_dataset(real, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True)) as ds:
        with_bounds = interval_start(ds)["time"].values
        no_bounds = interval_start(ds.drop_vars("time_bounds"))["time"].values
        stamps_only = record_days(ds["time"].values)  # CTSM's stamps (the hours' ends), no bounds
    assert [str(x)[:10] for x in np.unique(with_bounds)] == list(h["days"])
    assert (no_bounds == with_bounds).all() and (stamps_only == with_bounds).all()
    # A training store's axis: one daily mean per day at the end of the day (no bounds).
    stamps = np.datetime64("2001-01-02") + np.arange(5)
    store = xr.Dataset({"TBOT": ("time", np.arange(5.0))}, coords={"time": stamps.astype("datetime64[ns]")})
    assert interval_start(store)["time"].values.astype("datetime64[D]").tolist() == \
        (stamps - 1).astype("datetime64[D]").tolist()
    assert list(record_days(stamps[:1].astype("datetime64[ns]"))) == [np.datetime64("2001-01-01")]
