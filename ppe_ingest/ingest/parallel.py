"""Where the ingest's per-file and per-member work runs: this process, or a dask.distributed cluster.

`pool(workers=None, scheduler=None, scheduler_file=None)` gives a `Pool` whose ``map(fn, items)``
yields ``fn(*item)`` in the order of `items`:

- no option: in this process, lazily, one item at a time (no dask imported; the default);
- ``workers=N``: a dask ``LocalCluster`` of N single-threaded worker processes, closed afterwards;
- ``scheduler=ADDRESS`` or ``scheduler_file=FILE``: a ``Client`` of an existing cluster (started by
  dask-jobqueue, dask-mpi or ``dask scheduler``/``dask worker``; see hpc/README.md), left running.

The engine is dask.distributed; this module only bounds what is in flight: at most
``window`` items (2 per worker + 2) are submitted ahead of the one being consumed, so the
client holds a few members' results, never the PPE. Results come back in submission order, so a
parallel ingest meets its inputs, reports its problems and writes its store in the same order as
the one-process ingest. An exception in a task (a UserError naming a bad file included) is raised
again here, with its own type and message, and cancels what is still in flight.
"""
from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from ppe_ingest.base.errors import UserError, shown

# distributed logs worker starts, stops and lost connections at INFO/WARNING: the command's
# contract is one line on error, so only errors of the engine itself are shown.
_QUIET = ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker", "distributed.core",
          "distributed.comm", "tornado", "asyncio")


class Pool:
    """Ordered, bounded map over this process (client None) or a dask.distributed client."""

    def __init__(self, client=None, nworkers: int = 1):
        self.client = client
        self.nworkers = max(1, nworkers)
        self.window = 2 * self.nworkers + 2

    @property
    def parallel(self) -> bool:
        return self.client is not None

    def share(self, obj):
        """`obj` as an argument every task may take: itself here, sent once to every worker on a cluster."""
        if self.client is None or obj is None:
            return obj
        return self.client.scatter([obj], broadcast=True, hash=False)[0]

    def map(self, fn: Callable, items: Iterable[tuple], window: int | None = None) -> Iterator:
        """``fn(*item)`` for each item, in order; at most `window` (default ``self.window``) in flight
        on a cluster: the results not yet taken are what the client and workers hold."""
        if self.client is None:
            for item in items:
                yield fn(*item)
            return
        window = max(1, min(self.window, window or self.window))
        inflight: deque = deque()
        it = iter(items)
        try:
            for item in it:
                inflight.append(self.client.submit(fn, *item, pure=False))
                if len(inflight) >= window:
                    yield _result(inflight.popleft())
            while inflight:
                yield _result(inflight.popleft())
        finally:
            if inflight:
                self.client.cancel(list(inflight))


def _result(future):
    try:
        return future.result()
    except UserError:
        raise
    except (OSError, MemoryError):
        raise
    except Exception as e:
        name = type(e).__name__
        if name in ("KilledWorker", "CancelledError", "CommClosedError", "FutureCancelledError"):
            raise RuntimeError(f"ingest: a dask worker was lost ({name}: {e}); "
                               "the store was not written (rerun, with fewer --workers if memory ran out)") from e
        raise


def _worker_environ() -> dict:
    """The environment dask gives the worker processes it starts, without MALLOC_TRIM_THRESHOLD_.

    distributed sets it (64 KiB) so that workers hand freed memory back to the OS; setting it also
    turns off glibc's adaptive mmap threshold, so every temporary over 128 KiB (a block of the train
    statistics, a member's buffers) is a fresh mmap, page-faulted and zeroed again: the statistics
    ran 8x slower on a worker than in this process (0.28 vs 0.036 s per member). Memory stays bounded
    without it: a worker holds the members in flight, which are released once the writer has them.
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _address_in(scheduler_file: str) -> str:
    """The scheduler address a dask scheduler file (JSON, ``{"address": "tcp://...", ...}``) holds."""
    import json

    where = f"ingest --scheduler-file {shown(scheduler_file, quote=False)}"
    try:
        with open(scheduler_file, "rb") as f:
            text = f.read(1 << 20)
        info = json.loads(text)
    except OSError as e:
        raise UserError(f"{where}: cannot read it ({e.strerror or type(e).__name__})") from None
    except ValueError:
        raise UserError(f"{where}: not a dask scheduler file (not JSON)") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise UserError(f"{where}: not a dask scheduler file (no 'address' like tcp://HOST:PORT)")
    return address


def _silence() -> None:
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def pool(workers: int | None = None, scheduler: str | None = None, scheduler_file: str | None = None) -> Iterator[Pool]:
    """The Pool the options ask for (see the module docstring); a cluster this starts is closed on exit."""
    if sum(x is not None for x in (workers, scheduler, scheduler_file)) > 1:
        raise UserError("ingest: give at most one of --workers, --scheduler and --scheduler-file")
    if workers is None and scheduler is None and scheduler_file is None:
        yield Pool()
        return
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("ingest --workers/--scheduler: dask.distributed is not installed "
                        "(pip install 'dask[distributed]')") from None
    _silence()
    if workers is not None:
        import os

        most = 4 * (os.cpu_count() or 1)
        if not 1 <= workers <= most:
            raise UserError(f"ingest --workers: {workers} worker processes on a machine with {os.cpu_count()} CPUs "
                            f"(give 1 to {most}; for more, start a cluster and use --scheduler)")
        # processes, one thread each: the reads hold the GIL between system calls and
        # netCDF-C/HDF5 calls are serialised by one lock per process
        with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ()}), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            yield Pool(client, workers)
        return
    if scheduler_file is not None:
        scheduler = _address_in(scheduler_file)
    try:
        client = Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError, KeyError, TypeError) as e:
        where = f"--scheduler-file {shown(scheduler_file)}" if scheduler_file else f"--scheduler {shown(scheduler)}"
        raise UserError(f"ingest {where}: cannot reach the dask scheduler ({type(e).__name__}: {e})") from None
    with client:
        n = len(client.nthreads())
        if n == 0:
            try:
                client.wait_for_workers(1, timeout=300)
            except (TimeoutError, OSError) as e:
                raise UserError(f"ingest: no dask worker joined the scheduler in 5 minutes "
                                f"({type(e).__name__})") from None
            n = len(client.nthreads())
        yield Pool(client, n)
