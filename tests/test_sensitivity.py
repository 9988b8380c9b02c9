"""Sobol indices: the estimator on the Ishigami function (analytic values), against SALib, and
`esm-emu sensitivity RUN_DIR` on a trained GP (real subprocess)."""
from __future__ import annotations

import atexit
import csv
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from esm_emu.sensitivity import sobol_indices
from tests.hostile import Case, check_refused, run_cli

A, B = 7.0, 0.1
# Ishigami & Homma (1990); analytic indices e.g. in Saltelli et al. (2008), Global Sensitivity Analysis, 4.6
V = A ** 2 / 8 + B * math.pi ** 4 / 5 + B ** 2 * math.pi ** 8 / 18 + 0.5
V1 = 0.5 * (1 + B * math.pi ** 4 / 5) ** 2
V2 = A ** 2 / 8
V13 = B ** 2 * math.pi ** 8 * (1 / 18 - 1 / 50)
S1_TRUE = np.array([V1 / V, V2 / V, 0.0])
ST_TRUE = np.array([(V1 + V13) / V, V2 / V, V13 / V])


def ishigami(u):
    x = -math.pi + 2 * math.pi * u
    return (np.sin(x[:, 0]) + A * np.sin(x[:, 1]) ** 2 + B * x[:, 2] ** 4 * np.sin(x[:, 0]))[:, None]


def test_ishigami_analytic_indices_inside_bootstrap_intervals():
    res = sobol_indices(ishigami, 3, n=8192, n_boot=200, seed=1)
    np.testing.assert_allclose(res["S1"][0], S1_TRUE, atol=0.03)
    np.testing.assert_allclose(res["ST"][0], ST_TRUE, atol=0.03)
    for key, true in (("S1", S1_TRUE), ("ST", ST_TRUE)):
        lo, hi = res[key + "_lo"][0], res[key + "_hi"][0]
        assert np.all(lo - 0.01 <= true) and np.all(true <= hi + 0.01), (key, lo, hi, true)
        assert np.all(hi - lo < 0.1)


def test_agrees_with_salib_on_the_same_function():
    salib = pytest.importorskip("SALib.analyze.sobol")
    from SALib.sample import sobol as sobol_sample

    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": [[0, 1]] * 3}
    u = sobol_sample.sample(problem, 4096, calc_second_order=False, seed=2)
    si = salib.analyze(problem, ishigami(u)[:, 0], calc_second_order=False, seed=2)
    ours = sobol_indices(ishigami, 3, n=4096, n_boot=100, seed=2)
    np.testing.assert_allclose(ours["S1"][0], si["S1"], atol=0.04)
    np.testing.assert_allclose(ours["ST"][0], si["ST"], atol=0.04)


_TRAINED: list[Path] = []  # the toy GP run, trained once per test process and copied into each test's folder


def _gp_run(tmp):
    if not _TRAINED:
        src = Path(tempfile.mkdtemp(prefix="esm_emu_sobol_gp_"))
        atexit.register(shutil.rmtree, src, True)
        x = np.random.default_rng(0).uniform(0, 1, (60, 3))
        y = np.stack([np.sin(3 * x[:, 0]) + 0.3 * x[:, 1], x[:, 2] ** 2], 1)
        xr.Dataset({"theta": (("member", "param"), x), "y": (("member", "output"), y),
                    "theta_min": ("param", np.zeros(3)), "theta_max": ("param", np.ones(3))},
                   coords={"member": [f"M{i:03d}" for i in range(60)], "param": ["a", "b", "c"],
                           "output": ["f", "g"]}).to_netcdf(src / "store.nc")
        cfg = {"emulator": {"store": str(src / "store.nc"), "run_dir": str(src / "run"),
                            "model": {"name": "gp", "fit_steps": 80, "restarts": 1},
                            "train": {"threads": 1}, "evaluate": {"at_end": False}}}
        (src / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        r = run_cli(["train", src / "cfg.yaml", "--quiet"])
        assert r.returncode == 0, r.stderr
        _TRAINED.append(src)
    shutil.copytree(_TRAINED[0] / "run", tmp / "run")
    return tmp / "run"


def test_sensitivity_command_on_a_trained_gp(tmp_path):
    run = _gp_run(tmp_path)
    r = run_cli(["sensitivity", run, "--samples", "1024", "--bootstrap", "50"])
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((run / "sensitivity" / "sobol.csv").open()))
    st = {(row["output"], row["param"]): float(row["ST"]) for row in rows}
    assert len(rows) == 6
    # f depends on a (mostly) and b, not c; g on c only
    assert st[("f", "a")] > 0.8 and st[("f", "c")] < 0.05 and st[("g", "c")] > 0.9 and st[("g", "a")] < 0.05
    assert all(float(row["ST_lo"]) <= float(row["ST"]) <= float(row["ST_hi"]) for row in rows)
    assert (run / "sensitivity" / "sobol.png").stat().st_size > 1000


def test_emulator_draws_widen_the_intervals_by_the_emulators_own_error(tmp_path):
    """`--emulator-draws K`: the indices of K posterior draws of the GP. Its intervals hold the Monte
    Carlo error and the emulator's, so they are at least as wide as the predictive mean's, and the
    indices stay those of the function (the draws agree with the mean where the data constrain it)."""
    run = _gp_run(tmp_path)
    base = ["sensitivity", run, "--samples", "512", "--bootstrap", "40", "--no-plots"]
    r = run_cli([*base, "--out", tmp_path / "mean"])
    assert r.returncode == 0, r.stderr
    r = run_cli([*base, "--out", tmp_path / "draws", "--emulator-draws", "16"])
    assert r.returncode == 0, r.stderr
    rows = {}
    for k in ("mean", "draws"):
        rows[k] = {(w["output"], w["param"]): {c: float(w[c]) for c in ("ST", "ST_lo", "ST_hi")}
                   for w in csv.DictReader((tmp_path / k / "sobol.csv").open())}
    width = {k: np.array([v["ST_hi"] - v["ST_lo"] for v in rows[k].values()]) for k in rows}
    assert np.median(width["draws"] / np.maximum(width["mean"], 1e-12)) > 1.0
    assert all(abs(rows["draws"][key]["ST"] - rows["mean"][key]["ST"]) < 0.1 for key in rows["mean"])
    meta = json.loads((tmp_path / "draws" / "sobol.json").read_text())
    assert meta["emulator_draws"] == 16 and "emulator" in meta["intervals"]


@pytest.mark.parametrize("case", [
    Case("not a run directory", lambda t: ["sensitivity", t], mentions=["best.pt"]),
    Case("unknown output", lambda t: ["sensitivity", _gp_run(t), "--outputs", "NOPE"], mentions=["NOPE"],
         outputs=["run/sensitivity"]),
    Case("negative emulator draws", lambda t: ["sensitivity", _gp_run(t), "--emulator-draws", "-1"],
         mentions=["--emulator-draws"], outputs=["run/sensitivity"]),
], ids=str)
def test_bad_sensitivity_input_refused(case, tmp_path):
    check_refused(case, tmp_path)
