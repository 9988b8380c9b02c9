"""History matching: implausibility and NROY on a toy problem with a known answer, and the next
wave written in the PPE layout, read back by `esm-emu ingest` with its design values."""
from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _ingest_ppe import CASE, hist_values, write_hist

from esm_emu.history_match import implausibility
from tests.hostile import Case, check_refused, run_cli

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "configs" / "params_hydrology.csv"
LO, HI = np.array([0.02, 0.1]), np.array([5.0, 10.0])  # fff, hksat_sf bounds in the table


def test_implausibility_formula():
    imp = implausibility(np.array([[1.0, 2.0]]), np.array([[0.5, 0.0]]), np.array([2.0, 2.0]),
                         np.array([0.25, 1.0]), np.array([0.25, 0.0]))
    np.testing.assert_allclose(imp, [[1.0, 0.0]])


_TRAINED: list[Path] = []  # the toy run, trained once per test process and copied into each test's folder


def _toy_run(tmp: Path) -> Path:
    """A GP of two outputs: a = s_fff (the unit-cube position of fff), b = s_hksat_sf."""
    if not _TRAINED:
        src = Path(tempfile.mkdtemp(prefix="esm_emu_toy_gp_"))
        atexit.register(shutil.rmtree, src, True)
        s = np.random.default_rng(0).uniform(0, 1, (50, 2))
        xr.Dataset({"theta": (("member", "param"), LO + (HI - LO) * s), "y": (("member", "output"), s),
                    "theta_min": ("param", LO), "theta_max": ("param", HI)},
                   coords={"member": [f"M{i:03d}" for i in range(50)], "param": ["fff", "hksat_sf"],
                           "output": ["a", "b"]}, attrs={"source_table": str(TABLE)}).to_netcdf(src / "store.nc")
        cfg = {"emulator": {"store": str(src / "store.nc"), "run_dir": str(src / "run"),
                            "model": {"name": "gp", "fit_steps": 60, "restarts": 1},
                            "train": {"threads": 1}, "evaluate": {"at_end": False}}}
        (src / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        r = run_cli(["train", src / "cfg.yaml", "--quiet"])
        assert r.returncode == 0, r.stderr
        _TRAINED.append(src)
    shutil.copytree(_TRAINED[0] / "run", tmp / "run")
    shutil.copyfile(_TRAINED[0] / "store.nc", tmp / "store.nc")
    (tmp / "targets.yaml").write_text(yaml.safe_dump(
        {"cutoff": 3.0, "targets": {"a": {"value": 0.5, "sd": 0.05, "source": "illustrative (test)"}}}))
    return tmp / "run"


def test_nroy_on_a_toy_problem_and_wave_round_trips_through_ingest(tmp_path, shared_data):
    base = shared_data("ppe", "paramfiles", "OAAT0000.nc")
    run = _toy_run(tmp_path)
    out = tmp_path / "hm"
    r = run_cli(["history-match", run, "--targets", tmp_path / "targets.yaml", "--samples", "20000",
                 "--out", out, "--wave", "5", "--prefix", "WAVE", "--base-paramfile", base, "--seed", "4"])
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "history_match.json").read_text())
    # |0.5 - s_fff| <= 3 sqrt(0.05^2 + small emulator variance): s_fff in about [0.35, 0.65]
    assert 0.28 < res["nroy_fraction"] < 0.34, res["nroy_fraction"]
    rf = res["param_ranges"]["fff"]
    assert 0.33 < rf["s_min"] < 0.37 and 0.63 < rf["s_max"] < 0.67, rf
    rh = res["param_ranges"]["hksat_sf"]
    assert rh["s_min"] < 0.01 and rh["s_max"] > 0.99  # b is not targeted: nothing ruled out along hksat_sf
    ranges = pd.read_csv(out / "nroy_ranges.csv", index_col=0)
    assert ranges.loc["fff", "nroy_min"] == pytest.approx(LO[0] + (HI[0] - LO[0]) * rf["s_min"], rel=1e-5)

    wave = out / "wave"
    design = pd.read_csv(wave / "design.csv", index_col=0)
    assert list(design.index) == [f"WAVE{i:04d}" for i in range(1, 6)]
    s_fff = (design["fff"] - LO[0]) / (HI[0] - LO[0])
    assert ((s_fff > 0.33) & (s_fff < 0.67)).all()  # every wave member inside NROY
    # the wave's members run (here: history files written for them), then ingest reads them back
    lat, lon = np.linspace(30, 45, 3), np.linspace(250, 280, 3)
    (wave / "hist").mkdir()
    for i, m in enumerate(design.index):
        for y in range(3):
            vals = {v: hist_values(v, i, float(design.loc[m, "fff"]), y, 3)
                    for v in ("RAIN", "TBOT", "FSDS", "QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM")}
            write_hist(wave / "hist" / f"{CASE}_{m}.clm2.h1.{2000 + y}-01-01-00000.nc", vals, 2000, 2000 + y,
                       lat, lon)
    r = run_cli(["ingest", wave, "--out", tmp_path / "wave_store.nc", "--no-progress"])
    assert r.returncode == 0, r.stderr
    st = xr.open_dataset(tmp_path / "wave_store.nc")
    th = st["theta"].to_pandas()
    for p in ("fff", "hksat_sf"):
        np.testing.assert_allclose(th.loc[list(design.index), p].values, design[p].values, rtol=1e-6)


def _targets(tmp, body):
    _toy_run(tmp)
    (tmp / "bad.yaml").write_text(body)
    return ["history-match", tmp / "run", "--targets", tmp / "bad.yaml", "--samples", "100"]


@pytest.mark.parametrize("case", [
    Case("unknown output", lambda t: _targets(t, "targets:\n  NOPE: {value: 1, sd: 1, source: x}\n"),
         mentions=["NOPE"], inputs=["bad.yaml"], outputs=["run/history_match"]),
    Case("negative sd", lambda t: _targets(t, "targets:\n  a: {value: 1, sd: -1, source: x}\n"),
         mentions=["targets.a.sd", "-1"], inputs=["bad.yaml"], outputs=["run/history_match"]),
    Case("no source", lambda t: _targets(t, "targets:\n  a: {value: 1, sd: 1}\n"),
         mentions=["targets.a", "source"], inputs=["bad.yaml"], outputs=["run/history_match"]),
    Case("python tag", lambda t: _targets(t, "targets: !!python/object/apply:os.system ['true']\n"),
         mentions=["bad.yaml"], inputs=["bad.yaml"], outputs=["run/history_match"]),
], ids=str)
def test_bad_targets_refused(case, tmp_path):
    check_refused(case, tmp_path)
