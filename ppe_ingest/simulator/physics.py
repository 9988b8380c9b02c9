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
from typing import Mapping

import torch

from ..errors import UserError

FORCING_VARS = ("RAIN", "SNOW", "TBOT", "FSDS", "FLDS", "QBOT", "PBOT", "WIND")
RESPONSE_VARS = ("QRUNOFF", "QOVER", "QDRAI", "EFLX_LH_TOT", "QSOIL", "QVEGT", "QVEGE",
                 "SOILWATER_10CM", "H2OSNO", "TWS", "ZWT")
# Static gridcell fields (fsurdat names where CTSM has them). LAI_MAX/LAI_MIN stand in for the
# fsurdat MONTHLY_LAI climatology: LAI follows a temperature-driven phenology between them.
STATIC_VARS = ("PCT_SAND", "PCT_CLAY", "ORGANIC", "FMAX", "zbedrock", "SLOPE", "STD_ELEV",
               "LAI_MAX", "LAI_MIN")
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
STATE_VARS = ("H2OCAN", "H2OSNO", "FSNO", "INT_SNOW", "H2OSOI_LIQ", "T30")


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


def _prepare(static: Mapping, params: Mapping, B: int) -> dict:
    """Resolve parameters (defaults, fsurdat overrides) and the time-constant column properties.

    Soil texture is uniform with depth, so hydraulic properties are (B,); per-layer quantities
    are lists of NLEV contiguous (B,) tensors (fast elementwise work in the daily loop).
    """
    st = {}
    for k in STATIC_VARS:
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
    )


def initial_state(static: Mapping, params: Mapping | None = None, B: int | None = None,
                  tbot0: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A cold start: soil at its drainable threshold (water table at bedrock), no snow, dry canopy."""
    B = B or int(_t(static["PCT_SAND"]).numel())
    c = _prepare(static, params or {}, B)
    z = torch.zeros(B, dtype=torch.float64)
    t30 = _t(tbot0).reshape(-1) if tbot0 is not None else torch.full((B,), 283.15, dtype=torch.float64)
    return {"H2OCAN": z.clone(), "H2OSNO": z.clone(), "FSNO": z.clone(), "INT_SNOW": z.clone(),
            "H2OSOI_LIQ": torch.stack(c["w_fc"], 1).detach().clone(), "T30": t30.clone()}


def _saturated_thickness(w: list, c: dict) -> torch.Tensor:
    """Thickness (m) of the saturated zone above bedrock, from the drainable water of each layer.

    A layer counts only as far as every layer below it is saturated, so the water table is the
    top of the saturated zone that rests on bedrock.
    """
    h = torch.zeros_like(w[0])
    below = torch.ones_like(w[0])
    for i in reversed(range(len(w))):
        g = ((w[i] / c["wsat"][i] - c["s_fc"]) / (1.0 - c["s_fc"])).clamp(0.0, 1.0)
        h = h + c["dz"][i] * g * below
        below = below * g
    return h


def _penman_monteith(avail, vpd, ga, gs, delta, gamma, rho):
    """Latent heat (W/m2, >= 0) from available energy, VPD (Pa) and conductances (m/s)."""
    le = (delta * avail + rho * CPAIR * vpd * ga) / (delta + gamma * (1.0 + ga / gs))
    return le.clamp_min(0.0)


def _forcing_terms(f: dict, c: dict, p: dict, t30: torch.Tensor):
    """State-independent daily terms for a block of days, time-major (Tb, B); and the new T30."""
    tbot, pbot, qbot = f["TBOT"], f["PBOT"], f["QBOT"]
    wind = f["WIND"].clamp_min(0.5)
    tc = tbot - TFRZ
    # Saturation vapour pressure (Bolton 1980), VPD, slope, psychrometric constant, air density.
    es = 611.2 * torch.exp(17.67 * tc / (tc + 243.5))
    ea = qbot * pbot / (0.622 + 0.378 * qbot)
    x = {}
    x["vpd"] = (es - ea).clamp_min(1.0)
    x["delta"] = es * 17.67 * 243.5 / (tc + 243.5) ** 2
    x["gamma"] = CPAIR * pbot / (0.622 * HVAP)
    x["rho"] = pbot / (RAIR * tbot)
    x["ga"] = c["ga_coef"] * wind
    # Phenology: LAI between LAI_MIN and LAI_MAX following the 30-day mean temperature.
    t30s = []
    for row in tbot:
        t30 = t30 + (row - t30) / 30.0
        t30s.append(t30)
    t30s = torch.stack(t30s)
    lai = c["lai_min"] + (c["lai_max"] - c["lai_min"]) * torch.sigmoid((t30s - 278.15) / 2.5)
    vai = lai + c["sai"]
    x["vai"] = vai
    x["fcan"] = 1.0 - torch.exp(-0.5 * vai)
    x["mask"] = torch.exp(-0.5 * vai)      # snow visible below the canopy
    x["cap"] = p["liq_canopy_storage_scalar"] * vai
    x["fpi"] = p["interception_fraction"] * torch.tanh(vai)
    x["lw_net"] = 0.97 * (f["FLDS"] - SB * tbot ** 4)
    x["fsds"] = f["FSDS"]
    # Snow: shortwave reaching the snow below the canopy; 0 C-surface longwave; sensible heat.
    ga_snow = VKC ** 2 * wind / math.log(ZREF / ZSNO) ** 2
    x["sw_snow"] = f["FSDS"] * torch.exp(-0.3 * vai)
    x["e_other"] = 0.97 * (f["FLDS"] - SB * TFRZ ** 4) + x["rho"] * CPAIR * ga_snow * tc
    x["melt_gate"] = torch.sigmoid(tc)
    es_snow = 611.2 * torch.exp(17.67 * tc.clamp_max(0.0) / (tc.clamp_max(0.0) + 243.5))
    x["sub_pot"] = x["rho"] * CPAIR * (es_snow - ea).clamp_min(0.0) * ga_snow / x["gamma"] * SECSPDAY / HSUB
    # Medlyn et al. (2011): gs = g0 + 1.6 (1 + g1/sqrt(D)) A/ca with A light- and temperature-limited
    # (times btran in the loop); canopy conductance in m/s (mol/m2/s * R T / P).
    par = 0.5 * f["FSDS"] * 4.6
    a_leaf = 15.0 * par / (par + 300.0) * torch.sigmoid((tc - 2.0) / 2.0)
    lai_eff = (1.0 - torch.exp(-0.5 * lai)) / 0.5
    conv = lai_eff * RGAS * tbot / pbot
    x["gc_a"] = 1.6 * (1.0 + p["medlynslope"] / torch.sqrt(x["vpd"] / 1000.0)) * a_leaf / 400.0 * conv
    x["gc_0"] = 1e-4 * conv
    x["dv_tort"] = 2.12e-5 * (tbot / TFRZ) ** 1.75 * c["tort"]
    x["ga_g"] = x["ga"] / (1.0 + 0.5 * vai)
    x["rain"] = f["RAIN"] * SECSPDAY
    x["snow"] = f["SNOW"] * SECSPDAY
    return x, t30


def run_land(forcing: Mapping[str, torch.Tensor], static: Mapping[str, torch.Tensor],
             params: Mapping[str, torch.Tensor] | None = None, state: Mapping | None = None,
             return_state: bool = False, block_days: int = 73):
    """Run the simulator over daily forcing (B, T); return CTSM-named responses (B, T).

    forcing: RAIN, SNOW (mm/s), TBOT (K), FSDS, FLDS (W/m2), QBOT (kg/kg), PBOT (Pa), WIND (m/s).
    static: STATIC_VARS (B,) (ORGANIC, STD_ELEV, LAI_MAX, LAI_MIN optional).
    params: any of DEFAULTS (B,) or scalars; missing ones take the CTSM default, and FMAX /
    zbedrock given here override the static fields. `state` (from a previous call with
    return_state=True) continues a run; without it the run starts cold (see initial_state).
    Outputs: fluxes in mm/s (QRUNOFF, QOVER, QDRAI, QSOIL, QVEGT, QVEGE), EFLX_LH_TOT W/m2,
    SOILWATER_10CM kg/m2, H2OSNO and TWS mm, ZWT m; all float64. Differentiable in params.
    """
    params = dict(params or {})
    missing = [v for v in FORCING_VARS if v not in forcing]
    if missing:
        raise UserError(f"run_land: forcing variable {missing[0]} is missing")
    f = {k: _t(forcing[k]) for k in FORCING_VARS}
    B, T = f["RAIN"].shape
    c = _prepare(static, params, B)
    p = c["p"]
    if state is None:
        state = initial_state(static, params, B, tbot0=f["TBOT"][:, 0])
    wcan, swe, fsno, int_snow = (_t(state[k]) for k in ("H2OCAN", "H2OSNO", "FSNO", "INT_SNOW"))
    w = [x.contiguous() for x in _t(state["H2OSOI_LIQ"]).unbind(1)]
    t30 = _t(state["T30"])
    L = len(w)
    dt = SECSPDAY
    capin = c["ksat_d"].clamp_min(1e-9)                     # infiltration capacity, mm/day
    out = {k: [] for k in RESPONSE_VARS}

    for t0 in range(0, T, block_days):
        fb = {k: v[:, t0:t0 + block_days].t().contiguous() for k, v in f.items()}   # time-major
        x, t30 = _forcing_terms(fb, c, p, t30)
        for it in range(fb["RAIN"].shape[0]):
            d = {k: v[it] for k, v in x.items()}
            rain, snow, vai = d["rain"], d["snow"], d["vai"]

            # Water table and TOPMODEL saturated fraction (CTSM: fsat = FMAX*exp(-0.5*fff*zwt)).
            hsat = _saturated_thickness(w, c)
            fsat = p["FMAX"] * torch.exp(-0.5 * p["fff"] * (c["zbed"] - hsat))

            # Canopy interception (CTSM CLM5: fpi = interception_fraction*tanh(LAI+SAI),
            # capacity = liq_canopy_storage_scalar*(LAI+SAI)); the excess drips.
            intercept = d["fpi"] * rain
            wcan = wcan + intercept
            drip = (wcan - d["cap"]).clamp_min(0.0)
            wcan = wcan - drip
            throughfall = rain - intercept + drip

            # Snow-covered fraction on new snow (Swenson & Lawrence 2012, as CTSM):
            # fsno = 1 - (1 - tanh(accum_factor * newsnow)) * (1 - fsno).
            fsno = 1.0 - (1.0 - torch.tanh(p["accum_factor"] * snow)) * (1.0 - fsno)
            swe = swe + snow
            int_snow = int_snow + snow
            fsno = torch.where(swe > 1e-9, fsno, torch.zeros_like(fsno))
            fsno_vis = fsno * d["mask"]
            rnet = (1.0 - ALB_GROUND - (ALB_SNOW - ALB_GROUND) * fsno_vis) * d["fsds"] + d["lw_net"]
            # Melt energy: shortwave absorbed by the snow plus half of that absorbed by snow-free
            # patches (advected to the snow edges), 0 C-surface longwave, sensible heat.
            sw_abs = d["sw_snow"] * (fsno * (1 - ALB_SNOW) + 0.5 * (1.0 - fsno) * (1 - ALB_GROUND))
            melt = (sw_abs + d["e_other"]).clamp_min(0.0) * d["melt_gate"] * (dt / HFUS)
            melt = torch.minimum(melt, swe)
            swe = swe - melt
            sub = torch.minimum(fsno * d["sub_pot"], swe)
            swe = swe - sub
            # Depletion during melt: fsno = 1 - (acos(2 W/W_int - 1)/pi)**N_melt (CTSM SCA curve).
            ratio = (2.0 * swe / int_snow.clamp_min(1e-6) - 1.0).clamp(-1 + 1e-9, 1 - 1e-9)
            f_dep = 1.0 - (torch.acos(ratio) * (1.0 / math.pi)) ** c["n_melt"]
            has_snow = swe > 1e-9
            fsno_new = torch.where(has_snow, torch.minimum(fsno, f_dep), torch.zeros_like(fsno))
            int_snow = torch.where(has_snow, int_snow, torch.zeros_like(int_snow))

            # Soil water stress (CTSM btran from the Clapp-Hornberger matric potential).
            rw = []
            for i in range(L):
                s = (w[i] / c["wsat"][i]).clamp(1e-3, 1.0)
                smp = -c["sucsat"] * s ** (-c["bsw"])
                rw.append(c["roots"][i] * ((smp - SMPSC) * (1.0 / (SMPSO - SMPSC))).clamp(0.0, 1.0))
            btran = sum(rw)

            # Canopy evaporation of intercepted water (wet fraction fwet = (W/Wmax)**(2/3), CTSM).
            avail_can = rnet * d["fcan"]
            fwet = (wcan / d["cap"].clamp_min(1e-9)).clamp(1e-12, 1.0) ** (2.0 / 3.0)
            le_wet = _penman_monteith(avail_can, d["vpd"], d["ga"], 1e6, d["delta"], d["gamma"], d["rho"])
            qvege = torch.minimum(fwet * le_wet * (dt / HVAP), wcan)
            wcan = wcan - qvege

            # Transpiration: Penman-Monteith with the Medlyn canopy conductance (g1 = medlynslope).
            gc = (d["gc_0"] + d["gc_a"] * btran).clamp_min(1e-7)
            le_tr = _penman_monteith(avail_can, d["vpd"], d["ga"], gc, d["delta"], d["gamma"], d["rho"])
            et_tr = le_tr * (1.0 - fwet) * (1.0 - fsno_vis) * (dt / HVAP) / btran.clamp_min(1e-9)

            # Soil evaporation through the CLM5 dry surface layer (Swenson & Lawrence 2014):
            # dsl = d_max*(theta_init - theta1)/(theta_init - theta_air), r_soil = dsl/(D_v*tau) + 20 s/m.
            theta1 = w[0] / (c["dz"][0] * 1000.0)
            theta_init = 0.8 * c["watsat"]
            dsl = p["d_max"] * ((theta_init - theta1) / (theta_init - c["theta_air"])).clamp(0.0, 1.0)
            rsoil = dsl * 1e-3 / d["dv_tort"] + 20.0
            le_soil = _penman_monteith(rnet * (1.0 - d["fcan"]), d["vpd"], d["ga_g"], 1.0 / rsoil,
                                       d["delta"], d["gamma"], d["rho"])
            esoil = le_soil * (1.0 - fsno) * (dt / HVAP)
            fsno = fsno_new

            # Surface runoff: saturation excess on fsat, smooth infiltration excess elsewhere.
            qin = throughfall + melt
            qin_u = (1.0 - fsat) * qin
            infil = capin * (1.0 - torch.exp(-qin_u / capin))
            qover = fsat * qin + (qin_u - infil)

            # Infiltrate, then cascade water above saturation downwards; at the bottom it runs off.
            w = list(w)
            w[0] = w[0] + infil
            for i in range(L):
                over = (w[i] - c["wsat"][i]).clamp_min(0.0)
                w[i] = w[i] - over
                if i + 1 < L:
                    w[i + 1] = w[i + 1] + over
                else:
                    qover = qover + over

            # Evapotranspiration from the soil layers, limited by the water each can give.
            esoil = torch.minimum(esoil, (w[0] - c["w_air"][0]).clamp_min(0.0))
            w[0] = w[0] - esoil
            qvegt = torch.zeros_like(rain)
            for i in range(L):
                e = torch.minimum(et_tr * rw[i], (w[i] - c["w_wilt"][i]).clamp_min(0.0))
                w[i] = w[i] - e
                qvegt = qvegt + e

            # Gravity drainage, k = ksat*s**(2b+3), integrated exactly over the day for each
            # layer as a nonlinear reservoir, limited by the room in the layer below.
            e1 = 1.0 - c["expo"]
            inv_e1 = 1.0 / e1
            for i in range(L - 1):
                s0 = (w[i] / c["wsat"][i]).clamp(1e-3, 1.0)
                s1 = (s0 ** e1 - e1 * c["ksat_d"] / c["wsat"][i]) ** inv_e1
                q = torch.minimum((s0 - s1) * c["wsat"][i], c["wsat"][i + 1] - w[i + 1])
                q = torch.minimum(q, w[i]).clamp_min(0.0)
                w[i] = w[i] - q
                w[i + 1] = w[i + 1] + q

            # Baseflow, CTSM power law: q = baseflow_scalar * tan(slope) * (zbedrock - zwt)**n_baseflow,
            # taken from the drainable water of the lowest layers first.
            need = p["baseflow_scalar"] * c["slope_tan"] * hsat.clamp_min(1e-9) ** p["n_baseflow"] * dt
            qdrai = torch.zeros_like(rain)
            for i in reversed(range(L)):
                take = torch.minimum(need, (w[i] - c["w_fc"][i]).clamp_min(0.0))
                w[i] = w[i] - take
                need = need - take
                qdrai = qdrai + take

            out["QOVER"].append(qover)
            out["QDRAI"].append(qdrai)
            out["QSOIL"].append(esoil + sub)
            out["QVEGT"].append(qvegt)
            out["QVEGE"].append(qvege)
            out["EFLX_LH_TOT"].append(HVAP * (esoil + qvegt + qvege) + HSUB * sub)
            out["SOILWATER_10CM"].append(w[0])
            out["H2OSNO"].append(swe)
            out["TWS"].append(wcan + swe + sum(w))
            out["ZWT"].append(c["zbed"] - _saturated_thickness(w, c))

    if T == 0:
        res = {k: torch.zeros(B, 0, dtype=torch.float64) for k in RESPONSE_VARS}
    else:
        res = {k: torch.stack(v, 1) for k, v in out.items() if v}
        for k in ("QOVER", "QDRAI", "QSOIL", "QVEGT", "QVEGE", "EFLX_LH_TOT"):
            res[k] = res[k] / dt                              # mm/day -> mm/s, J/m2/day -> W/m2
        res["QRUNOFF"] = res["QOVER"] + res["QDRAI"]
        res = {k: res[k] for k in RESPONSE_VARS}
    if return_state:
        new_state = {"H2OCAN": wcan, "H2OSNO": swe, "FSNO": fsno, "INT_SNOW": int_snow,
                     "H2OSOI_LIQ": torch.stack(w, 1), "T30": t30}
        return res, new_state
    return res


def spin_up(forcing: Mapping[str, torch.Tensor], static: Mapping, params: Mapping | None = None,
            n_years: int = 1, days_per_year: int = 365) -> dict[str, torch.Tensor]:
    """Repeat the first year of forcing n_years times from a cold start; return the end state."""
    year = {k: _t(v)[:, :days_per_year] for k, v in forcing.items() if k in FORCING_VARS}
    state = None
    for _ in range(max(int(n_years), 0)):
        _, state = run_land(year, static, params, state=state, return_state=True)
    if state is None:
        B = year["RAIN"].shape[0]
        state = initial_state(static, params, B, tbot0=year["TBOT"][:, 0])
    return state
