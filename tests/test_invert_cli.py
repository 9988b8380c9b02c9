"""`esm-emu invert CONFIG` end to end on files: emulator checkpoint, entities, observations."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import torch
import yaml
from inverse_twin import PARAMS, make_twin, observations

from esm_emu.cli import main
from esm_emu.inverse.param_map import read_param_map
from ppe_ingest.obs.io import write_obs


def _setup(tmp_path, **over):
    twin = make_twin()
    ck = tmp_path / "emu.pt"
    torch.save({"emulator": twin["forward"].emu.payload()}, ck)
    twin["entities"].to_netcdf(tmp_path / "entities.nc")
    obs = observations(twin, np.arange(16))
    obs.attrs["source"] = "twin"
    obs = obs.drop_vars("gridcell")  # placed by site_lat/site_lon like real sites
    # observation files carry datetime64 days; the model runs on a noleap calendar
    days = [f"{t.year:04d}-{t.month:02d}-{t.day:02d}" for t in obs["time"].values]
    obs = obs.assign_coords(time=pd.to_datetime(days))
    for v in ("site_lat", "site_lon"):
        obs = obs.set_coords(v)
    write_obs(obs, tmp_path / "obs.nc")
    inv = {"forward": {"kind": "emulator", "checkpoint": "emu.pt"}, "params": PARAMS, "entities": "entities.nc",
           "observations": ["obs.nc"], "train_period": {"start": 2000, "end": 2000},
           "test_period": {"start": 2001, "end": 2001}, "method": "g_A", "out": "out",
           "dpl": {"steps": 30, "warmup_days": 60}, "uncertainty": {"ensemble": 1, "mc_samples": 3}}
    inv.update(over)
    cfg = tmp_path / "inv.yaml"
    cfg.write_text(yaml.safe_dump({"inverse": inv}))
    return cfg


def test_invert_writes_map_metrics_and_plots(tmp_path, capsys):
    cfg = _setup(tmp_path)
    assert main(["invert", str(cfg), "--quiet"]) == 0
    out = tmp_path / "out"
    pm = read_param_map(out / "parameter_map.nc")
    assert list(pm["param"].values) == PARAMS and pm.sizes["gridcell"] == 24
    assert len(pm.attrs["emulator_checkpoint_sha256"]) == 64
    assert "obs.nc" in pm.attrs["observation_sources"]
    assert (out / "metrics.json").is_file() and (out / "hydrographs.png").is_file()
    printed = capsys.readouterr().out
    assert "median NSE" in printed and "identifiability" in printed
    # which parameters the data identify: printed, in the map (with the figures) and its intervals
    assert set(np.unique(pm["identified"].values)) <= {0, 1} and pm["posterior_correlation"].shape == (4, 4)
    for j, p in enumerate(PARAMS):
        word = "identified" if pm["identified"].values[j] else "NOT identified"
        assert any(line.split()[:1] == [p] and word in line for line in printed.splitlines()), printed
    assert (pm["theta_lower"] <= pm["theta"] + 1e-9).all() and (pm["theta"] <= pm["theta_upper"] + 1e-9).all()
    assert ((pm["theta_lower"] >= pm["param_min"] - 1e-9) & (pm["theta_upper"] <= pm["param_max"] + 1e-9)).all()


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    cfg = _setup(tmp_path, method="magic")
    r = subprocess.run([sys.executable, "-m", "esm_emu.cli", "invert", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2 and "inverse.method" in r.stderr and "Traceback" not in r.stderr
    for over, word in (({"params": ["not_a_param"]}, "not_a_param"), ({"observations": ["missing.nc"]}, "missing.nc")):
        cfg = _setup(tmp_path, **over)
        capsys.readouterr()
        assert main(["invert", str(cfg), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert word in err and len(err.strip().splitlines()) == 1
