"""`esm-emu train` on one process: learns, is reproducible, and rejects bad input in one line."""

import numpy as np
import pytest
import torch
from emu_store import make_store, write_config
from emu_store import read_losses as _losses

from esm_emu.cli import main
from esm_emu.emulator import load_emulator


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store.nc", n_member=8, n_grid=5, n_years=2)


@pytest.mark.statistical
def test_train_learns_and_writes_a_loadable_emulator(tmp_path, store):
    cfg = write_config(tmp_path, store, train={"max_steps": 60, "val_every": 20, "checkpoint_every": 20})
    assert main(["train", str(cfg), "--quiet"]) == 0
    run = tmp_path / "run"
    loss, val = _losses(run)
    assert len(loss) == 60 and len(val) == 3
    assert np.mean(loss[-10:]) < 0.7 * np.mean(loss[:10])  # the model learns the responses
    emu = load_emulator(run)
    assert emu.response_names == ["QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"]
    y = emu(torch.rand(1, 10, 8) + 1, torch.tensor([[40.0, 0.3]]), torch.tensor([[1.0, 5.0]]))
    assert torch.isfinite(y).all()
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 60 and {"optimizer", "scheduler", "sampler", "rng"} <= set(ck)


def test_same_seed_same_trajectory_other_seed_differs(tmp_path, store):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        (tmp_path / name).mkdir()
        cfg = write_config(tmp_path / name, store, train={"max_steps": 8, "seed": seed})
        assert main(["train", str(cfg), "--quiet"]) == 0
        runs[name] = _losses(tmp_path / name / "run")[0]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


@pytest.mark.parametrize("model", [{"name": "transformer", "hidden": 16, "heads": 2, "layers": 1, "context": 64},
                                   {"name": "lstm", "ea_gate": True}])
def test_other_models_train(tmp_path, store, model):
    cfg = write_config(tmp_path, store, model=model, data={"window": 60, "warmup": 10}, train={"max_steps": 4})
    assert main(["train", str(cfg), "--quiet"]) == 0
    assert load_emulator(tmp_path / "run").model_cfg["name"] == model["name"]


def test_bad_config_is_one_line(tmp_path, store, capsys):
    cfg = write_config(tmp_path, store, train={"lr": -1.0})
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lr" in err
    cfg = write_config(tmp_path, store, data={"window": 5000})
    assert main(["train", str(cfg)]) == 2
    assert "window" in capsys.readouterr().err
    cfg.write_text(cfg.read_text().replace(str(store), str(tmp_path / "nowhere.nc")))
    assert main(["train", str(cfg)]) == 2
    assert "nowhere.nc" in capsys.readouterr().err


def test_unknown_response_is_named(tmp_path, store, capsys):
    import yaml

    cfg = write_config(tmp_path, store)
    d = yaml.safe_load(cfg.read_text())
    d["emulator"]["responses"] = ["QRUNOFF", "QFLX_BOGUS"]
    cfg.write_text(yaml.safe_dump(d))
    assert main(["train", str(cfg)]) == 2
    assert "QFLX_BOGUS" in capsys.readouterr().err


@pytest.mark.statistical
def test_tabular_mode_on_the_real_ppe_summary(tmp_path, shared_data):
    import yaml

    from ppe_ingest.ingest.summary import build_summary_store

    ppe = shared_data("ppe")
    build_summary_store(ppe / "outputs" / "fivevars_gmean_amean_2005-2014.nc", ppe / "outputs" / "lhc220926.nc",
                        ppe / "param_tables" / "lhc_220926.csv", out=tmp_path / "summary.nc")
    cfg = tmp_path / "tab.yaml"
    cfg.write_text(yaml.safe_dump({"emulator": {
        "store": "summary.nc", "run_dir": "tab", "model": {"name": "tabular", "hidden": 32, "layers": 2},
        "data": {"batch_size": 64}, "train": {"max_steps": 150, "val_every": 50, "lr": 0.005, "threads": 1},
        "evaluate": {"at_end": True, "plots": False}}}))
    assert main(["train", str(cfg), "--quiet"]) == 0
    emu = load_emulator(tmp_path / "tab")
    assert emu.kind == "tabular" and emu.response_names == ["TLAI", "GPP", "SOILWATER_10CM", "EFLX_LH_TOT", "QHR"]
    assert len(emu.param_names) == 32
    import json

    m = json.loads((tmp_path / "tab" / "eval" / "metrics.json").read_text())
    assert m["n_members"] == 100  # the validation members (default val_fraction 0.2), chosen by seed
    assert m["variables"]["EFLX_LH_TOT"]["R2"] > 0.3  # learns the main parameter effects already
