"""`in_child`: a call in a fresh process gives back its result or its exception, and never outlives
the process that started it (the pipeline runs the simulator this way)."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest

from ppe_ingest.base.child import in_child
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.netcdf import require_netcdf


def test_result_comes_back_from_another_process():
    assert in_child(math.sqrt, 6.25) == 2.5
    assert in_child(os.getpid) != os.getpid()


def test_a_user_error_in_the_child_is_raised_here_with_its_one_line(tmp_path):
    bad = tmp_path / "not_netcdf.nc"
    bad.write_text("hello")
    with pytest.raises(UserError) as err:
        in_child(require_netcdf, bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    # the child's traceback travels as a note (shown by --debug), not in the message
    assert any("child process" in n for n in getattr(err.value, "__notes__", []))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_child_dies_with_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c",
                               "import time; from ppe_ingest.base.child import in_child; in_child(time.sleep, 120)"])
    try:
        t0 = time.monotonic()
        while not (kids := _children(parent.pid)):
            assert parent.poll() is None and time.monotonic() - t0 < 60, "no child started"
            time.sleep(0.05)
        time.sleep(0.5)  # past the child's prctl
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        t0 = time.monotonic()
        while any(os.path.exists(f"/proc/{k}") and "Z" not in open(f"/proc/{k}/stat").read().split()[2]
                  for k in kids if os.path.exists(f"/proc/{k}/stat")):
            assert time.monotonic() - t0 < 10, f"child {kids} still running after its parent was killed"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not (sys.platform.startswith("linux") and os.path.exists("/proc/self/status"))
                    or not os.confstr("CS_GNU_LIBC_VERSION"), reason="needs glibc's malloc_trim and /proc")
def test_release_memory_returns_freed_heap_to_the_system():
    """Many mid-sized blocks freed below a live one stay resident with glibc (its heap cannot shrink
    past the live block) until release_memory trims them: what keeps a pipeline's later stages from
    stacking their peak on an earlier stage's freed memory."""
    from ppe_ingest.base.memory import release_memory

    blocks = [b"x" * 65536 for _ in range(3000)]  # ~190 MB in 64 KiB heap blocks, every page touched
    pin = b"y" * 65536  # allocated after them: the heap's top stays in use
    before = _rss_mb()
    del blocks
    freed = _rss_mb()
    release_memory()
    after = _rss_mb()
    assert pin[:1] == b"y"
    assert freed > before - 60, (before, freed)  # glibc kept most of it
    assert after < freed - 120, (before, freed, after)
