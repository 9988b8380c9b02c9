"""Broken PPEs: each problem is a one-line error naming the file, or with skip_bad a recorded skip."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import netCDF4
import numpy as np
import pytest
import xarray as xr
from _ingest_ppe import make_ppe, sim_ppe

from ppe_ingest.base.errors import UserError
from ppe_ingest.ingest.checks import Report
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.writer import write_store


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("ppe")
    make_ppe(root, shared_data("ppe", "paramfiles", "OAAT0000.nc"), years=2)
    return root


def _hist(d, member, year=2001):
    return d / "hist" / f"PPEn11_test_{member}.clm2.h1.{year}-01-01-00000.nc"


def _missing(d):
    _hist(d, "LHC0002").unlink()
    return "LHC0002", r"missing member file: no h1 history for 20010102-20020101"


def _truncated(d):
    f = _hist(d, "LHC0003")
    f.write_bytes(f.read_bytes()[:3000])
    return "LHC0003", r"not a readable CTSM history file"


def _absent_variable(d):
    f = _hist(d, "LHC0004")
    with xr.open_dataset(f, decode_times=False) as ds:
        ds.drop_vars("QRUNOFF").to_netcdf(f.with_suffix(".tmp"))
    f.with_suffix(".tmp").replace(f)
    return "LHC0004", r"variable QRUNOFF is absent"


def _gridcells(d):
    with netCDF4.Dataset(_hist(d, "LHC0001"), "a") as ds:
        ds["grid1d_lat"][0] = 10.0
    return "LHC0001", r"mismatched gridcell set"


def _duplicate(d):
    (d / "hist_copy").mkdir()
    shutil.copy(_hist(d, "LHC0002"), d / "hist_copy")
    return "LHC0002", r"duplicate member"


def _nans(d):
    with netCDF4.Dataset(_hist(d, "LHC0003"), "a") as ds:
        ds["QRUNOFF"][5, 2] = np.nan
    return "LHC0003", r"variable QRUNOFF has 1 NaN values"


def _units(d):
    with netCDF4.Dataset(_hist(d, "LHC0004"), "a") as ds:
        ds["EFLX_LH_TOT"].units = "mm/day"
    return "LHC0004", r"variable EFLX_LH_TOT has units 'mm/day', expected CTSM units 'W/m\^2'"


def _swapped_dims(d):
    # the reference member (the first) is the broken one: it must be flagged, not the others
    f = _hist(d, "LHC0001")
    with xr.open_dataset(f, decode_times=False) as ds:
        ds = ds.load()
    ds["QRUNOFF"] = ds["QRUNOFF"].transpose("gridcell", "time")
    ds.to_netcdf(f.with_suffix(".tmp"))
    f.with_suffix(".tmp").replace(f)
    return "LHC0001", r"variable QRUNOFF has dims \(gridcell, time\), expected \(time, gridcell\)"


CASES = [_missing, _truncated, _absent_variable, _gridcells, _duplicate, _nans, _units, _swapped_dims]


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_broken_input_is_an_error_or_a_recorded_skip(base, tmp_path, breaker):
    d = tmp_path / "ppe"
    shutil.copytree(base, d)
    member, reason = breaker(d)
    with pytest.raises(UserError, match=reason) as err:
        write_store(discover(d), tmp_path / "a.nc", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and member in msg and str(d) in msg  # one line naming the file
    assert not (tmp_path / "a.nc").exists()
    out = write_store(discover(d, report=Report(skip_bad=True)), tmp_path / "b.nc", progress=False)
    ds = xr.open_dataset(out)
    skipped = json.loads(ds.attrs["skipped"])
    assert {s["member"] for s in skipped} == {member}
    assert skipped[0]["file"].startswith(str(d)) and skipped[0]["reason"]
    assert member not in ds.member.values and ds.sizes["member"] == 3


def test_cli_prints_one_line_and_skip_report(base, tmp_path):
    d = tmp_path / "ppe"
    shutil.copytree(base, d)
    _units(d)
    cmd = [sys.executable, "-m", "esm_emu.cli", "ingest", str(d), "--out", str(tmp_path / "s.nc"), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "EFLX_LH_TOT has units 'mm/day'" in r.stderr
    r = subprocess.run(cmd + ["--skip-bad"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipped:" in r.stdout and "LHC0004" in r.stdout and "3 members" in r.stdout


def test_nan_in_a_simulator_member_is_an_error_or_a_recorded_skip(tmp_path, tmp_path_factory):
    d = tmp_path / "ppe"
    shutil.copytree(sim_ppe(tmp_path_factory), d)
    (f,) = (d / "hist").glob("*_LHC0002.clm2.h1.*.nc")  # netCDF-3, all years in one file
    with netCDF4.Dataset(f, "a") as ds:
        ds["QDRAI"][400, 4] = np.nan
    with pytest.raises(UserError, match=r"variable QDRAI has 1 NaN values \(first at time index 400\)") as err:
        write_store(discover(d), tmp_path / "a.nc", progress=False)
    assert str(f) in str(err.value) and "LHC0002" in str(err.value)
    ds = xr.open_dataset(write_store(discover(d, report=Report(skip_bad=True)), tmp_path / "b.nc", progress=False))
    assert [s["member"] for s in json.loads(ds.attrs["skipped"])] == ["LHC0002"]
    assert list(ds.member.values) == ["LHC0001", "LHC0003"]
