"""The one exception type for bad user input (the CLI prints its message as one line), and the
helpers every message uses to quote user values and describe operating-system errors."""
from __future__ import annotations

import errno
import reprlib

ECHO_LIMIT = 200  # characters of a user value a message may quote


class UserError(Exception):
    """Bad input from the user (file, variable, parameter or config key named in the message)."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = ECHO_LIMIT, ECHO_LIMIT, 60


def shown(value, limit: int = ECHO_LIMIT, quote: bool = True) -> str:
    """`value` as a message may quote it: repr (or str with ``quote=False``), on one line, at most
    `limit` characters. Never walks a whole structure (a YAML alias bomb stays cheap) and never
    fails (a huge int has no full decimal form)."""
    if isinstance(value, str) and not quote:
        text = value
    else:
        try:
            text = _REPR.repr(value)
        except Exception:  # a repr that fails must not hide the real message
            text = f"<{type(value).__name__}>"
    text = " ".join(text.split()) if ("\n" in text or "\r" in text) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OS_WHAT = {
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder where a file is expected",
    errno.EEXIST: "already exists",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTEMPTY: "folder is not empty",
    errno.ENAMETOOLONG: "file name too long",
    errno.EXDEV: "cannot rename across file systems",
}


def os_error_line(e: OSError) -> str:
    """One line for an operating-system error: the path(s) it names and what went wrong."""
    what = _OS_WHAT.get(e.errno or -1) or (e.strerror or str(e) or type(e).__name__)
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    if not paths:
        return shown(what, limit=2 * ECHO_LIMIT, quote=False)
    where = " -> ".join(shown(p, quote=False) for p in paths)
    return f"{where}: {shown(what, limit=2 * ECHO_LIMIT, quote=False)}"


def user_error_from_os(e: OSError, context: str = "") -> UserError:
    """A UserError for `e`, prefixed with `context` (e.g. "--out") when given."""
    line = os_error_line(e)
    return UserError(f"{context}: {line}" if context else line)


MESSAGE_LIMIT = 900  # characters of the one line a command prints on error

EXIT_STATUS_HELP = ("exit status: 0 done; 2 bad input or a file-system problem (one line naming the file, "
                    "key or value); 1 internal error (one line; re-run with --debug for the traceback); "
                    "3 train or run stopped by SIGTERM before the end (rerun to resume); 130 interrupted.")


def _one_line(text: str) -> str:
    return shown(str(text), limit=MESSAGE_LIMIT, quote=False)


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in ("can't allocate memory", "out of memory"))


def error_line(e: BaseException) -> tuple[int, str]:
    """(exit status, one line) for an exception that ends a command.

    2: what a user can cause and fix (UserError; operating-system errors, with the path; input that
    is not text; values refused while converting them; running out of memory). 1: anything else,
    an internal error, said so in one line with the way to see the traceback.
    """
    if isinstance(e, UserError):
        return 2, _one_line(e)
    if isinstance(e, OSError):
        return 2, _one_line(os_error_line(e))
    if isinstance(e, UnicodeDecodeError):
        return 2, _one_line(f"an input file is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at "
                            f"offset {e.start}); re-run with --debug to see which file was being read")
    if _out_of_memory(e):
        return 2, _one_line(f"out of memory ({type(e).__name__}); reduce the sizes in the config (batch "
                            "sizes, model width, members, gridcells) or use a larger node")
    if isinstance(e, (ValueError, OverflowError)):
        first = (str(e).strip().splitlines() or [""])[0]
        return 2, _one_line(f"{first or type(e).__name__} (re-run with --debug for the traceback)")
    first = (str(e).strip().splitlines() or [""])[0]
    return 1, _one_line(f"internal error ({type(e).__name__}: {shown(first, quote=False)}); "
                        "re-run with --debug for the traceback and report it")


def run_guarded(prog: str, call, debug: bool = False) -> int:
    """Run `call()` (a command) behind the error boundary every entry point shares.

    Returns the command's exit status, or prints ``PROG: error: ONE LINE`` on stderr and returns the
    status of `error_line`; 130 on Ctrl-C. With `debug` the exception propagates (the traceback).
    """
    import os
    import sys

    try:
        return int(call() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `esm-emu ... | head`: the reader left; stay quiet
        try:  # Python flushes stdout at exit: point it at /dev/null (as the Python docs advise)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except Exception as e:
        if debug:
            raise
        status, line = error_line(e)
        print(f"{prog}: error: {line}", file=sys.stderr)
        return status
