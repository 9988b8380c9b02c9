"""Write outputs under a temporary name in the target folder and rename, never over an input."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import UserError


def refuse_overwrite(out: os.PathLike | str, inputs: Iterable[os.PathLike | str]) -> None:
    """Raise UserError when `out` is the same file as any input."""
    out = Path(out)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src)):
            raise UserError(f"{out}: refusing to overwrite an input file; choose another output path")


@contextlib.contextmanager
def atomic_path(out: os.PathLike | str, inputs: Iterable[os.PathLike | str] = ()) -> Iterator[Path]:
    """Yield a temporary path beside `out`; rename it to `out` only if the block succeeds."""
    out = Path(out)
    refuse_overwrite(out, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
