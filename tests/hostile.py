"""Harness for the hostile-input tests: run a command as a real subprocess on bad input and check
the promise every command makes (exit 2, one line on stderr, no traceback, inputs unchanged, no
output under its final name, no temporary left behind)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence


def digest_tree(paths: Sequence[Path]) -> dict[str, str]:
    """SHA-256 of every file under `paths` (files or folders), to prove inputs were not modified."""
    out = {}
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.exists() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def temporaries(folder: Path) -> list[Path]:
    """Hidden temporaries an atomic write leaves when it dies (``.NAME.xxxx.tmp``)."""
    return sorted(p for p in Path(folder).rglob(".*.tmp")) if Path(folder).exists() else []


def run_cli(args: Sequence[str], cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`esm-emu ARGS` in a fresh interpreter, as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "esm_emu.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


@dataclass
class Case:
    """One bad input: `make(tmp)` builds the inputs in `tmp` and returns the command's arguments."""

    name: str
    make: Callable[[Path], Sequence[str]]
    mentions: Sequence[str] = ()  # what the one line must name (file, key or value), case-sensitive
    outputs: Sequence[str] = ()  # paths (relative to tmp) that must not exist afterwards
    inputs: Sequence[str] = ()  # paths (relative to tmp) that must be unchanged afterwards
    env: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


def check_refused(case: Case, tmp: Path) -> subprocess.CompletedProcess:
    """Run `case` and assert the bad-input promise; return the finished process for extra checks."""
    args = case.make(tmp)
    before = digest_tree([tmp / p for p in case.inputs])
    r = run_cli(args, cwd=tmp, env=case.env)
    err = r.stderr.strip()
    assert r.returncode == 2, f"{case}: exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in r.stderr, f"{case}: traceback\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"{case}: {len(lines)} lines on stderr:\n{err[-3000:]}"
    assert len(lines[0]) <= 1000, f"{case}: a {len(lines[0])}-character message"
    for m in case.mentions:
        assert m in lines[0], f"{case}: the message does not name {m!r}: {lines[0]}"
    assert digest_tree([tmp / p for p in case.inputs]) == before, f"{case}: an input was modified"
    for p in case.outputs:
        assert not (tmp / p).exists(), f"{case}: {p} exists after a refused run"
    assert not temporaries(tmp), f"{case}: temporaries left: {temporaries(tmp)}"
    return r
