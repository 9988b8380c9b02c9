"""`esm-emu propose`: the next PPE wave from a parameter map's posterior region, read back by
`esm-emu ingest` with its design values, and appended to an existing store with `--append-to`."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))
from _ingest_ppe import CASE, hist_values, write_hist

from esm_emu.inverse.param_map import build_param_map, write_param_map
from ppe_ingest.ctsmio.paramfile import create_paramfile
from tests.hostile import Case, check_refused, run_cli

PARAMS = ["fff", "FMAX", "hksat_sf", "baseflow_scalar"]  # paramfile, fsurdat, paramfile, namelist
LO, HI = np.array([0.02, 0.05, 0.1, 0.0005]), np.array([5.0, 0.8, 10.0, 0.1])
VARS = ("RAIN", "TBOT", "FSDS", "QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM")
LAT, LON = np.linspace(30, 45, 3), np.linspace(250, 280, 3)


def _map(tmp: Path) -> Path:
    """Six gridcells: fff identified (tight intervals), the others spanning most of their range."""
    theta = np.column_stack([np.linspace(0.5, 1.5, 6), np.full(6, 0.4), np.full(6, 1.0), np.full(6, 0.01)])
    lower = np.column_stack([theta[:, 0] - 0.05, np.full(6, 0.1), np.full(6, 0.15), np.full(6, 0.0006)])
    upper = np.column_stack([theta[:, 0] + 0.05, np.full(6, 0.75), np.full(6, 9.0), np.full(6, 0.09)])
    pm = build_param_map(np.arange(6), theta, (upper - lower) / 3.3, PARAMS, lo=LO, hi=HI, default=theta[0])
    pm["theta_lower"] = (("gridcell", "param"), lower)
    pm["theta_upper"] = (("gridcell", "param"), upper)
    return write_param_map(pm, tmp / "parameter_map.nc")


def _run_members(wave: Path) -> pd.DataFrame:
    """Stand in for the CTSM cases: history files for every member of the wave."""
    design = pd.read_csv(wave / "design.csv", index_col=0)
    (wave / "hist").mkdir()
    for i, m in enumerate(design.index):
        for y in range(2):
            vals = {v: hist_values(v, i, float(design.loc[m, "fff"]), y, 3) for v in VARS}
            write_hist(wave / "hist" / f"{CASE}_{m}.clm2.h1.{2000 + y}-01-01-00000.nc", vals, 2000, 2000 + y,
                       LAT, LON)
    return design


def test_propose_members_read_back_by_ingest_and_appended_to_a_store(tmp_path):
    pm = _map(tmp_path)
    base = create_paramfile(tmp_path / "base.nc", {"fff": 0.5, "hksat_sf": 1.0})
    wave = tmp_path / "wave1"
    r = run_cli(["propose", "--parameter-map", pm, "--n", "8", "--out", wave, "--base-paramfile", base,
                 "--seed", "1", "--quiet"])
    assert r.returncode == 0, r.stderr
    for m in [f"WAVE{i:04d}" for i in range(1, 9)]:
        assert (wave / "paramfiles" / f"{m}.nc").is_file() and (wave / "namelist_mods" / f"{m}.txt").is_file()
    assert "create_clone" in (wave / "RUN_WAVE.md").read_text()
    design = _run_members(wave)
    # inside the posterior region: fff within the gridcells' tight intervals, the rest spread over theirs
    assert design["fff"].between(0.45, 1.55).all() and design["fff"].std() > 0.2
    assert design["hksat_sf"].between(0.15, 9.0).all() and design["hksat_sf"].max() > 3
    r = run_cli(["ingest", wave, "--out", tmp_path / "store.nc", "--no-progress"])
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "store.nc") as st:
        th = st["theta"].to_pandas()
    for p in PARAMS:
        np.testing.assert_allclose(th.loc[list(design.index), p].values, design[p].values, rtol=1e-6)

    wave2 = tmp_path / "wave2"
    r = run_cli(["propose", "--parameter-map", pm, "--n", "10", "--out", wave2, "--base-paramfile", base,
                 "--seed", "2", "--prefix", "NEXT", "--quiet"])
    assert r.returncode == 0, r.stderr
    design2 = _run_members(wave2)
    r = run_cli(["ingest", wave2, "--append-to", tmp_path / "store.nc", "--no-progress"])
    assert r.returncode == 0, r.stderr
    with xr.open_dataset(tmp_path / "store.nc") as st:
        assert st.sizes["member"] == 18
        th = st["theta"].to_pandas()
        for p in PARAMS:
            np.testing.assert_allclose(th.loc[list(design2.index), p].values, design2[p].values, rtol=1e-6)
        q = st["QRUNOFF"].sel(member="NEXT0003").transpose("time", "gridcell").values[:365]
        np.testing.assert_allclose(q, hist_values("QRUNOFF", 2, float(design2.loc["NEXT0003", "fff"]), 0, 3),
                                   rtol=1e-6)
        # one in ten held out for validation and one for testing (the emulator's error where the wave went)
        assert np.bincount(st["split_member"].values[8:], minlength=3).tolist() == [8, 1, 1]
    # the same wave again: refused in one line, the store untouched
    before = (tmp_path / "store.nc").read_bytes()
    r = run_cli(["ingest", wave2, "--append-to", tmp_path / "store.nc", "--no-progress"])
    assert r.returncode == 2 and "NEXT0001" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "store.nc").read_bytes() == before


def _propose(tmp: Path, *extra, pmap=True):
    if pmap:
        _map(tmp)
    create_paramfile(tmp / "base.nc", {"fff": 0.5, "hksat_sf": 1.0})
    return ["propose", "--parameter-map", tmp / "parameter_map.nc", "--n", "4", "--out", tmp / "wave",
            "--base-paramfile", tmp / "base.nc", *extra]


@pytest.mark.parametrize("case", [
    Case("no parameter map", lambda t: _propose(t, pmap=False), mentions=["parameter_map.nc"], outputs=["wave"]),
    Case("zero members", lambda t: [*_propose(t)[:4], "0", *_propose(t)[5:]], mentions=["--n", "0"],
         inputs=["parameter_map.nc", "base.nc"], outputs=["wave"]),
    Case("prefix with digits", lambda t: _propose(t, "--prefix", "W1"), mentions=["--prefix", "W1"],
         inputs=["parameter_map.nc"], outputs=["wave"]),
    Case("append to a store that is not netCDF", lambda t: [
        "ingest", (t / "w").mkdir() or t / "w", "--append-to", (t / "s.nc").write_text("x") and t / "s.nc"],
        mentions=["s.nc"], inputs=["s.nc"]),
], ids=str)
def test_bad_inputs_refused(case, tmp_path):
    check_refused(case, tmp_path)
