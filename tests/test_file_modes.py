"""Outputs get the mode the umask gives and rewritten files keep theirs (group-shared PPE folders
and CESM cases on HPC).

Real commands in a child process whose umask is set before it starts (022: files 0644, folders
0755; 002: files 0664, folders 0775): simulate a PPE, ingest it (store, catalog), train, evaluate
and export an emulator, write CTSM files, build and apply regrid weights, install the hooks into a
CIME case and run its PRERUN hook. Every file and folder the commands created is checked, not a
list of known outputs, so a writer that bypasses the atomic writer is caught wherever it is.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cime_case_util import make_case

from ppe_ingest.base.atomic import atomic_path, current_umask, new_file_mode

REPO = Path(__file__).resolve().parents[1]

SIM = """
simulate:
  case: tcase
  n_members: 3
  seed: 4
  params: [fff, FMAX, baseflow_scalar]
  table: {table}
  n_gridcells: 4
  n_years: 2
  spinup_years: 1
  years_per_file: 1
  truth:
    n_obs_sites: 2
    gap_fraction: 0.1
"""

EMU = """
emulator:
  store: store.nc
  run_dir: run
  model: {{name: lstm, hidden: 8, embed: 4}}
  data: {{window: 30, batch_size: 4, val_windows: 4}}
  train: {{max_steps: 3, val_every: 1, checkpoint_every: 1, warmup_steps: 0, threads: 1}}
  evaluate: {{at_end: false, max_series: 4}}
"""

# The commands, run in order by one child process (torch is imported once): esm_emu.cli.main.
DRIVER = """
import json, sys
from esm_emu.cli import main
for argv in json.loads(sys.argv[1]):
    rc = main(argv)
    if rc != 0:
        sys.exit(f"{argv}: exit {rc}")
"""


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _run_with_umask(umask: int, args: list, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                       preexec_fn=lambda: os.umask(umask))
    if check:
        assert r.returncode == 0, f"{args[:3]}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_every_output_gets_the_umask_mode_and_a_rewritten_user_nl_keeps_its_own(tmp_path, umask):
    from coupler import grids

    w = tmp_path / "work"
    w.mkdir()
    (w / "sim.yaml").write_text(SIM.format(table=REPO / "configs" / "params_hydrology.csv"))
    (w / "emu.yaml").write_text(EMU.format())
    (w / "nl").mkdir()
    (w / "nl" / "user_nl_clm").write_text("hist_nhtfrq = -24\n")
    grids.write_scrip(grids.regular(6, 12), w / "src_grid.nc")
    grids.write_scrip(grids.regular(4, 8), w / "dst_grid.nc")
    root = make_case(tmp_path / "cases", name="shared_case")
    # The case's user_nl_clm, shared with the group, and deliberately not what the umask would give.
    kept = 0o664 if umask == 0o022 else 0o640
    os.chmod(root / "user_nl_clm", kept)
    before = _tree(tmp_path)

    ppe = w / "ppe"
    hooks_yaml = w / "hooks.yaml"
    hooks_yaml.write_text(yaml.safe_dump({"paramfile": str(ppe / "paramfiles" / "LHC0001.nc"),
                                          "fsurdat": str(ppe / "surfdata_tcase.nc"),
                                          "namelist": {"baseflow_scalar": 0.002}}))
    before.add(hooks_yaml)
    commands = [
        ["simulate", "sim.yaml", "--out", "ppe", "--quiet"],
        ["ingest", "ppe", "--out", "store.nc", "--catalog", "cat/catalog.json", "--no-progress"],
        ["train", "emu.yaml", "--quiet", "--no-eval"],
        ["evaluate", "run", "--out", "eval"],
        ["export", "run", "--out", "exported/emulator.pt"],
        ["write-ctsm", "--out", "ctsm", "--fsurdat", "ppe/surfdata_tcase.nc", "--paramfile",
         "ppe/paramfiles/LHC0001.nc", "--user-nl", "nl/user_nl_clm", "--set", "fff=1.5", "--set", "FMAX=0.3",
         "--set", "baseflow_scalar=0.002"],
        ["regrid", "weights", "--src", "src_grid.nc", "--dst", "dst_grid.nc", "--method", "nearest",
         "--out", "weights/map.nc"],
        ["cime", "install", str(root), "--config", str(hooks_yaml)],
    ]
    _run_with_umask(umask, [sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=w)
    # PRERUN as CIME runs it (the executable), in the same umask
    _run_with_umask(umask, [str(root / "esm-emu" / "hooks" / "esm_emu_prerun.py"), str(root)], cwd=root)

    created = sorted(_tree(tmp_path) - before)
    expect_file, expect_dir, expect_exec = 0o666 & ~umask, 0o777 & ~umask, 0o777 & ~umask
    wrong = []
    for p in created:
        if p.is_symlink():
            continue
        want = (expect_dir if p.is_dir() else expect_exec if p.parent.name == "hooks" and p.suffix == ".py"
                else expect_file)
        if _mode(p) != want:
            wrong.append(f"{p.relative_to(tmp_path)}: {_mode(p):04o}, expected {want:04o}")
    assert not wrong, "\n".join(wrong)
    names = {p.relative_to(tmp_path).as_posix() for p in created}
    for must in ("work/store.nc", "work/cat/catalog.json", "work/run/checkpoint.pt", "work/run/best.pt",
                 "work/run/config.yaml", "work/eval/metrics.json", "work/eval/scatter.png", "work/exported/emulator.pt",
                 "work/ppe/truth/parameter_map.nc", "work/ctsm/user_nl_clm", "work/ctsm/LHC0001.nc",
                 "work/ctsm/surfdata_tcase.nc", "work/weights/map.nc", "cases/shared_case/esm-emu/config.yaml",
                 "cases/shared_case/esm-emu/hooks/esm_emu_prerun.py",
                 "cases/shared_case/esm-emu/calibrated/LHC0001.nc"):
        assert must in names, f"{must} was not written (the test would check nothing): {sorted(names)[:50]}"
    # PRERUN rewrote the case's user_nl_clm (it now points at the calibrated files) and kept its mode.
    text = (root / "user_nl_clm").read_text()
    assert "calibrated" in text and "my own output, must survive" in text
    assert _mode(root / "user_nl_clm") == kept
    assert not list(tmp_path.rglob(".*.tmp")), "temporaries left behind"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_path_modes_under_a_umask(tmp_path, umask):
    """The writer itself: new files and folders from the umask, executables 0777-based, a rewrite
    keeping the old mode (and an explicit mode winning), whatever the temporary file had."""
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        out = tmp_path / "new" / "deeper" / "a.nc"
        with atomic_path(out) as tmp:
            assert _mode(tmp) == 0o600  # mkstemp's
            tmp.write_bytes(b"x")
        assert _mode(out) == 0o666 & ~umask == new_file_mode()
        assert _mode(out.parent) == _mode(out.parent.parent) == 0o777 & ~umask
        hook = tmp_path / "hook.py"
        with atomic_path(hook, executable=True) as tmp:
            tmp.write_text("#!/bin/sh\n")
        assert _mode(hook) == 0o777 & ~umask
        os.chmod(out, 0o640)
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"y")
            os.chmod(tmp, 0o600)  # a writer's own chmod (or a library recreating the file) does not decide
        assert out.read_bytes() == b"y" and _mode(out) == 0o640
        os.chmod(hook, 0o644)  # an executable rewritten: its mode, still runnable by its owner
        with atomic_path(hook, executable=True) as tmp:
            tmp.write_text("#!/bin/sh\n")
        assert _mode(hook) & 0o100 and _mode(hook) & 0o644 == 0o644
        with atomic_path(out, mode=0o604) as tmp:
            tmp.write_bytes(b"z")
        assert _mode(out) == 0o604
    finally:
        os.umask(old)


def test_current_umask_does_not_change_it(tmp_path):
    old = os.umask(0o027)
    try:
        for _ in range(3):
            assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)
