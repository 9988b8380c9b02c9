"""The calibrated predictive spread (esm_emu/spread.py): a too-narrow members' spread is raised to
cover held-out data at the nominal rate; the calibration travels in best.pt and the TorchScript
export; every consumer reads the same std; a checkpoint from before loads uncalibrated."""
import json
import warnings

import numpy as np
import pytest
import torch
from emu_store import make_store, write_config
from hostile import Case, check_refused

from esm_emu.checkpoint import read_torch_file, save_checkpoint
from esm_emu.cli import main
from esm_emu.emulator import Emulator, EmulatorEnsemble, emulator_from_payload, load_emulator
from esm_emu.forward import EmulatorForward
from esm_emu.inverse.trust import spread_method
from esm_emu.normalize import Normalizer, Scaler
from esm_emu.spread import FORM, calibrated_std, coverage, fit_calibration
from esm_emu.training.config import MODEL
from ppe_ingest.base.config import validate

NOMINAL = {1.6449: 0.900, 2.0: 0.954}


def _synthetic(rng, n, T, a, b, c):
    """Series whose error is known: sigma^2 = a spread^2 + b + c mean^2 (the spread alone far too narrow)."""
    mean = rng.gamma(2.0, 1.0, (n, T, 1))
    spread = rng.uniform(0.0, 0.3, (n, T, 1))
    sigma = np.sqrt(a * spread ** 2 + b + c * mean ** 2)
    return mean, spread, mean + sigma * rng.standard_normal((n, T, 1))


@pytest.mark.statistical
def test_fit_raises_a_too_narrow_spread_to_the_nominal_coverage_on_held_out_draws():
    rng = np.random.default_rng(0)
    truth = dict(a=16.0, b=0.04, c=0.09)
    val = _synthetic(rng, 60, 200, **truth)
    val[2][0, :20] = np.nan  # gaps are not scored
    test = _synthetic(rng, 60, 200, **truth)  # held out: never seen by the fit
    entry = fit_calibration(*val, ["QRUNOFF"])
    assert entry["form"] == FORM and entry["unfitted"] == []
    got = {k: entry[k][0] for k in ("a", "b", "c")}
    for k, v in truth.items():
        assert got[k] == pytest.approx(v, rel=0.15), (k, got)
    mean, spread, obs = test
    sd = calibrated_std(mean, spread, got["a"], got["b"], got["c"])
    for z, nominal in NOMINAL.items():
        assert coverage(mean, spread, obs, z) < 0.5  # the raw spread covers far too little
        assert coverage(mean, sd, obs, z) == pytest.approx(nominal, abs=0.015)
    # a term the data do not need goes to (nearly) zero instead of inflating the band
    pure = _synthetic(rng, 60, 200, a=4.0, b=0.01, c=0.0)
    e2 = fit_calibration(*pure, ["EFLX_LH_TOT"])
    assert e2["c"][0] < 1e-3 and e2["a"][0] == pytest.approx(4.0, rel=0.15)
    # too few finite days: that variable keeps the raw spread and the entry says so
    short = tuple(x[:1, :10] for x in val)
    e3 = fit_calibration(*short, ["SOILWATER_10CM"])
    assert e3["unfitted"] == ["SOILWATER_10CM"] and (e3["a"], e3["b"], e3["c"]) == ([1.0], [0.0], [0.0])


def _norm(n_resp):
    s = Scaler(np.zeros(1), np.ones(1), [False], 1e-6)
    return Normalizer(s, s, s, Scaler(np.zeros(n_resp), np.ones(n_resp), [False] * n_resp, 1e-6))


def _ensemble():
    cfg = validate({"name": "lstm", "hidden": 4, "embed": 2}, MODEL)
    members = []
    for k in range(2):
        torch.manual_seed(k)
        members.append(Emulator.build(cfg, _norm(2), ["RAIN"], ["PCT_SAND"], ["fff"],
                                      ["EFLX_LH_TOT", "SOILWATER_10CM"]))
    return EmulatorEnsemble(members).eval()


def _x(B=3, T=30):
    g = torch.Generator().manual_seed(3)
    return torch.rand(B, T, 1, generator=g), torch.rand(B, 1, generator=g), torch.rand(B, 1, generator=g)


CAL = {"form": FORM, "a": [9.0, 4.0], "b": [0.01, 0.02], "c": [0.05, 0.0],
       "response_names": ["EFLX_LH_TOT", "SOILWATER_10CM"], "validation_series": 7}


def test_payload_round_trips_through_best_pt_and_the_export(tmp_path):
    ens = _ensemble()
    x = _x()
    raw_mean, raw = ens.predict_with_spread(*x)  # not calibrated: the members' std
    ys = torch.stack([m(*x) for m in ens.members])
    torch.testing.assert_close(raw, ys.std(0, unbiased=False))
    ens.calibration.load(CAL, ens.response_names)
    mean, std = ens.predict_with_spread(*x)
    a, b, c = (torch.tensor(CAL[k]) for k in ("a", "b", "c"))
    torch.testing.assert_close(std, torch.sqrt(a * raw ** 2 + b + c * mean ** 2))
    assert (std > 2 * raw).all()
    # best.pt: saved and loaded as training does (weights_only), same numbers
    ck = save_checkpoint(tmp_path / "best.pt", {"emulator": ens.payload(), "config": {}})
    back = load_emulator(ck)
    assert back.calibration.fitted and back.calibration.info["validation_series"] == 7
    torch.testing.assert_close(back.predict_with_spread(*x)[1], std)
    # the inverse's forward model: calibrated std; its trust region: the calibrated disagreement only
    fwd = EmulatorForward(back, ck)
    assert fwd.has_spread
    torch.testing.assert_close(fwd.predict_with_spread(*x)[1], std)
    fn = spread_method(fwd)
    assert fn.__name__ == "predict_with_disagreement"
    torch.testing.assert_close(fn(*x)[1], torch.sqrt(a) * raw)
    # TorchScript export: forward_with_spread gives the same calibrated std; the metadata says so
    out = tmp_path / "emu.pt"
    assert main(["export", str(ck), "--out", str(out)]) == 0
    extra = {"esm_emu.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(out), _extra_files=extra)
    m, s = ts.forward_with_spread(*x)
    torch.testing.assert_close(s, std, rtol=1e-5, atol=1e-7)
    assert json.loads(extra["esm_emu.json"])["spread_calibration"]["a"] == CAL["a"]
    # a single calibrated network: no members' spread, the floor sqrt(b + c mean^2) only
    one = ens.members[0]
    one.calibration.load(CAL, one.response_names)
    single = emulator_from_payload(one.payload())
    y, sd1 = single.predict_with_spread(*x)
    torch.testing.assert_close(sd1, torch.sqrt(b + c * y ** 2))
    assert (single.predict_with_disagreement(*x)[1] == 0).all()


def test_a_checkpoint_from_before_loads_uncalibrated_and_a_bad_entry_is_one_line(tmp_path):
    ens = _ensemble()
    x = _x()
    p = ens.payload()
    assert "spread_calibration" not in p  # nothing fitted: the payload is the old one
    old = save_checkpoint(tmp_path / "old.pt", {"emulator": p})
    back = load_emulator(old)
    assert not back.calibration.fitted and "none" in back.calibration.describe()
    torch.testing.assert_close(back.predict_with_spread(*x)[1], ens.predict_with_spread(*x)[1])
    bad = save_checkpoint(tmp_path / "bad.pt", {"emulator": {**p, "spread_calibration": {**CAL, "a": [1.0]}}})
    check_refused(Case("short calibration", lambda t: ["export", str(bad), "--out", str(t / "o.pt")],
                       mentions=("bad.pt", "spread_calibration.a"), outputs=("o.pt",), inputs=("bad.pt",)),
                  tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spread")
    store = make_store(tmp / "store.nc", n_member=8, n_grid=5, n_years=2)
    cfg = write_config(tmp, store, train={"max_steps": 6, "ensemble": 2})
    assert main(["train", str(cfg), "--quiet", "--no-eval"]) == 0
    return tmp / "run", store


def test_training_stores_the_calibration_and_evaluate_reports_coverage_before_and_after(trained, tmp_path, capsys):
    run, _ = trained
    meta = read_torch_file(run / "best.pt")
    cal = meta["emulator"]["spread_calibration"]
    assert cal["form"] == FORM and cal["members"] == 2 and cal["validation_series"] > 0
    assert set(cal["validation_coverage"]) == {"QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"}
    assert load_emulator(run).calibration.fitted
    # a run from before: the entry removed, evaluate says none; --calibrate-spread fits and stores it
    old = tmp_path / "old"
    old.mkdir()
    del meta["emulator"]["spread_calibration"]
    save_checkpoint(old / "best.pt", meta)
    assert main(["evaluate", str(old), "--no-plots"]) == 0
    g = json.loads((old / "eval" / "metrics.json").read_text())["groups"]["members"]
    assert g["spread_calibration"].startswith("none")
    assert g["variables"]["QRUNOFF"]["coverage"]["calibrated"] is None
    capsys.readouterr()
    assert main(["evaluate", str(old), "--no-plots", "--calibrate-spread"]) == 0
    out = capsys.readouterr().out
    assert "spread calibrated on" in out and "-> calibrated" in out
    again = read_torch_file(old / "best.pt")["emulator"]["spread_calibration"]
    np.testing.assert_allclose(again["a"], cal["a"], rtol=1e-6)  # the same fit as at the end of training
    g = json.loads((old / "eval" / "metrics.json").read_text())["groups"]["members"]
    assert g["spread_calibration"].startswith(FORM)
    for v, d in g["variables"].items():
        c = d["coverage"]
        assert set(c["raw"]) == set(c["calibrated"]) == {"1.64", "2"}
        assert c["calibrated"]["2"] >= c["raw"]["2"], v
