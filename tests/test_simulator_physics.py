"""The built-in simulator (a stand-in for CTSM): water balance, parameter directions, gradients,
restartability and the Cosby pedotransfer functions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import RESPONSES as RESPONSE_VARS
from ppe_ingest.simulator import physics
from ppe_ingest.simulator.physics import DEFAULTS, run_land
from ppe_ingest.simulator.sites import builtin_sites, static_tensors
from ppe_ingest.simulator.weather import forcing_tensors, generate_weather

torch.set_num_threads(1)
N_SITES = 4


@pytest.fixture(scope="module")
def world():
    sites = builtin_sites(N_SITES, seed=3)
    # Make sure at least half the sites have a real winter (snow) and the others do not.
    sites["tmean"].values[: N_SITES // 2] = 2.0
    sites["tamp"].values[: N_SITES // 2] = 14.0
    sites["tmean"].values[N_SITES // 2:] = 16.0
    weather = generate_weather(sites, 2001, 2, seed=5)
    return sites, weather


def _repeat(d, k):
    return {n: (v.repeat(k) if v.dim() == 1 else v.repeat(k, 1)) for n, v in d.items()}


def _tws(state):
    return state["H2OCAN"] + state["H2OSNO"] + state["H2OSOI_LIQ"].sum(1) + state["WA"]


@pytest.mark.parametrize("options", [{}, {"frozen_soil": True}, {"aquifer": True}, {"canopy_longwave": True}],
                         ids=["default", "frozen_soil", "aquifer", "canopy_longwave"])
def test_water_balance_closes_per_gridcell_year(world, options):
    sites, weather = world
    forcing, static = forcing_tensors(weather), static_tensors(sites)
    state0 = physics.initial_state(static, {}, tbot0=forcing["TBOT"][:, 0])
    out, _ = run_land(forcing, static, {}, state=state0, return_state=True, physics=options)
    day = physics.SECSPDAY
    tws_prev = _tws(state0)
    for year in range(2):
        sl = slice(365 * year, 365 * (year + 1))
        p = ((forcing["RAIN"] + forcing["SNOW"])[:, sl] * day).sum(1)
        et = ((out["QSOIL"] + out["QVEGT"] + out["QVEGE"])[:, sl] * day).sum(1)
        ro = (out["QRUNOFF"][:, sl] * day).sum(1)
        tws = out["TWS"][:, sl.stop - 1]
        resid = p - et - ro - (tws - tws_prev)
        assert torch.all(resid.abs() / p < 1e-6), resid
        assert torch.all(et > 0) and torch.all(ro > 0)
        tws_prev = tws
    # Latent heat is the energy of that evaporation.
    assert torch.all(out["EFLX_LH_TOT"] >= 0)
    assert torch.allclose(out["QRUNOFF"], out["QOVER"] + out["QDRAI"])


@pytest.fixture(scope="module")
def sweeps(world):
    """One batched run: each tested parameter at a low and a high value, all other defaults."""
    sites, weather = world
    cases = {"fff": (0.1, 3.0), "FMAX": (0.1, 0.6), "hksat_sf": (0.3, 3.0),
             "medlynslope": (2.0, 8.0), "n_melt_coef": (50.0, 600.0)}
    forcing, static = forcing_tensors(weather), static_tensors(sites)
    k = 2 * len(cases)
    params = {name: torch.full((k * N_SITES,), float(DEFAULTS[name] if name not in static else 0.0))
              for name in cases}
    params["FMAX"] = static["FMAX"].repeat(k).clone()
    blocks = {}
    for j, (name, (lo, hi)) in enumerate(cases.items()):
        for m, v in enumerate((lo, hi)):
            b = 2 * j + m
            params[name][b * N_SITES:(b + 1) * N_SITES] = v
            blocks[(name, m)] = slice(b * N_SITES, (b + 1) * N_SITES)
    forcing, static = _repeat(forcing, k), _repeat(static, k)
    with torch.no_grad():
        # Spin up first so that differences are not a cold-start storage artefact.
        state = physics.spin_up(forcing, static, params, n_years=2)
        out = run_land(forcing, static, params, state=state)
    return out, blocks


def _total(out, var, blocks, name, m):
    return out[var][blocks[(name, m)]].sum(1)


@pytest.mark.parametrize("name,var,sign", [
    ("fff", "QOVER", -1), ("FMAX", "QOVER", +1), ("hksat_sf", "QDRAI", +1), ("medlynslope", "QVEGT", +1)])
def test_parameter_moves_output_in_expected_direction(sweeps, name, var, sign):
    out, blocks = sweeps
    lo, hi = _total(out, var, blocks, name, 0), _total(out, var, blocks, name, 1)
    assert torch.all(sign * (hi - lo) > 0), (name, var, lo, hi)


def test_higher_n_melt_coef_melts_later(sweeps):
    out, blocks = sweeps
    snowy = slice(0, N_SITES // 2)
    spring = slice(365, 365 + 240)   # second winter/spring

    def snow_off(m):
        swe = out["H2OSNO"][blocks[("n_melt_coef", m)]][snowy, spring]
        assert torch.all(swe.max(1).values > 20.0), "test sites need a snowpack"
        return torch.tensor([int(np.flatnonzero(s.numpy() > 1.0).max()) for s in swe])

    lo, hi = snow_off(0), snow_off(1)
    assert torch.all(hi >= lo) and torch.any(hi > lo), (lo, hi)
    # Slower melt: more snow stays on the ground over the season.
    s_lo = out["H2OSNO"][blocks[("n_melt_coef", 0)]][snowy, spring].sum(1)
    s_hi = out["H2OSNO"][blocks[("n_melt_coef", 1)]][snowy, spring].sum(1)
    assert torch.all(s_hi > s_lo)


def test_gradients_of_runoff_wrt_every_parameter_are_finite_and_nonzero(world):
    sites, weather = world
    wx = weather.isel(time=slice(0, 365))
    forcing, static = forcing_tensors(wx), static_tensors(sites)
    params = {k: torch.full((N_SITES,), float(v), dtype=torch.float64, requires_grad=True) for k, v in DEFAULTS.items()}
    # every physics option on, so that their parameters (e_ice) act too
    out = run_land(forcing, static, params, physics={k: True for k in physics.PHYSICS_OPTIONS})
    out["QRUNOFF"].sum().backward()
    for k, v in params.items():
        g = v.grad
        assert g is not None and torch.all(torch.isfinite(g)), k
        assert g.abs().sum() > 0, f"zero gradient for {k}"


def test_restart_two_years_equals_two_one_year_runs(world):
    sites, weather = world
    forcing, static = forcing_tensors(weather), static_tensors(sites)
    params = {"fff": 1.5, "hksat_sf": torch.linspace(0.5, 2.0, N_SITES, dtype=torch.float64)}
    full = run_land(forcing, static, params)
    y1 = {k: v[:, :365] for k, v in forcing.items()}
    y2 = {k: v[:, 365:] for k, v in forcing.items()}
    a, state = run_land(y1, static, params, return_state=True)
    b = run_land(y2, static, params, state=state)
    for k in RESPONSE_VARS:
        joined = torch.cat([a[k], b[k]], 1)
        assert torch.allclose(joined, full[k], rtol=1e-12, atol=1e-15), k


def test_cosby_pedotransfer_and_scale_factors():
    static = {"PCT_SAND": torch.tensor([40.0]), "PCT_CLAY": torch.tensor([20.0]), "ORGANIC": torch.tensor([0.0])}
    one = {k: torch.tensor([1.0], dtype=torch.float64) for k in ("watsat_sf", "bsw_sf", "sucsat_sf", "hksat_sf")}
    base = physics.soil_properties(static, one)
    # Cosby et al. (1984) as in CTSM SoilStateInitTimeConstMod.
    assert base["watsat"].item() == pytest.approx(0.489 - 0.00126 * 40)
    assert base["bsw"].item() == pytest.approx(2.91 + 0.159 * 20)
    assert base["sucsat"].item() == pytest.approx(10 * 10 ** (1.88 - 0.0131 * 40))
    assert base["hksat"].item() == pytest.approx(0.0070556 * 10 ** (-0.884 + 0.0153 * 40))
    scaled = physics.soil_properties(static, {k: v * 2 for k, v in one.items()})
    for k in ("bsw", "sucsat", "hksat", "watsat"):
        assert scaled[k].item() == pytest.approx(2 * base[k].item())
    # Organic matter moves porosity towards peat's 0.9.
    peaty = physics.soil_properties({**static, "ORGANIC": torch.tensor([65.0])}, one)
    assert peaty["watsat"].item() > base["watsat"].item()


def test_bad_inputs_name_the_problem(world):
    sites, weather = world
    forcing, static = forcing_tensors(weather.isel(time=slice(0, 3))), static_tensors(sites)
    with pytest.raises(UserError, match="unknown parameter fffx"):
        run_land(forcing, static, {"fffx": 1.0})
    with pytest.raises(UserError, match="forcing variable TBOT"):
        run_land({k: v for k, v in forcing.items() if k != "TBOT"}, static, {})


def _has_cxx() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _has_cxx(), reason="torch.compile's CPU backend needs a C++ compiler (g++ or clang++)")
def test_compiled_daily_step_matches_eager(world, monkeypatch):
    sites, weather = world
    wx = weather.isel(time=slice(0, 150))        # a winter and spring: snow, melt and drainage branches
    forcing, static = forcing_tensors(wx), static_tensors(sites)
    params = {"fff": torch.linspace(0.2, 3.0, N_SITES, dtype=torch.float64), "n_baseflow": 1.5,
              "hksat_sf": torch.linspace(3.0, 0.4, N_SITES, dtype=torch.float64)}
    monkeypatch.setitem(physics._compiled, "failed", False)
    with torch.no_grad():
        monkeypatch.setenv("ESM_EMU_SIM_COMPILE", "0")
        eager, s_eager = run_land(forcing, static, params, return_state=True)
        monkeypatch.setenv("ESM_EMU_SIM_COMPILE", "1")
        comp, s_comp = run_land(forcing, static, params, return_state=True)
    assert physics._compiled["ok"] and not physics._compiled["failed"], "the daily step was not compiled"
    for k in RESPONSE_VARS:
        scale = eager[k].abs().max()
        assert torch.allclose(comp[k], eager[k], rtol=1e-8, atol=1e-10 * scale), k
    for k, v in s_eager.items():
        assert torch.allclose(s_comp[k], v, rtol=1e-8, atol=1e-10), k


def test_failed_compile_falls_back_to_eager_with_a_warning(world, monkeypatch):
    sites, weather = world
    forcing, static = forcing_tensors(weather.isel(time=slice(0, 20))), static_tensors(sites)

    def broken():
        def step(*args):
            raise RuntimeError("no C++ compiler found")
        return step

    monkeypatch.setattr(physics, "_compiled_step", broken)
    monkeypatch.setitem(physics._compiled, "failed", False)
    monkeypatch.setitem(physics._compiled, "ok", False)
    with torch.no_grad():
        monkeypatch.setenv("ESM_EMU_SIM_COMPILE", "0")
        eager = run_land(forcing, static, {})
        monkeypatch.setenv("ESM_EMU_SIM_COMPILE", "1")
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
            out = run_land(forcing, static, {})
        assert physics._compiled["failed"]
    for k in RESPONSE_VARS:
        assert torch.equal(out[k], eager[k]), k


def test_frozen_soil_is_off_by_default_and_sheds_cold_season_water(world):
    """frozen_soil off: e_ice has no effect at all (the quickstart is unchanged). On: frozen topsoil
    (the snowy sites' winter) infiltrates less, so more surface runoff, and more the larger e_ice."""
    sites, weather = world
    forcing, static = forcing_tensors(weather), static_tensors(sites)
    base = run_land(forcing, static, {})
    assert torch.equal(run_land(forcing, static, {"e_ice": 0.5})["QRUNOFF"], base["QRUNOFF"])
    on = {"frozen_soil": True}
    lo = run_land(forcing, static, {"e_ice": 1.0}, physics=on)
    hi = run_land(forcing, static, {"e_ice": 6.0}, physics=on)
    snowy, warm = slice(0, N_SITES // 2), slice(N_SITES // 2, None)
    assert torch.all(hi["QOVER"][snowy].sum(1) > lo["QOVER"][snowy].sum(1) * 1.02)
    assert torch.all(hi["QOVER"][snowy].sum(1) > base["QOVER"][snowy].sum(1) * 1.02)
    # sites that never freeze are untouched by the option
    assert torch.allclose(hi["QRUNOFF"][warm], base["QRUNOFF"][warm], rtol=1e-9, atol=1e-15)
    with pytest.raises(UserError, match="simulate.physics.permafrost"):
        run_land(forcing, static, {}, physics={"permafrost": True})


def test_aquifer_drains_the_column_into_a_slow_store(world):
    """aquifer on: the bottom layer leaks through bedrock into a groundwater store that feeds the
    stream slowly, so more of the runoff is baseflow and its day-to-day swings are smaller; off: the
    same results as without the option."""
    sites, weather = world
    forcing, static = forcing_tensors(weather), static_tensors(sites)
    params = {"zbedrock": 1.0}
    base = run_land(forcing, static, params)
    assert torch.equal(run_land(forcing, static, params, physics={"aquifer": False})["QRUNOFF"], base["QRUNOFF"])
    aq, st = run_land(forcing, static, params, physics={"aquifer": True}, return_state=True)
    assert torch.all(st["WA"] > 0)
    share = (aq["QDRAI"].sum(1) / aq["QRUNOFF"].sum(1), base["QDRAI"].sum(1) / base["QRUNOFF"].sum(1))
    assert torch.all(share[0] > share[1]), share
    second = slice(365, None)
    swing = [q[:, second].diff(dim=1).abs().mean(1) for q in (aq["QRUNOFF"], base["QRUNOFF"])]
    assert torch.all(swing[0] <= swing[1] * 1.001) and torch.any(swing[0] < 0.8 * swing[1]), swing


def _freeze(theta: float, days: int, tair_c: float = -10.0):
    """The ice fraction day by day of a top layer holding `theta` (m3/m3) under air at `tair_c`,
    no snow, starting at 2 C; frozen_soil on with e_ice = 1 (impedance = exp(-ln(10) icefrac))."""
    sites = builtin_sites(1, seed=0)
    c = physics._prepare(static_tensors(sites), {"e_ice": 1.0}, 1, {"frozen_soil": True})
    k = physics._day_constants(c)
    w_top = torch.tensor([theta]) * k.dz_top_mm
    x = physics.DayTerms._make(torch.tensor([tair_c + physics.TFRZ]) if f == "tbot" else None
                               for f in physics.DayTerms._fields)
    tsoi, ice = torch.tensor([physics.TFRZ + 2.0]), []
    for _ in range(days):
        tsoi, imped = physics._soil_temperature(tsoi, torch.zeros(1), w_top, x, k)
        ice.append(float(-torch.log10(imped)))
    return np.array(ice), float(k.wsat[0] / k.dz_top_mm)


def test_frozen_soil_freezes_its_water_before_it_cools_and_counts_ice_against_porosity():
    """The latent heat of the soil's water holds it at 0 C while it freezes (CTSM's phase change:
    a wetter soil takes longer), and the ice fraction is ice volume over porosity (CTSM icefrac =
    vol_ice / watsat): a half-saturated soil never gets past 0.5, a saturated one reaches 1."""
    watsat = float(physics._prepare(static_tensors(builtin_sites(1, seed=0)), {}, 1)["watsat"][0])
    wet, _ = _freeze(0.95 * watsat, 400)
    half, _ = _freeze(0.5 * watsat, 400)
    assert wet[0] == 0.0 and half[0] == 0.0                       # above 0 C on the first day: no ice
    assert half.max() == pytest.approx(0.5, abs=1e-6) and wet.max() == pytest.approx(0.95, abs=1e-6)
    # days until half of its water is ice: the wet soil takes longer (more latent heat to give up)
    assert np.argmax(wet >= 0.475) > 1.3 * np.argmax(half >= 0.25) > 10
    assert np.all(np.diff(wet) >= -1e-12)                          # steady cold: ice only grows


def test_canopy_longwave_melts_snow_under_a_canopy_sooner(world):
    """canopy_longwave acts on snow only: with all precipitation as rain nothing changes. With snow the
    canopy, at the air temperature, radiates more onto the snow than a clear winter sky, so the pack
    peaks lower and is gone sooner; more so under a denser canopy."""
    sites, weather = world
    forcing, static = forcing_tensors(weather), static_tensors(sites)
    base = run_land(forcing, static, {})
    on = run_land(forcing, static, {}, physics={"canopy_longwave": True})
    snowy = slice(0, N_SITES // 2)
    rain_only = dict(forcing, RAIN=forcing["RAIN"] + forcing["SNOW"], SNOW=torch.zeros_like(forcing["SNOW"]))
    assert torch.equal(run_land(rain_only, static, {}, physics={"canopy_longwave": True})["QRUNOFF"],
                       run_land(rain_only, static, {})["QRUNOFF"])
    assert torch.all(on["H2OSNO"][snowy].max(1).values < base["H2OSNO"][snowy].max(1).values)
    assert torch.all((on["H2OSNO"][snowy] > 1).sum(1) < (base["H2OSNO"][snowy] > 1).sum(1))
    dense = dict(static, LAI_MAX=static["LAI_MAX"] * 0 + 6.0, LAI_MIN=static["LAI_MIN"] * 0 + 5.0)
    sparse = dict(static, LAI_MAX=static["LAI_MAX"] * 0 + 0.5, LAI_MIN=static["LAI_MIN"] * 0 + 0.2)
    gain = [run_land(forcing, s, {}, physics={"canopy_longwave": True})["H2OSNO"][snowy].sum()
            - run_land(forcing, s, {})["H2OSNO"][snowy].sum() for s in (dense, sparse)]
    assert gain[0] < gain[1] < 0, gain
