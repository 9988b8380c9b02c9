"""Run one call in a fresh child process and return its result here: `in_child`.

For a stage whose libraries stay resident after it returns (the simulator's torch.compile step
loads inductor and keeps its compiled code, ~250 MB that no later stage uses): in a child, that
memory goes back to the system when the stage ends, so a pipeline's peak is its largest stage's
rather than the sum of what every stage left behind.
"""
from __future__ import annotations

import os
import sys
import traceback


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when its parent dies (a killed pipeline leaves nothing running)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _child_main(conn, parent: int, fn, args, kwargs) -> None:
    _die_with_parent(parent)
    try:
        result = (True, fn(*args, **kwargs))
    except BaseException as e:  # every exception goes back to the parent, which raises it
        e.add_note("raised in the child process:\n" + traceback.format_exc().rstrip())
        result = (False, e)
    try:
        conn.send(result)
    except Exception as e:  # an unpicklable result or exception: its text, as an internal error
        conn.send((False, RuntimeError(f"{getattr(fn, '__name__', fn)} in a child process: "
                                       f"{type(result[1]).__name__}: {str(result[1])[:300]} ({e})")))
    finally:
        conn.close()


def in_child(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a spawned child process; its return value, or its exception raised here
    (with the child's traceback as a note, which `--debug` shows). `fn`, the arguments and the result
    must pickle. An exception here (e.g. KeyboardInterrupt) kills the child."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, os.getpid(), fn, args, kwargs))
    proc.start()
    send.close()
    try:
        try:
            ok, value = recv.recv()
        except EOFError:  # died without a word: killed (OOM, a signal) or exited in native code
            proc.join()
            raise RuntimeError(f"{getattr(fn, '__name__', fn)}: its child process ended with exit status "
                               f"{proc.exitcode} and no result") from None
        proc.join()
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
            proc.join()
    if ok:
        return value
    raise value
