"""A real `esm-emu train` process killed with SIGKILL resumes on the same loss trajectory; SIGTERM checkpoints."""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from emu_store import make_store, write_config

from esm_emu.cli import main

EXE = shutil.which("esm-emu", path=str(Path(sys.executable).parent)) or shutil.which("esm-emu")
TRAIN = {"max_steps": 80, "val_every": 10, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store.nc", n_member=8, n_grid=5, n_years=2)


def _cmd(cfg):
    if EXE is None:
        pytest.skip("the esm-emu console script is not installed in this environment")
    return [EXE, "train", str(cfg), "--quiet"]


def _start_and_wait_for_checkpoint(cfg, run_dir, timeout=120):
    proc = subprocess.Popen(_cmd(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = run_dir / "checkpoint.pt"
    t0 = time.monotonic()
    while not ckpt.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint: {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("no checkpoint within the timeout")
        time.sleep(0.01)
    return proc


def _log(run_dir):
    with open(run_dir / "train_log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path, store):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref_cfg = write_config(tmp_path / "a", store, train=TRAIN)
    assert main(["train", str(ref_cfg), "--quiet"]) == 0  # uninterrupted reference, in this process
    reference = _log(tmp_path / "a" / "run")

    cfg = write_config(tmp_path / "b", store, train=TRAIN)
    run = tmp_path / "b" / "run"
    proc = _start_and_wait_for_checkpoint(cfg, run)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step_at_kill < TRAIN["max_steps"], "the kill must land mid-run for this test to mean anything"

    out = subprocess.run(_cmd(cfg), check=True, timeout=300, capture_output=True, text=True)
    assert f"resuming {run / 'checkpoint.pt'} at step" in out.stdout
    resumed = _log(run)
    assert [s for s, _ in resumed] == [s for s, _ in reference]
    for (s, a), (_, b) in zip(resumed, reference):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), f"loss differs at step {s}"


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_3(tmp_path, store):
    cfg = write_config(tmp_path, store, train=dict(TRAIN, max_steps=2000))
    run = tmp_path / "run"
    proc = _start_and_wait_for_checkpoint(cfg, run)
    first = os.stat(run / "checkpoint.pt").st_mtime_ns
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]  # stopped before the end: `train && export` must not go on
    assert "SIGTERM" in out
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert 0 < ck["step"] < 2000
    assert os.stat(run / "checkpoint.pt").st_mtime_ns >= first
    assert len(_log(run)) == ck["step"]  # the log matches the checkpoint, ready to resume
