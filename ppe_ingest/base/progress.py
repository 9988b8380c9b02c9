"""Progress that suits both a terminal and a batch log.

On a terminal (stderr is a TTY) a tqdm bar; in a Slurm/PBS output file, where carriage-return
updates pile up into one long line, a plain log line at the start, about every 10% and at the end.
"""
from __future__ import annotations

import sys
import time


class _LogProgress:
    """tqdm's small surface (update, set_postfix, close, iteration) as occasional log lines."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", initial: int = 0,
                 stream=None, every: float = 0.1):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.n = int(initial)
        self.stream = stream or sys.stderr
        self.every = every
        self.postfix = ""
        self.t0 = time.monotonic()
        self._next = self._step_after(self.n)
        self._closed = False
        self._say(f"started ({self.n}/{self.total} {unit})" if self.total else "started")

    def _step_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        step = max(1, round(self.total * self.every))
        return (n // step + 1) * step

    def _say(self, what: str) -> None:
        tail = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {what}{tail}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self._next and self.n < self.total:
            pct = 100.0 * self.n / self.total
            self._say(f"{self.n}/{self.total} {self.unit} ({pct:.0f}%, {time.monotonic() - self.t0:.1f} s)")
            self._next = self._step_after(self.n)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kw) -> None:
        items = dict(ordered_dict or {}, **kw)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            total = f"/{self.total}" if self.total else ""
            self._say(f"done {self.n}{total} {self.unit} in {time.monotonic() - self.t0:.1f} s")

    def __iter__(self):
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Silent(_LogProgress):
    def _say(self, what: str) -> None:
        pass


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", enabled: bool = True,
             initial: int = 0, leave: bool = True, stream=None):
    """A progress bar on a terminal, a few log lines in a batch log, nothing when not `enabled`."""
    if not enabled:
        return _Silent(iterable, total=total, desc=desc, unit=unit, initial=initial)
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)
    return _LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)
