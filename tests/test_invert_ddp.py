"""`mpiexec -n 2 esm-emu invert`: dPL's sites split over two ranks (gloo) give the one-process result."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from inverse_twin import PARAMS, make_twin, observations

from esm_emu.cli import main
from esm_emu.inverse.param_map import read_param_map
from ppe_ingest.obs.io import write_obs

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
EXE = shutil.which("esm-emu", path=str(BIN)) or shutil.which("esm-emu")

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(MPIEXEC is None or EXE is None, reason="mpiexec not found (pip install mpich mpi4py)")]
try:
    import mpi4py  # noqa: F401
except ImportError:
    pytestmark.append(pytest.mark.skip(reason="mpi4py is not installed"))


def _setup(folder: Path, observed: int = 9, **over) -> Path:
    """A small twin (10 gridcells, a briefly trained emulator) observed at `observed` gridcells (odd:
    the ranks' shares differ in size); a short dPL (g_A, one member, a batch of sites per step)."""
    folder.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded 2-core machine 2 threads made this 8x slower
    try:
        twin = make_twin(n_grid=10, emu_steps=15)
    finally:
        torch.set_num_threads(threads)
    torch.save({"emulator": twin["forward"].emu.payload()}, folder / "emu.pt")
    twin["entities"].to_netcdf(folder / "entities.nc")
    obs = observations(twin, np.arange(observed))
    obs.attrs["source"] = "twin"
    obs = obs.drop_vars("gridcell")
    days = [f"{t.year:04d}-{t.month:02d}-{t.day:02d}" for t in obs["time"].values]
    obs = obs.assign_coords(time=pd.to_datetime(days))
    for v in ("site_lat", "site_lon"):
        obs = obs.set_coords(v)
    write_obs(obs, folder / "obs.nc")
    inv = {"forward": {"kind": "emulator", "checkpoint": "emu.pt"}, "params": PARAMS, "entities": "entities.nc",
           "observations": ["obs.nc"], "train_period": {"start": 2000, "end": 2000},
           "test_period": {"start": 2001, "end": 2001}, "method": "g_A", "out": "out",
           "dpl": {"steps": 10, "warmup_days": 60, "batch": 7},
           "uncertainty": {"ensemble": 1, "mc_samples": 2}}
    inv.update(over)
    cfg = folder / "inv.yaml"
    cfg.write_text(yaml.safe_dump({"inverse": inv}))
    return cfg


def test_two_ranks_give_the_one_process_parameter_map(tmp_path, capsys):
    """The same parameter map (to rounding) and loss trajectory; rank 0 alone reports and writes."""
    one, two = _setup(tmp_path / "one"), _setup(tmp_path / "two")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per process in both runs (the ranks get OMP_NUM_THREADS=1)
    try:
        assert main(["invert", str(one), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r2 = subprocess.run([MPIEXEC, "-n", "2", EXE, "invert", str(two), "--quiet"], capture_output=True, text=True,
                        timeout=300, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("parameter map:") == 1 and r2.stdout.count("median NSE") == printed.count("median NSE")
    a, b = (read_param_map(tmp_path / d / "out" / "parameter_map.nc") for d in ("one", "two"))
    assert list(b["param"].values) == PARAMS and b.sizes["gridcell"] == 10
    np.testing.assert_allclose(b["theta"].values, a["theta"].values, rtol=1e-3, atol=1e-7)
    la, lb = (json.loads((tmp_path / d / "out" / "metrics.json").read_text())["training"]["dpl_loss"]
              for d in ("one", "two"))
    assert len(la) == len(lb) == 1 and len(lb[0]) == 10 and lb[0] == pytest.approx(la[0], rel=1e-4, abs=1e-7)
    assert max(la[0]) - min(la[0]) > 1e-3  # it trained: the comparison is of a moving trajectory
