"""The configs ship as package data (ppe_ingest.configs): found through importlib.resources wherever
the package is installed, and `esm-emu config list|show|copy` hands them to a user."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from esm_emu.cli import main
from ppe_ingest import configs

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_the_package_data():
    assert configs.folder() == Path(str(resources.files("ppe_ingest.configs")))
    assert {"quickstart.yaml", "inverse.yaml", "emulator_lstm.yaml", "params_hydrology.csv"} <= set(configs.names())
    assert "__init__.py" not in configs.names()


def test_configs_are_found_through_the_package_not_the_source_tree(tmp_path):
    """Laid out as a wheel installs them (site/ppe_ingest/configs/), with no configs/ folder beside
    the package, the default parameter table and quickstart config are still found."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "ppe_ingest", site / "ppe_ingest", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "configs", site / "ppe_ingest" / "configs", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("from ppe_ingest.param_table import default_table_path, load_param_table; "
            "from ppe_ingest import configs; "
            "p = default_table_path(); load_param_table(p); print(p); print(configs.path('quickstart.yaml'))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       check=False)
    assert r.returncode == 0, r.stderr
    table, quick = r.stdout.split()
    assert table == str(site / "ppe_ingest" / "configs" / "params_hydrology.csv")
    assert quick == str(site / "ppe_ingest" / "configs" / "quickstart.yaml")


def test_every_package_in_the_tree_ships():
    """pyproject.toml lists the packages by hand (configs/ is mapped into ppe_ingest): none may be left out."""
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_packages

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(REPO), include=["esm_emu*", "coupler*", "ppe_ingest*", "cime_hooks*"]))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "ppe_ingest.configs" in listed


def test_config_list_and_show(capsys):
    assert main(["config", "list"]) == 0
    assert capsys.readouterr().out.split() == configs.names()
    assert main(["config", "show", "inverse.yaml"]) == 0
    assert capsys.readouterr().out == configs.path("inverse.yaml").read_text()
    assert main(["config", "show", "nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope.yaml" in err and "quickstart.yaml" in err


def test_config_copy_refuses_to_overwrite(tmp_path, capsys):
    dest = tmp_path / "mine"
    assert main(["config", "copy", "quickstart.yaml", str(dest)]) == 0
    copied = dest / "quickstart.yaml"
    assert copied.read_bytes() == configs.path("quickstart.yaml").read_bytes()
    assert "params_hydrology.csv" in capsys.readouterr().out  # the table it names beside it
    assert main(["config", "copy", "params_hydrology.csv", str(dest)]) == 0
    copied.write_text("# my edits\n")
    assert main(["config", "copy", "quickstart.yaml", str(dest)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing to overwrite" in err and str(copied) in err
    assert copied.read_text() == "# my edits\n"
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_copied_quickstart_config_validates_in_its_new_folder(tmp_path):
    from esm_emu.inverse.config import load_inverse_config
    from esm_emu.training.config import load_emulator_config
    from ppe_ingest.ingest.config import load_ingest_config
    from ppe_ingest.simulator.config import load_simulate_config

    for name in ("quickstart.yaml", "params_hydrology.csv"):
        configs.copy_to(name, tmp_path)
    cfg = tmp_path / "quickstart.yaml"
    sim = load_simulate_config(cfg)
    assert sim.table == str(tmp_path / "params_hydrology.csv") and sim.n_members == 64
    assert load_ingest_config(cfg).split.test_years == 1
    import yaml

    # the typed section carries what the file says (whatever the shipped value is)
    assert load_emulator_config(cfg, check_files=False).train.max_steps == \
        yaml.safe_load(cfg.read_text())["emulator"]["train"]["max_steps"]
    assert load_inverse_config(cfg, check_files=False).method == "g_z"
