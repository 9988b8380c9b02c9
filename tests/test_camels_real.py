"""Real data: the four CAMELS basins (Daymet forcing, USGS streamflow) set up for inversion."""
from __future__ import annotations

import numpy as np
import xarray as xr

from esm_emu.forward import SimulatorForward
from esm_emu.inverse.inversion import skill
from esm_emu.inverse.problem import build_problem

BASINS = ["01022500", "01547700", "02064000", "03015500"]
PARAMS = ["fff", "FMAX", "hksat_sf", "baseflow_scalar"]


def test_camels_basins_become_an_inverse_problem_with_real_streamflow(shared_data):
    from ppe_ingest.obs.camels import read_camels_streamflow
    from ppe_ingest.param_table import default_table_path, load_param_table
    from ppe_ingest.simulator.sites import camels_sites
    from ppe_ingest.simulator.weather import camels_forcing

    root = shared_data("camels_us", "neuralhydrology_test_data", "camels_us")
    sites = camels_sites(root / "camels_attributes_v2.0", basins=BASINS)
    weather = camels_forcing(sites, root / "basin_mean_forcing" / "daymet", 2001, 1)
    entities = xr.merge([sites, weather])
    obs = read_camels_streamflow(root / "usgs_streamflow", BASINS)  # datetime64 days, mm/s
    sim = SimulatorForward.for_entities(entities, PARAMS)
    p = build_problem(entities, obs, sim, load_param_table(default_table_path()), PARAMS, ["QRUNOFF"],
                      train_period={"start": "2001-01-01", "end": "2001-08-31"},
                      test_period={"start": "2001-09-01", "end": "2001-12-31"})
    # each basin's streamflow lands on its own gridcell (by gauge location), on the noleap calendar
    assert p.observed.all() and p.obs.shape == (4, 365, 1)
    for i, b in enumerate(BASINS):
        j = int(np.flatnonzero(obs["site"].values == b)[0])
        want = obs["QRUNOFF"].isel(site=j).sel(time="2001-03-15").item()
        assert abs(float(p.obs[i, 73, 0]) - want) <= 1e-6 * max(abs(want), 1e-9)
    # runoff a few mm/day, not cfs
    assert 0 < float(np.nanmean(p.obs.numpy())) * 86400 < 10
    sk = skill(p, sim, p.default.expand(4, -1), np.arange(4), p.test_time)["QRUNOFF"]
    assert len(sk["nse"]) == 4 and np.isfinite(sk["nse"]).all()


def test_soil_comparison_and_data_root(shared_data, monkeypatch):
    from ppe_ingest.obs.camels import camels_data_root
    from ppe_ingest.simulator.sites import camels_soil_comparison

    root = shared_data("camels_us", "neuralhydrology_test_data", "camels_us")
    monkeypatch.setenv("ESM_EMU_SHARED_DATA", str(root.parents[2]))
    assert camels_data_root() == root
    rows = camels_soil_comparison(root / "camels_attributes_v2.0", BASINS,
                                  {"hksat_sf": np.array([1.0, 2.0, 1.0, 1.0])})
    assert [r["basin"] for r in rows] == BASINS
    k = [r["ksat_cm_per_h"] for r in rows]
    assert abs(k[1]["inferred"] - 2 * k[1]["default"]) < 1e-9 and k[0]["inferred"] == k[0]["default"]
    # the CAMELS attribute beside it (cm/h, STATSGO) and a Cosby default of the same order
    assert all(0.1 < r["ksat_cm_per_h"]["camels"] < 20 and 0.1 < r["ksat_cm_per_h"]["default"] < 20 for r in rows)
    assert all(0.3 < r["porosity"]["camels"] < 0.6 for r in rows)
