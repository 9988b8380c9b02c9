"""Typed config sections and command-line overrides: one form for every command (CONFIG + flags +
--set KEY=VALUE), validated like the file, unknown keys an error with one line naming the key."""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping

import netCDF4
import numpy as np
import pytest
import yaml
from _ingest_ppe import sim_ppe
from emu_store import make_store, write_config

from esm_emu.cli import main
from ppe_ingest.base.config import Field, Section, load_config, validate
from ppe_ingest.base.errors import UserError

SCHEMA = {
    "lr": Field(float, 1e-3, gt=0),
    "table": Field(str, None, path=True, nullable=True),
    "train": Field(dict, {}, schema={"epochs": Field(int, 3, min=1), "vars": Field(list, ["QRUNOFF"], items=str)}),
    "parameters": Field(dict, {}, each={"min": Field(float), "max": Field(float)}),
}


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_section_is_a_typed_read_only_mapping(tmp_path):
    cfg = load_config(write(tmp_path, "train: {epochs: 5}\nparameters: {fff: {min: 0, max: 1}}\n"), SCHEMA)
    assert isinstance(cfg, Section) and isinstance(cfg, Mapping)
    assert cfg.train.epochs == cfg["train"]["epochs"] == 5 and cfg.get("lr") == 1e-3
    assert cfg.parameters["fff"].max == 1.0
    with pytest.raises(TypeError, match="read-only"):
        cfg["lr"] = 1.0
    with pytest.raises(TypeError, match="read-only"):
        cfg.train.update(epochs=2)
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["train"]) is dict and type(plain["parameters"]["fff"]) is dict
    assert yaml.safe_load(yaml.safe_dump(cfg)) == plain == json.loads(json.dumps(cfg))
    assert copy.deepcopy(cfg) == cfg


def test_override_is_validated_again(tmp_path):
    cfg = load_config(write(tmp_path, "lr: 0.1\n"), SCHEMA)
    new = cfg.override({"train.epochs": 9, "lr": 2})
    assert (new.train.epochs, new.lr, cfg.train.epochs) == (9, 2.0, 3)
    with pytest.raises(UserError, match=r"run.yaml: train.epochs: 0 is below the minimum 1"):
        cfg.override({"train.epochs": 0})
    with pytest.raises(UserError, match=r"train.epoch: unknown key"):
        cfg.override({"train.epoch": 2})


def test_set_overrides_are_parsed_as_yaml_and_checked(tmp_path, monkeypatch):
    path = write(tmp_path, "emulator:\n  lr: 0.1\n")
    cfg = load_config(path, SCHEMA, "emulator", sets=["train.vars=[QRUNOFF, QOVER]", "emulator.lr=0.5"],
                      values={"train.epochs": 4, "table": None})
    assert cfg.train.vars == ["QRUNOFF", "QOVER"] and cfg.lr == 0.5 and cfg.train.epochs == 4
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("x\n")
    assert load_config(path, SCHEMA, "emulator", sets=["table=t.csv"]).table == str(tmp_path / "t.csv")
    for item, needle in (("train.epoch=2", "--set train.epoch=2: emulator.train.epoch: unknown key"),
                         ("lr", "expected KEY=VALUE"),
                         ("lr=abc", "emulator.lr: expected float, got str"),
                         ("lr.x=1", "emulator.lr: has no sub-keys")):
        with pytest.raises(UserError) as e:
            load_config(path, SCHEMA, "emulator", sets=[item])
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_section_and_unknown_key_are_errors(tmp_path):
    with pytest.raises(UserError, match=r"run.yaml: emulatr: unknown section \(known: simulate, ingest"):
        load_config(write(tmp_path, "emulator: {}\nemulatr: {lr: 1}\n"), SCHEMA, "emulator")
    with pytest.raises(UserError, match=r"cfg: parameters.fff.mn: unknown key"):
        validate({"parameters": {"fff": {"mn": 0, "max": 1}}}, SCHEMA, source="cfg")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store.nc", n_member=6, n_grid=4, n_years=2)


def test_unknown_key_exits_2_with_one_line_naming_it(store, tmp_path, capsys):
    cfg = tmp_path / "emu.yaml"
    cfg.write_text(yaml.safe_dump({"emulator": {"store": str(store), "trian": {"lr": 0.1}}}))
    assert main(["train", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "emu.yaml: emulator.trian: unknown key" in err
    good = write_config(tmp_path, store)
    for args, key in ((["--set", "train.lrr=0.1"], "emulator.train.lrr"), (["--max-steps", "0"], "train.max_steps")):
        assert main(["train", str(good), "--quiet", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and key in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_set_override_reaches_the_training_run(store, tmp_path):
    cfg = write_config(tmp_path, store, train={"max_steps": 50, "val_every": 2, "checkpoint_every": 2})
    assert main(["train", str(cfg), "--quiet", "--no-eval", "--set", "train.max_steps=4",
                 "--set", "model.hidden=12"]) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["emulator"]
    assert recorded["train"]["max_steps"] == 4 and recorded["model"]["hidden"] == 12
    with open(tmp_path / "run" / "train_log.csv") as f:
        assert int(f.read().strip().splitlines()[-1].split(",")[0]) == 4


def test_ingest_takes_a_positional_config_with_overrides(tmp_path, tmp_path_factory, capsys):
    ppe = sim_ppe(tmp_path_factory)
    cfg = write(tmp_path, yaml.safe_dump({"ingest": {"ppe_dir": str(ppe), "out": "s.nc", "catalog": "cat.json",
                                                     "seed": 3, "split": {"val_members": 0, "test_members": 0}}}),
                "ingest.yaml")
    assert main(["ingest", str(cfg), "--no-progress", "--set", "split.test_years=0", "--seed", "5"]) == 0
    assert "3 members" in capsys.readouterr().out
    assert (tmp_path / "cat.json").is_file()  # relative to the config file
    with netCDF4.Dataset(tmp_path / "s.nc") as ds:
        assert int(ds.getncattr("split_seed")) == 5
        assert not np.any(ds["split_time"][:] == 2)  # test_years=0: no held-out year
    # the positional may also be the PPE folder, with --config for the settings
    out = tmp_path / "t.nc"
    assert main(["ingest", str(ppe), "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    with netCDF4.Dataset(out) as ds:
        assert int(ds.getncattr("split_seed")) == 3


def test_ingest_config_errors_name_the_key(tmp_path, capsys):
    cfg = write(tmp_path, "ingest:\n  sead: 3\n", "ingest.yaml")
    assert main(["ingest", str(cfg)]) == 2
    assert "ingest.yaml: ingest.sead: unknown key" in capsys.readouterr().err
    cfg = write(tmp_path, "ingest:\n  seed: 3\n", "ingest.yaml")
    assert main(["ingest", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "PPE folder" in err
    assert main(["ingest", str(tmp_path / "absent")]) == 2
    assert "absent: not found" in capsys.readouterr().err


def test_run_checks_every_section_before_any_stage(tmp_path, capsys):
    from ppe_ingest import configs

    out = tmp_path / "out"
    assert main(["run", str(configs.path("quickstart.yaml")), "--out", str(out), "--set", "inverse.method=magic"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "inverse.method: 'magic' is not one of" in err
    assert main(["quickstart", "--out", str(out), "--set", "train.lr=1"]) == 2
    assert "start the key with its section" in capsys.readouterr().err
    assert not out.exists()
