"""The quickstart chain end to end at toy size: report, CTSM files, resume after the last stage."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from esm_emu.pipeline import STAGES, default_config, run_quickstart
from ppe_ingest.base.config import read_yaml, validate

TINY = """
simulate:
  case: tiny
  n_members: 6
  seed: 0
  params: [fff, FMAX, hksat_sf]
  n_gridcells: 12
  n_years: 3
  spinup_years: 1
  truth: {n_obs_sites: 6, variables: [QRUNOFF, EFLX_LH_TOT]}
ingest:
  split: {val_members: 1, test_members: 1, val_gridcells: 1, test_gridcells: 2, test_years: 1}
emulator:
  store: unused.nc
  model: {name: lstm, hidden: 16, embed: 8}
  data: {window: 200, batch_size: 8}
  train: {max_steps: 12, val_every: 6, checkpoint_every: 6, warmup_steps: 2, ensemble: 2}
  evaluate: {plots: false}
inverse:
  method: g_z                 # the quickstart's (auto would calibrate 6 sites one by one)
  params: [fff, FMAX, hksat_sf]
  variables: [QRUNOFF]
  train_period: {start: 2000, end: 2001}
  test_period: {start: 2002, end: 2002}
  clusters: 2
  kgssl: {steps: 5, hidden: 8, embedding: 4, window_days: 200}
  dpl: {steps: 5, warmup_days: 60}
  uncertainty: {ensemble: 2, mc_samples: 2}
  waves: {count: 1, members: 3, train_steps: 4, dpl_steps: 3}
"""


def test_shipped_quickstart_config_validates():
    from esm_emu.inverse.config import SCHEMA as INV
    from esm_emu.training.config import SCHEMA as EMU
    from ppe_ingest.ingest.config import INGEST_SCHEMA
    from ppe_ingest.simulator.config import SCHEMA as SIM

    raw = read_yaml(default_config())
    for name, schema in (("simulate", SIM), ("ingest", INGEST_SCHEMA), ("emulator", EMU), ("inverse", INV)):
        section = dict(raw[name])
        if "store" in section:  # the quickstart points this at its own store
            section["store"] = str(default_config())
        validate(section, schema, source="quickstart.yaml", base_dir=default_config().parent)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    d = tmp_path_factory.mktemp("qs")
    cfg = d / "tiny.yaml"
    cfg.write_text(TINY)
    report = run_quickstart(d / "out", config=cfg, progress=False)
    return d / "out", cfg, report


def test_report_has_every_figure_the_issue_names(quick):
    out, _, report = quick
    on_disk = json.loads((out / "report" / "metrics.json").read_text())
    assert on_disk["parameter_recovery"].keys() >= {"observed", "unobserved"}
    for where in ("observed", "unobserved"):
        for p in ("fff", "FMAX", "hksat_sf"):
            assert {"r", "rmse", "coverage"} <= set(on_disk["parameter_recovery"][where][p])
    assert set(on_disk["skill_held_out_years"]) >= {"default", "inferred", "truth"}
    assert np.isfinite(on_disk["skill_held_out_years"]["truth"]["QRUNOFF"]["nse_median"])
    assert set(on_disk["skill_held_out_years_true_model"]) >= {"default", "inferred", "truth", "reachable_gain_share"}
    for p in ("fff", "FMAX", "hksat_sf"):
        assert isinstance(on_disk["identifiability"][p]["identified"], bool)
    assert np.isfinite(on_disk["skill_held_out_years"]["inferred"]["QRUNOFF"]["nse_median"])
    assert set(on_disk["wall_s"]) >= set(STAGES[:-1]) and on_disk["wall_s"]["total"] > 0
    assert on_disk["emulator"], "emulator skill on held-out splits is missing"
    assert list((out / "report").glob("*.png")), "no plots in the report folder"


def test_waves_grow_the_store_and_report_each_wave(quick):
    out, _, report = quick
    with xr.open_dataset(out / "store.nc") as st:
        assert st.sizes["member"] == 6 + 3 and [str(m) for m in st["member"].values[-3:]] == [
            "WA0001", "WA0002", "WA0003"]
    assert (out / "waves" / "1" / "ppe" / "RUN_WAVE.md").is_file()
    for k in ("0", "1"):
        w = report["waves"][k]
        assert np.isfinite(w["skill_held_out_years"]["inferred"]["QRUNOFF"]["nse_median"])
        assert {"r", "coverage"} <= set(w["parameter_recovery"]["unobserved"]["fff"])
    # the top level describes the final wave
    assert report["parameter_recovery"] == report["waves"]["1"]["parameter_recovery"]
    assert [report["waves"][k]["ppe_members"] for k in ("0", "1")] == [6, 9]
    from esm_emu.pipeline import summary_lines

    lines = summary_lines(report)  # the terminal says what each wave bought
    assert any(x.startswith("  wave 0 (6 PPE members): QRUNOFF held-out NSE") for x in lines), lines
    assert any(x.startswith("  wave 1 (9 PPE members)") and "r unobserved: fff" in x for x in lines), lines
    # the wave's inversion started from the first one's networks, for waves.dpl_steps steps
    assert (out / "inverse" / "inverse_state.pt").is_file()
    wave = json.loads((out / "waves" / "1" / "inverse" / "metrics.json").read_text())
    assert wave["warm_start"]["dpl_steps"] == 3
    assert all(len(h) == 3 for h in wave["training"]["dpl_loss"])


def test_the_summary_reads_an_undefined_correlation_as_not_available():
    """A parameter returned to its prior mean everywhere has no r (one value everywhere: metrics.json null);
    the run's closing lines say n/a instead of failing at the end of a finished run."""
    from esm_emu.pipeline import summary_lines

    rec = {"fff": {"r": None, "coverage": 1.0}, "hksat_sf": {"r": 0.91, "coverage": None}}
    wave = {"parameter_recovery": {"unobserved": rec}}
    report = {"parameter_recovery": {"unobserved": rec}, "wall_s": {"total": 3.0}, "waves": {"0": wave, "1": wave}}
    lines = summary_lines(report)
    assert any("fff" in x and "n/a" in x and "holds 100%" in x for x in lines), lines
    assert any("hksat_sf" in x and "0.910" in x and "holds" not in x for x in lines), lines
    assert any(x.startswith("  wave 1") and "fff n/a" in x for x in lines), lines


def test_ctsm_files_carry_the_inferred_map(quick):
    out, _, report = quick
    pmap = xr.load_dataset(out / "waves" / "1" / "inverse" / "parameter_map.nc")  # the final wave's
    fs = xr.load_dataset(next((out / "ctsm").glob("surfdata_*.nc")))
    np.testing.assert_allclose(fs["FMAX"].values, pmap["theta"].sel(param="FMAX").values, rtol=1e-6)
    clusters = sorted((out / "ctsm").glob("paramfile_default_cluster*.nc"))
    assert len(clusters) == len(np.unique(pmap["cluster"].values)) >= 1
    for k, path in enumerate(clusters):
        with xr.open_dataset(path) as pf:
            assert float(pf["fff"]) == pytest.approx(float(pmap["theta_cluster"].sel(param="fff").isel(cluster_id=k)))


def test_rerun_continues_after_the_last_finished_stage(quick, capsys):
    out, cfg, _ = quick
    stamp = (out / "inverse" / "parameter_map.nc").stat().st_mtime_ns
    run_quickstart(out, config=cfg, progress=False)
    printed = capsys.readouterr().out
    for name in (*STAGES[:-1], "wave-1"):
        assert f"[{name}] already done" in printed
    assert (out / "inverse" / "parameter_map.nc").stat().st_mtime_ns == stamp


def test_stop_after_splits_the_run_and_the_next_call_continues(tmp_path, capsys):
    """HPC users run simulate+ingest on CPU nodes, train on a GPU node, invert back on CPUs."""
    from esm_emu.pipeline import run_pipeline
    from ppe_ingest.base.errors import UserError

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("count: 1", "count: 0"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="not a stage"):
        run_pipeline(cfg, out, stop_after="inverse", progress=False)
    assert not out.exists()  # refused before any work
    done = run_pipeline(cfg, out, stop_after="ingest", progress=False)
    assert list(done) == ["simulate", "ingest"] and (out / "store.nc").exists()
    assert not (out / "emulator").exists()
    done = run_pipeline(cfg, out, stop_after="train", progress=False)
    assert list(done) == ["simulate", "ingest", "train"] and (out / "emulator" / "best.pt").exists()
    assert "[ingest] already done" in capsys.readouterr().out
    assert not (out / "inverse").exists()
