"""Every command refuses bad input in one line with exit 2, and leaves nothing behind (issue 16).

Table-driven: each Case builds its inputs in a fresh folder and names what the line must say.
More classes live beside this file in tests/test_hostile_*.py, on the same harness (hostile.py).

Covered here: tracebacks instead of one line (binary and malformed configs, file-system errors on
outputs, user values refused at conversion, sizes over their bounds, checkpoints of the wrong
structure, a corrupt stages.json, hooks run by hand), messages (bounded echoes of user values,
non-netCDF inputs named in one line, never torch's unsafe-load advice) and slow refusals (a bad
config is refused before torch is imported).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import pytest
from hostile import Case, check_refused, run_cli

from ppe_ingest import configs

QUICKSTART = configs.path("quickstart.yaml")


# --- inputs the cases build -------------------------------------------------------------------

def text(t: Path, name: str, content: str) -> Path:
    p = t / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(content)
    return p


def binary(t: Path, name: str = "bin.yaml") -> Path:
    p = t / name
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" + bytes(range(256)))
    return p


def alias_bomb(t: Path, section: str, key: str) -> Path:
    """A "billion laughs" YAML: nine levels of nine aliases (9**9 strings when expanded), the last
    one the value of `section.key`."""
    lines = ["bombs:", '  - &a0 ["lol"]']
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return text(t, "bomb.yaml", "\n".join(lines) + f"\n{section}:\n  {key}: *a9\n")


def nc(t: Path, name: str = "ok.nc") -> Path:
    """A valid netCDF file that is no grid, store or observation file."""
    p = t / name
    with netCDF4.Dataset(p, "w") as ds:
        ds.createDimension("x", 2)
        ds.createVariable("v", "f4", ("x",))[:] = [1, 2]
    return p


def torch_file(t: Path, name: str, obj) -> Path:
    import torch

    p = t / name
    torch.save(obj, p)
    return p


class _Opaque:  # pickled as a Python object: weights_only loading refuses it
    pass


def invert_cfg(t: Path, checkpoint: str = "emu.pt", observations: str = "obs.nc", store: str = "store.nc",
               extra: str = "") -> Path:
    return text(t, "inv.yaml", f"inverse:\n  forward: {{kind: emulator, checkpoint: {checkpoint}}}\n"
                               f"  store: {store}\n  observations: [{observations}]\n{extra}")


def invert_with(t: Path, ckpt_obj=None, ckpt_text: str | None = None, **kw) -> list:
    """`esm-emu invert` whose store and observations are netCDF files and whose checkpoint holds
    `ckpt_obj` (torch.save) or `ckpt_text`."""
    nc(t, "store.nc")
    nc(t, "obs.nc")
    if ckpt_obj is not None:
        torch_file(t, "emu.pt", ckpt_obj)
    if ckpt_obj is None:
        text(t, "emu.pt", "placeholder" if ckpt_text is None else ckpt_text)
    return ["invert", invert_cfg(t, **kw), "--out", t / "inv_out"]


def stages(t: Path, content: bytes, command: tuple = ("quickstart",)) -> list:
    """`command --out o` where o/stages.json (the record of finished stages) holds `content`."""
    (t / "o").mkdir()
    (t / "o" / "stages.json").write_bytes(content)
    return [*command, "--out", t / "o"]


SIM = "simulate:\n  n_members: 2\n  n_gridcells: 2\n  n_years: 1\n"

CASES = [
    # 1. tracebacks instead of one line -- configs
    Case("simulate: missing config", lambda t: ["simulate", t / "missing.yaml", "--out", t / "o"],
         mentions=["missing.yaml"], outputs=["o"]),
    Case("train: missing config", lambda t: ["train", t / "nope.yaml"], mentions=["nope.yaml"]),
    Case("simulate: binary YAML", lambda t: ["simulate", binary(t), "--out", t / "o"],
         mentions=["bin.yaml"], outputs=["o"], inputs=["bin.yaml"]),
    Case("run: binary YAML", lambda t: ["run", binary(t), "--out", t / "o"],
         mentions=["bin.yaml"], outputs=["o"], inputs=["bin.yaml"]),
    Case("invert: binary YAML", lambda t: ["invert", binary(t)], mentions=["bin.yaml"], inputs=["bin.yaml"]),
    Case("ingest: binary YAML", lambda t: ["ingest", binary(t), "--out", t / "s.nc"],
         mentions=["bin.yaml"], outputs=["s.nc"], inputs=["bin.yaml"]),
    Case("quickstart: binary --config", lambda t: ["quickstart", "--config", binary(t), "--out", t / "o"],
         mentions=["bin.yaml"], outputs=["o"]),
    Case("simulate: config is a folder", lambda t: ["simulate", t, "--out", t / "o"],
         mentions=[": is a folder"], outputs=["o"]),
    Case("simulate: integer of 5000 digits",
         lambda t: ["simulate", text(t, "c.yaml", f"simulate:\n  seed: {'9' * 5000}\n"), "--out", t / "o"],
         mentions=["c.yaml", "too long"], outputs=["o"]),
    Case("simulate: NUL bytes in YAML", lambda t: ["simulate", text(t, "c.yaml", "simulate:\x00\n"), "--out", t / "o"],
         mentions=["c.yaml"], outputs=["o"]),
    Case("simulate: binary parameter table", lambda t: ["simulate", text(t, "c.yaml", SIM), "--out", t / "o",
                                                        "--set", f"table={binary(t, 'bin.csv')}"],
         mentions=["bin.csv"], outputs=["o"], inputs=["bin.csv"]),
    # -- values a user gives that conversion would refuse
    Case("simulate: --seed -1", lambda t: ["simulate", text(t, "c.yaml", SIM), "--out", t / "o", "--seed", "-1"],
         mentions=["seed", "-1"], outputs=["o"]),
    Case("invert: --seed -1", lambda t: invert_with(t) + ["--seed", "-1"], mentions=["seed", "-1"]),
    Case("run: --seed -1", lambda t: ["run", QUICKSTART, "--out", t / "o", "--seed", "-1"],
         mentions=["seed", "-1"], outputs=["o"]),
    Case("quickstart: --seed 2**40", lambda t: ["quickstart", "--out", t / "o", "--seed", str(2 ** 40)],
         mentions=["seed", str(2 ** 40)], outputs=["o"]),
    Case("ingest: seed -3", lambda t: ["ingest", t, "--seed", "-3", "--out", t / "s.nc"],
         mentions=["seed", "-3"], outputs=["s.nc"]),
    Case("invert: NaN learning rate", lambda t: invert_with(t) + ["--set", "dpl.lr=.nan"],
         mentions=["dpl.lr", "finite"]),
    Case("invert: --seed not a number", lambda t: invert_with(t) + ["--seed", "abc"], mentions=["abc"]),
    # -- sizes over their bounds (refused naming the key, before any allocation)
    Case("quickstart: hidden 200000", lambda t: ["quickstart", "--out", t / "o", "--set",
                                                 "emulator.model.hidden=200000"],
         mentions=["emulator.model.hidden", "200000"], outputs=["o"]),
    Case("run: huge batch", lambda t: ["run", QUICKSTART, "--out", t / "o", "--set",
                                       "emulator.data.batch_size=1000000000"],
         mentions=["emulator.data.batch_size", "above the maximum"], outputs=["o"]),
    Case("run: heads 10**6", lambda t: ["run", QUICKSTART, "--out", t / "o", "--set",
                                        "emulator.model.heads=1000000"],
         mentions=["emulator.model.heads"], outputs=["o"]),
    Case("invert: dpl.hidden 10**7", lambda t: invert_with(t) + ["--set", "dpl.hidden=10000000"],
         mentions=["dpl.hidden", "10000000"]),
    Case("invert: ensemble of 10**5", lambda t: invert_with(t) + ["--set", "uncertainty.ensemble=100000"],
         mentions=["uncertainty.ensemble"]),
    Case("simulate: 10**6 gridcells", lambda t: ["simulate", text(t, "c.yaml", SIM), "--out", t / "o", "--set",
                                                 "n_gridcells=1000000"], mentions=["n_gridcells"], outputs=["o"]),
    Case("simulate: members per batch 10**6", lambda t: ["simulate", text(t, "c.yaml", SIM), "--out", t / "o",
                                                         "--set", "members_per_batch=1000000"],
         mentions=["members_per_batch"], outputs=["o"]),
    Case("ingest: chunk_time 10**9", lambda t: ["ingest", t, "--set", "chunk_time=1000000000", "--out", t / "s.nc"],
         mentions=["chunk_time"], outputs=["s.nc"]),
    # -- file-system errors on outputs (we run as root here: permissions are moot, so files in the way)
    Case("simulate: --out is a file", lambda t: ["simulate", text(t, "c.yaml", SIM), "--out", text(t, "f.txt", "x")],
         mentions=["f.txt", "is a file"], inputs=["f.txt"]),
    Case("simulate: --out under a file", lambda t: ["simulate", text(t, "c.yaml", SIM), "--out",
                                                    text(t, "f.txt", "x") / "o"],
         mentions=["f.txt"], inputs=["f.txt"]),
    Case("quickstart: --out is a file", lambda t: ["quickstart", "--out", text(t, "f.txt", "x")],
         mentions=["f.txt", "is a file"], inputs=["f.txt"]),
    Case("run: --out under a file", lambda t: ["run", QUICKSTART, "--out", text(t, "f.txt", "x") / "a" / "b"],
         mentions=["f.txt"], inputs=["f.txt"]),
    Case("config copy: DIR is a file", lambda t: ["config", "copy", "quickstart.yaml", text(t, "f.txt", "x")],
         mentions=["f.txt"], inputs=["f.txt"]),
    Case("config copy: file exists", lambda t: ["config", "copy", "quickstart.yaml",
                                                text(t, "d/quickstart.yaml", "mine").parent],
         mentions=["quickstart.yaml", "already exists"], inputs=["d/quickstart.yaml"]),
    Case("ingest: --out is a folder", lambda t: ["ingest", (t / "ppe").mkdir() or t / "ppe", "--out", t],
         mentions=["ingest.out", "is a folder"]),
    Case("ingest: --out under a file", lambda t: ["ingest", t, "--out", text(t, "f.txt", "x") / "s.nc"],
         mentions=["f.txt"], inputs=["f.txt"]),
    Case("ingest: --catalog under a file", lambda t: ["ingest", t, "--out", t / "s.nc", "--catalog",
                                                      text(t, "f.txt", "x") / "c.json"],
         mentions=["ingest.catalog", "f.txt"], inputs=["f.txt"], outputs=["s.nc"]),
    Case("regrid weights: --out is a folder", lambda t: ["regrid", "weights", "--src", nc(t), "--dst", nc(t),
                                                         "--out", t], mentions=["--out", "is a folder"]),
    Case("regrid weights: --out under a file", lambda t: ["regrid", "weights", "--src", nc(t), "--dst", nc(t),
                                                          "--out", text(t, "f.txt", "x") / "w.nc"],
         mentions=["f.txt"], inputs=["f.txt", "ok.nc"]),
    Case("regrid apply: OUTPUT is a folder", lambda t: ["regrid", "apply", "--weights", nc(t), nc(t, "in.nc"), t],
         mentions=["is a folder"], inputs=["ok.nc", "in.nc"]),
    Case("regrid dlnd: --out is a file", lambda t: ["regrid", "dlnd", nc(t, "ro.nc"), "--grid", nc(t), "--case",
                                                    "c", "--out", text(t, "f.txt", "x")],
         mentions=["f.txt", "is a file"], inputs=["f.txt", "ro.nc", "ok.nc"]),
    # -- checkpoints of the wrong structure (a valid torch file) and pickled objects
    Case("invert: checkpoint without 'emulator'", lambda t: invert_with(t, {"weights": [1.0, 2.0]}),
         mentions=["emu.pt", "not an esm-emu emulator checkpoint (no 'emulator' entry)"], inputs=["emu.pt"],
         outputs=["inv_out"]),
    Case("invert: checkpoint whose 'emulator' is incomplete", lambda t: invert_with(t, {"emulator": {"kind": "x"}}),
         mentions=["emu.pt", "not an esm-emu emulator checkpoint"], inputs=["emu.pt"], outputs=["inv_out"]),
    Case("invert: checkpoint is a list", lambda t: invert_with(t, [1, 2, 3]),
         mentions=["emu.pt", "no 'emulator' entry"], outputs=["inv_out"]),
    Case("invert: pickled checkpoint", lambda t: invert_with(t, {"emulator": _Opaque()}),
         mentions=["emu.pt", "never loads"], inputs=["emu.pt"], outputs=["inv_out"]),
    Case("invert: checkpoint is text", lambda t: invert_with(t, ckpt_text="not torch"),
         mentions=["emu.pt", "not a readable esm-emu emulator checkpoint"], inputs=["emu.pt"], outputs=["inv_out"]),
    # -- a corrupt record of finished stages
    Case("quickstart: stages.json not JSON", lambda t: stages(t, b'{"simulate": {"wall_s": 1'),
         mentions=["stages.json", "--restart"], inputs=["o/stages.json"]),
    Case("quickstart: stages.json binary", lambda t: stages(t, b"\xff\xfe\x00garbage"),
         mentions=["stages.json", "--restart"], inputs=["o/stages.json"]),
    Case("run: stages.json names no stage", lambda t: stages(t, b'{"simulate": 3, "bogus": {}}', ("run", QUICKSTART)),
         mentions=["stages.json"], inputs=["o/stages.json"]),
    # -- argparse errors: one line too
    Case("regrid weights: bad --method", lambda t: ["regrid", "weights", "--src", "a", "--dst", "b", "--out", "c",
                                                    "--method", "bogus"], mentions=["bogus", "--help"]),
    Case("simulate: no arguments", lambda t: ["simulate"], mentions=["--out"]),
    Case("write-ctsm: unknown flag", lambda t: ["write-ctsm", "--out", t / "w", "--bogus"],
         mentions=["--bogus"], outputs=["w"]),
    Case("config: no action", lambda t: ["config"], mentions=["ACTION"]),
    Case("unknown command", lambda t: ["frobnicate"], mentions=["frobnicate"]),
    # 7. messages -- bounded echoes, non-netCDF inputs in one line
    Case("simulate: YAML alias bomb", lambda t: ["simulate", alias_bomb(t, "simulate", "params"), "--out", t / "o"],
         mentions=["bomb.yaml"], outputs=["o"], inputs=["bomb.yaml"]),
    Case("invert: YAML alias bomb in a list key", lambda t: ["invert", alias_bomb(t, "inverse", "variables")],
         mentions=["bomb.yaml"], inputs=["bomb.yaml"]),
    Case("simulate: 100 kB value in a message",
         lambda t: ["simulate", text(t, "c.yaml", f"simulate:\n  prefix: {'A' * 100_000}\n"), "--out", t / "o"],
         mentions=["simulate.prefix", "..."], outputs=["o"]),
    Case("simulate: 100 kB unknown key",
         lambda t: ["simulate", text(t, "c.yaml", f"simulate:\n  ? {'k' * 100_000}\n  : 1\n"), "--out", t / "o"],
         mentions=["unknown key"], outputs=["o"]),
    Case("invert: 100 kB --set", lambda t: invert_with(t) + ["--set", "x" * 100_000 + "=1"],
         mentions=["unknown key"]),
    Case("regrid weights: text file as --src", lambda t: ["regrid", "weights", "--src", text(t, "f.txt", "x"),
                                                          "--dst", nc(t), "--out", t / "w.nc"],
         mentions=["f.txt", "not a netCDF grid file"], outputs=["w.nc"], inputs=["f.txt"]),
    Case("regrid weights: empty --dst", lambda t: ["regrid", "weights", "--src", nc(t), "--dst", text(t, "e.nc", ""),
                                                   "--out", t / "w.nc"],
         mentions=["e.nc", "empty file"], outputs=["w.nc"]),
    Case("regrid apply: text file as input", lambda t: ["regrid", "apply", "--weights", nc(t),
                                                        text(t, "in.txt", "1 2 3"), t / "out.nc"],
         mentions=["in.txt", "not a netCDF"], outputs=["out.nc"], inputs=["in.txt"]),
    Case("regrid apply: text file as --weights", lambda t: ["regrid", "apply", "--weights", text(t, "w.txt", "w"),
                                                            nc(t), t / "out.nc"],
         mentions=["w.txt", "not a netCDF weight file"], outputs=["out.nc"]),
    Case("regrid dlnd: text file as runoff", lambda t: ["regrid", "dlnd", text(t, "ro.txt", "r"), "--grid", nc(t),
                                                        "--case", "c", "--out", t / "d"],
         mentions=["ro.txt", "not a netCDF"], outputs=["d"]),
    Case("invert: text file as observations",
         lambda t: invert_with(t, observations=text(t, "f.txt", "site,v\n1,2\n")),
         mentions=["inverse.observations", "f.txt", "not a netCDF"], outputs=["inv_out"]),
    Case("invert: text file as store", lambda t: invert_with(t, store=text(t, "f.txt", "x")),
         mentions=["inverse.store", "f.txt"], outputs=["inv_out"]),
    Case("invert: folder as truth", lambda t: invert_with(t, extra=f"  truth: {t}\n"),
         mentions=["inverse.truth", "is a folder"], outputs=["inv_out"]),
    Case("invert: missing checkpoint", lambda t: invert_with(t, checkpoint="gone.pt"),
         mentions=["gone.pt"], outputs=["inv_out"]),
    Case("ingest --summary: text file", lambda t: ["ingest", "--summary", text(t, "s.txt", "x"), "--design",
                                                   nc(t), "--params", QUICKSTART, "--out", t / "s.nc"],
         mentions=["ingest.summary", "s.txt", "not a netCDF"], outputs=["s.nc"], inputs=["s.txt"]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_refused_in_one_line(case, tmp_path):
    r = check_refused(case, tmp_path)
    assert "weights_only" not in r.stderr, "torch's advice to load unsafely reached the user"


def _hook(*args, cwd=None) -> subprocess.CompletedProcess:
    """A hook as the installed scripts run it: cime_hooks.run.main in esm-emu's interpreter."""
    code = "import sys; from cime_hooks.run import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-I", "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("args, says", [
    (("prerun", "{t}/no_case"), "no_case"),
    (("da", "{t}/no_case", "1"), "no_case"),
    (("postrun", "{t}/f.txt"), "f.txt"),
    (("da", "{t}", "one"), "usage"),
])
def test_hook_run_by_hand_on_a_missing_case_says_so_in_one_line(tmp_path, args, says):
    (tmp_path / "f.txt").write_text("x")
    r = _hook(*(a.format(t=tmp_path) for a in args))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert says in lines[0]


@pytest.mark.parametrize("case, says", [("no_case", "no such case folder"), ("not_a_case", "not a CIME case")])
def test_installed_hook_script_by_hand_on_a_missing_case(tmp_path, case, says):
    """The script CIME runs, run by hand: one line on stderr and exit 2 for a case that is not one."""
    from cime_hooks.install import render_hook

    (tmp_path / "not_a_case").mkdir()
    script = tmp_path / "esm_emu_prerun.py"
    script.write_text(render_hook("PRERUN_SCRIPT", sys.executable))
    r = subprocess.run([sys.executable, script, tmp_path / case], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert case in lines[0] and says in lines[0]


def test_debug_anywhere_shows_the_traceback(tmp_path):
    """--debug after the subcommand works too; without it the same error is one line."""
    cfg = binary(tmp_path)
    r = run_cli(["simulate", cfg, "--out", tmp_path / "o", "--debug"])
    assert r.returncode != 0 and "Traceback" in r.stderr and "bin.yaml" in r.stderr
    r = run_cli(["--debug", "simulate", cfg, "--out", tmp_path / "o"])
    assert "Traceback" in r.stderr
    r = run_cli(["simulate", cfg, "--out", tmp_path / "o"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_internal_errors_are_one_line_with_exit_1_and_point_to_debug(capsys):
    """Anything that is not the user's input is said to be internal (exit 1), not blamed on the user."""
    from ppe_ingest.base.errors import run_guarded

    def broken():
        return {}["no such key"]

    assert run_guarded("esm-emu x", broken) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" in err[0] and "--debug" in err[0] and "KeyError" in err[0]
    with pytest.raises(KeyError):
        run_guarded("esm-emu x", broken, debug=True)
    assert "--debug" in run_cli(["--help"]).stdout and "internal error" in run_cli(["--help"]).stdout


def test_os_errors_name_the_path_and_what_went_wrong(tmp_path, capsys):
    """Disk full, read-only and permission errors from deep inside a command: one line with the path."""
    import errno

    from ppe_ingest.base.errors import run_guarded

    for code, says in ((errno.ENOSPC, "disk full"), (errno.EROFS, "read-only"), (errno.EACCES, "permission")):
        def fail(code=code):
            raise OSError(code, os.strerror(code), str(tmp_path / "store.nc"))

        assert run_guarded("esm-emu ingest", fail) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "store.nc" in err[0] and says in err[0], err


@pytest.mark.parametrize("command", [["invert", "{t}/missing.yaml"], ["simulate", "{t}/missing.yaml", "--out", "{t}/o"],
                                     ["run", "{t}/missing.yaml", "--out", "{t}/o"]])
def test_a_missing_config_is_refused_before_torch_is_imported(tmp_path, command):
    """Class 10: no command spends seconds importing torch to say its config is missing."""
    args = [a.format(t=tmp_path) for a in command]
    code = ("import sys; from esm_emu.cli import main; rc = main(sys.argv[1:]); "
            "sys.exit(rc if 'torch' not in sys.modules else 99)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert r.returncode == 2, f"exit {r.returncode} (99: torch was imported)\n{r.stderr}"
    assert "missing.yaml" in r.stderr and wall < 10
