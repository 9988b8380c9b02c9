"""Append a benchmark's figures to bench/RESULTS.md with machine, date and command."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = RESULTS.parents[1]


def portable(arg: str) -> str:
    """A command-line argument as RESULTS.md shows it: an absolute path inside the repository relative to
    it, any other absolute path as DIR (also after ``--opt=``), so no machine's paths enter the project."""
    key, sep, val = arg.partition("=") if arg.startswith("-") and "=" in arg else ("", "", arg)
    path = Path(val)
    if path.is_absolute():
        try:
            val = path.resolve().relative_to(REPO).as_posix()
        except ValueError:
            val = "DIR"
    return key + sep + val


def machine() -> str:
    """One line describing the machine the figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        tv = f"torch {torch.__version__}"
    except ImportError:
        tv = "no torch"
    return (f"{platform.node() or 'host'}: {cpu}, {os.cpu_count()} cores visible, "
            f"Python {platform.python_version()}, {tv}")


def record(title: str, lines: list[str], command: str | None = None) -> str:
    """Print `lines` and append them as a section of bench/RESULTS.md; return the section text."""
    command = command or " ".join(shlex.quote(portable(a)) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([f"## {title}", "", f"- date: {now}", f"- machine: {machine()}",
                      f"- command: `python {command}`", "", *[f"    {x}" for x in lines], "", ""])
    print("\n".join(lines))
    # One write() with O_APPEND, so concurrent benchmarks do not interleave sections.
    fd = os.open(RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.write(fd, b"# Benchmark results\n\nEach section is appended by a script in bench/.\n\n")
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return text
