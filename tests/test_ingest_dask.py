"""Ingest on dask.distributed: a real 2-worker LocalCluster writes the same store as one process.

One LocalCluster (2 worker processes) serves the module: the library runs against it through
`parallel.Pool`, the command joins it with ``--scheduler``, and one command starts its own
(``--workers 1``) on bad input, which must still end with exit 2 and one line.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import netCDF4
import numpy as np
import pytest
from _ingest_ppe import make_ppe
from hostile import Case, check_refused, run_cli

from ppe_ingest.base.errors import UserError
from ppe_ingest.ingest.checks import Report
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.parallel import Pool, pool
from ppe_ingest.ingest.writer import write_store

distributed = pytest.importorskip("distributed")

MEMBERS = tuple(f"LHC{i:04d}" for i in range(1, 8))
SPLIT = dict(val_members=1, test_members=1, test_years=1)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=logging.ERROR) as c, distributed.Client(c) as client:
        yield client


@pytest.fixture(scope="module")
def ppe(tmp_path_factory, shared_data):
    """7 members x 6 gridcells x 3 years (netCDF-4 files: the locked netCDF4 path on the workers);
    LHC0004 holds a NaN in QRUNOFF and LHC0005 one in TBOT (a forcing): both are bad, the store keeps 5
    of 7 and its forcing stays shared (a bad forcing is reported, not taken for a different one)."""
    root = tmp_path_factory.mktemp("dask") / "ppe"
    make_ppe(root, shared_data("ppe", "paramfiles", "OAAT0000.nc"), members=MEMBERS, years=3)
    (f,) = sorted((root / "hist").glob("*_LHC0004.clm2.h1.2001-*.nc"))
    with netCDF4.Dataset(f, "a") as ds:
        ds["QRUNOFF"][40, 2] = np.nan
    (f,) = sorted((root / "hist").glob("*_LHC0005.clm2.h1.2002-*.nc"))
    with netCDF4.Dataset(f, "a") as ds:
        ds["TBOT"][7, 0] = np.nan
    return root


def _store(path) -> tuple[dict, dict]:
    """Every variable's values and attributes, and the global attributes but the time-stamped history."""
    with netCDF4.Dataset(path) as ds:
        ds.set_auto_mask(False)
        vals = {v: (ds[v][...], ds[v].__dict__) for v in ds.variables}
        attrs = {k: v for k, v in ds.__dict__.items() if k != "history"}
    return vals, attrs


def _assert_same(a, b) -> None:
    (va, aa), (vb, ab) = _store(a), _store(b)
    assert aa == ab
    assert list(va) == list(vb)
    for v, (x, xa) in va.items():
        y, ya = vb[v]
        assert str(xa) == str(ya), v
        assert x.shape == y.shape and x.dtype == y.dtype, v
        if x.dtype.kind == "f":  # bitwise: values, NaN (missing) and the train statistics
            assert np.array_equal(x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}")), v
        else:
            assert np.array_equal(x, y), v


def _ingest(root, out, workers: Pool | None, **kw):
    report = Report(skip_bad=True)
    ppe = discover(root, report=report, pool=workers)
    write_store(ppe, out, seed=3, split=SPLIT, progress=False, pool=workers, **kw)
    return report.lines()


@pytest.fixture(scope="module")
def one(ppe, tmp_path_factory):
    """The one-process store of `ppe` and its skip report."""
    out = tmp_path_factory.mktemp("one") / "one.nc"
    return out, _ingest(ppe, out, None)


def test_two_workers_write_the_one_process_store(cluster, ppe, one, tmp_path):
    """Same values (bitwise, norm statistics included), attributes, split, member order and skip report."""
    skipped_2 = _ingest(ppe, tmp_path / "two.nc", Pool(cluster, 2))
    assert one[1] == skipped_2 and len(skipped_2) == 2
    assert "LHC0004" in skipped_2[0] and "QRUNOFF has 1 NaN" in skipped_2[0]
    assert "LHC0005" in skipped_2[1] and "TBOT has 1 NaN" in skipped_2[1]
    _assert_same(one[0], tmp_path / "two.nc")
    with netCDF4.Dataset(tmp_path / "two.nc") as ds:
        assert list(ds["member"][:]) == [m for m in MEMBERS if m not in ("LHC0004", "LHC0005")]
        assert ds.forcing_shared_across_members == 1 and ds["RAIN"].dimensions == ("gridcell", "time")
        assert set(ds["split_member"][:]) == {0, 1, 2}


def test_forcing_that_differs_is_found_by_the_workers(cluster, ppe, tmp_path):
    """A member whose forcing differs from the first member's: forcing per member, on 1 or 2 workers."""
    root = tmp_path / "ppe"
    shutil.copytree(ppe, root)
    (f,) = sorted((root / "hist").glob("*_LHC0006.clm2.h1.2002-*.nc"))
    with netCDF4.Dataset(f, "a") as ds:
        ds["TBOT"][100, 1] = ds["TBOT"][100, 1] + 0.5
    _ingest(root, tmp_path / "one.nc", None)
    _ingest(root, tmp_path / "two.nc", Pool(cluster, 2))
    _assert_same(tmp_path / "one.nc", tmp_path / "two.nc")
    with netCDF4.Dataset(tmp_path / "two.nc") as ds:
        assert ds.forcing_shared_across_members == 0 and ds["TBOT"].dimensions == ("member", "gridcell", "time")


def test_a_worker_error_reaches_the_writer_with_its_message(cluster, ppe, tmp_path):
    """A history file cut short after discovery fails on the worker that reads it: the writer raises
    the same one-line UserError naming it, and leaves no store and no temporary."""
    root = tmp_path / "ppe"
    shutil.copytree(ppe, root)
    p = Pool(cluster, 2)
    found = discover(root, report=Report(skip_bad=True), pool=p)
    (bad,) = sorted((root / "hist").glob("*_LHC0006.clm2.h1.2001-*.nc"))
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(UserError, match=f"{bad.name}: cannot read data"):
        write_store(found, tmp_path / "store.nc", seed=3, split=SPLIT, progress=False, pool=p)
    assert not list(tmp_path.glob("*store*")) and not list(tmp_path.glob(".*.tmp"))


def test_command_joins_a_running_cluster(cluster, ppe, one, tmp_path):
    """`esm-emu ingest PPE --scheduler ADDRESS` uses the cluster and writes the one-process store."""
    out = tmp_path / "two.nc"
    r = run_cli(["ingest", ppe, "--seed", "3", "--skip-bad", "--no-progress", "--set", "split.val_members=1",
                 "--set", "split.test_members=1", "--out", out, "--scheduler", cluster.scheduler_info()["address"]])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == [f"skipped: {line}" for line in one[1]] + [
        f"wrote {out}: 5 members, 2 problem(s) skipped (see the store's 'skipped' attribute)"]
    assert r.stderr.strip() == ""
    _assert_same(one[0], out)


def _nan_member(tmp, ppe_root):
    root = tmp / "ppe"
    shutil.copytree(ppe_root, root)
    return ["ingest", root, "--out", tmp / "store.nc", "--workers", "1", "--no-progress"]


def test_bad_member_on_a_local_cluster_is_one_line(ppe, tmp_path):
    """--workers starts a LocalCluster (one worker: the cheapest start); the bad member still ends the
    command with exit 2 and one line naming the file (no engine log lines, no traceback, no store,
    no temporary)."""
    case = Case("NaN member, --workers 1", lambda tmp: _nan_member(tmp, ppe),
                mentions=("LHC0004.clm2.h1.2001-01-01-00000.nc", "QRUNOFF", "NaN"), outputs=("store.nc",),
                inputs=("ppe",))
    check_refused(case, tmp_path)


@pytest.mark.parametrize("args, mention", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler"),
    (["--workers", "100000"], "ingest.workers: 100000"),
    (["--workers", "1000"], "--workers: 1000 worker processes"),
    (["--scheduler", "no-port"], "no-port"),
    (["--scheduler-file", "nowhere.json"], "nowhere.json"),
    (["--scheduler-file", "garbage.json"], "garbage.json: not a dask scheduler file"),
    (["--scheduler-file", "noaddress.json"], "noaddress.json: not a dask scheduler file"),
])
def test_bad_cluster_options_are_refused(ppe, tmp_path, args, mention):
    def make(tmp):
        (tmp / "garbage.json").write_bytes(b"\x00\xff not json")
        (tmp / "noaddress.json").write_text('{"id": "Scheduler-1", "services": {}}')
        return ["ingest", ppe, "--out", tmp / "store.nc", *args]
    check_refused(Case(" ".join(args), make, mentions=(mention,), outputs=("store.nc",)), tmp_path)


def test_pool_runs_in_process_without_options():
    with pool() as p:
        assert not p.parallel and list(p.map(pow, [(2, 3), (3, 2)])) == [8, 9]
    code = ("import sys; from ppe_ingest.ingest.parallel import pool\n"
            "with pool() as p: list(p.map(abs, [(-1,)]))\n"
            "sys.exit('distributed' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # no dask import by default


def test_append_to_reads_the_wave_where_the_cluster_options_say(ppe, one, tmp_path):
    """`ingest WAVE --append-to STORE --scheduler-file F` reads the wave on that cluster (the cluster
    options were ignored before): a scheduler file that is not there is refused in one line naming it,
    the store untouched."""
    store = tmp_path / "store.nc"
    shutil.copyfile(one[0], store)
    before = store.read_bytes()
    r = run_cli(["ingest", ppe, "--append-to", store, "--no-progress", "--scheduler-file", tmp_path / "nowhere.json"])
    assert r.returncode == 2 and "nowhere.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert store.read_bytes() == before
