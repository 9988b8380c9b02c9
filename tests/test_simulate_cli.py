"""`esm-emu simulate` end to end: a real run of the CLI writing a PPE in the CLM5 PPE layout
(paramfiles, namelist_mods, daily 1-D CTSM history files, surfdata, design) and a truth set
whose observations the real readers in ppe_ingest.obs read back."""
from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from ppe_ingest.ctsmio.paramfile import read_paramfile
from ppe_ingest.ctsmio.surfdata import lai_extremes
from ppe_ingest.ctsmio.vocabulary import FORCING as FORCING_VARS
from ppe_ingest.ctsmio.vocabulary import RESPONSES as RESPONSE_VARS
from ppe_ingest.simulator import physics

REPO = Path(__file__).resolve().parents[1]
HIST_RE = re.compile(r"^(?P<case>.+)_(?P<member>LHC\d{4})\.clm2\.h1\.(?P<date>\d{4}-\d{2}-\d{2}-\d{5})\.nc$")
CONFIG = """
simulate:
  case: tcase
  n_members: 3
  seed: 4
  params: [fff, FMAX, hksat_sf, baseflow_scalar, medlynslope, interception_fraction]
  table: {table}
  n_gridcells: 4
  n_years: 2
  spinup_years: 1
  years_per_file: 1
  truth:
    n_obs_sites: 2
    gap_fraction: 0.1
"""


def _cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "esm_emu.cli", *args], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    cfg = d / "sim.yaml"
    cfg.write_text(CONFIG.format(table=REPO / "configs" / "params_hydrology.csv"))
    out = d / "ppe"
    _cli("simulate", str(cfg), "--out", str(out), "--quiet")
    return cfg, out


def test_writes_the_ppe_layout(run):
    _, out = run
    members = ["LHC0001", "LHC0002", "LHC0003"]
    assert sorted(p.stem for p in (out / "paramfiles").glob("*.nc")) == members
    assert sorted(p.stem for p in (out / "namelist_mods").glob("*.txt")) == members
    names = sorted(p.name for p in (out / "hist").iterdir())
    assert len(names) == 6 and all(HIST_RE.match(n) for n in names), names
    assert {HIST_RE.match(n)["date"] for n in names} == {"2000-01-01-00000", "2001-01-01-00000"}
    design = pd.read_csv(out / "design.csv", index_col=0)
    assert list(design.index) == members
    # Member files hold the design values: paramfile scalars, namelist lines.
    for m in members:
        pf = read_paramfile(out / "paramfiles" / f"{m}.nc", ["fff", "hksat_sf"])
        assert float(pf["fff"]) == pytest.approx(design.loc[m, "fff"])
        assert float(pf["hksat_sf"]) == pytest.approx(design.loc[m, "hksat_sf"])
        nl = (out / "namelist_mods" / f"{m}.txt").read_text()
        val = float(re.search(r"^baseflow_scalar\s*=\s*(\S+)", nl, re.M).group(1).replace("d", "e"))
        assert val == pytest.approx(design.loc[m, "baseflow_scalar"])
    tbl = pd.read_csv(out / "params.csv")
    assert "fff" in set(tbl["name"])
    with xr.open_dataset(out / "surfdata_tcase.nc") as s:
        assert s.sizes["gridcell"] == 4
        for k in ("PCT_SAND", "PCT_CLAY", "ORGANIC", "FMAX", "zbedrock", "SLOPE", "STD_ELEV"):
            assert k in s
        # vegetation as CTSM has it: one dominant natural PFT per gridcell with its monthly LAI
        assert s["MONTHLY_LAI"].dims == ("time", "lsmpft", "gridcell") and s.sizes["lsmpft"] == 79
        assert (s["PCT_NAT_PFT"].max("natpft") == 100).all() and (s["PCT_NAT_PFT"].sum("natpft") == 100).all()
        dominant = s["PCT_NAT_PFT"].argmax("natpft").values
        assert (s["MONTHLY_LAI"].values[:, dominant, range(4)] > 0).all()


def test_history_files_look_like_ctsm(run):
    _, out = run
    path = out / "hist" / "tcase_LHC0002.clm2.h1.2001-01-01-00000.nc"
    with xr.open_dataset(path, decode_times=False) as h:
        assert h.attrs["title"] == "CLM History file information"
        assert "NOT" in h.attrs["source"] and "esm-emu" in h.attrs["source"]
        assert h.attrs["time_period_freq"] == "day_1"
        assert h.attrs["Surface_dataset"] == "surfdata_tcase.nc"
        assert h["time"].attrs["units"] == "days since 2000-01-01 00:00:00"
        assert h["time"].attrs["calendar"] == "noleap"
        assert h.sizes == {"time": 365, "gridcell": 4, "hist_interval": 2}
        # Second year's file: first interval is day 365..366 of the run.
        assert h["time_bounds"].values[0].tolist() == [365.0, 366.0]
        assert int(h["mcdate"].values[0]) == 20010102
        for v in (*FORCING_VARS, *RESPONSE_VARS):
            assert h[v].dims == ("time", "gridcell") and h[v].dtype == np.float32, v
            assert h[v].attrs["cell_methods"] == "time: mean" and h[v].attrs["long_name"], v
        assert h["QRUNOFF"].attrs["units"] == "mm/s" and h["EFLX_LH_TOT"].attrs["units"] == "W/m^2"
        assert h["grid1d_lat"].dims == ("gridcell",) and "grid1d_ixy" in h and "grid1d_jxy" in h


def test_history_holds_the_simulator_run_of_each_member(run):
    _, out = run
    design = pd.read_csv(out / "design.csv", index_col=0)
    files = sorted((out / "hist").glob("tcase_LHC0003.clm2.h1.*.nc"))
    h = xr.open_mfdataset(files, combine="nested", concat_dim="time", data_vars="minimal",
                          decode_times=False).load()
    with xr.open_dataset(out / "surfdata_tcase.nc") as s:
        static = {k: torch.as_tensor(s[k].values if s[k].ndim == 1 else s[k].values[0], dtype=torch.float64)
                  for k in ("PCT_SAND", "PCT_CLAY", "ORGANIC", "FMAX", "zbedrock", "SLOPE", "STD_ELEV")}
        # the simulator's LAI_MAX/LAI_MIN are the extremes of the surfdata's MONTHLY_LAI
        lai = lai_extremes(s["MONTHLY_LAI"].values, s["PCT_NAT_PFT"].values)
        static.update(LAI_MAX=torch.as_tensor(lai[0]), LAI_MIN=torch.as_tensor(lai[1]))
    forcing = {k: torch.as_tensor(h[k].values.T, dtype=torch.float64) for k in FORCING_VARS}
    params = {p: float(design.loc["LHC0003", p]) for p in design.columns}
    state = physics.spin_up(forcing, static, params, n_years=1)
    res = physics.run_land(forcing, static, params, state=state)
    for k in ("QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM", "H2OSNO"):
        np.testing.assert_allclose(h[k].values.T, res[k].numpy(), rtol=2e-3, atol=1e-9 if k[0] == "Q" else 1e-3)


def _noleap(obs: xr.Dataset) -> xr.Dataset:
    """Readers give every calendar day; the simulator's noleap calendar has no Feb 29."""
    days = pd.DatetimeIndex(obs.time.values)
    return obs.isel(time=np.flatnonzero(~((days.month == 2) & (days.day == 29))))


def test_truth_maps_and_observations_read_back(run):
    from ppe_ingest.obs.camels import read_camels_streamflow
    from ppe_ingest.obs.ismn import read_ismn_stm
    from ppe_ingest.obs.plumber import read_plumber_flux

    _, out = run
    t = out / "truth"
    with xr.open_dataset(t / "parameter_map.nc") as pm:
        th = pm["theta"].transpose("gridcell", "param").values
        assert th.shape == (4, 6)
        assert np.all(th > pm["param_min"].values) and np.all(th < pm["param_max"].values)
    sites = pd.read_csv(t / "obs_sites.csv", dtype={"site_id": str})
    sim = xr.open_dataset(t / "truth_sim.nc", decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    for _, row in sites.iterrows():
        g = int(row.gridcell)
        q = _noleap(read_camels_streamflow(t / "usgs_streamflow", row.site_id))
        assert float(q["area"][0]) == pytest.approx(row.area_km2, rel=1e-9)
        obs, ok = q.QRUNOFF.values[0], q.QRUNOFF_mask.values[0]
        true = sim.QRUNOFF.values[g]
        assert 0.0 < (~ok).mean() < 0.3                         # gaps are there, masked
        ratio = obs[ok & (true > 1e-6)] / true[ok & (true > 1e-6)]
        assert 0.95 < np.median(ratio) < 1.05 and 0.03 < np.std(np.log(ratio)) < 0.2
        le = _noleap(read_plumber_flux(sorted(glob.glob(str(t / "fluxnet_plumber" / f"{row.site_id}_*_Flux.nc")))[0]))
        e = le.EFLX_LH_TOT.values[0]
        good = le.EFLX_LH_TOT_mask.values[0]
        assert abs(np.mean(e[good] - sim.EFLX_LH_TOT.values[g][good])) < 3.0
        sm = _noleap(read_ismn_stm(glob.glob(str(t / "ismn" / f"*_{row.site_id}_sm_*.stm"))[0]))
        sim_days = pd.DatetimeIndex([pd.Timestamp(c.year, c.month, c.day) for c in sim.time.values])
        smv = sm.SOILWATER_10CM.where(sm.SOILWATER_10CM_mask).to_series().droplevel("site").reindex(sim_days).values
        assert np.isfinite(smv).mean() > 0.7
        assert np.nanmean(np.abs(smv - sim.SOILWATER_10CM.values[g])) < 4.0


def test_bad_config_is_one_line_naming_the_key(tmp_path, run):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("simulate:\n  n_members: 2\n  n_gridcels: 3\n")
    r = _cli("simulate", str(cfg), "--out", str(tmp_path / "o"), check=False)
    assert r.returncode != 0 and "simulate.n_gridcels" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    cfg.write_text(f"simulate:\n  table: {REPO / 'configs' / 'params_hydrology.csv'}\n  params: [fff, bsw_sfx]\n")
    r = _cli("simulate", str(cfg), "--out", str(tmp_path / "o"), check=False)
    assert r.returncode != 0 and "bsw_sfx" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "hist").exists()


def test_quickstart_config_is_valid():
    from ppe_ingest.base.config import load_config
    from ppe_ingest.simulator.config import SCHEMA

    cfg = load_config(REPO / "configs" / "quickstart.yaml", SCHEMA, section="simulate")
    assert (cfg["n_members"], cfg["n_gridcells"], cfg["n_years"]) == (64, 200, 5)
    assert cfg["truth"] is not None and Path(cfg["table"]).is_file()
