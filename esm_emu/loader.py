"""Read batches ahead of the training loop: a background thread makes the batches of steps k, k+1, ...
(`make(step)`) while the loop computes on the current one, at most `depth` batches ahead.

A batch depends only on its step (esm_emu.data.WindowSampler), so reading ahead changes nothing the
loop sees: the same batches in the same order as reading them in the loop, only sooner. Reading
(netCDF/HDF5 under base.netcdf.NC_LOCK, numpy copies) releases the GIL for most of its time, so it
overlaps the model's forward and backward passes. An error while reading is raised in the loop at
the step that needed the batch.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Prefetcher:
    """Batches `make(start)`, `make(start + 1)`, ... from a daemon thread, `depth` ahead; `get(step)` in order."""

    def __init__(self, make: Callable[[int], Any], start: int, depth: int):
        self.make, self.next_step = make, int(start)
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(int(start),), name="esm-emu-prefetch", daemon=True)
        self._thread.start()

    def _run(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (step, self.make(step), None)
            except BaseException as e:  # handed to the loop, raised at the step that needs it
                item = (step, None, e)
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def get(self, step: int):
        """The batch of `step` (the next one in order)."""
        if step != self.next_step:
            raise RuntimeError(f"Prefetcher: asked for step {step}, reading ahead from {self.next_step}")
        got, batch, err = self._q.get()
        self.next_step += 1
        if err is not None:
            self.close()
            raise err
        return batch

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is reading) and drop what was read ahead."""
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
