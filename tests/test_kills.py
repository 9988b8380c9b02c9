"""What a killed or stopped run leaves, and what the next run does with it.

- A writer killed by SIGKILL in the middle of an atomic write leaves its hidden temporary
  (``.NAME.HOST.PID.xxxx.tmp``); the next write of NAME removes it and says so on stderr. The
  temporary of a writer that is still running, in another process, is never touched.
- `esm-emu train` stopped by SIGTERM writes its checkpoint and exits 3 (not 0), so
  `esm-emu train C && esm-emu export ...` does not export an unfinished model; the same command
  then resumes and exits 0.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from emu_store import make_store, write_config

from coupler import grids

# A writer that starts an atomic write of argv[1], writes 1 MB into the temporary, says where it
# is and waits (for stdin, or forever) before finishing: the moment a kill lands mid-write.
WRITER = """
import sys
from pathlib import Path
from ppe_ingest.base.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half-written " * 80000)
    print(tmp, flush=True)
    sys.stdin.readline()
    tmp.write_bytes(sys.argv[2].encode())
"""


def _start_writer(target: Path, final: str = "finished") -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), final], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()
    tmp = Path(line)
    assert tmp.exists() and tmp.parent == target.parent and tmp.name.startswith(f".{target.name}.")
    return proc, tmp


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esm_emu.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _weights(tmp_path: Path, out: Path) -> subprocess.CompletedProcess:
    """A real command writing `out`: nearest-neighbour regrid weights between two small grids."""
    src, dst = tmp_path / "src.nc", tmp_path / "dst.nc"
    if not src.exists():
        grids.write_scrip(grids.regular(6, 12), src)
        grids.write_scrip(grids.regular(4, 8), dst)
    return _cli("regrid", "weights", "--src", src, "--dst", dst, "--method", "nearest", "--out", out)


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def test_sigkill_mid_write_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "map.nc"
    proc, tmp = _start_writer(target)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _temporaries(out) == [tmp] and not target.exists()  # what the kill leaves
    size = tmp.stat().st_size

    r = _weights(tmp_path, target)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "stale temporar" in ln]
    assert len(notes) == 1, r.stderr
    assert tmp.name in notes[0] and str(target) in notes[0] and f"process {tmp.name.split('.')[-3]}" in notes[0]
    assert f"{size / 1e6:.1f} MB" in notes[0]
    assert _temporaries(out) == [] and target.exists()
    r = _weights(tmp_path, target)  # nothing left to clean: no note
    assert r.returncode == 0 and "stale" not in r.stderr


def test_a_live_writer_of_the_same_target_keeps_its_temporary(tmp_path):
    target = tmp_path / "map.nc"
    proc, tmp = _start_writer(target, final="the live writer's content")
    try:
        r = _weights(tmp_path, target)  # another process writes the same target meanwhile
        assert r.returncode == 0, r.stderr
        assert "stale" not in r.stderr
        assert tmp.exists(), "a running writer's temporary was removed"
        out, err = proc.communicate(input="\n", timeout=30)  # the live writer finishes: last one wins
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_text() == "the live writer's content"
    assert _temporaries(tmp_path) == []


def test_which_temporaries_count_as_stale(tmp_path):
    """PID gone, PID reused by a later process, another host's or an older version's after an
    hour: removed. A live writer's, a fresh one from another host or an older version, and other
    targets' temporaries: kept."""
    target = tmp_path / "store.nc"
    proc, live = _start_writer(target)  # a live writer: its name gives this host's form
    host = live.name[len(".store.nc."):].split(".")[0]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    old = time.time() - 7200
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    try:
        files = {
            "dead": f".store.nc.{host}.{dead_pid}.abc12345.tmp",
            "reused": f".store.nc.{host}.{sleeper.pid}.abc12346.tmp",  # written before that PID's process started
            "other_host_old": ".store.nc.elsewhere-node7.12345.abc12347.tmp",
            "legacy_old": ".store.nc.k3j9x_2a.tmp",
            "other_host_fresh": ".store.nc.elsewhere-node7.12345.abc12348.tmp",
            "legacy_fresh": ".store.nc.q8w7e6r5.tmp",
            "other_target": f".store.nc.bak.{host}.{dead_pid}.abc12349.tmp",
            "not_ours": ".store.nc.notes.txt",
        }
        for key, name in files.items():
            (tmp_path / name).write_bytes(b"x" * 1000)
            if key in ("reused", "other_host_old", "legacy_old"):
                os.utime(tmp_path / name, (old, old))
        r = _weights(tmp_path, target)
        assert r.returncode == 0, r.stderr
        gone = {k for k, name in files.items() if not (tmp_path / name).exists()}
        assert gone == {"dead", "reused", "other_host_old", "legacy_old"}, r.stderr
        assert live.exists()
        notes = [ln for ln in r.stderr.splitlines() if "stale temporar" in ln]
        assert len(notes) == 1 and "removed 4 stale temporaries" in notes[0], r.stderr
    finally:
        sleeper.kill()
        proc.kill()
        sleeper.wait()
        proc.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store.nc", n_member=6, n_grid=4, n_years=2)


def test_train_stopped_by_sigterm_exits_3_and_the_same_command_resumes(tmp_path, store):
    cfg = write_config(tmp_path, store, train={"max_steps": 5000, "val_every": 5, "checkpoint_every": 5})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "esm_emu.cli", "train", str(cfg), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < 180, "no checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, f"exit {proc.returncode}\n{out}\n{err[-2000:]}"
    assert "stopped by SIGTERM" in out and "resume" in out
    step = int(re.search(r"trained (\d+) steps", out).group(1))
    assert 0 < step < 5000
    assert (run / "checkpoint.pt").exists() and not (run / "eval").exists()
    assert _temporaries(run) == []

    r = _cli("train", cfg, "--quiet", "--max-steps", str(step + 5))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {run / 'checkpoint.pt'} at step {step}" in r.stdout and "SIGTERM" not in r.stdout


def test_train_help_documents_the_exit_statuses():
    r = _cli("train", "--help")
    assert r.returncode == 0
    assert re.search(r"^\s*3\s+stopped by SIGTERM before the end", r.stdout, re.M), r.stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(ln for ln in readme.splitlines() if ln.startswith("| `esm-emu train"))
    assert "status 3" in row


RUN_CFG = """
simulate:
  case: tiny
  n_members: 4
  seed: 0
  params: [fff, FMAX]
  n_gridcells: 6
  n_years: 2
  spinup_years: 1
  truth: {n_obs_sites: 3, variables: [QRUNOFF]}
ingest:
  split: {val_members: 1, test_members: 1, val_gridcells: 1, test_gridcells: 1, test_years: 1}
emulator:
  store: unused.nc
  model: {name: lstm, hidden: 8, embed: 4}
  data: {window: 100, batch_size: 4}
  train: {max_steps: 100000, val_every: 5, checkpoint_every: 5, warmup_steps: 2, threads: 1}
inverse:
  params: [fff, FMAX]
  variables: [QRUNOFF]
  train_period: {start: 2000, end: 2000}
  test_period: {start: 2001, end: 2001}
"""


@pytest.mark.slow
def test_run_stopped_by_sigterm_in_training_exits_3_and_does_not_invert(tmp_path):
    import json

    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN_CFG)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "esm_emu.cli", "run", str(cfg), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "emulator" / "checkpoint.pt"
    t0 = time.monotonic()
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < 300, "no checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, f"exit {proc.returncode}\n{stdout[-2000:]}\n{err[-2000:]}"
    assert "stopped by SIGTERM" in stdout
    done = json.loads((out / "stages.json").read_text())
    assert "ingest" in done and "train" not in done  # the rerun resumes training, then goes on
    assert not (out / "inverse").exists() and not (out / "report").exists()
