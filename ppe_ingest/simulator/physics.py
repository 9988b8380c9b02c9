"""The built-in land simulator: a daily, differentiable torch land hydrology model (NOT CTSM).

A stand-in for CTSM runs so that the quickstart has a PPE and a "truth" without NCAR disks.
It uses CTSM's parameter names and units and CTSM's published formulas where they exist
(Cosby pedotransfer functions, TOPMODEL saturated fraction, power-law baseflow, dry surface
layer, Medlyn stomatal slope, Swenson & Lawrence snow cover); the rest is a simple, documented
daily-step scheme. Equations: `ppe_ingest/simulator/README.md`.

Everything is vectorised over a flat batch B (member x gridcell); only days are looped over.
Water is carried in float64 so the water balance closes to round-off.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Mapping, NamedTuple

import torch

from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import ALL_STATIC_FIELDS, FORCING, RESPONSES

# Static gridcell fields: fsurdat names (vocabulary.ALL_STATIC_FIELDS). LAI_MAX/LAI_MIN stand in for the
# fsurdat MONTHLY_LAI climatology: LAI follows a temperature-driven phenology between them.
STATIC_DEFAULTS = {"ORGANIC": 20.0, "STD_ELEV": 50.0, "LAI_MAX": 4.0, "LAI_MIN": 1.0}

# CTSM defaults (ctsm51 paramfile / CLM5 PPE tables; see configs/params_hydrology.csv).
DEFAULTS = {
    "fff": 0.5,                        # 1/m
    "FMAX": 0.26,                      # unitless (fsurdat; static FMAX wins when not perturbed)
    "zbedrock": 1.0,                   # m (fsurdat; static zbedrock wins when not perturbed)
    "hksat_sf": 1.0, "watsat_sf": 1.0, "bsw_sf": 1.0, "sucsat_sf": 1.0,
    "baseflow_scalar": 1e-3,           # mm/s per m**n_baseflow (CLM5 PPE default)
    "n_baseflow": 1.0,
    "d_max": 15.0,                     # mm
    "medlynslope": 4.84,               # umol H2O / umol CO2 (reference value)
    "liq_canopy_storage_scalar": 0.1,  # kg/m2 per unit LAI+SAI
    "accum_factor": 0.1,
    "n_melt_coef": 200.0,
    "interception_fraction": 1.0,
    "e_ice": 6.0,                      # ice impedance exponent (CLM5 paramfile e_ice); used with frozen_soil
}
FSURDAT_PARAMS = ("FMAX", "zbedrock")

# Physical constants (CTSM clm_varcon / shr_const values).
SECSPDAY = 86400.0
TFRZ = 273.15
HVAP = 2.501e6        # J/kg
HFUS = 3.337e5        # J/kg
HSUB = HVAP + HFUS    # J/kg
SB = 5.67e-8          # W/m2/K4
CPAIR = 1004.64       # J/kg/K
RAIR = 287.04         # J/kg/K
RGAS = 8.314          # J/mol/K
VKC = 0.4             # von Karman
ZREF = 30.0           # m, forcing height
ORGANIC_MAX = 130.0   # kg/m3 (ctsm51 organic_max)
ZSNO = 0.0024         # m, snow roughness (ctsm51 zsno)

# Soil column: a fixed 10 cm top layer (so SOILWATER_10CM is its water) and four layers
# splitting the rest of the column down to zbedrock.
TOP_DZ = 0.1
LOWER_FRACTIONS = (0.1, 0.2, 0.3, 0.4)
NLEV = 1 + len(LOWER_FRACTIONS)

ALB_SNOW, ALB_GROUND = 0.75, 0.15
SMPSO, SMPSC = -66000.0, -255000.0  # mm, soil water potential at full stomatal opening / closure
STATE_VARS = ("H2OCAN", "H2OSNO", "FSNO", "INT_SNOW", "H2OSOI_LIQ", "T30", "TSOI", "WA")

# Physics options (all off by default, so the quickstart twin is unchanged; `simulate: physics:` and
# SimulatorForward(physics=...) turn them on; configs/camels_basins.yaml does for real basins).
#   frozen_soil: CLM5 ice impedance of infiltration (SoilHydrologyMod: qinmax = (1 - fsat) *
#     min(10**(-e_ice * icefrac) * hksat) over the top layers; Swenson, Lawrence & Lee 2012, JGR 117,
#     D21107), with the top layers' ice fraction from a daily soil temperature (see _soil_temperature).
#   aquifer: a groundwater store below the soil column, as CLM4.5's unconfined aquifer (Niu et al.
#     2007, JGR 112, D07103; CLM4.5 Tech Note section 7.6): the bottom layer drains through bedrock
#     into it by gravity (the layers' own k(s) = hksat s**(2b+3), integrated exactly over the day), and
#     it empties into the stream as a linear reservoir with an e-folding time of AQUIFER_TAU_DAYS
#     (CLM4.5 drains it by water-table depth; a linear store is this stand-in's daily simplification).
#   canopy_longwave: the snow under a canopy receives the canopy's own longwave, emitted at the air
#     temperature, in place of the sky's (CTSM CanopyFluxesMod/SoilFluxesMod: the ground gets
#     (1 - emv) FLDS + emv sigma Tv^4 with emv = 1 - exp(-(elai + esai)/avmuir), avmuir = 1).
PHYSICS_OPTIONS = ("frozen_soil", "aquifer", "canopy_longwave")
AQUIFER_TAU_DAYS = 45.0
# Top-soil heat: TSOI holds the top layer's heat content as a temperature (K). Above TFRZ it is the
# temperature; below, the first LAT kelvin of cooling freeze the layer's water at TFRZ (the latent
# heat of fusion, as CTSM's SoilTemperatureMod phase change: the "zero curtain" of a freezing wet
# soil), with LAT = rho_w HFUS theta / C_v; below TFRZ - LAT the frozen soil cools. The temperature
# relaxes to the air's with an e-folding time of TSOI_TAU_DAYS, slowed under snow by
# exp(-H2OSNO / SNOW_INSULATION_MM) (a snowpack insulates the soil). The ice fraction is CTSM's
# icefrac = vol_ice / watsat (SoilHydrologyMod), with vol_ice the frozen share of the layer's water.
TSOI_TAU_DAYS = 10.0
SNOW_INSULATION_MM = 50.0
CSOL_V = 2.2e6        # J/m3/K, soil solids (CTSM csol: 2.128e6 sand .. 2.385e6 clay)
CLIQ_V = 4.188e6      # J/m3/K, liquid water (CTSM cpliq * denh2o)
LATENT_V = 1000.0 * HFUS   # J/m3 per unit volumetric water frozen (denh2o * hfus)


def check_physics(physics: Mapping | None) -> dict[str, bool]:
    """The physics options as {name: bool}; an unknown option is a UserError naming it."""
    out = {k: False for k in PHYSICS_OPTIONS}
    for k, v in (physics or {}).items():
        if k not in PHYSICS_OPTIONS:
            raise UserError(f"simulate.physics.{k}: unknown physics option (known: {', '.join(PHYSICS_OPTIONS)})")
        out[k] = bool(v)
    return out


# Phenology: LAI = LAI_MIN + (LAI_MAX - LAI_MIN) * sigmoid((T30 - PHENOLOGY_T0) / PHENOLOGY_WIDTH),
# T30 the 30-day running mean of TBOT (K).
PHENOLOGY_T0, PHENOLOGY_WIDTH = 278.15, 2.5

def _t(x, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if like is not None and t.dim() == 0:
        t = t.expand(like.shape[0])
    return t


def soil_properties(static: Mapping, params: Mapping) -> dict[str, torch.Tensor]:
    """Cosby et al. (1984) hydraulic properties with CTSM's organic mixing and the *_sf factors.

    As CTSM SoilStateInitTimeConstMod: watsat = 0.489 - 0.00126*sand, bsw = 2.91 + 0.159*clay,
    sucsat = 10*10**(1.88 - 0.0131*sand) mm, hksat = 0.0070556*10**(-0.884 + 0.0153*sand) mm/s,
    mixed with organic-soil values by om_frac = ORGANIC/organic_max, hksat through CTSM's
    percolation-theory mixing; then multiplied by watsat_sf, bsw_sf, sucsat_sf, hksat_sf.
    """
    sand, clay, org = static["PCT_SAND"], static["PCT_CLAY"], static["ORGANIC"]
    om = (org / ORGANIC_MAX).clamp(0.0, 0.999)
    watsat = (1 - om) * (0.489 - 0.00126 * sand) + om * 0.9
    bsw = (1 - om) * (2.91 + 0.159 * clay) + om * 2.7
    sucsat = (1 - om) * (10.0 * 10.0 ** (1.88 - 0.0131 * sand)) + om * 10.3
    xksat = 0.0070556 * 10.0 ** (-0.884 + 0.0153 * sand)
    om_hksat = 0.1
    pcalpha, pcbeta = 0.5, 0.139
    perc = torch.where(om > pcalpha, (1 - pcalpha) ** (-pcbeta) * (om - pcalpha).clamp_min(1e-12) ** pcbeta,
                       torch.zeros_like(om))
    uncon_frac = (1 - om) + (1 - perc) * om
    uncon_hksat = uncon_frac / ((1 - om) / xksat + (1 - perc) * om / om_hksat)
    hksat = uncon_frac * uncon_hksat + perc * om * om_hksat
    return {
        "watsat": (watsat * params["watsat_sf"]).clamp(0.05, 0.95),
        "bsw": bsw * params["bsw_sf"],
        "sucsat": sucsat * params["sucsat_sf"],
        "hksat": hksat * params["hksat_sf"],
    }


def layer_thickness(zbedrock: torch.Tensor) -> torch.Tensor:
    """(B, NLEV) layer thicknesses in m: 0.1 m on top, the rest of the column split below."""
    rest = (zbedrock.clamp_min(TOP_DZ + 0.1) - TOP_DZ)[:, None] * torch.tensor(LOWER_FRACTIONS, dtype=torch.float64)
    return torch.cat([torch.full_like(rest[:, :1], TOP_DZ), rest], dim=1)


def _prepare(static: Mapping, params: Mapping, B: int, physics: Mapping | None = None) -> dict:
    """Resolve parameters (defaults, fsurdat overrides) and the time-constant column properties.

    Soil texture is uniform with depth, so hydraulic properties are (B,); per-layer quantities
    are lists of NLEV contiguous (B,) tensors (fast elementwise work in the daily loop).
    """
    st = {}
    for k in ALL_STATIC_FIELDS:
        if k in static:
            v = _t(static[k]).reshape(-1)
            st[k] = v.expand(B) if v.numel() == 1 else v
        elif k in STATIC_DEFAULTS:
            st[k] = torch.full((B,), STATIC_DEFAULTS[k], dtype=torch.float64)
        elif k in FSURDAT_PARAMS and k in params:
            continue
        else:
            raise UserError(f"run_land: static field {k} is missing")
    for k in params:
        if k not in DEFAULTS:
            raise UserError(f"run_land: unknown parameter {k} (known: {', '.join(DEFAULTS)})")
    p = {}
    for k, dflt in DEFAULTS.items():
        if k in params:
            v = _t(params[k]).reshape(-1)
            p[k] = v.expand(B) if v.numel() == 1 else v
        elif k in FSURDAT_PARAMS and k in st:
            p[k] = st[k]
        else:
            p[k] = torch.full((B,), dflt, dtype=torch.float64)

    opts = check_physics(physics)
    soil = soil_properties(st, p)
    watsat, bsw, sucsat, hksat = soil["watsat"], soil["bsw"], soil["sucsat"], soil["hksat"]
    dz2 = layer_thickness(p["zbedrock"])                    # (B, L) m
    zbot = torch.cumsum(dz2, 1)
    ztop = zbot - dz2
    ksat_d = hksat * SECSPDAY                               # mm/day
    expo = 2.0 * bsw + 3.0                                  # Clapp-Hornberger k(s) = ksat * s**(2b+3)
    # "Drainable" threshold: relative saturation where gravity drainage falls to 1 mm/day.
    s_fc = ((1.0 / ksat_d) ** (1.0 / expo)).clamp(0.05, 0.98)
    theta_air = watsat * (sucsat / 1e7) ** (1.0 / bsw)     # CTSM air-dry water content
    s_wilt = ((-SMPSC / sucsat) ** (-1.0 / bsw)).clamp(0.0, 0.9)
    # Jackson et al. (1996) root profile (beta = 0.96 per cm), renormalised to the column.
    roots = 0.96 ** (ztop * 100.0) - 0.96 ** (zbot * 100.0)
    roots = roots / roots.sum(1, keepdim=True)
    lai_max, lai_min = st["LAI_MAX"], st["LAI_MIN"]
    htop = (0.5 + 2.5 * lai_max).clamp(0.5, 20.0)           # canopy height from LAI_MAX
    d0, z0m = 0.67 * htop, 0.123 * htop
    ga_coef = VKC ** 2 / (torch.log((ZREF - d0) / z0m) * torch.log((ZREF - d0) / (0.1 * z0m)))
    eps = (watsat - theta_air).clamp_min(1e-3)
    tort = eps ** 2 * (eps / watsat) ** (3.0 / bsw)         # CTSM (Moldrup) tortuosity
    dz = [x.contiguous() for x in dz2.unbind(1)]
    wsat = [watsat * d * 1000.0 for d in dz]                # mm
    return dict(
        p=p, dz=dz, zbed=dz2.sum(1), wsat=wsat, ksat_d=ksat_d, expo=expo, s_fc=s_fc,
        w_fc=[s_fc * x for x in wsat], w_air=[theta_air * d * 1000.0 for d in dz],
        w_wilt=[s_wilt * x for x in wsat], roots=[x.contiguous() for x in roots.unbind(1)],
        watsat=watsat, bsw=bsw, sucsat=sucsat, theta_air=theta_air,
        tort=tort, ga_coef=ga_coef, lai_max=lai_max, lai_min=lai_min, sai=0.1 * lai_max + 0.3,
        n_melt=p["n_melt_coef"] / st["STD_ELEV"].clamp_min(10.0),   # CTSM: n_melt_coef / max(10, std_elev)
        slope_tan=torch.tan(st["SLOPE"] * math.pi / 180.0),
        # ln(10) * e_ice where frozen_soil is on, 0 (no impedance, bit-identical results) where off
        ice_coef=p["e_ice"] * (math.log(10.0) * float(opts["frozen_soil"])),
        aq_on=torch.full((B,), float(opts["aquifer"]), dtype=torch.float64),
        canopy_lw=torch.full((B,), float(opts["canopy_longwave"]), dtype=torch.float64),
    )


def initial_state(static: Mapping, params: Mapping | None = None, B: int | None = None,
                  tbot0: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A cold start: soil at its drainable threshold (water table at bedrock), no snow, dry canopy,
    soil at the first day's air temperature."""
    B = B or int(_t(static["PCT_SAND"]).numel())
    c = _prepare(static, params or {}, B)
    z = torch.zeros(B, dtype=torch.float64)
    t30 = _t(tbot0).reshape(-1) if tbot0 is not None else torch.full((B,), 283.15, dtype=torch.float64)
    return {"H2OCAN": z.clone(), "H2OSNO": z.clone(), "FSNO": z.clone(), "INT_SNOW": z.clone(),
            "H2OSOI_LIQ": torch.stack(c["w_fc"], 1).detach().clone(), "T30": t30.clone(), "TSOI": t30.clone(),
            "WA": z.clone()}


# ---- The daily step --------------------------------------------------------------------------
# Written as pure functions of tensors so that the same code runs eagerly (differentiable, over a
# block of days for the state-independent terms) and, without autograd, through torch.compile as
# one fused C++ loop per day. Powers x**y are written exp(y*log(x)): the same value to round-off,
# about twice as fast on CPU. The stages of a day are called in the order of the original single
# function, so eager and compiled results are unchanged to the bit.

def _pow(x: torch.Tensor, y) -> torch.Tensor:
    return torch.exp(y * torch.log(x))


class TermConstants(NamedTuple):
    """Time-constant (B,) inputs of the state-independent daily terms (see _terms)."""

    ga_coef: torch.Tensor                # aerodynamic conductance per unit wind speed
    lai_min: torch.Tensor
    lai_range: torch.Tensor              # LAI_MAX - LAI_MIN
    sai: torch.Tensor                    # stem area index
    liq_canopy_storage_scalar: torch.Tensor
    interception_fraction: torch.Tensor
    accum_factor: torch.Tensor
    medlynslope: torch.Tensor
    tortuosity: torch.Tensor             # CTSM (Moldrup) tortuosity of the dry surface layer
    canopy_lw: torch.Tensor              # 1 with the canopy_longwave option, else 0


class DayTerms(NamedTuple):
    """State-independent terms of one day (or a block of days), from the forcing (see _terms)."""

    rain: torch.Tensor                   # mm/day
    snow: torch.Tensor                   # mm/day
    intercept: torch.Tensor              # rain intercepted by the canopy, mm/day
    snow_keep: torch.Tensor              # 1 - tanh(accum_factor * newsnow)
    cap: torch.Tensor                    # canopy storage capacity, mm
    mask: torch.Tensor                   # share of the snow visible below the canopy
    rnet0: torch.Tensor                  # net radiation = rnet0 - rnet1 * fsno, W/m2
    rnet1: torch.Tensor
    melt_a: torch.Tensor                 # melt energy = melt_a + melt_b * fsno, W/m2
    melt_b: torch.Tensor
    melt_gate: torch.Tensor              # W/m2 -> mm/day of melt, gated around 0 C
    sub_pot: torch.Tensor                # potential sublimation, mm/day
    fcan: torch.Tensor                   # canopy share of the radiation
    delta: torch.Tensor                  # slope of the saturation vapour pressure, Pa/K
    gamma: torch.Tensor                  # psychrometric constant, Pa/K
    ga: torch.Tensor                     # aerodynamic conductance, m/s
    aero: torch.Tensor                   # rho cp VPD ga, W/m2
    den_wet: torch.Tensor                # Penman-Monteith denominator of the wet canopy
    aero_g: torch.Tensor                 # rho cp VPD ga_g (below the canopy), W/m2
    ga_g: torch.Tensor                   # aerodynamic conductance below the canopy, m/s
    gc_0: torch.Tensor                   # canopy conductance = gc_0 + gc_a * btran, m/s
    gc_a: torch.Tensor
    rsoil_c: torch.Tensor                # soil resistance per m of dry surface layer, s/m
    tbot: torch.Tensor                   # air temperature, K (drives the soil temperature)


class DayConstants(NamedTuple):
    """Time-constant inputs of the daily step: (L, B) for the per-layer fields, (B,) otherwise."""

    fmax: torch.Tensor                   # FMAX
    neg_half_fff: torch.Tensor           # -0.5 * fff, 1/m
    zbed: torch.Tensor                   # soil column depth, m
    n_melt: torch.Tensor                 # n_melt_coef / max(10, STD_ELEV)
    neg_sucsat: torch.Tensor             # -sucsat, mm
    neg_bsw: torch.Tensor                # -bsw
    roots: torch.Tensor                  # (L, B) root fraction
    wsat: torch.Tensor                   # (L, B) water at saturation, mm
    dz_top_mm: torch.Tensor              # top layer thickness, mm (water mm -> volumetric)
    theta_init: torch.Tensor             # 0.8 watsat: the dry surface layer starts below it
    theta_dsl_range: torch.Tensor        # theta_init - theta_air
    d_max: torch.Tensor                  # mm
    infil_capacity: torch.Tensor         # ksat, mm/day (>= 1e-9)
    w_air_top: torch.Tensor              # air-dry water of the top layer, mm
    w_wilt: torch.Tensor                 # (L, B) water at wilting point, mm
    neg_e1: torch.Tensor                 # -e1 = 2b + 2 (e1 = 1 - (2b+3))
    inv_e1: torch.Tensor                 # 1 / e1
    drain_coef: torch.Tensor             # (L-1, B) -e1 ksat dt / wsat per layer above the bottom one
    w_fc: torch.Tensor                   # (L, B) drainable threshold water, mm
    baseflow_coef: torch.Tensor          # baseflow_scalar * tan(slope), mm/s
    n_baseflow: torch.Tensor
    s_fc: torch.Tensor                   # drainable threshold, relative saturation
    one_minus_s_fc: torch.Tensor
    dz: torch.Tensor                     # (L, B) layer thickness, m
    ice_coef: torch.Tensor               # ln(10) * e_ice with frozen_soil, else 0
    aq_on: torch.Tensor                  # 1 with the aquifer option, else 0
    drain_coef_bot: torch.Tensor         # -e1 ksat dt / wsat of the bottom layer (drainage into the aquifer)


class DayState(NamedTuple):
    """The state the daily step carries: canopy water, snow, soil water (L, B) and the saturated zone."""

    h2ocan: torch.Tensor                 # mm
    h2osno: torch.Tensor                 # mm
    fsno: torch.Tensor
    int_snow: torch.Tensor               # snow accumulated since the pack started, mm
    h2osoi_liq: torch.Tensor             # (L, B) mm
    hsat: torch.Tensor                   # saturated thickness above bedrock, m
    tsoi: torch.Tensor                   # top-soil temperature, K
    wa: torch.Tensor                     # aquifer water, mm (0 without the aquifer option)


def _term_constants(c: dict) -> TermConstants:
    """Time-constant (B,) inputs of the state-independent daily terms (see _terms)."""
    p = c["p"]
    return TermConstants(
        ga_coef=c["ga_coef"], lai_min=c["lai_min"], lai_range=c["lai_max"] - c["lai_min"], sai=c["sai"],
        liq_canopy_storage_scalar=p["liq_canopy_storage_scalar"], interception_fraction=p["interception_fraction"],
        accum_factor=p["accum_factor"], medlynslope=p["medlynslope"], tortuosity=c["tort"],
        canopy_lw=c["canopy_lw"])


def _terms(tbot, pbot, qbot, wind, flds, fsds, rain, snow, t30, kt: TermConstants) -> DayTerms:
    """State-independent daily terms from the forcing (RAIN, SNOW in mm/s) and the 30-day mean
    temperature; elementwise, so any shape: (T, B) for a block of days or (B,) for one day."""
    wind = wind.clamp_min(0.5)
    tc = tbot - TFRZ
    # Saturation vapour pressure (Bolton 1980), VPD, slope, psychrometric constant, air density.
    es = 611.2 * torch.exp(17.67 * tc / (tc + 243.5))
    ea = qbot * pbot / (0.622 + 0.378 * qbot)
    vpd = (es - ea).clamp_min(1.0)
    delta = es * 17.67 * 243.5 / (tc + 243.5) ** 2
    gamma = CPAIR * pbot / (0.622 * HVAP)
    rho = pbot / (RAIR * tbot)
    ga = kt.ga_coef * wind
    # Phenology: LAI between LAI_MIN and LAI_MAX following the 30-day mean temperature.
    lai = kt.lai_min + kt.lai_range * torch.sigmoid((t30 - PHENOLOGY_T0) / PHENOLOGY_WIDTH)
    vai = lai + kt.sai
    mask = torch.exp(-0.5 * vai)             # snow visible below the canopy
    fcan = 1.0 - mask                        # canopy share of the radiation
    rain, snow = rain * SECSPDAY, snow * SECSPDAY
    # Canopy interception (CTSM CLM5: fpi = interception_fraction*tanh(LAI+SAI),
    # capacity = liq_canopy_storage_scalar*(LAI+SAI)); the excess drips (in _intercept).
    cap = kt.liq_canopy_storage_scalar * vai
    intercept = kt.interception_fraction * torch.tanh(vai) * rain
    # Snow-covered fraction on new snow (Swenson & Lawrence 2012, as CTSM):
    # fsno = 1 - (1 - tanh(accum_factor * newsnow)) * (1 - fsno); snow_keep is the first factor.
    snow_keep = 1.0 - torch.tanh(kt.accum_factor * snow)
    # Net radiation with the visible snow's albedo, rnet = rnet0 - rnet1 * fsno, i.e.
    # (1 - ALB_GROUND - (ALB_SNOW - ALB_GROUND) * fsno * mask) * FSDS + 0.97 (FLDS - sigma TBOT^4).
    rnet0 = (1.0 - ALB_GROUND) * fsds + 0.97 * (flds - SB * tbot ** 4)
    rnet1 = (ALB_SNOW - ALB_GROUND) * mask * fsds
    # Snow melt energy = melt_a + melt_b * fsno: shortwave reaching the snow below the canopy
    # (absorbed by the snow, plus half of that absorbed by snow-free patches, advected to the
    # snow edges), longwave of a 0 C surface and sensible heat; gated around 0 C.
    ga_snow = (VKC ** 2 / math.log(ZREF / ZSNO) ** 2) * wind
    sw_snow = fsds * torch.exp(-0.3 * vai)
    # Longwave onto the snow: the sky's through the canopy gaps and the canopy's own at the air
    # temperature (CTSM: (1 - emv) FLDS + emv sigma Tv^4, emv = 1 - exp(-(elai + esai)/avmuir), avmuir = 1).
    emv = (1.0 - torch.exp(-vai)) * kt.canopy_lw
    lw_snow = flds + emv * (SB * tbot ** 4 - flds)
    melt_a = sw_snow * (0.5 * (1 - ALB_GROUND)) + (0.97 * (lw_snow - SB * TFRZ ** 4) + rho * CPAIR * ga_snow * tc)
    melt_b = sw_snow * ((1 - ALB_SNOW) - 0.5 * (1 - ALB_GROUND))
    melt_gate = torch.sigmoid(tc) * (SECSPDAY / HFUS)          # W/m2 -> mm/day of melt
    es_snow = torch.where(tc < 0.0, es, 611.2)                 # over the snow: at most 0 C
    sub_pot = rho * CPAIR * (es_snow - ea).clamp_min(0.0) * ga_snow / gamma * (SECSPDAY / HSUB)
    # Penman-Monteith: le = (delta*avail + rho*cp*vpd*ga) / (delta + gamma*(1 + ga/gs)), >= 0.
    aero = rho * CPAIR * vpd * ga
    den_wet = delta + gamma * (1.0 + ga / 1e6)                # wet canopy: no surface resistance
    ga_g = ga / (1.0 + 0.5 * vai)
    aero_g = rho * CPAIR * vpd * ga_g
    # Medlyn et al. (2011): gs = g0 + 1.6 (1 + g1/sqrt(D)) A/ca with A light- and temperature-limited
    # (times btran in _transpiration_demand); canopy conductance in m/s (mol/m2/s * R T / P).
    par = 0.5 * fsds * 4.6
    a_leaf = 15.0 * par / (par + 300.0) * torch.sigmoid((tc - 2.0) / 2.0)
    lai_eff = (1.0 - torch.exp(-0.5 * lai)) / 0.5
    conv = lai_eff * RGAS * tbot / pbot
    gc_a = 1.6 * (1.0 + kt.medlynslope / torch.sqrt(vpd / 1000.0)) * a_leaf / 400.0 * conv
    gc_0 = 1e-4 * conv
    # Soil resistance r_soil = dsl / (D_v * tau) + 20 s/m with dsl in m: rsoil_c = 1e-3 / (D_v * tau).
    rsoil_c = 1e-3 / (2.12e-5 * _pow(tbot / TFRZ, 1.75) * kt.tortuosity)
    return DayTerms(rain, snow, intercept, snow_keep, cap, mask, rnet0, rnet1, melt_a, melt_b, melt_gate, sub_pot,
                    fcan, delta, gamma, ga, aero, den_wet, aero_g, ga_g, gc_0, gc_a, rsoil_c, tbot)


def _day_constants(c: dict) -> DayConstants:
    """Time-constant inputs of the daily step (per layer: (L, B); otherwise (B,))."""
    p = c["p"]

    def L(key):  # per-layer stack, named for its shape label (L, B)
        return torch.stack(c[key])

    e1 = 1.0 - c["expo"]
    return DayConstants(
        fmax=p["FMAX"], neg_half_fff=-0.5 * p["fff"], zbed=c["zbed"], n_melt=c["n_melt"], neg_sucsat=-c["sucsat"],
        neg_bsw=-c["bsw"], roots=L("roots"), wsat=L("wsat"), dz_top_mm=c["dz"][0] * 1000.0,
        theta_init=0.8 * c["watsat"], theta_dsl_range=0.8 * c["watsat"] - c["theta_air"], d_max=p["d_max"],
        infil_capacity=c["ksat_d"].clamp_min(1e-9), w_air_top=c["w_air"][0], w_wilt=L("w_wilt"), neg_e1=-e1,
        inv_e1=1.0 / e1, drain_coef=torch.stack([-e1 * c["ksat_d"] / x for x in c["wsat"][:-1]]), w_fc=L("w_fc"),
        baseflow_coef=p["baseflow_scalar"] * c["slope_tan"], n_baseflow=p["n_baseflow"], s_fc=c["s_fc"],
        one_minus_s_fc=1.0 - c["s_fc"], dz=L("dz"), ice_coef=c["ice_coef"], aq_on=c["aq_on"],
        drain_coef_bot=-e1 * c["ksat_d"] / c["wsat"][-1])


def _saturated_thickness(W: torch.Tensor, k: DayConstants) -> torch.Tensor:
    """Thickness (m) of the saturated zone above bedrock, from the layer water W (L, B).

    A layer counts only as far as every layer below it is saturated, so the water table is the
    top of the saturated zone that rests on bedrock.
    """
    dz = k.dz
    g = ((W / k.wsat - k.s_fc) / k.one_minus_s_fc).clamp(0.0, 1.0)
    h = dz[-1] * g[-1]
    below = g[-1]
    for i in reversed(range(W.shape[0] - 1)):
        h = h + dz[i] * g[i] * below
        below = below * g[i]
    return h


def _saturated_fraction(hsat: torch.Tensor, k: DayConstants) -> torch.Tensor:
    """TOPMODEL saturated fraction (CTSM: fsat = FMAX*exp(-0.5*fff*zwt)), zwt = zbedrock - hsat."""
    return k.fmax * torch.exp(k.neg_half_fff * (k.zbed - hsat))


def _intercept(wcan: torch.Tensor, x: DayTerms) -> tuple[torch.Tensor, torch.Tensor]:
    """Canopy interception; the excess over the storage capacity drips. Returns (wcan, drip) in mm."""
    wcan = wcan + x.intercept
    drip = (wcan - x.cap).clamp_min(0.0)
    return wcan - drip, drip


class _Snow(NamedTuple):
    """The snow stage of a day (water in mm)."""

    swe: torch.Tensor
    fsno: torch.Tensor                   # snow-covered fraction of the day
    fsno_vis: torch.Tensor               # the part of it visible below the canopy
    rnet: torch.Tensor                   # net radiation with that snow's albedo, W/m2
    fsno_next: torch.Tensor              # after depletion: carried to the next day
    int_snow: torch.Tensor
    melt: torch.Tensor
    sub: torch.Tensor


def _snow(swe, fsno, int_snow, x: DayTerms, k: DayConstants) -> _Snow:
    """Snow cover on new snow, the net radiation it leaves, then melt and sublimation from the
    snow-covered fraction."""
    fsno = 1.0 - x.snow_keep * (1.0 - fsno)
    swe = swe + x.snow
    int_snow = int_snow + x.snow
    fsno = torch.where(swe > 1e-9, fsno, 0.0)
    fsno_vis = fsno * x.mask
    rnet = x.rnet0 - x.rnet1 * fsno
    melt = (x.melt_a + x.melt_b * fsno).clamp_min(0.0) * x.melt_gate
    melt = torch.minimum(melt, swe)
    swe = swe - melt
    sub = torch.minimum(fsno * x.sub_pot, swe)
    swe = swe - sub
    # Depletion during melt: fsno = 1 - (acos(2 W/W_int - 1)/pi)**N_melt (CTSM SCA curve).
    ratio = (2.0 * swe / int_snow.clamp_min(1e-6) - 1.0).clamp(-1 + 1e-9, 1 - 1e-9)
    f_dep = 1.0 - _pow(torch.acos(ratio) * (1.0 / math.pi), k.n_melt)
    has_snow = swe > 1e-9
    fsno_next = torch.where(has_snow, torch.minimum(fsno, f_dep), 0.0)
    int_snow = torch.where(has_snow, int_snow, 0.0)
    return _Snow(swe, fsno, fsno_vis, rnet, fsno_next, int_snow, melt, sub)


def _water_stress(W: torch.Tensor, k: DayConstants) -> tuple[torch.Tensor, torch.Tensor]:
    """Soil water stress (CTSM btran from the Clapp-Hornberger matric potential), all layers at once.

    Returns (rw (L, B), the root-weighted stress of each layer, and btran = its sum).
    """
    smp = k.neg_sucsat * _pow((W / k.wsat).clamp(1e-3, 1.0), k.neg_bsw)
    rw = k.roots * ((smp - SMPSC) * (1.0 / (SMPSO - SMPSC))).clamp(0.0, 1.0)
    return rw, rw.sum(0)


def _canopy_evaporation(wcan, rnet, x: DayTerms) -> tuple:
    """Evaporation of intercepted water (wet fraction fwet = (W/Wmax)**(2/3), CTSM).

    Returns (wcan, qvege mm, fwet, the canopy Penman-Monteith numerator).
    """
    num_can = x.delta * (rnet * x.fcan) + x.aero
    fwet = _pow((wcan / x.cap.clamp_min(1e-9)).clamp(1e-12, 1.0), 2.0 / 3.0)
    le_wet = (num_can / x.den_wet).clamp_min(0.0)
    qvege = torch.minimum(fwet * le_wet * (SECSPDAY / HVAP), wcan)
    return wcan - qvege, qvege, fwet, num_can


def _transpiration_demand(num_can, fwet, fsno_vis, btran, x: DayTerms) -> torch.Tensor:
    """Transpiration (mm) per unit btran: Penman-Monteith with the Medlyn canopy conductance (g1 = medlynslope)."""
    gc = (x.gc_0 + x.gc_a * btran).clamp_min(1e-7)
    le_tr = (num_can / (x.delta + x.gamma * (1.0 + x.ga / gc))).clamp_min(0.0)
    return le_tr * (1.0 - fwet) * (1.0 - fsno_vis) * (SECSPDAY / HVAP) / btran.clamp_min(1e-9)


def _soil_evaporation_demand(w_top, rnet, fsno, x: DayTerms, k: DayConstants) -> torch.Tensor:
    """Soil evaporation (mm) through the CLM5 dry surface layer (Swenson & Lawrence 2014):
    dsl = d_max*(theta_init - theta1)/(theta_init - theta_air), r_soil = dsl/(D_v*tau) + 20 s/m."""
    dsl = k.d_max * ((k.theta_init - w_top / k.dz_top_mm) / k.theta_dsl_range).clamp(0.0, 1.0)
    rsoil = dsl * x.rsoil_c + 20.0
    demand = x.delta * (rnet * (1.0 - x.fcan)) + x.aero_g
    le_soil = (demand / (x.delta + x.gamma * (1.0 + x.ga_g * rsoil))).clamp_min(0.0)
    return le_soil * (1.0 - fsno) * (SECSPDAY / HVAP)


def _surface_runoff(drip, melt, fsat, x: DayTerms, k: DayConstants, impedance) -> tuple[torch.Tensor, torch.Tensor]:
    """Saturation excess on fsat, smooth infiltration excess elsewhere, the infiltration capacity
    times the ice impedance (1 without frozen_soil). Returns (qover, infil) in mm."""
    qin = (x.rain - x.intercept) + drip + melt
    qin_u = (1.0 - fsat) * qin
    cap = k.infil_capacity * impedance
    infil = cap * (1.0 - torch.exp(-qin_u / cap))
    return fsat * qin + (qin_u - infil), infil


def _infiltrate(W, infil, qover, ws: list) -> tuple[list, torch.Tensor]:
    """Infiltrate, then cascade water above saturation (ws, per layer) downwards; at the bottom it
    runs off. Returns the layer water as a list of (B,) and qover with that runoff added.
    """
    w = list(W.unbind(0))
    w[0] = w[0] + infil
    for i in range(len(w)):
        over = (w[i] - ws[i]).clamp_min(0.0)
        w[i] = w[i] - over
        if i + 1 < len(w):
            w[i + 1] = w[i + 1] + over
        else:
            qover = qover + over
    return w, qover


def _soil_evapotranspiration(w: list, esoil, et_tr, rw, k: DayConstants) -> tuple:
    """Evapotranspiration from the soil layers, limited by the water each can give. Returns (W, esoil, qvegt)."""
    esoil = torch.minimum(esoil, (w[0] - k.w_air_top).clamp_min(0.0))
    w[0] = w[0] - esoil
    W = torch.stack(w)
    e = torch.minimum(et_tr * rw, (W - k.w_wilt).clamp_min(0.0))
    return W - e, esoil, e.sum(0)


def _drainage(W: torch.Tensor, ws: list, k: DayConstants) -> list:
    """Gravity drainage, k = ksat*s**(2b+3), integrated exactly over the day for each layer as a
    nonlinear reservoir, limited by the room in the layer below (bedrock is impermeable).

    s1 = (s0**e1 - e1 ksat dt / wsat)**(1/e1) with e1 = 1 - (2b+3) < 0; the drop s0 - s1 is
    evaluated as -s0 expm1(log1p(u)/e1), u = -e1 ksat dt / wsat s0**-e1, without cancellation.
    """
    w = list(W.unbind(0))
    for i in range(len(w) - 1):
        s0 = (w[i] / ws[i]).clamp(1e-3, 1.0)
        u = k.drain_coef[i] * _pow(s0, k.neg_e1)
        q = torch.minimum((-s0 * torch.expm1(torch.log1p(u) * k.inv_e1)) * ws[i], ws[i + 1] - w[i + 1])
        q = torch.minimum(q, w[i]).clamp_min(0.0)
        w[i] = w[i] - q
        w[i + 1] = w[i + 1] + q
    return w


def _baseflow(w: list, hsat, k: DayConstants) -> torch.Tensor:
    """Baseflow, CTSM power law: q = baseflow_scalar * tan(slope) * (zbedrock - zwt)**n_baseflow,
    taken from the drainable water of the lowest layers first (updates `w`); returns qdrai in mm."""
    need = k.baseflow_coef * _pow(hsat.clamp_min(1e-9), k.n_baseflow) * SECSPDAY
    qdrai = None
    for i in reversed(range(len(w))):
        take = torch.minimum(need, (w[i] - k.w_fc[i]).clamp_min(0.0))
        w[i] = w[i] - take
        need = need - take
        qdrai = take if qdrai is None else qdrai + take
    return qdrai


def _soil_temperature(tsoi, swe, w_top, x: DayTerms, k: DayConstants) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-soil heat content relaxed toward the air (slower under snow), its water freezing at TFRZ
    before the soil cools further, and the ice impedance of infiltration 10**(-e_ice * icefrac)
    (CLM5). Returns (tsoi, impedance); the impedance is exactly 1 when frozen_soil is off (ice_coef = 0)."""
    theta = w_top / k.dz_top_mm                                   # volumetric water of the top layer
    watsat = k.wsat[0] / k.dz_top_mm
    lat = LATENT_V * theta / ((1.0 - watsat) * CSOL_V + theta * CLIQ_V)   # K of cooling that freeze it all
    temp = torch.where(tsoi >= TFRZ, tsoi, (tsoi + lat).clamp(max=TFRZ))
    rate = (1.0 / TSOI_TAU_DAYS) * torch.exp(-swe * (1.0 / SNOW_INSULATION_MM))
    tsoi = tsoi + (x.tbot - temp) * rate
    frozen = ((TFRZ - tsoi) / lat.clamp_min(1e-6)).clamp(0.0, 1.0)
    icefrac = (frozen * theta / watsat).clamp(0.0, 1.0)
    return tsoi, torch.exp(-k.ice_coef * icefrac)


def _aquifer(w: list, wa, ws: list, k: DayConstants) -> tuple[list, torch.Tensor, torch.Tensor]:
    """The aquifer option: the bottom layer drains into the aquifer (exact nonlinear reservoir, as
    _drainage), the aquifer empties as a linear reservoir. Returns (w, wa, its discharge mm); with
    the option off (aq_on = 0) nothing moves and the results are those without the aquifer."""
    s0 = (w[-1] / ws[-1]).clamp(1e-3, 1.0)
    u = k.drain_coef_bot * _pow(s0, k.neg_e1)
    q = torch.minimum((-s0 * torch.expm1(torch.log1p(u) * k.inv_e1)) * ws[-1], w[-1]).clamp_min(0.0) * k.aq_on
    w[-1] = w[-1] - q
    wa = wa + q
    out = wa * (-math.expm1(-1.0 / AQUIFER_TAU_DAYS))
    return w, wa - out, out


def _day(state: DayState, x: DayTerms, k: DayConstants) -> tuple[DayState, torch.Tensor]:
    """One day for the whole batch.

    state: DayState; x: the day's terms (_terms); k: _day_constants. Returns the new state and the
    responses (len(RESPONSES), B) in RESPONSES order and units.
    """
    wcan, swe, fsno, int_snow, W, hsat, tsoi, wa = state
    dt = SECSPDAY
    fsat = _saturated_fraction(hsat, k)
    wcan, drip = _intercept(wcan, x)
    sn = _snow(swe, fsno, int_snow, x, k)
    rw, btran = _water_stress(W, k)
    wcan, qvege, fwet, num_can = _canopy_evaporation(wcan, sn.rnet, x)
    et_tr = _transpiration_demand(num_can, fwet, sn.fsno_vis, btran, x)
    esoil = _soil_evaporation_demand(W[0], sn.rnet, sn.fsno, x, k)
    tsoi, impedance = _soil_temperature(tsoi, sn.swe, W[0], x, k)
    qover, infil = _surface_runoff(drip, sn.melt, fsat, x, k, impedance)
    ws = list(k.wsat.unbind(0))                                # one unbind: the same gradient sums
    w, qover = _infiltrate(W, infil, qover, ws)
    W, esoil, qvegt = _soil_evapotranspiration(w, esoil, et_tr, rw, k)
    w = _drainage(W, ws, k)
    qdrai = _baseflow(w, hsat, k)
    w, wa, qaq = _aquifer(w, wa, ws, k)
    qdrai = qdrai + qaq

    W = torch.stack(w)
    hsat = _saturated_thickness(W, k)
    qover, qdrai = qover / dt, qdrai / dt                      # mm/day -> mm/s
    swe = sn.swe
    out = torch.stack([qover + qdrai, qover, qdrai, (HVAP * (esoil + qvegt + qvege) + HSUB * sn.sub) / dt,
                       (esoil + sn.sub) / dt, qvegt / dt, qvege / dt, w[0], swe, wcan + swe + W.sum(0) + wa,
                       k.zbed - hsat])
    return DayState(wcan, swe, sn.fsno_next, sn.int_snow, W, hsat, tsoi, wa), out


# The per-layer (L, B) fields of DayConstants (drain_coef has L - 1 rows), packed apart.
_LAYER_FIELDS = ("roots", "wsat", "w_wilt", "drain_coef", "w_fc", "dz")
_FLAT_FIELDS = tuple(f for f in DayConstants._fields if f not in _LAYER_FIELDS)


def _pack(kt: TermConstants, k: DayConstants) -> tuple[torch.Tensor, torch.Tensor]:
    """The constants as two tensors, (N, B) and (N_layer, L, B), for few inputs to the compiled step."""
    L = k.wsat.shape[0]
    flat = [*kt, *(getattr(k, f) for f in _FLAT_FIELDS)]
    lay = [v if v.shape[0] == L else torch.cat([v, torch.zeros_like(v[:1])])
           for v in (getattr(k, f) for f in _LAYER_FIELDS)]
    return torch.stack(flat), torch.stack(lay)


def _unpack(kb: torch.Tensor, kl: torch.Tensor) -> tuple[TermConstants, DayConstants]:
    flat, lay = kb.unbind(0), kl.unbind(0)
    nt = len(TermConstants._fields)
    fields = dict(zip(_FLAT_FIELDS, flat[nt:]))
    fields.update(zip(_LAYER_FIELDS, lay))
    return TermConstants(*flat[:nt]), DayConstants(**fields)


def _day_forced(state: DayState, t30: torch.Tensor, fday: tuple, kb: torch.Tensor, kl: torch.Tensor) -> tuple:
    """One day from the raw forcing fday (FORCING order, (B,) each): T30, the day's terms, _day."""
    kt, k = _unpack(kb, kl)
    rain, snow, tbot, fsds, flds, qbot, pbot, wind = fday
    t30 = t30 + (tbot - t30) / 30.0
    state, out = _day(state, _terms(tbot, pbot, qbot, wind, flds, fsds, rain, snow, t30, kt), k)
    return state, t30, out


# torch.compile of _day_forced (inductor: one fused C++/OpenMP loop per day) for runs without
# autograd. It is compiled once per process (inductor caches the generated code in its cache
# folder, so a later process skips the C++ build but still traces, a few seconds); runs smaller
# than COMPILE_MIN_WORK gridcell-days stay eager unless the step is compiled already.
COMPILE_MIN_WORK = 1_000_000
_compiled = {"fn": None, "failed": False, "ok": False}


def _compile_mode() -> str:
    v = os.environ.get("ESM_EMU_SIM_COMPILE", "auto").strip().lower()
    return {"0": "off", "false": "off", "no": "off", "off": "off",
            "1": "on", "true": "on", "yes": "on", "on": "on"}.get(v, "auto")


def _use_compiled(grad: bool, B: int, T: int) -> bool:
    """Compile the daily step? Never with autograd; ESM_EMU_SIM_COMPILE=0 never, =1 always; by
    default when compiled already or for at least COMPILE_MIN_WORK gridcell-days."""
    mode = _compile_mode()
    if grad or mode == "off" or _compiled["failed"]:
        return False
    return mode == "on" or _compiled["ok"] or B * T >= COMPILE_MIN_WORK


def simulation_threads() -> int:
    """Threads for a simulator run: ESM_EMU_SIM_THREADS if set, else torch's setting, but 1 when the
    machine is already busy (1-min load average >= cores): the compiled step's OpenMP barriers stall
    whenever one of its threads is preempted (measured 2-3x slower with 2 threads on 2 busy cores)."""
    env = os.environ.get("ESM_EMU_SIM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UserError(f"ESM_EMU_SIM_THREADS: {env!r} is not a whole number") from None
    n = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except (AttributeError, OSError):
        busy = False
    return 1 if busy else n


def _compiled_step():
    if _compiled["fn"] is None:
        fn = torch.compile(_day_forced, dynamic=True, fullgraph=True)

        def step(*args):
            # The module's float constants are constants of the graph, not symbolic inputs.
            with torch._dynamo.config.patch(specialize_float=True):
                return fn(*args)
        _compiled["fn"] = step
    return _compiled["fn"]


def run_land(forcing: Mapping[str, torch.Tensor], static: Mapping[str, torch.Tensor],
             params: Mapping[str, torch.Tensor] | None = None, state: Mapping | None = None,
             return_state: bool = False, block_days: int = 73, physics: Mapping | None = None):
    """Run the simulator over daily forcing (B, T); return CTSM-named responses (B, T).

    forcing: RAIN, SNOW (mm/s), TBOT (K), FSDS, FLDS (W/m2), QBOT (kg/kg), PBOT (Pa), WIND (m/s).
    static: ALL_STATIC_FIELDS (B,) (ORGANIC, STD_ELEV, LAI_MAX, LAI_MIN optional).
    params: any of DEFAULTS (B,) or scalars; missing ones take the CTSM default, and FMAX /
    zbedrock given here override the static fields. `state` (from a previous call with
    return_state=True) continues a run; without it the run starts cold (see initial_state).
    Outputs: fluxes in mm/s (QRUNOFF, QOVER, QDRAI, QSOIL, QVEGT, QVEGE), EFLX_LH_TOT W/m2,
    SOILWATER_10CM kg/m2, H2OSNO and TWS mm, ZWT m; all float64. Differentiable in params.
    Large runs without autograd use a compiled daily step (ESM_EMU_SIM_COMPILE=0 turns it off).
    `physics`: options of PHYSICS_OPTIONS turned on ({name: True}); all off by default.
    """
    res, st = _simulate(forcing, static, params, state, block_days, outputs=True, physics=physics)
    return (res, st) if return_state else res


def _simulate(forcing, static, params, state, block_days: int = 73, outputs: bool = True, physics=None):
    """run_land's work: (responses or None, end state)."""
    params = dict(params or {})
    missing = [v for v in FORCING if v not in forcing]
    if missing:
        raise UserError(f"run_land: forcing variable {missing[0]} is missing")
    f = {n: _t(forcing[n]) for n in FORCING}
    B, T = f["RAIN"].shape
    c = _prepare(static, params, B, physics)
    if state is None:
        state = initial_state(static, params, B, tbot0=f["TBOT"][:, 0])
    kt, k = _term_constants(c), _day_constants(c)
    W = _t(state["H2OSOI_LIQ"]).t().contiguous()
    t30 = _t(state["T30"])
    tsoi = _t(state["TSOI"]) if "TSOI" in state else t30.clone()   # a state saved before TSOI existed
    wa = _t(state["WA"]) if "WA" in state else torch.zeros_like(t30)   # a state saved before WA existed
    st = DayState(*(_t(state[n]) for n in ("H2OCAN", "H2OSNO", "FSNO", "INT_SNOW")), W, _saturated_thickness(W, k),
                  tsoi, wa)
    grad = torch.is_grad_enabled() and any(v.requires_grad for v in (*kt, *k, *st, t30, *f.values()))
    ftm = [f[n].t().contiguous() for n in FORCING]          # time-major (T, B)
    run = None
    if _use_compiled(grad, B, T):
        try:
            run = _run_compiled(_compiled_step(), ftm, st, t30, _pack(kt, k), outputs)
            _compiled["ok"] = True
        except Exception as err:  # no C++ compiler, unsupported platform, ...: warn once, run eagerly
            _compiled["failed"] = True
            warnings.warn(f"run_land: the compiled daily step failed ({type(err).__name__}: "
                          f"{(str(err).splitlines() or [''])[0]}); running eagerly (slower). "
                          "ESM_EMU_SIM_COMPILE=0 skips the attempt.", RuntimeWarning, stacklevel=3)
    if run is None:
        run = _run_eager(ftm, st, t30, kt, k, block_days, outputs)
    outs, st, t30 = run

    res = None
    if outputs:
        if T == 0:
            res = {n: torch.zeros(B, 0, dtype=torch.float64) for n in RESPONSES}
        else:
            res = dict(zip(RESPONSES, torch.stack(outs, 2).unbind(0)))   # (n_vars, B, T), contiguous
    wcan, swe, fsno, int_snow, W, _, tsoi, wa = st
    return res, {"H2OCAN": wcan, "H2OSNO": swe, "FSNO": fsno, "INT_SNOW": int_snow,
                 "H2OSOI_LIQ": W.t().contiguous(), "T30": t30, "TSOI": tsoi, "WA": wa}


def _run_compiled(step, ftm: list, st: DayState, t30: torch.Tensor, packed: tuple, outputs: bool):
    """The time loop with the compiled _day_forced, day by day from the raw forcing."""
    outs = []
    for it in range(ftm[0].shape[0]):
        st, t30, o = step(st, t30, tuple(x[it] for x in ftm), *packed)
        if outputs:
            outs.append(o)
    return outs, st, t30


def _run_eager(ftm: list, st: DayState, t30: torch.Tensor, kt: TermConstants, k: DayConstants, block_days: int,
               outputs: bool):
    """The eager time loop: the state-independent terms a block of days at a time, then _day."""
    T = ftm[0].shape[0]
    outs = []
    for t0 in range(0, T, block_days):
        rain, snow, tbot, fsds, flds, qbot, pbot, wind = (x[t0:t0 + block_days] for x in ftm)   # (Tb, B)
        t30s = []
        for row in tbot:
            t30 = t30 + (row - t30) / 30.0
            t30s.append(t30)
        x = _terms(tbot, pbot, qbot, wind, flds, fsds, rain, snow, torch.stack(t30s), kt)
        for it in range(tbot.shape[0]):
            st, o = _day(st, DayTerms._make(v[it] for v in x), k)
            if outputs:
                outs.append(o)
    return outs, st, t30


def spin_up(forcing: Mapping[str, torch.Tensor], static: Mapping, params: Mapping | None = None,
            n_years: int = 1, days_per_year: int = 365, physics: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Repeat the first year of forcing n_years times from a cold start; return the end state."""
    year = {k: _t(v)[:, :days_per_year] for k, v in forcing.items() if k in FORCING}
    state = None
    for _ in range(max(int(n_years), 0)):
        _, state = _simulate(year, static, params, state, outputs=False, physics=physics)
    if state is None:
        B = year["RAIN"].shape[0]
        state = initial_state(static, params, B, tbot0=year["TBOT"][:, 0])
    return state
