"""The exact ARD GP and the MLP ensemble kinds on toy functions with known answers, trained by
`esm-emu train` (real subprocess) and cross-validated by `--cv K`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from esm_emu.emulator import load_emulator
from esm_emu.export import export_torchscript
from esm_emu.models.gp import ExactGP
from esm_emu.training.cv import fold_indices
from tests.hostile import Case, check_refused, run_cli


def toy(x):
    """Two outputs: sin(3 x0) + x1^2 (x2 irrelevant) and 2 x2 - 1."""
    return np.stack([np.sin(3 * x[:, 0]) + x[:, 1] ** 2, 2 * x[:, 2] - 1], 1)


def write_store(path, n=60, seed=0):
    x = np.random.default_rng(seed).uniform(0, 1, (n, 3))
    xr.Dataset({"theta": (("member", "param"), x), "y": (("member", "output"), toy(x))},
               coords={"member": [f"M{i:03d}" for i in range(n)], "param": ["a", "b", "c"],
                       "output": ["f", "g"]}).to_netcdf(path)


def write_config(tmp, name="gp", **model):
    cfg = {"emulator": {"store": str(tmp / "store.nc"), "run_dir": str(tmp / "run"),
                        "model": {"name": name, "fit_steps": 80, "restarts": 2, **model},
                        "data": {"val_fraction": 0.1}, "train": {"seed": 3, "threads": 1},
                        "evaluate": {"at_end": False}}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "cfg.yaml"


def test_gp_kind_learns_toy_function_with_mean_and_variance(tmp_path):
    write_store(tmp_path / "store.nc")
    cfg = write_config(tmp_path)
    r = run_cli(["train", cfg, "--cv", "3", "--quiet"])
    assert r.returncode == 0, r.stderr
    cv = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert cv["kind"] == "gp" and cv["folds"] == 3 and cv["outputs"] == ["f", "g"]
    assert cv["r2"]["f"] > 0.97 and cv["r2"]["g"] > 0.99, cv["r2"]
    assert (tmp_path / "run" / "cv_predictions.nc").exists()

    emu = load_emulator(tmp_path / "run")
    xt = np.random.default_rng(9).uniform(0.05, 0.95, (200, 3))
    th = torch.tensor(xt, dtype=torch.float32, requires_grad=True)
    mean, var = emu.predict(th)
    yt = toy(xt)
    r2 = 1 - ((yt - mean.detach().numpy()) ** 2).sum(0) / ((yt - yt.mean(0)) ** 2).sum(0)
    assert r2.min() > 0.98, r2
    # the predictive standard deviation is of the size of the actual error, and grows off the design
    err = np.abs(yt - mean.detach().numpy())
    assert np.median(err[:, 0]) < 4 * np.median(np.sqrt(var.detach().numpy()[:, 0]))
    far_m, far = emu.predict(torch.tensor([[3.0, 3.0, 3.0]]))
    assert far[0, 0] > 10 * var.detach().mean(0)[0]
    # g = 2c - 1 is exactly linear and noise-free: the fitted linear mean carries it, the maximum-likelihood
    # GP on the residual is ~0, so off the design the prediction is right and the emulator says so
    assert abs(float(far_m[0, 1]) - 5.0) < 1e-3 + 4 * math.sqrt(float(far[0, 1]))
    # differentiable in theta: d mean_f / d a = 3 cos(3 a)
    mean[:, 0].sum().backward()
    want = 3 * np.cos(3 * xt[:, 0])
    assert np.corrcoef(th.grad[:, 0].numpy(), want)[0, 1] > 0.95
    # ARD: output f ignores c (long length scale); g = 2c - 1 is carried by the linear mean, on c alone
    ls = torch.exp(emu.core.log_ls).numpy() * emu.norm.theta.std.numpy()
    assert ls[0, 2] > 10 * ls[0, 0], ls
    w = emu.core.mean_w.abs().numpy()
    assert w[1, 2] > 10 * max(w[1, 0], w[1, 1]), w
    # exported TorchScript gives the same mean
    ts = torch.jit.load(str(export_torchscript(tmp_path / "run", tmp_path / "gp.pt")))
    x0 = torch.tensor(xt[:5], dtype=torch.float32)
    np.testing.assert_allclose(ts(x0).detach().numpy(), emu(x0).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_gp_core_noise_and_interpolation():
    """Noisy samples of a linear function: the fitted noise variance is near the true one."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(80, 2, generator=g, dtype=torch.float64)
    y = (x[:, :1] - 0.5) * 2 + 0.1 * torch.randn(80, 1, generator=g, dtype=torch.float64)
    gp = ExactGP(2, 1, restarts=1, fit_steps=100)
    gp.fit(x, y)
    sn = math.sqrt(float(torch.exp(gp.log_sn2)[0]))
    assert 0.06 < sn < 0.15, sn


def test_mlp_ensemble_kind_and_same_folds(tmp_path):
    write_store(tmp_path / "store.nc", n=80)
    cfg = write_config(tmp_path, "mlp_ensemble", fit_steps=600, members=4, hidden=32, layers=2)
    r = run_cli(["train", cfg, "--cv", "3", "--quiet"])
    assert r.returncode == 0, r.stderr
    cv = json.loads((tmp_path / "run" / "cv.json").read_text())
    assert cv["kind"] == "mlp_ensemble" and cv["r2"]["g"] > 0.9 and cv["r2"]["f"] > 0.7, cv["r2"]
    fold = xr.open_dataset(tmp_path / "run" / "cv_predictions.nc")["fold"].values
    want = fold_indices(80, 3, 3)
    assert all((np.flatnonzero(fold == i) == f).all() for i, f in enumerate(want))
    emu = load_emulator(tmp_path / "run")
    m, v = emu.predict(torch.rand(10, 3))
    assert m.shape == v.shape == (10, 2) and (v > 0).all()


@pytest.mark.parametrize("case", [
    Case("cv of a sequence kind", lambda t: (write_store(t / "store.nc"), write_config(t, "lstm"))[1:] and
         ["train", t / "cfg.yaml", "--cv", "3"], mentions=["--cv", "lstm"], inputs=["store.nc", "cfg.yaml"],
         outputs=["run/cv.json"]),
    Case("more folds than members", lambda t: (write_store(t / "store.nc", n=10), write_config(t))[1:] and
         ["train", t / "cfg.yaml", "--cv", "11"], mentions=["--cv", "11"], inputs=["store.nc", "cfg.yaml"],
         outputs=["run/cv.json"]),
    Case("unknown kernel", lambda t: (write_store(t / "store.nc"), write_config(t, kernel="cubic"))[1:] and
         ["train", t / "cfg.yaml"], mentions=["kernel", "cubic"], inputs=["store.nc", "cfg.yaml"],
         outputs=["run/best.pt"]),
], ids=str)
def test_bad_cv_input_refused(case, tmp_path):
    check_refused(case, tmp_path)


def test_boxcox_output_transform_round_trip_and_export(tmp_path):
    """A skewed negative output (like QHR): the Box-Cox transform inverts exactly, and the exported
    TorchScript applies it too."""
    x = np.random.default_rng(1).uniform(0, 1, (60, 3))
    # q: skewed and negative; h: of mixed sign (left as is); p: tiny positive values (GPP in gC/m2/s)
    # with a Box-Cox lambda far from 0, where float32 loses every digit unless the output is scaled first
    y = np.stack([-np.exp(4 * x[:, 0]) * 1e-6, x[:, 1] - 0.5, 1e-5 * (1 + x[:, 2]) ** 0.3], 1)
    xr.Dataset({"theta": (("member", "param"), x), "y": (("member", "output"), y)},
               coords={"member": [f"M{i:03d}" for i in range(60)], "param": ["a", "b", "c"],
                       "output": ["q", "h", "p"]}).to_netcdf(tmp_path / "store.nc")
    cfg = write_config(tmp_path, output_transform="boxcox")
    r = run_cli(["train", cfg, "--quiet"])
    assert r.returncode == 0, r.stderr
    emu = load_emulator(tmp_path / "run")
    tf = emu.out_tf
    assert tf.enabled.tolist() == [True, False, True] and tf.sign[0] == -1 and abs(tf.lam[2]) > 0.5
    yt = torch.tensor(y, dtype=torch.float32)
    np.testing.assert_allclose(tf.inverse(tf(yt)).numpy(), y, rtol=1e-4, atol=1e-12)
    xt = torch.tensor(np.random.default_rng(2).uniform(0.1, 0.9, (20, 3)), dtype=torch.float32)
    m, v = emu.predict(xt)
    assert (m[:, 0] < 0).all() and (v > 0).all()
    want = -np.exp(4 * xt[:, 0].numpy()) * 1e-6
    assert np.abs(m[:, 0].detach().numpy() / want - 1).max() < 0.05
    want_p = 1e-5 * (1 + xt[:, 2].numpy()) ** 0.3
    assert np.abs(m[:, 2].detach().numpy() / want_p - 1).max() < 0.01
    ts = torch.jit.load(str(export_torchscript(tmp_path / "run", tmp_path / "gp.pt")))
    np.testing.assert_allclose(ts(xt).detach().numpy(), emu(xt).detach().numpy(), rtol=1e-4, atol=1e-9)


def test_boxcox_negative_lambda_prediction_past_the_ceiling_stays_finite():
    """With lambda < 0 the Box-Cox transform is bounded above; an emulator prediction at or past that
    bound must back-transform to a finite value that grows with it (it gave inf, and a CV minimum of
    -inf), while values inside the training range invert exactly."""
    from esm_emu.models.tabular import OutputTransform

    y = 1.0 / np.random.default_rng(3).uniform(0.05, 1.0, (200, 1))  # right-skewed: lambda < 0
    tf = OutputTransform(1)
    tf.fit(y)
    assert tf.enabled.item() and tf.lam.item() < -0.1
    yt = torch.tensor(y, dtype=torch.float32)
    np.testing.assert_allclose(tf.inverse(tf(yt)).numpy(), y, rtol=1e-4)
    ceiling = -1.0 / tf.lam.item()
    t = torch.tensor([[ceiling * 0.999], [ceiling], [ceiling * 3.0]], dtype=torch.float32)
    back, slope = tf.inverse_and_slope(t)
    assert torch.isfinite(back).all() and torch.isfinite(slope).all()
    assert (back >= y.max()).all() and (torch.diff(back.ravel()) > 0).all()
    # a checkpoint saved before the ceiling loads (uncapped, as it was trained)
    old = {k: v for k, v in tf.state_dict().items() if k != "base_floor"}
    tf2 = OutputTransform(1)
    tf2.load_state_dict(old)
    assert tf2.base_floor.item() == 0.0 and tf2.lam.item() == tf.lam.item()


def test_boxcox_prediction_past_the_training_range_continues_smoothly():
    """A left-skewed output (lambda > 0, like EFLX_LH_TOT) has a Box-Cox floor: a prediction just
    under the training minimum back-transformed to ~0 with a huge variance. Past the training range
    the transform continues with its end value and slope (linearly above, log-linearly below, so a
    positive output stays positive): continuous, monotone and invertible there, unchanged inside."""
    from esm_emu.models.tabular import OutputTransform

    y = 50.0 * np.random.default_rng(5).uniform(0.3, 1.0, (300, 1)) ** 0.2
    tf = OutputTransform(1)
    tf.fit(y)
    lam = tf.lam.item()
    assert tf.enabled.item() and lam > 1.0
    yt = torch.tensor(y, dtype=torch.float32)
    np.testing.assert_allclose(tf.inverse(tf(yt)).numpy(), y, rtol=1e-5)
    floor = -1.0 / lam  # where the plain Box-Cox inverse reaches y = 0
    lo, hi = tf.t_lo.item(), tf.t_hi.item()
    t = torch.tensor([[floor - 0.5], [floor], [lo - 1e-3], [lo], [hi], [hi + 1e-3], [hi + 1.0]], dtype=torch.float32)
    back, slope = tf.inverse_and_slope(t)
    b = back.ravel().numpy()
    assert np.all(np.diff(b) > 0) and torch.isfinite(slope).all()
    assert abs(b[3] - y.min()) < 1e-3 * y.min() and abs(b[4] - y.max()) < 1e-3 * y.max()
    assert abs(b[2] - b[3]) < 1e-3 * slope[3].item() * 1.01  # continuous at the range's end
    assert b[1] > 0.5 * y.min()  # the old inverse gave 0 here
    far = tf.inverse(torch.tensor([[lo - 50.0]], dtype=torch.float32)).item()
    assert 0 < far < b[0]  # far below the range an output stays of its sign (a linear tail went negative)
    np.testing.assert_allclose(tf(back).numpy(), t.numpy(), rtol=1e-4, atol=1e-5)
    # a checkpoint saved before the tails loads without them (as it was trained)
    old = {k: v for k, v in tf.state_dict().items() if k not in ("x_lo", "x_hi", "t_lo", "t_hi")}
    tf2 = OutputTransform(1)
    tf2.load_state_dict(old)
    assert tf2.t_lo.item() == -np.inf and tf2.lam.item() == lam


def test_output_pca_many_outputs_fitted_on_few_components(tmp_path):
    """40 outputs that are mixtures of two functions of theta plus small independent noise (like PFT x
    biome means): with output_pca the GP fits the few components that carry the variance, predicts
    every output, adds the truncation loss to its variance, and round-trips through the checkpoint
    and the TorchScript export."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (80, 3))
    load = rng.normal(size=(2, 40))
    clean = toy(x) @ load
    y = clean + 0.01 * rng.normal(size=clean.shape)
    xr.Dataset({"theta": (("member", "param"), x), "y": (("member", "output"), y)},
               coords={"member": [f"M{i:03d}" for i in range(80)], "param": ["a", "b", "c"],
                       "output": [f"o{i}" for i in range(40)]}).to_netcdf(tmp_path / "store.nc")
    cfg = write_config(tmp_path, output_pca=0.999)
    r = run_cli(["train", cfg, "--quiet"])
    assert r.returncode == 0, r.stderr
    emu = load_emulator(tmp_path / "run")
    k = emu.core.pca.basis.shape[1]
    assert 2 <= k <= 6, k  # two functions carry the signal; the noise is left out
    assert emu.core.inner.log_ls.shape[0] == k  # one GP per component, not per output
    xt = np.random.default_rng(9).uniform(0.05, 0.95, (100, 3))
    m, v = emu.predict(torch.tensor(xt, dtype=torch.float32))
    want = toy(xt) @ load
    r2 = 1 - ((want - m.numpy()) ** 2).sum(0) / ((want - want.mean(0)) ** 2).sum(0)
    assert r2.min() > 0.97, r2.min()
    assert (v > 0).all() and (emu.core.pca.resid_var > 0).all()
    ts = torch.jit.load(str(export_torchscript(tmp_path / "run", tmp_path / "pca.pt")))
    x0 = torch.tensor(xt[:5], dtype=torch.float32)
    np.testing.assert_allclose(ts(x0).detach().numpy(), emu(x0).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_posterior_draws_match_the_predictive_mean_and_variance(kernel):
    """Whole-function posterior draws (for Sobol intervals that hold the emulator's error): their mean
    is the GP's predictive mean and their spread its latent (noise-free) sd, near the data and far
    from it; the same draws come back on every call."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 2, generator=g, dtype=torch.float64)
    y = torch.stack([torch.sin(6 * x[:, 0]), x[:, 1] ** 2], 1) + 0.02 * torch.randn(60, 2, generator=g,
                                                                                      dtype=torch.float64)
    gp = ExactGP(2, 2, kernel=kernel, mean="constant", restarts=1, fit_steps=100)
    gp.fit(x, y)
    xt = torch.cat([torch.rand(200, 2, generator=g, dtype=torch.float64), 3.0 + torch.rand(20, 2, generator=g,
                                                                                           dtype=torch.float64)])
    m, v = gp.predict(xt)
    latent_sd = (v - torch.exp(gp.log_sn2)).clamp_min(1e-12).sqrt()
    path = gp.sample_paths(1000, 4096, seed=3)
    f = path(xt)
    assert f.shape == (220, 2, 1000)
    torch.testing.assert_close(path(xt[:5]), f[:5], rtol=1e-9, atol=1e-9)  # the same draws (up to BLAS order)
    assert ((f.mean(-1) - m).abs() < 0.15 * latent_sd + 1e-3).float().mean() > 0.95
    ratio = f.std(-1) / latent_sd
    assert 0.8 < ratio[:200].median() < 1.2 and 0.8 < ratio[200:].median() < 1.2  # far away: the prior's sd
