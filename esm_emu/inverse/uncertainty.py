"""Parameter uncertainty from an ensemble of inverse models (seeds) and MC dropout, and the
coverage of known true values by the resulting intervals."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm


@dataclass(frozen=True)
class UncertaintyConfig:
    """The validated ``inverse.uncertainty`` section (its defaults are in esm_emu.inverse.config)."""

    ensemble: int  # inverse models trained with different seeds
    mc_samples: int  # MC-dropout draws per member (0: off)
    level: float  # interval level for coverage
    holdout: float = 0.2  # share of observed sites each member leaves out (regionalisation error)


def combine(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over ensemble members, each (N,P) or (S,N,P) MC-dropout draws.

    The total variance is the mean within-member variance plus the variance of member means
    (law of total variance).
    """
    means, within = [], []
    for s in samples:
        s = s if s.dim() == 3 else s[None]
        means.append(s.mean(0))
        within.append(s.var(0, unbiased=False))
    m = torch.stack(means)
    mean = m.mean(0)
    var = torch.stack(within).mean(0) + m.var(0, unbiased=False)
    return mean, var.sqrt()


def coverage(true, mean, std, level: float = 0.9, axis: int = 0) -> np.ndarray:
    """Fraction of true values inside the central `level` Gaussian interval mean +- z*std."""
    true, mean, std = (np.asarray(x, dtype=np.float64) for x in (true, mean, std))
    z = norm.ppf(0.5 + level / 2)
    inside = np.abs(true - mean) <= z * std
    return inside.mean(axis=axis)


def interval_inside(true, lower, upper) -> np.ndarray:
    """(N,) bool: true values inside [lower, upper] (for intervals not symmetric in physical units)."""
    true, lower, upper = (np.asarray(x, dtype=np.float64) for x in (true, lower, upper))
    return (true >= lower) & (true <= upper)


@dataclass
class Posterior:
    """Unit-space estimate and std per entity, and what the std is made of (unit-space variances)."""

    u: np.ndarray  # (N, P) posterior mean in [0, 1]
    sd: np.ndarray  # (N, P)
    parts: dict  # name -> (N, P) variance contributions


def posterior(u_members: list[np.ndarray], observed: np.ndarray, ratio_obs: np.ndarray,
              regional_var: np.ndarray | None = None) -> Posterior:
    """Combine the inverse ensemble with the linearised data constraint, in unit space.

    ``u_members``: per member (S, N, P) draws (MC dropout) or (N, P); ``ratio_obs`` (n_observed, P):
    posterior-to-prior variance ratios at the observed entities (esm_emu.inverse.identifiability;
    their residual std carries the observation and emulator errors); unobserved entities take
    the median ratio. ``regional_var`` (P,): the variance of the estimate at a site the networks
    did not see (from held-out observed sites); it applies where there are no data.

    Mean: the ensemble mean pulled toward the prior mean by the ratio (a parameter the data cannot
    tell returns to the middle of its range). Variance: data (ratio / 12) + ensemble spread
    (law of total variance over members and draws) + regionalisation (unobserved entities), capped
    at the prior's 1/12 so an interval never claims less than it knows nor more than the bounds.
    """
    from .identifiability import PRIOR_PRECISION, shrink_to_prior

    draws = [np.asarray(m, np.float64) for m in u_members]
    draws = [d if d.ndim == 3 else d[None] for d in draws]
    means = np.stack([d.mean(0) for d in draws])
    ens_var = np.stack([d.var(0) for d in draws]).mean(0) + means.var(0)
    u_hat = means.mean(0)
    N, P = u_hat.shape
    ratio = np.broadcast_to(np.nanmedian(ratio_obs, axis=0), (N, P)).copy()
    ratio[observed] = ratio_obs
    ratio = np.clip(np.nan_to_num(ratio, nan=1.0), 0.0, 1.0)
    u = shrink_to_prior(u_hat, ratio)
    data_var = ratio / PRIOR_PRECISION
    reg = np.zeros((N, P))
    if regional_var is not None:
        reg[~observed] = np.asarray(regional_var, np.float64)[None] * (1 - ratio[~observed]) ** 2
    var = np.minimum(data_var + ens_var + reg, 1 / PRIOR_PRECISION)
    return Posterior(u, np.sqrt(var), {"data": data_var, "ensemble": ens_var, "regionalisation": reg})


# A Beta with alpha + beta >= 2 is no wider than the uniform prior (2 at mean 0.5 is the uniform itself).
MIN_CONCENTRATION = 2.0
# Above this concentration the Beta is Gaussian to well under 1e-3 of the range; its quantiles are the Normal's.
GAUSSIAN_CONCENTRATION = 1e6


def unit_interval(u: np.ndarray, sd: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The equal-tailed ``level`` interval of the posterior on the prior's [0, 1] (unit space).

    Every parameter's prior is uniform on its range, so a Gaussian interval clipped to the bounds
    claims too much: at the prior's variance (1/12, mean 0.5) it spans 2.5-97.5 % of the range and
    holds 95 % of truths drawn from the prior. The posterior is taken as the Beta with mean ``u``
    and sd ``sd`` (at the prior's variance the uniform itself: 5-95 %), no wider than a Beta with
    that mean may be (alpha + beta >= 2). Near a bound that limit can be far below ``sd`` (an
    estimate pinned at a bound with a wide spread), so the interval also spans the Gaussian
    N(u, sd^2) truncated to the bounds: it reaches into the range instead of collapsing onto the
    bound. Elsewhere the Beta's is the wider of the two. The interval always holds the estimate.
    """
    from scipy.stats import beta, truncnorm

    u, sd = np.broadcast_arrays(np.clip(np.asarray(u, np.float64), 0.0, 1.0), np.asarray(sd, np.float64))
    tails = (0.5 - level / 2, 0.5 + level / 2)
    z = norm.ppf(tails[1])
    lo, hi = np.clip(u - z * sd, 0, 1), np.clip(u + z * sd, 0, 1)  # the Gaussian limit (sd small)
    inner = np.clip(u, 1e-12, 1 - 1e-12)
    nu = np.maximum(inner * (1 - inner) / np.maximum(sd ** 2, 1e-300) - 1, MIN_CONCENTRATION)
    w = nu < GAUSSIAN_CONCENTRATION
    if w.any():
        m, s, a, b = u[w], sd[w], inner[w] * nu[w], (1 - inner[w]) * nu[w]
        tlo, thi = truncnorm.ppf(tails, ((0 - m) / s)[:, None], ((1 - m) / s)[:, None], m[:, None], s[:, None]).T
        lo[w] = np.minimum(beta.ppf(tails[0], a, b), tlo)
        hi[w] = np.maximum(beta.ppf(tails[1], a, b), thi)
    return np.minimum(lo, u), np.maximum(hi, u)


def along_trade_off(u_loc: np.ndarray, cov: np.ndarray, ratio: np.ndarray, weak: np.ndarray,
                    cov_prior: np.ndarray | None = None, emulator_var: np.ndarray | None = None) -> np.ndarray:
    """(S, P) the observed sites' estimates with every identified parameter moved along its trade-off
    with the unidentified ones, by the site's posterior covariance, as far as those are pulled back
    toward the prior (`shrink_to_prior`, or `shrink_jointly` with ``cov_prior`` (S, P, P), the sites'
    posterior covariance under the uniform prior, grown by ``emulator_var`` as `posterior_refined` grows
    it): the conditional mean given the unidentified values that the map will carry, so the pair still
    fits the data instead of keeping an identified value that only fitted the unidentified one's drift."""
    weak = np.asarray(weak, bool)
    if not weak.any() or weak.all():
        return u_loc
    delta = _shrunk_weak(u_loc, ratio, weak, cov_prior, emulator_var)[0] - u_loc[:, weak]  # (S, W)
    strong = ~weak
    c_sw = cov[:, strong][:, :, weak]                                                # (S, I, W)
    c_ww = cov[:, weak][:, :, weak] + 1e-12 * np.eye(int(weak.sum()))[None]          # (S, W, W)
    out = u_loc.copy()
    shift = np.einsum("siw,sw->si", c_sw, np.linalg.solve(c_ww, delta[..., None])[..., 0])
    out[:, strong] = np.clip(u_loc[:, strong] + shift, 0.0, 1.0)
    return out


def _weak_covariance(ratio: np.ndarray, weak: np.ndarray, cov_prior: np.ndarray | None) -> np.ndarray:
    """(N, W, W) the unidentified parameters' posterior covariance under the uniform prior: ``cov_prior``
    where given, else diagonal from the variance ratios (each parameter on its own)."""
    from .identifiability import PRIOR_PRECISION

    if cov_prior is not None:
        return np.asarray(cov_prior, np.float64)[:, weak][:, :, weak]
    r = np.clip(np.nan_to_num(np.asarray(ratio, np.float64), nan=1.0), 0.0, 1.0)[:, weak]
    return np.einsum("nw,wv->nwv", r / PRIOR_PRECISION, np.eye(int(weak.sum())))


def _shrunk_weak(u: np.ndarray, ratio: np.ndarray, weak: np.ndarray, cov_prior: np.ndarray | None,
                 emulator_var: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unidentified parameters returned toward the prior, jointly (esm_emu.inverse.identifiability.
    shrink_jointly): (u* (N, W), A (N, W, W), their covariance C (N, W, W), grown by the emulator's
    parameter error where given)."""
    from .identifiability import shrink_jointly

    C = _weak_covariance(ratio, weak, cov_prior)
    if emulator_var is not None:
        C = _with_emulator_error(C, np.asarray(emulator_var, np.float64)[weak])
    u_w, A = shrink_jointly(np.asarray(u, np.float64)[:, weak], C)
    return u_w, A, C


def _with_emulator_error(C: np.ndarray, emu: np.ndarray) -> np.ndarray:
    """(N, W, W) the unidentified parameters' posterior covariance with each variance grown by the
    parameter error inverting through the emulator adds (held-out members), their correlations kept
    (the valley the data define stays), and no direction wider than the prior."""
    from .identifiability import PRIOR_PRECISION

    d = np.sqrt(np.einsum("nww->nw", C))
    scale = np.sqrt((d ** 2 + emu[None]) / np.maximum(d ** 2, 1e-30))
    Ce = C * scale[:, :, None] * scale[:, None, :]
    w, v = np.linalg.eigh(Ce)
    return np.einsum("nij,nj,nkj->nik", v, np.clip(w, 0.0, 1 / PRIOR_PRECISION), v)


def posterior_refined(u_hat: np.ndarray, ens_var: np.ndarray, u_blind: np.ndarray, observed: np.ndarray,
                      u_loc: np.ndarray, cov_loc: np.ndarray, ratio_obs: np.ndarray, identified: np.ndarray,
                      lat=None, lon=None, emulator_var: np.ndarray | None = None,
                      cov_prior: np.ndarray | None = None) -> Posterior:
    """The estimate and its spread everywhere, in unit space.

    Observed entities: their own posterior (``u_loc``, ``cov_loc``: the data on top of the regional
    network's value and spread, esm_emu.inverse.identifiability.local_update). Unobserved: the
    network's value without an embedding (``u_blind``) plus the kriged (lat/lon) residual of the
    observed entities' posteriors from it, with the ensemble and kriging variances. A parameter
    the data do not identify is pulled toward the prior mean by its posterior/prior variance ratio
    and keeps at least that share of the prior's variance: near the middle, prior-wide. With
    ``cov_prior`` (n_observed, P, P), the observed entities' posterior covariance under the uniform
    prior, the unidentified parameters return together (`shrink_jointly`): a combination of them the
    data fix is kept (unobserved entities use the typical covariance).
    ``emulator_var`` (P,): the parameter error inverting through the emulator causes where the
    answer is known (held-out PPE members), added everywhere; an unidentified parameter's return to
    the prior also counts it (`_with_emulator_error`): what the data seem to say through an emulator
    that cannot recover it is trusted less.
    """
    from .identifiability import PRIOR_PRECISION, krige, typical_covariance

    N, P = u_hat.shape
    obs = np.asarray(observed, bool)
    u, var = u_hat.astype(np.float64).copy(), np.zeros((N, P))
    data_var, reg = np.zeros((N, P)), np.zeros((N, P))
    u_loc = along_trade_off(u_loc, cov_loc, np.asarray(ratio_obs, np.float64), ~np.asarray(identified, bool),
                            cov_prior, emulator_var)
    u[obs] = u_loc
    data_var[obs] = np.einsum("npp->np", cov_loc)
    resid = u_loc - u_blind[obs]
    unobs = ~obs
    for j in range(P):
        if not unobs.any():
            break
        if lat is not None and lon is not None:
            m, v = krige(lat[obs], lon[obs], resid[:, j], lat[unobs], lon[unobs], noise=data_var[obs, j])
        else:
            m, v = np.zeros(unobs.sum()), np.full(unobs.sum(), np.mean(resid[:, j] ** 2))
        u[unobs, j] = u_blind[unobs, j] + m
        reg[unobs, j] = v
    var = data_var + reg + ens_var  # the ensemble's spread also where the data spoke (a local fit's error)
    emu = np.zeros((N, P)) if emulator_var is None else np.broadcast_to(np.asarray(emulator_var, np.float64), (N, P))
    var = var + emu
    ratio = np.broadcast_to(np.nanmedian(ratio_obs, axis=0), (N, P)).copy()
    ratio[obs] = ratio_obs
    ratio = np.clip(np.nan_to_num(ratio, nan=1.0), 0.0, 1.0)
    weak = ~np.asarray(identified, bool)
    if weak.any():
        full_cov = None
        if cov_prior is not None:
            full_cov = np.broadcast_to(typical_covariance(cov_prior), (N, P, P)).copy()
            full_cov[obs] = cov_prior
        u[:, weak], A, C = _shrunk_weak(u, ratio, weak, full_cov, emulator_var)
        # the shrunk estimate's error: its own variance carried through A, plus what the prior keeps
        var[:, weak] = np.einsum("nwv,nv->nw", A ** 2, var[:, weak]) + np.einsum("nww->nw", C)
    u = np.clip(u, 0, 1)
    var = np.minimum(var, 1 / PRIOR_PRECISION)
    return Posterior(u, np.sqrt(var), {"data": data_var, "ensemble": ens_var, "regionalisation": reg,
                                       "emulator": np.array(emu)})
