"""Atomic outputs never clobber inputs; the CLI turns user errors into one line and exit 2."""
import subprocess
import sys

import pytest

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError


def test_atomic_path_renames_only_on_success(tmp_path):
    out = tmp_path / "sub" / "out.txt"
    with atomic_path(out) as tmp:
        tmp.write_text("done")
        assert not out.exists()
    assert out.read_text() == "done"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert out.read_text() == "done"
    assert [p.name for p in out.parent.iterdir()] == ["out.txt"]  # no temp file left behind


def test_atomic_path_refuses_to_overwrite_an_input(tmp_path):
    src = tmp_path / "in.nc"
    src.write_bytes(b"data")
    with pytest.raises(UserError, match="refusing to overwrite an input"):
        with atomic_path(src, inputs=[src]):
            pass
    assert src.read_bytes() == b"data"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "esm_emu.cli", *args], capture_output=True, text=True)


def test_help_lists_the_subcommands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("simulate", "ingest", "train", "invert", "write-ctsm", "quickstart", "regrid", "cime"):
        assert cmd in r.stdout


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = run_cli("simulate", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.yaml" in lines[0] and "Traceback" not in r.stderr
