"""Real `mpiexec -n 2` runs: DDP over gloo matches one process; a failing rank ends the job, never a hang."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from emu_store import make_store, write_config
from emu_store import read_losses as _losses

from esm_emu.cli import main

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
EXE = shutil.which("esm-emu", path=str(BIN)) or shutil.which("esm-emu")

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich mpi4py)")]
try:
    import mpi4py  # noqa: F401
except ImportError:
    pytestmark.append(pytest.mark.skip(reason="mpi4py is not installed"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store.nc", n_member=8, n_grid=5, n_years=2)


def test_two_ranks_follow_the_single_process_trajectory(tmp_path, store):
    train = {"max_steps": 12, "val_every": 4, "checkpoint_every": 6}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert main(["train", str(write_config(tmp_path / "one", store, train=train)), "--quiet"]) == 0
    cfg2 = write_config(tmp_path / "two", store, train=train)
    out = subprocess.run([MPIEXEC, "-n", "2", EXE, "train", str(cfg2), "--quiet"], capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("trained 12 steps") == 1  # rank 0 alone reports (and writes)
    one, one_val = _losses(tmp_path / "one" / "run")
    two, two_val = _losses(tmp_path / "two" / "run")
    assert len(two) == 12
    assert two == pytest.approx(one, rel=2e-4, abs=1e-6)
    assert two_val == pytest.approx(one_val, rel=2e-4, abs=1e-6)


def test_exception_on_one_rank_ends_the_job(tmp_path):
    script = tmp_path / "fail_rank1.py"
    script.write_text(textwrap.dedent("""
        import torch
        from esm_emu.distributed import Distributed

        dist = Distributed(timeout_s=600)
        assert dist.world_size == 2 and dist.launcher == "mpi"
        with dist.guard():
            if dist.rank == 1:
                raise RuntimeError("boom on rank one")
            dist.reduce_sum(torch.ones(1))  # rank 0 would wait here forever without the abort
            print("rank 0 got past the collective")
    """))
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)  # far less than the collective timeout: the abort ends it
    assert out.returncode != 0
    assert "boom on rank one" in out.stderr and "rank 1" in out.stderr
    assert "got past" not in out.stdout


def test_user_error_on_the_mpi_job_is_one_line(tmp_path, store):
    cfg = write_config(tmp_path, store, data={"batch_size": 7})  # not divisible by 2 ranks
    out = subprocess.run([MPIEXEC, "-n", "2", EXE, "train", str(cfg), "--quiet"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "batch_size" in out.stderr and "Traceback" not in out.stderr
