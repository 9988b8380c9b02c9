"""`esm-emu cime install`: refusal on non-cases, dry run, real install through the case's xmlchange.

The case's xmlchange is the test stand-in from cime_case_util (CIME is not on PyPI); it edits the
env XML files in CIME's format, as the real one does.
"""
from __future__ import annotations

import os
import subprocess
import sys

import netCDF4
import pytest
import yaml
from cime_case_util import make_case

from cime_hooks.case import open_case
from esm_emu.cli import main

HOOKS = ("esm_emu_prerun.py", "esm_emu_da", "esm_emu_postrun.py")


def tiny_paramfile(path):
    """A CTSM-layout paramfile with a few 0-d float64 hydrology scalars (as in ctsm51_params)."""
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        for name, value in {"fff": 0.5, "d_max": 15.0, "n_baseflow": 1.0}.items():
            v = ds.createVariable(name, "f8", ())
            v.assignValue(value)
    return path


def write_config(tmp_path, da=True):
    tiny_paramfile(tmp_path / "params_calibrated.nc")
    (tmp_path / "obs.nc").write_bytes(b"")  # only its existence is checked at install
    cfg = {"paramfile": "params_calibrated.nc", "namelist": {"baseflow_scalar": 0.005},
           "observations": {"file": "obs.nc", "variable": "QRUNOFF"}}
    if da:
        cfg["da"] = {"forward": {"kind": "simulator"},
                     "parameters": {"fff": {"location": "paramfile", "min": 0.1, "max": 5.0}}}
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_refuses_a_directory_that_is_not_a_case(tmp_path, capsys):
    cfg = write_config(tmp_path)
    (tmp_path / "notacase").mkdir()
    assert main(["cime", "install", str(tmp_path / "notacase"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a CIME case" in err and "env_run.xml" in err


def test_dry_run_prints_the_changes_and_changes_nothing(tmp_path, capsys):
    root = make_case(tmp_path)
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "3",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out
    for name in HOOKS:
        assert f"write {root}/esm-emu/hooks/{name}" in out
    assert f"./xmlchange PRERUN_SCRIPT={root}/esm-emu/hooks/esm_emu_prerun.py" in out
    assert f"./xmlchange DATA_ASSIMILATION_SCRIPT={root}/esm-emu/hooks/esm_emu_da" in out
    assert "./xmlchange DATA_ASSIMILATION_CYCLES=3   (now: 1)" in out
    assert not (root / "esm-emu").exists()
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before


def test_install_sets_case_variables_and_writes_executable_hooks(tmp_path, capsys):
    root = make_case(tmp_path)
    cfg = write_config(tmp_path)
    args = ["cime", "install", str(root), "--config", str(cfg), "--cycles", "3"]
    assert main(args) == 0
    case = open_case(root)
    hooks = root / "esm-emu" / "hooks"
    assert case.get_value("PRERUN_SCRIPT") == str(hooks / "esm_emu_prerun.py")
    assert case.get_value("DATA_ASSIMILATION_SCRIPT") == str(hooks / "esm_emu_da")
    assert case.get_value("POSTRUN_SCRIPT") == str(hooks / "esm_emu_postrun.py")
    assert case.get_value("DATA_ASSIMILATION_CYCLES") == 3
    assert case.get_value("DATA_ASSIMILATION_LND") is False  # not CIME's gate for the DA script
    for name in HOOKS:
        text = (hooks / name).read_text()
        assert text.startswith(f"#!{sys.executable} -I\n") and "@ESM_EMU_PYTHON@" not in text
        assert os.access(hooks / name, os.X_OK)
        # CIME calls the function named after the file (DA: the whole file name).
        func = name.split(".", 1)[0]
        assert f"\ndef {func}(caseroot" in text
    stored = yaml.safe_load((root / "esm-emu" / "config.yaml").read_text())
    assert stored["paramfile"] == str(tmp_path / "params_calibrated.nc")  # made absolute
    # Installing again is harmless and leaves the same settings.
    first = (root / "env_run.xml").read_text()
    assert main(args) == 0
    assert (root / "env_run.xml").read_text() == first


def test_install_without_da_section_leaves_da_unset(tmp_path):
    root = make_case(tmp_path)
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path, da=False))]) == 0
    case = open_case(root)
    assert case.get_value("DATA_ASSIMILATION_SCRIPT") == ""
    assert case.get_value("PRERUN_SCRIPT").endswith("esm_emu_prerun.py")


@pytest.mark.parametrize("change, message", [
    ({"da": {"forward": {"kind": "emulator"}, "parameters": {"fff": {"location": "paramfile", "min": 0, "max": 1}}}},
     "da.forward.checkpoint: required"),
    ({"paramfile": "missing.nc"}, "paramfile: file not found"),
    ({"da": {"forward": {"kind": "simulator"}, "parameters": {"fff": {"location": "fsurdat", "min": 0, "max": 1}}}},
     "da.parameters.fff.location: 'fsurdat' is not one of"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, change, message):
    root = make_case(tmp_path)
    path = write_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg.update(change)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert open_case(root).get_value("PRERUN_SCRIPT") == ""


def test_cli_entry_point_runs_as_a_program(tmp_path):
    root = make_case(tmp_path)
    exe = os.path.join(os.path.dirname(sys.executable), "esm-emu")
    proc = subprocess.run([exe, "cime", "install", str(root), "--config", str(write_config(tmp_path)),
                           "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "./xmlchange PRERUN_SCRIPT=" in proc.stdout
