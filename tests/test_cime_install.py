"""`esm-emu cime install`: refusal on non-cases, dry run, real install through the case's xmlchange.

The case's xmlchange is the test stand-in from cime_case_util (CIME is not on PyPI); it edits the
env XML files in CIME's format, as the real one does.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from cime_case_util import make_case, tiny_obs, tiny_paramfile

from cime_hooks.case import open_case
from esm_emu.cli import main

HOOKS = ("esm_emu_prerun.py", "esm_emu_da", "esm_emu_postrun.py")


def write_config(tmp_path, da=True, observations=True, name="hooks.yaml"):
    tiny_paramfile(tmp_path / "params_calibrated.nc")
    tiny_obs(tmp_path / "obs.nc")
    cfg = {"paramfile": "params_calibrated.nc", "namelist": {"baseflow_scalar": 0.005}}
    if observations:
        cfg["observations"] = {"file": "obs.nc", "variable": "QRUNOFF"}
    if da:
        cfg["da"] = {"forward": {"kind": "simulator"},
                     "parameters": {"fff": {"location": "paramfile", "min": 0.1, "max": 5.0}}}
    path = tmp_path / name
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


def hook_state(root):
    """The four case variables (as the env XML holds them) and the hook files present."""
    case = open_case(root)
    names = ("PRERUN_SCRIPT", "DATA_ASSIMILATION_SCRIPT", "DATA_ASSIMILATION_CYCLES", "POSTRUN_SCRIPT")
    hooks = root / "esm-emu" / "hooks"
    return {n: case.get_value(n) for n in names}, sorted(p.name for p in hooks.iterdir()) if hooks.is_dir() else []


def case_files(root):
    """Every file of the case with its bytes and mode."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_reinstall_switches_off_what_the_config_no_longer_asks_for(tmp_path, capsys):
    root = make_case(tmp_path)
    hooks = root / "esm-emu" / "hooks"
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "3"]) == 0
    assert hook_state(root)[0]["DATA_ASSIMILATION_CYCLES"] == 3
    # Without da: the DA script variable is cleared, the cycles go back to the case's 1 (CIME runs
    # the model range(DATA_ASSIMILATION_CYCLES) times: 0 would run nothing) and the hook is removed.
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path, da=False))]) == 0
    assert f"removed {hooks / 'esm_emu_da'}" in capsys.readouterr().out
    assert hook_state(root) == ({"PRERUN_SCRIPT": str(hooks / "esm_emu_prerun.py"), "DATA_ASSIMILATION_SCRIPT": "",
                                 "DATA_ASSIMILATION_CYCLES": 1, "POSTRUN_SCRIPT": str(hooks / "esm_emu_postrun.py")},
                                ["esm_emu_postrun.py", "esm_emu_prerun.py"])
    # Without observations either: POSTRUN goes too.
    assert main(["cime", "install", str(root), "--config",
                 str(write_config(tmp_path, da=False, observations=False))]) == 0
    assert hook_state(root) == ({"PRERUN_SCRIPT": str(hooks / "esm_emu_prerun.py"), "DATA_ASSIMILATION_SCRIPT": "",
                                 "DATA_ASSIMILATION_CYCLES": 1, "POSTRUN_SCRIPT": ""}, ["esm_emu_prerun.py"])
    # And back on.
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "2"]) == 0
    state = hook_state(root)
    assert state[0]["DATA_ASSIMILATION_SCRIPT"] == str(hooks / "esm_emu_da")
    assert state[0]["DATA_ASSIMILATION_CYCLES"] == 2
    assert state[1] == sorted(HOOKS)


def test_reinstall_gives_back_the_users_own_da_setup(tmp_path, capsys):
    """A DA script the case had before esm-emu comes back when esm-emu's DA is switched off; one the
    user set after esm-emu's install is theirs and is left alone."""
    root = make_case(tmp_path)
    subprocess.run(["./xmlchange", "DATA_ASSIMILATION_SCRIPT=/home/me/my_da.sh,DATA_ASSIMILATION_CYCLES=2"],
                   cwd=root, check=True)
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "4"]) == 0
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path, da=False))]) == 0
    assert hook_state(root)[0]["DATA_ASSIMILATION_SCRIPT"] == "/home/me/my_da.sh"
    assert hook_state(root)[0]["DATA_ASSIMILATION_CYCLES"] == 2

    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "4"]) == 0
    subprocess.run(["./xmlchange", "DATA_ASSIMILATION_SCRIPT=/home/me/other_da.sh"], cwd=root, check=True)
    capsys.readouterr()
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path, da=False))]) == 0
    out = capsys.readouterr().out
    assert "DATA_ASSIMILATION_SCRIPT='/home/me/other_da.sh' was changed after esm-emu set it; left as it is" in out
    assert hook_state(root)[0]["DATA_ASSIMILATION_SCRIPT"] == "/home/me/other_da.sh"
    assert hook_state(root)[0]["DATA_ASSIMILATION_CYCLES"] == 4  # they go with the user's script now


def test_reinstall_over_an_install_without_a_record(tmp_path):
    """An install by an esm-emu that kept no record is recognised by its hook paths."""
    root = make_case(tmp_path)
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "3"]) == 0
    (root / "esm-emu" / "install.json").unlink()
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path, da=False))]) == 0
    state = hook_state(root)[0]
    assert state["DATA_ASSIMILATION_SCRIPT"] == "" and state["DATA_ASSIMILATION_CYCLES"] == 1


@pytest.mark.parametrize("refuse", ["PRERUN_SCRIPT", "POSTRUN_SCRIPT", "DATA_ASSIMILATION_CYCLES"])
def test_failing_xmlchange_leaves_a_new_case_as_it_was(tmp_path, capsys, refuse):
    root = make_case(tmp_path, refuse=(refuse,))
    before = case_files(root)
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"./xmlchange {refuse}=" in err and "locked" in err and "left as it was" in err
    assert case_files(root) == before
    assert not (root / "esm-emu").exists()


def test_failing_xmlchange_leaves_an_installed_case_as_it_was(tmp_path, capsys):
    from cime_hooks.prerun import run_prerun

    root = make_case(tmp_path)
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path)), "--cycles", "3"]) == 0
    run_prerun(root)  # user_nl_clm now holds esm-emu's paramfile and baseflow_scalar
    (root / "esm-emu" / "config.yaml").chmod(0o664)  # a group-shared case keeps its modes
    x = root / "xmlchange"
    x.write_text(x.read_text().replace("REFUSE = ()", "REFUSE = ('POSTRUN_SCRIPT',)"))
    before = case_files(root)
    # This install would clear DA, remove two hooks and esm-emu's user_nl_clm lines, then fail on
    # POSTRUN_SCRIPT.
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"namelist": {}}))
    assert main(["cime", "install", str(root), "--config", str(tmp_path / "none.yaml"), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "remove paramfile (set by esm-emu" in plan and "esm_emu_da" in plan
    assert main(["cime", "install", str(root), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "./xmlchange POSTRUN_SCRIPT=" in capsys.readouterr().err
    assert case_files(root) == before


def test_a_case_without_a_hook_variable_is_refused_before_any_change(tmp_path, capsys):
    root = make_case(tmp_path)
    env_run = root / "env_run.xml"
    env_run.write_text(env_run.read_text().replace('id="POSTRUN_SCRIPT"', 'id="OTHER_SCRIPT"'))
    before = case_files(root)
    assert main(["cime", "install", str(root), "--config", str(write_config(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "case variable POSTRUN_SCRIPT is not defined" in err
    assert case_files(root) == before


def test_reinstall_gives_back_user_nl_settings_the_config_no_longer_asks_for(tmp_path, capsys):
    """PRERUN pointed user_nl_clm at esm-emu's files and values; a config without them gives the
    case its own settings back (or no line where it had none), keeping any the user changed since."""
    from cime_hooks.prerun import run_prerun
    from ppe_ingest.ctsmio.user_nl import read_user_nl

    root = make_case(tmp_path)
    nl = root / "user_nl_clm"
    nl.write_text(nl.read_text() + "fsurdat = '/glade/surfdata_orig.nc'  ! the site's own\n"
                  "baseflow_scalar = 0.002\nhist_mfilt = 2*365\n")
    tiny_paramfile(tmp_path / "surfdata_cal.nc")
    cfg = yaml.safe_load(write_config(tmp_path).read_text())
    cfg["fsurdat"] = "surfdata_cal.nc"
    cfg["namelist"] = {"baseflow_scalar": 0.005, "hist_mfilt": [1, 30], "use_init_interp": True}
    (tmp_path / "hooks.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(tmp_path / "hooks.yaml")]) == 0
    run_prerun(root)
    placed = read_user_nl(nl)
    assert placed["fsurdat"].startswith(str(root / "esm-emu")) and placed["paramfile"].startswith(str(root / "esm-emu"))
    assert placed["baseflow_scalar"] == 0.005 and placed["hist_mfilt"] == [1, 30] and placed["use_init_interp"] is True
    # The user edits one of esm-emu's settings by hand: that one is theirs now.
    nl.write_text(nl.read_text().replace("use_init_interp = .true.", "use_init_interp = .false."))
    capsys.readouterr()

    assert main(["cime", "install", str(root), "--config",
                 str(write_config(tmp_path, da=False, observations=False, name="bare.yaml"))]) == 0
    assert "use_init_interp = .false. was changed after esm-emu set it; left as it is" in capsys.readouterr().out
    back = read_user_nl(nl)
    assert back["fsurdat"] == "/glade/surfdata_orig.nc"
    assert "hist_mfilt = 2*365" in nl.read_text().splitlines()  # the text as the user wrote it
    assert back["baseflow_scalar"] == 0.005  # still asked for by bare.yaml's namelist
    assert back["paramfile"].startswith(str(root / "esm-emu"))  # still asked for (bare.yaml has paramfile)
    assert back["use_init_interp"] is False
    assert "hist_fincl2 = 'QRUNOFF','RAIN'   ! my own output, must survive" in nl.read_text()

    # A config asking for nothing of the kind: esm-emu's paramfile line goes (the case had none),
    # and baseflow_scalar gets the user's 0.002 back.
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"namelist": {}}))
    assert main(["cime", "install", str(root), "--config", str(tmp_path / "none.yaml")]) == 0
    back = read_user_nl(nl)
    assert "paramfile" not in back and back["baseflow_scalar"] == 0.002
    assert back["fsurdat"] == "/glade/surfdata_orig.nc"


def test_emulator_is_checked_at_install(tmp_path, capsys):
    """The DA's emulator is loaded at install: a parameter it does not take, or an observed variable
    it does not give, is refused before the job runs, not after its first model segment."""
    from emu_store import make_store
    from emu_store import write_config as emu_config

    store = make_store(tmp_path / "store.nc", n_member=4, n_grid=3, n_years=1)
    assert main(["train", str(emu_config(tmp_path, store, train={"max_steps": 2, "val_every": 2})), "--quiet"]) == 0
    ckpt = tmp_path / "run" / "best.pt"
    root = make_case(tmp_path)
    path = write_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    tiny_paramfile(tmp_path / "params_calibrated.nc", {"fff": 0.5, "medlynslope": 4.0})
    cfg["da"] = {"forward": {"kind": "emulator", "checkpoint": str(ckpt)},
                 "parameters": {"fff": {"location": "paramfile", "min": 0.1, "max": 5.0}}}
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["cime", "install", str(root), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "da.parameters.fff: not an input of the emulator" in err and "medlynslope" in err
    cfg["da"]["parameters"] = {"medlynslope": {"location": "paramfile", "min": 2.0, "max": 8.0}}
    cfg["observations"]["variable"] = "QOVER"
    tiny_obs(tmp_path / "obs.nc", "QOVER")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(path)]) == 2
    assert "observations.variable: QOVER is not an output of the emulator" in capsys.readouterr().err
    assert not (root / "esm-emu").exists()
    cfg["observations"]["variable"] = "QRUNOFF"
    tiny_obs(tmp_path / "obs.nc", "QRUNOFF")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["cime", "install", str(root), "--config", str(path)]) == 0
