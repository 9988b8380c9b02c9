"""Emulator ensembles (train.ensemble) and QRUNOFF = QOVER + QDRAI (model.runoff: components):
mean and spread, the water balance of the runoff partition, export, the forward model."""
import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from emu_store import make_store, write_config

from esm_emu.cli import main
from esm_emu.emulator import Emulator, EmulatorEnsemble, load_emulator
from esm_emu.forward import EmulatorForward
from esm_emu.normalize import Normalizer, Scaler
from esm_emu.training.config import MODEL
from ppe_ingest.base.config import validate

BALANCE_RTOL = 1e-5  # QRUNOFF - (QOVER + QDRAI), relative to QRUNOFF (float32 round-off)
RESP = ["QRUNOFF", "QOVER", "QDRAI", "EFLX_LH_TOT"]


def _store_with_components(path):
    """The test store with QOVER and QDRAI (a wetness-dependent split of QRUNOFF) and their statistics."""
    make_store(path.with_suffix(".base.nc"), n_member=8, n_grid=5, n_years=2)
    with xr.open_dataset(path.with_suffix(".base.nc")) as ds:
        ds = ds.load()
    q = ds["QRUNOFF"]
    frac = (ds["SOILWATER_10CM"] / float(ds["SOILWATER_10CM"].max())) ** 2
    ds["QOVER"] = (q * frac).astype(np.float32).assign_attrs(units="mm/s")
    ds["QDRAI"] = (q - ds["QOVER"]).astype(np.float32).assign_attrs(units="mm/s")
    tr = dict(member=ds.split_member == 0, gridcell=ds.split_gridcell == 0, time=ds.split_time == 0)
    eps = float(ds.attrs["log_eps"])
    extra = {v: np.log(np.maximum(ds[v].isel(**{k: np.flatnonzero(x.values) for k, x in tr.items()}).values, 0) + eps)
             for v in ("QOVER", "QDRAI")}
    names = [str(n) for n in ds["norm_var"].values] + list(extra)
    mean = np.concatenate([ds["norm_mean"].values, [np.nanmean(x) for x in extra.values()]])
    std = np.concatenate([ds["norm_std"].values, [np.nanstd(x) for x in extra.values()]])
    ds = ds.drop_vars(["norm_mean", "norm_std", "norm_var"]).assign_coords(norm_var=names)
    ds["norm_mean"], ds["norm_std"] = ("norm_var", mean), ("norm_var", std)
    ds.attrs["log_transform_vars"] = "QRUNOFF QOVER QDRAI"
    ds.to_netcdf(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two members (components, NSE* loss, bootstrapped gridcells) trained and evaluated once."""
    tmp = tmp_path_factory.mktemp("ens")
    store = _store_with_components(tmp / "store.nc")
    cfg = write_config(tmp, store, model={"runoff": "components"},
                       train={"max_steps": 12, "ensemble": 2, "bootstrap": True, "loss": "nse"},
                       evaluate={"at_end": True, "plots": False, "max_series": 6})
    cfg_text = cfg.read_text().replace("store:", "responses: [QRUNOFF, QOVER, QDRAI, EFLX_LH_TOT]\n  store:")
    cfg.write_text(cfg_text)
    assert main(["train", str(cfg), "--quiet"]) == 0
    return tmp / "run", store


def _inputs(B=3, T=40):
    g = torch.Generator().manual_seed(1)
    forcing = torch.rand(B, T, 8, generator=g) * torch.tensor([5e-5, 1e-6, 30, 300, 300, 0.01, 1e5, 5]) + \
        torch.tensor([0, 0, 270, 0, 200, 0, 0, 0])
    return forcing, torch.tensor([[40.0, 0.3]] * B), torch.tensor([[1.0, 5.0]] * B)


def test_ensemble_returns_the_mean_and_the_spread_of_its_members(run):
    run_dir, _ = run
    ens = load_emulator(run_dir)
    assert isinstance(ens, EmulatorEnsemble) and ens.n_members == 2
    members = [load_emulator(run_dir / f"member{k}") for k in range(2)]
    x = _inputs()
    ys = torch.stack([m(*x) for m in members])
    mean, std = ens.predict_with_spread(*x)
    torch.testing.assert_close(mean, ys.mean(0))
    raw = ys.std(0, unbiased=False)
    # training ends by calibrating the members' spread on validation series (esm_emu/spread.py)
    assert ens.calibration.fitted
    torch.testing.assert_close(std, ens.calibration.std(mean, raw))
    torch.testing.assert_close(ens.predict_with_disagreement(*x)[1], ens.calibration.disagreement(raw))
    torch.testing.assert_close(ens(*x), mean)
    assert (raw > 0).any()  # two seeds on two bootstrap samples do differ
    # the forward model gives the inverse the same mean and spread, differentiable in theta
    fwd = EmulatorForward(ens, run_dir / "best.pt")
    theta = x[2].clone().requires_grad_(True)
    m2, s2 = fwd.predict_with_spread(x[0], x[1], theta)
    torch.testing.assert_close(s2, std)
    (m2.sum() + s2.sum()).backward()
    assert fwd.has_spread and torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    # carrying the state between chunks equals one call
    a, s = ens(x[0][:, :25], x[1], x[2], return_state=True)
    b = ens(x[0][:, 25:], x[1], x[2], state=s)
    torch.testing.assert_close(torch.cat([a, b], 1), ens(*x), rtol=1e-4, atol=1e-6)


def test_runoff_components_close_the_water_balance(run):
    run_dir, _ = run
    ens = load_emulator(run_dir)
    assert ens.response_names == RESP and ens.core_names == ["QOVER", "QDRAI", "EFLX_LH_TOT"]
    for emu in (ens, *ens.members):
        y = emu(*_inputs()).detach()
        q, over, drai = y[..., 0], y[..., 1], y[..., 2]
        assert (over > 0).all() and (drai > 0).all()
        np.testing.assert_allclose(q.numpy(), (over + drai).numpy(), rtol=BALANCE_RTOL, atol=0)


def test_balance_holds_for_an_untrained_components_emulator():
    n = Normalizer(Scaler(np.zeros(1), np.ones(1), [False], 1e-6), Scaler(np.zeros(1), np.ones(1), [False], 1e-6),
                   Scaler(np.zeros(1), np.ones(1), [False], 1e-6),
                   Scaler([-12.0, -11.0], [2.0, 1.0], [True, True], 1e-8))
    emu = Emulator.build(validate({"name": "lstm", "hidden": 4, "embed": 2, "runoff": "components"}, MODEL), n,
                         ["RAIN"], ["PCT_SAND"], ["fff"], ["QRUNOFF"])
    assert emu.core_names == ["QOVER", "QDRAI"]
    y = emu(torch.rand(2, 30, 1), torch.rand(2, 1), torch.rand(2, 1))
    zn, _ = emu.forward_normalized(torch.rand(2, 30, 1), emu.conditioning(torch.rand(2, 1), torch.rand(2, 1)))
    assert y.shape == (2, 30, 1) and zn.shape == (2, 30, 2)


def test_export_carries_the_ensemble(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "emu.pt"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    extra = {"esm_emu.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["esm_emu.json"])
    assert meta["ensemble_members"] == 2 and meta["response_names"] == RESP
    ens = load_emulator(run_dir)
    x = _inputs()
    mean, std = ens.predict_with_spread(*x)
    m, s = ts.forward_with_spread(*x)
    torch.testing.assert_close(m, mean, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(s, std, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(ts(*x), mean, rtol=1e-5, atol=1e-9)
    y0, h, c = ts.initial_state(x[0][:, :25], x[1], x[2])
    y1, _, _ = ts.step(x[0][:, 25:], x[1], x[2], h, c)
    torch.testing.assert_close(torch.cat([y0, y1], 1), mean, rtol=1e-4, atol=1e-9)
    m = m.detach()
    np.testing.assert_allclose(m[..., 0], m[..., 1] + m[..., 2], rtol=BALANCE_RTOL)


def test_evaluation_reports_the_spread(run):
    run_dir, _ = run
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for group in ("members", "members_x_gridcells"):
        g = metrics["groups"][group]
        assert g["ensemble_members"] == 2
        for v in RESP:
            d = g["variables"][v]
            assert d["spread_median"] > 0 and 0 <= d["coverage_2sd"] <= 1
    log = (run_dir / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2 * 12  # both members' steps


def test_components_on_a_store_without_them_is_one_line(tmp_path, capsys):
    store = make_store(tmp_path / "plain.nc", n_member=6, n_grid=4, n_years=2)  # QRUNOFF only
    cfg = write_config(tmp_path, store, model={"runoff": "components"})
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "QOVER" in err and "runoff: components" in err
    assert not (tmp_path / "run" / "best.pt").exists()
    cfg = write_config(tmp_path, store, train={"ensemble": 0})
    assert main(["train", str(cfg)]) == 2
    assert "train.ensemble" in capsys.readouterr().err
