"""`esm-emu evaluate`: scores on each held-out split, tables and plots a person can open."""
import json

import numpy as np
import pandas as pd
import pytest
from emu_store import make_store, write_config

from esm_emu.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    store = make_store(d / "store.nc", n_member=8, n_grid=5, n_years=2)
    cfg = write_config(d, store, train={"max_steps": 40, "val_every": 20}, evaluate={"at_end": True})
    assert main(["train", str(cfg), "--quiet"]) == 0  # evaluation runs at the end of training
    return d, cfg


def test_evaluation_at_end_of_training_writes_every_group(trained):
    d, _ = trained
    ev = d / "run" / "eval"
    m = json.loads((ev / "metrics.json").read_text())
    assert set(m["groups"]) == {"members", "gridcells", "years", "members_x_gridcells"}
    # the fixture store: 2 test members x 3 train gridcells ...
    assert m["groups"]["members"]["n_series"] == 2 * 3
    assert m["groups"]["members_x_gridcells"]["n_series"] == 2 * 1
    assert m["groups"]["years"]["days"] == 365  # the held-out year only
    for g in m["groups"].values():
        assert set(g["variables"]) == {"QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"}
        assert g["variables"]["SOILWATER_10CM"]["NSE_median"] > -1.0
    for png in ("hydrographs.png", "scatter.png", "nse_map.png"):
        assert (ev / png).stat().st_size > 5000
    per = pd.read_csv(ev / "metrics_per_series.csv")
    assert set(per.columns) >= {"group", "member", "gridcell", "lat", "lon", "variable",
                                "NSE", "KGE", "RMSE", "bias", "R2"}
    gc = pd.read_csv(ev / "metrics_per_gridcell.csv")
    assert np.isfinite(gc["lat"]).all()


def test_evaluate_cli_from_config_and_scores_match_recomputation(trained, tmp_path, capsys):
    d, cfg = trained
    assert main(["evaluate", str(cfg), "--out", str(tmp_path / "ev"), "--no-plots"]) == 0
    assert "members_x_gridcells" in capsys.readouterr().out
    per = pd.read_csv(tmp_path / "ev" / "metrics_per_series.csv")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    sub = per[(per.group == "members") & (per.variable == "EFLX_LH_TOT")]
    assert m["groups"]["members"]["variables"]["EFLX_LH_TOT"]["NSE_median"] == pytest.approx(sub.NSE.median())
    assert not (tmp_path / "ev" / "hydrographs.png").exists()


def test_evaluate_missing_run_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
