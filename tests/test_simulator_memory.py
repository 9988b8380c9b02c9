"""`esm-emu simulate` runs members in batches sized by a memory budget (simulate.batch_memory_mb):
the output does not depend on how the work is cut, and peak memory does not grow with the members."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from tests.hostile import Case, check_refused

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMALL = ["n_members=2", "n_gridcells=120", "n_years=1", "spinup_years=0", "truth.n_obs_sites=2", "compress=false"]


def _simulate(out: Path, *sets: str) -> dict:
    from ppe_ingest.simulator.config import load_simulate_config
    from ppe_ingest.simulator.ppe import simulate

    cfg = load_simulate_config(QUICKSTART, [*SMALL, *sets])
    return simulate(cfg, out, quiet=True)


def _variables(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.rglob("*.nc")):
        with netCDF4.Dataset(f) as ds:
            for v in ds.variables:
                out[(str(f.relative_to(folder)), v)] = np.ma.getdata(ds[v][:])
    return out


def test_batching_by_members_or_gridcells_gives_the_same_files(tmp_path):
    """All members in one batch, and one member per batch in gridcell slices (16 MB: 120 gridcells
    do not fit), agree bit for bit."""
    from ppe_ingest.simulator.ppe import YEAR_BYTES_PER_GRIDCELL_DAY

    whole = _simulate(tmp_path / "whole")
    sliced = _simulate(tmp_path / "sliced", "batch_memory_mb=16")
    assert whole["members_per_batch"] == 2 and sliced["members_per_batch"] == 1
    assert 120 * 365 * YEAR_BYTES_PER_GRIDCELL_DAY > 16 * 2**20  # so the 16 MB run really cut the gridcells
    ref = _variables(tmp_path / "whole")
    assert any(k[0].startswith("hist/") and k[1] == "QRUNOFF" for k in ref)
    assert any(k[0] == "truth/truth_sim.nc" for k in ref)
    for run in ("sliced",):
        got = _variables(tmp_path / run)
        assert got.keys() == ref.keys()
        for k, v in ref.items():
            assert v.dtype == got[k].dtype and np.array_equal(v, got[k], equal_nan=v.dtype.kind == "f"), (run, k)


def test_batch_size_follows_the_budget_not_the_member_count():
    from ppe_ingest.simulator.ppe import batch_members, member_bytes

    per = member_bytes(200, 5 * 365)
    for n in (64, 500, 9999):
        bs = batch_members(n, 200, 5 * 365, 768)
        assert bs == batch_members(64, 200, 5 * 365, 768)  # the quickstart's batch, whatever the members
        assert bs * per <= 768 * 2**20 < (bs + 1) * per
    assert batch_members(3, 200, 1825, 1024) == 3
    assert batch_members(100, 200, 1825, 1024, cap=2) == 2
    assert batch_members(100, 10**5, 1825, 16) == 1  # never zero: run_ensemble then slices the gridcells


def _peak_rss_mb(tmp: Path, members: int) -> float:
    code = ("import resource, sys; from esm_emu.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "simulate", str(QUICKSTART), "--out", str(tmp / f"m{members}"),
                        "--quiet", "--set", f"n_members={members}", "--set", "n_gridcells=40", "--set", "n_years=1",
                        "--set", "spinup_years=0", "--set", "batch_memory_mb=16", "--set", "compress=false",
                        "--set", "truth=null"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "ESM_EMU_SIM_COMPILE": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.split("MAXRSS")[1].split()[0]) / 1024


def test_peak_memory_does_not_grow_with_members(tmp_path):
    """12 members in 16 MB batches (2 at a time) peak like 2 members (all 12 at once would add ~70 MB)."""
    from ppe_ingest.simulator.ppe import member_bytes

    small, large = _peak_rss_mb(tmp_path, 2), _peak_rss_mb(tmp_path, 12)
    assert 10 * member_bytes(40, 365) / 2**20 > 65
    assert large - small < 25, (small, large)


@pytest.mark.parametrize("value", ["0", "-5", "1e12", "lots"])
def test_bad_budget_refused(tmp_path, value):
    check_refused(Case(f"simulate: batch_memory_mb={value}",
                       lambda t: ["simulate", QUICKSTART, "--out", t / "o", "--set", f"batch_memory_mb={value}"],
                       mentions=["batch_memory_mb"], outputs=["o"]), tmp_path)
