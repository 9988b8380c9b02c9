"""dPL parameter learning through a frozen forward model: bounds, masked loss, recovery, uncertainty."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from inverse_twin import PARAMS, make_twin, observations

from esm_emu.inverse.config import inverse_config
from esm_emu.inverse.dpl import DPLConfig, ParamNet, masked_loss, predict, score_mask, train_dpl
from esm_emu.inverse.inversion import InversionSettings, run_inversion
from esm_emu.inverse.kgssl import KGSSLConfig
from esm_emu.inverse.problem import bounds_from_table, build_problem
from esm_emu.metrics import nse
from ppe_ingest.base.errors import UserError

torch.set_num_threads(1)
OBSERVED = np.arange(16)  # of 24 gridcells; the other 8 are never observed


@pytest.fixture(scope="module")
def twin():
    return make_twin()


def _problem(twin, variables=("QRUNOFF",)):
    obs = observations(twin, OBSERVED, variables)
    return build_problem(twin["entities"], obs, twin["forward"], twin["table"], PARAMS, variables,
                         train_period={"start": 2000, "end": 2000}, test_period={"start": 2001, "end": 2001})


def test_outputs_stay_inside_table_bounds_even_for_extreme_attributes(twin):
    p = _problem(twin)
    net = ParamNet(p.attrs.shape[1], p.n_params)
    with torch.no_grad():
        for scale in (1.0, 1e3, -1e3):
            th = p.from_unit(net(p.attrs * scale))
            assert (th >= p.lo - 1e-6).all() and (th <= p.hi * (1 + 1e-6)).all()
    u = torch.rand(5, p.n_params)
    assert torch.allclose(p.to_unit(p.from_unit(u)), u, atol=1e-5)


def test_the_prior_is_uniform_where_the_ppe_design_is_unless_the_log_scale_is_asked_for(twin, tmp_path):
    """The unit space is where each parameter's prior is uniform and where it returns when the data
    cannot tell it: on the default linear scale the PPE's Latin hypercube members (min + s (max - min))
    sit uniformly in it and the prior's middle is the middle of the PPE's range; ``scale: log`` maps
    wide positive ranges (hksat_sf 0.1..10) log-uniformly instead, and a state saved on one scale is
    refused by an inversion on the other."""
    from ppe_ingest.design import make_design

    lin, log = (build_problem(twin["entities"], None, twin["forward"], twin["table"], PARAMS, ("QRUNOFF",),
                              scale=scale) for scale in ("linear", "log"))
    design = make_design(twin["table"], 64, seed=3, names=PARAMS)
    theta = torch.as_tensor(design["theta"].transpose("member", "param").values, dtype=torch.float32)
    s = torch.as_tensor(design["s"].transpose("member", "param").values, dtype=torch.float32)
    assert torch.allclose(lin.to_unit(theta), s, atol=1e-5)
    j = PARAMS.index("hksat_sf")
    mid = lin.from_unit(torch.full((1, lin.n_params), 0.5))[0]
    assert float(mid[j]) == pytest.approx(5.05, rel=1e-5)
    assert bool(log.log_scale[j]) and not bool(log.log_scale[PARAMS.index("FMAX")]) and not lin.log_scale.any()
    assert float(log.from_unit(torch.full((1, log.n_params), 0.5))[0, j]) == pytest.approx(1.0, rel=1e-5)
    # the log scale puts most of the PPE's members in the upper part of its unit space
    assert float((log.to_unit(theta)[:, j] > 0.5).float().mean()) > 0.85
    with pytest.raises(UserError, match="inverse.scale"):
        build_problem(twin["entities"], None, twin["forward"], twin["table"], PARAMS, ("QRUNOFF",), scale="sqrt")
    from esm_emu.inverse.warm import load_state, save_state

    state = save_state(tmp_path, PARAMS, lin.entity, [{}], scale="log")
    assert load_state(state, PARAMS, lin.entity, 1, scale="log")["scale"] == "log"
    with pytest.raises(UserError, match="log scale.*inverse.scale is linear"):
        load_state(state, PARAMS, lin.entity, 1, scale="linear")


def test_nse_loss_is_one_minus_nse_and_ignores_gaps():
    g = torch.Generator().manual_seed(0)
    obs = torch.rand(3, 50, 1, generator=g)
    sim = obs + 0.1 * torch.randn(3, 50, 1, generator=g)
    tm = torch.ones(50, dtype=torch.bool)
    want = 1 - nse(sim[..., 0], obs[..., 0]).mean()
    assert float(masked_loss(sim, obs, tm)) == pytest.approx(float(want), rel=1e-5)
    gappy = obs.clone()
    gappy[0, :10] = float("nan")
    sim2 = sim.clone()
    sim2[0, :10] = 1e6  # whatever is simulated in a gap must not count
    want = 1 - nse(sim[..., 0], gappy[..., 0]).mean()
    assert float(masked_loss(sim2, gappy, tm)) == pytest.approx(float(want), rel=1e-5)
    # unscored times (spin-up) do not count either
    tm2 = tm.clone()
    tm2[:5] = False
    sim3 = sim.clone()
    sim3[:, :5] = -1e6
    want = masked_loss(sim[:, 5:], obs[:, 5:], tm[5:])
    assert float(masked_loss(sim3, obs, tm2)) == pytest.approx(float(want), rel=1e-5)


def _one_parameter_twin(twin, name: str, attribute: str):
    """Observations where only `name` departs from its default, as a smooth monotone function of one
    gridcell attribute: a problem whose answer is certain, so recovery does not hinge on a lucky r."""
    lo, hi, default = bounds_from_table(twin["table"], PARAMS)
    j = PARAMS.index(name)
    ent, fwd = twin["entities"], twin["forward"]
    a = ent[attribute].values
    true = lo[j] + (hi[j] - lo[j]) * (0.1 + 0.8 / (1 + np.exp(-1.5 * (a - a.mean()) / a.std())))
    theta = np.tile(default, (a.size, 1))
    theta[:, j] = true
    forcing = torch.as_tensor(np.stack([ent[n].values for n in fwd.forcing_names], -1), dtype=torch.float32)
    static = torch.as_tensor(np.stack([ent[n].values for n in fwd.static_names], -1), dtype=torch.float32)
    q = fwd.chunked(forcing, static, torch.as_tensor(theta, dtype=torch.float32)).numpy()[OBSERVED, :, 0]
    obs = xr.Dataset({"QRUNOFF": (("site", "time"), np.clip(q, 0, None).astype(float), {"units": "mm/s"})},
                     coords={"site": [str(i) for i in OBSERVED], "time": twin["time"]}).assign(
        gridcell=("site", OBSERVED), site_lat=("site", ent["grid1d_lat"].values[OBSERVED]),
        site_lon=("site", ent["grid1d_lon"].values[OBSERVED]))
    problem = build_problem(ent, obs, fwd, twin["table"], [name], ["QRUNOFF"],
                            train_period={"start": 2000, "end": 2000}, test_period={"start": 2001, "end": 2001})
    return problem, true


@pytest.mark.statistical
def test_g_A_learns_parameters_through_the_frozen_emulator(twin):
    p = _problem(twin)
    before = [q.clone() for q in twin["forward"].parameters()]
    net, hist = train_dpl(p, twin["forward"], DPLConfig(steps=80, warmup_days=60, dropout=0.0), seed=0)
    # the forward model stays frozen while the parameter network learns
    assert all(torch.equal(a, b) for a, b in zip(before, twin["forward"].parameters()))
    final = np.mean(hist["loss"][-10:])
    assert final < 0.75 * np.mean(hist["loss"][:5])
    # and the learned parameters fit far better than the table's defaults
    idx = torch.as_tensor(np.flatnonzero(p.observed))
    y = twin["forward"].chunked(p.forcing[idx], p.static[idx], p.full_theta(p.default.expand(len(idx), -1)))
    assert final < 0.5 * float(masked_loss(y[..., p.response_index], p.obs[idx], score_mask(p, p.train_time, 60)))


@pytest.mark.statistical
def test_g_A_recovers_an_attribute_driven_parameter_where_never_observed(twin):
    # FMAX following PCT_SAND: here r is about 0.98 observed and 0.89 never observed, whatever the seed
    problem, true = _one_parameter_twin(twin, "FMAX", "PCT_SAND")
    net, _ = train_dpl(problem, twin["forward"], DPLConfig(steps=80, warmup_days=60, dropout=0.0), seed=0)
    theta = predict(net, problem).numpy()[:, 0]
    un = np.setdiff1d(np.arange(true.size), OBSERVED)
    assert np.corrcoef(true[OBSERVED], theta[OBSERVED])[0, 1] > 0.9
    assert np.corrcoef(true[un], theta[un])[0, 1] > 0.6


@pytest.mark.statistical
def test_run_inversion_gives_map_with_uncertainty_and_better_held_out_year(twin, tmp_path):
    obs = observations(twin, OBSERVED)
    cfg = inverse_config({"params": PARAMS, "method": "g_z", "ablation": True,
                          "train_period": {"start": 2000, "end": 2000}, "test_period": {"start": 2001, "end": 2001},
                          "kgssl": {"steps": 30, "ppe_samples": 2, "window_days": 180},
                          "dpl": {"steps": 30, "warmup_days": 60},
                          "uncertainty": {"ensemble": 2, "mc_samples": 4}, "clusters": 3})
    pmap, m = run_inversion(cfg, twin["entities"], obs, twin["forward"], twin["table"], out_dir=tmp_path,
                            truth=twin["truth"], progress=False, sources=["twin"])
    assert pmap["theta"].dims == ("gridcell", "param") and pmap.sizes["gridcell"] == 24
    assert np.isfinite(pmap["theta"].values).all() and (pmap["theta_std"].values > 0).all()
    lo, hi = pmap["param_min"].values, pmap["param_max"].values
    assert ((pmap["theta"].values >= lo) & (pmap["theta"].values <= hi)).all()
    assert int(pmap["observed"].sum()) == len(OBSERVED)
    sk = m["skill_test_period"]
    assert sk["inferred"]["QRUNOFF"]["nse_median"] > sk["default"]["QRUNOFF"]["nse_median"]
    for where in ("observed", "unobserved"):
        for p_ in PARAMS:
            c = m["recovery"][where][p_]["coverage"]
            assert 0.0 <= c <= 1.0
    # each part of the interval is reported where it applies: the data's at the 16 observed gridcells,
    # the regionalisation's at the 8 unobserved ones (a median over all 24 would read zero for it)
    parts = m["uncertainty_parts_unit_sd_median"]
    assert all(parts["data"][p_] > 0 and parts["regionalisation"][p_] > 0 for p_ in PARAMS), parts
    assert set(m["ablation"]) == {"kgssl", "g_A", "g_z"}
    assert set(np.unique(pmap["cluster"].values)) <= {0, 1, 2}
    for f in ("parameter_map.nc", "metrics.json", "true_vs_inferred.png", "hydrographs.png", "training_curves.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_a_wave_starts_where_the_previous_inversion_ended(twin, tmp_path):
    """A PPE wave's inversion continues the previous one: same dPL members and embedding, fewer steps."""
    obs = observations(twin, OBSERVED)
    base = {"params": PARAMS, "method": "g_z", "train_period": {"start": 2000, "end": 2000},
            "test_period": {"start": 2001, "end": 2001}, "kgssl": {"steps": 10, "window_days": 180},
            "dpl": {"steps": 40, "warmup_days": 60}, "uncertainty": {"ensemble": 2, "mc_samples": 2}}
    _, cold = run_inversion(inverse_config(base), twin["entities"], obs, twin["forward"], twin["table"],
                            out_dir=tmp_path / "w0", progress=False, sources=["twin"])
    state = tmp_path / "w0" / "inverse_state.pt"
    assert state.is_file()
    _, warm = run_inversion(inverse_config(base), twin["entities"], obs, twin["forward"], twin["table"],
                            out_dir=tmp_path / "w1", progress=False, sources=["twin"], warm_from=state, warm_steps=5)
    assert warm["warm_start"] == {"dpl_steps": 5, "kgssl_embedding_reused": True}
    assert "kgssl_s" not in warm["wall_s"]  # the embedding is the previous wave's
    for c, w in zip(cold["training"]["dpl_loss"], warm["training"]["dpl_loss"]):
        assert len(w) == 5
        # the first warm step is scored at the previous wave's end, not at a fresh network's start
        assert w[0] < c[0] and w[0] <= 1.5 * np.mean(c[-5:])
    with pytest.raises(UserError, match="inverse_state.pt: inferred parameters"):
        run_inversion(inverse_config({**base, "params": PARAMS[:2]}), twin["entities"], obs, twin["forward"],
                      twin["table"], progress=False, sources=["twin"], warm_from=state)


def test_training_through_the_builtin_simulator_passes_gradients(twin):
    ent = twin["entities"].isel(gridcell=slice(0, 3), time=slice(0, 60))
    sim = twin["simulator"]
    y = sim.chunked(torch.as_tensor(np.stack([ent[n].values for n in sim.forcing_names], -1), dtype=torch.float32),
                    torch.as_tensor(np.stack([ent[n].values for n in sim.static_names], -1), dtype=torch.float32),
                    torch.tensor([[2.0, 0.5, 3.0, 0.01]] * 3))
    import xarray as xr
    obs = xr.Dataset({"QRUNOFF": (("site", "time"), y[..., 0].numpy().astype(float))},
                     coords={"site": ent["gridcell"].values, "time": ent["time"].values})
    p = build_problem(ent, obs, sim, twin["table"], PARAMS, ["QRUNOFF"])
    net = ParamNet(p.attrs.shape[1], p.n_params, dropout=0.0)
    from esm_emu.inverse.dpl import simulate
    sim_q = simulate(p, sim, np.arange(3), p.from_unit(net(p.attrs)))
    loss = masked_loss(sim_q, p.obs, torch.ones(60, dtype=torch.bool))
    loss.backward()
    grads = torch.cat([q.grad.flatten() for q in net.parameters()])
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0


def test_every_schema_section_is_a_typed_settings_object():
    # the schema's defaults fill each section's dataclass: no key of the schema is dropped on the way,
    # and the dataclasses' own defaults (for use in code) agree with the schema's
    s = InversionSettings.from_config(inverse_config())
    assert (s.kgssl.ppe_samples, s.uncertainty.mc_samples, s.dpl.warmup_days, s.method) == (4, 20, 180, "auto")
    assert s.kgssl == KGSSLConfig() and s.dpl == DPLConfig()


def test_run_inversion_refuses_an_unknown_key(twin):
    for cfg, key in (({"kgssl": {"stepz": 3}}, "inverse.kgssl.stepz"), ({"methd": "g_A"}, "inverse.methd")):
        with pytest.raises(UserError, match=key):
            run_inversion(cfg, twin["entities"], None, twin["forward"], twin["table"], progress=False)
