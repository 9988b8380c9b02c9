"""Write outputs under a temporary name in the target folder and rename, never over an input.

Permissions follow the usual Unix rules, as `cp` or a shell redirection would give them, so
that outputs in a group-shared PPE folder or CESM case stay readable by the group:

- a new file gets ``0666 & ~umask`` (``0777 & ~umask`` with ``executable=True``), e.g. 0644
  under umask 022 and 0664 under umask 002;
- a file that is rewritten keeps its mode (and, where the user may set it, its group);
- folders created for outputs get ``0777 & ~umask`` (plain ``mkdir``).

Temporaries are named ``.NAME.HOST.PID.xxxxxxxx.tmp`` beside NAME. A writer killed by SIGKILL
cannot remove its temporary, so each write of NAME first removes the temporaries of NAME whose
writer is gone: on this host, a PID that no longer runs (or now belongs to a process started
after the temporary was last written); for another host, or a temporary without a PID (written
by an older version), one not modified for `STALE_AFTER_S` seconds. A temporary of a live writer
of the same target, in this or another process, is never touched.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from .errors import UserError

STALE_AFTER_S = 3600.0  # age after which a temporary whose writer cannot be checked is stale
_PID_REUSE_SLACK_S = 2.0  # /proc start times are known to about a second
_NAME_MAX_IN_TMP = 120  # characters of the target's name kept in its temporary's name
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc/self/status);
    elsewhere by a set-and-restore under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode(executable: bool = False) -> int:
    """The mode a new file gets under the current umask (0644 under umask 022)."""
    return (0o777 if executable else 0o666) & ~current_umask()


def refuse_overwrite(out: os.PathLike | str, inputs: Iterable[os.PathLike | str]) -> None:
    """Raise UserError when `out` is the same file as any input."""
    out = Path(out)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src)):
            raise UserError(f"{out}: refusing to overwrite an input file; choose another output path")


def _host() -> str:
    name = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:40] or "host"


def _tmp_stem(out: Path) -> str:
    """``.NAME.`` as the temporaries of `out` begin (long names shortened)."""
    return f".{out.name[:_NAME_MAX_IN_TMP]}."


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("btime"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _process_state(pid: int) -> tuple[bool, float | None]:
    """(alive, start time in seconds since the epoch or None) of `pid` on this host."""
    if pid <= 0:
        return False, None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:  # exists, another user's
        pass
    except OSError:
        return True, None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True, None
    if fields and fields[0] in ("Z", "X"):  # a zombie writes nothing
        return False, None
    boot = _boot_time()
    try:
        start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") if boot is not None else None
    except (IndexError, ValueError, OSError):
        start = None
    return True, start


def _is_stale(tmp: Path, middle: str, host: str, now: float) -> tuple[bool, str]:
    """Whether the temporary `tmp` (with `middle` between ``.NAME.`` and ``.tmp``) is left over
    by a writer that is gone, and why."""
    try:
        st = tmp.lstat()
    except OSError:
        return False, ""
    if not stat.S_ISREG(st.st_mode):
        return False, ""
    parts = middle.split(".")
    if len(parts) == 3 and parts[1].isdigit():
        t_host, pid = parts[0], int(parts[1])
        if t_host == host:
            alive, start = _process_state(pid)
            if not alive:
                return True, f"process {pid} is gone"
            if start is not None and start > st.st_mtime + _PID_REUSE_SLACK_S:
                return True, f"process {pid} is gone (its PID was reused)"
            return False, ""
        if now - st.st_mtime > STALE_AFTER_S:
            return True, f"written on {t_host}, untouched for {(now - st.st_mtime) / 3600:.1f} h"
        return False, ""
    if len(parts) == 1 and now - st.st_mtime > STALE_AFTER_S:  # an older version's name
        return True, f"untouched for {(now - st.st_mtime) / 3600:.1f} h"
    return False, ""


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


_SCANNED: dict[str, set[str]] = {}  # folder -> hidden .tmp names seen there (each folder listed once)
_SCAN_LOCK = threading.Lock()


def _hidden_temporaries(folder: Path) -> set[str]:
    """The ``.*.tmp`` names in `folder`, listed once per process: a folder of thousands of history
    files is not listed again for every file written into it. What a later kill leaves there is
    found by the next process."""
    key = os.path.abspath(folder)
    with _SCAN_LOCK:
        names = _SCANNED.get(key)
        if names is None:
            try:
                with os.scandir(folder) as it:
                    names = {e.name for e in it if e.name.startswith(".") and e.name.endswith(".tmp")}
            except OSError:
                names = set()
            _SCANNED[key] = names
        return set(names)


def remove_stale_temporaries(out: os.PathLike | str) -> list[Path]:
    """Remove the temporaries of `out` whose writer is gone (see the module docstring); report
    them on stderr in one line and return them."""
    out = Path(out)
    stem, host, now = _tmp_stem(out), _host(), time.time()
    removed, why, total = [], [], 0
    candidates = [out.parent / n for n in _hidden_temporaries(out.parent) if n.startswith(stem)]
    for p in candidates:
        middle = p.name[len(stem):-len(".tmp")]
        stale, reason = _is_stale(p, middle, host, now)
        if not stale:
            continue
        try:
            size = p.lstat().st_size
            p.unlink()
        except FileNotFoundError:  # another run removed it first
            continue
        except OSError:
            continue
        removed.append(p)
        why.append(reason)
        total += size
    with _SCAN_LOCK:
        seen = _SCANNED.get(os.path.abspath(out.parent))
        if seen is not None:
            seen.difference_update(p.name for p in candidates if not p.exists())
    if removed:
        names = ", ".join(p.name for p in removed[:5]) + (f" and {len(removed) - 5} more" if len(removed) > 5 else "")
        print(f"note: removed {len(removed)} stale temporar{'y' if len(removed) == 1 else 'ies'} of {out} "
              f"({_size(total)}) left by an interrupted write ({why[0]}): {names}", file=sys.stderr, flush=True)
    return removed


def _final_mode(tmp: Path, out: Path, executable: bool, mode: int | None) -> None:
    """Give `tmp` the mode `out` should have: `mode` when given, else the existing file's
    (rewrite) or the umask's (new)."""
    if mode is not None:
        os.chmod(tmp, mode)
        return
    try:
        st = out.stat()
        existing = stat.S_ISREG(st.st_mode)
    except OSError:
        existing = False
    if tmp.is_dir():
        os.chmod(tmp, 0o777 & ~current_umask())
        return
    if existing:
        mode = stat.S_IMODE(st.st_mode) & 0o777
        if executable:
            mode |= (0o111 & ~current_umask()) | 0o100  # a hook stays runnable
        os.chmod(tmp, mode)
        if st.st_gid != tmp.stat().st_gid:
            with contextlib.suppress(OSError):  # only to a group the user is in
                os.chown(tmp, -1, st.st_gid)
    else:
        os.chmod(tmp, new_file_mode(executable))


@contextlib.contextmanager
def atomic_path(out: os.PathLike | str, inputs: Iterable[os.PathLike | str] = (),
                executable: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `out`; rename it to `out` only if the block succeeds.

    The file then has the mode of the file it replaces, or the mode a new file gets under the
    umask (0777-based when `executable`: a script stays runnable either way); `mode` sets it
    exactly instead (restoring a saved file). A chmod inside the block is overridden. Stale
    temporaries of `out` are removed first.
    """
    out = Path(out)
    refuse_overwrite(out, inputs)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_stem(out)}{_host()}.{os.getpid()}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _final_mode(tmp, out, executable, mode)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
