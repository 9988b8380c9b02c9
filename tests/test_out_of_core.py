"""Training from a store read on demand (emulator.data.reading: stream) sees exactly what the in-memory
path sees, with memory bounded by the batch, not the store; a thread reads batches ahead of the loop."""
from __future__ import annotations

import tracemalloc

import netCDF4
import numpy as np
import pytest
from emu_store import make_store, read_losses, write_config

from esm_emu.cli import main
from esm_emu.data import SequenceStore, WindowSampler, make_batch
from tests.hostile import Case, check_refused


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("ooc")
    return {"shared": make_store(d / "shared.nc", n_member=8, n_grid=5, n_years=2),
            "per_member": make_store(d / "per_member.nc", n_member=6, n_grid=4, n_years=2, shared_forcing=False)}


@pytest.mark.parametrize("kind", ["shared", "per_member"])
def test_streamed_windows_series_and_statistics_equal_in_memory(stores, kind):
    mem = SequenceStore(stores[kind], reading="memory")
    st = SequenceStore(stores[kind], reading="stream")
    assert mem.in_memory and not st.in_memory
    rng = np.random.default_rng(1)
    m, g = rng.integers(0, mem.n_member, 7), rng.integers(0, mem.n_gridcell, 7)
    t0 = rng.integers(0, mem.n_time - 150, 7)
    a, b = make_batch(mem, m, g, t0, 150, 30), make_batch(st, m, g, t0, 150, 30)
    for f in ("forcing", "static", "theta", "target", "mask"):
        assert np.array_equal(getattr(a, f).numpy(), getattr(b, f).numpy()), f
    assert np.array_equal(mem.responses[m, g], st.responses[m, g], equal_nan=True)
    assert np.isnan(st.responses[[0], [0]][0, 10:20, 0]).all()  # the store's gap stays a gap
    combos = np.array([[1.0, 0.0, 2.0]])
    assert np.array_equal(mem.train_std(combos), st.train_std(combos))
    # the streamed statistic is numpy's std over the train split (float64)
    tr = mem.responses[np.ix_(mem.split_member == 0, mem.split_gridcell == 0)][:, :, mem.split_time == 0]
    assert np.allclose(mem.train_std()[:3], [np.nanstd(tr[..., r].astype(np.float64)) for r in range(3)], rtol=1e-12)
    other = SequenceStore(stores[kind], reading="stream")  # shares the file handle with st
    st.close()
    assert np.array_equal(other.responses[m, g], mem.responses[m, g], equal_nan=True)  # reopened, not broken
    other.close()


def test_same_seed_same_loss_trajectory_streamed_or_in_memory(tmp_path, stores):
    runs = {}
    for name, data in (("memory", {"reading": "memory"}), ("stream", {"reading": "stream", "prefetch": 3}),
                       ("stream_no_thread", {"reading": "stream", "prefetch": 0}),
                       ("auto_small_budget", {"memory_mb": 0.2}), ("auto_zero", {"memory_mb": 0})):
        (tmp_path / name).mkdir()
        cfg = write_config(tmp_path / name, stores["shared"], data=data, train={"max_steps": 8, "val_every": 4})
        assert main(["train", str(cfg), "--quiet"]) == 0
        runs[name] = read_losses(tmp_path / name / "run")
    assert len(runs["memory"][0]) == 8 and len(runs["memory"][1]) == 2
    st = SequenceStore(stores["shared"], memory_mb=0.2)  # the forcing (0.11 MB) fits, forcing + responses (0.45) not
    assert st.forcing_in_memory and not st.in_memory
    for name in ("stream", "stream_no_thread", "auto_small_budget", "auto_zero"):
        assert runs[name] == runs["memory"], name


def test_reading_ahead_resumes_at_the_consumed_step(stores):
    st = SequenceStore(stores["shared"], reading="stream")
    pairs = st.pairs([0], [0])
    ahead = WindowSampler(st, pairs, 60, 10, 4, seed=3, prefetch=3)
    for _ in range(4):
        ahead.next_batch()
    state = ahead.state_dict()
    assert state["step"] == 4  # batches read ahead are not counted as seen
    resumed = WindowSampler(st, pairs, 60, 10, 4, seed=0, prefetch=2)
    resumed.load_state_dict(state)
    plain = WindowSampler(st, pairs, 60, 10, 4, seed=3)
    plain.load_state_dict(state)
    for _ in range(3):
        a, b = resumed.next_batch(), plain.next_batch()
        assert np.array_equal(a.target.numpy(), b.target.numpy())
    ahead.close()
    resumed.close()


def test_streamed_memory_is_bounded_by_the_batch_not_the_store(tmp_path):
    path = make_store(tmp_path / "big.nc", n_member=40, n_grid=60, n_years=2)
    nbytes = 3 * 40 * 60 * 730 * 4  # the responses alone: 21 MB
    peaks = {}
    for reading in ("memory", "stream"):
        tracemalloc.start()
        st = SequenceStore(path, reading=reading)
        s = WindowSampler(st, st.pairs([0], [0]), 120, 30, 8, seed=0, prefetch=2 if reading == "stream" else 0)
        for _ in range(5):
            s.next_batch()
        s.close()
        peaks[reading] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del st, s
    assert peaks["memory"] > nbytes
    assert peaks["stream"] < nbytes / 4, peaks


def test_missing_forcing_found_while_streaming_is_one_line(tmp_path, stores):
    bad = tmp_path / "bad.nc"
    bad.write_bytes(stores["shared"].read_bytes())
    with netCDF4.Dataset(bad, "a") as ds:
        ds["TBOT"][:, 100:400] = np.nan  # every training window crosses it
    cfg = write_config(tmp_path, bad, data={"reading": "stream"}, train={"max_steps": 3})
    check_refused(Case("train: streamed forcing with NaN", lambda t: ["train", cfg, "--quiet"],
                       mentions=["bad.nc", "TBOT"], inputs=["bad.nc"]), tmp_path)


def test_unknown_reading_is_refused(tmp_path, stores):
    cfg = write_config(tmp_path, stores["shared"], data={"reading": "mmap"})
    check_refused(Case("train: data.reading mmap", lambda t: ["train", cfg], mentions=["reading", "mmap"],
                       inputs=["emulator.yaml"], outputs=["run"]), tmp_path)
