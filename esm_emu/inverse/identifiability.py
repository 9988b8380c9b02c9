"""How much the observations constrain each parameter: a linearised Bayesian update at the solution.

At each observed entity the forward model's Jacobian J (scored days x variables, parameters in the
unit space of their bounds) gives the Fisher information F = sum_v J_v^T J_v / (sigma_v^2 k_v), with
sigma_v the residual std of variable v at the solution (observation error plus forward-model error)
and k_v = (1 + rho_v) / (1 - rho_v) the inflation for day-to-day correlated residuals (rho_v the
lag-1 autocorrelation), so a year of daily values does not count as 365 independent ones.

The prior is uniform on the table bounds: variance 1/12 in unit space. The posterior covariance
C = (F + 12 I)^-1; the posterior-to-prior variance ratio of parameter j is 12 C_jj (1: the data say
nothing, 0: pinned down), and C's correlations show which parameters trade off (fff with FMAX).
A parameter is *identified* when the median ratio over observed entities, plus the share of the
prior variance that inverting through the forward model itself adds (``emulator_var``: the error left
in held-out PPE members' parameters, esm_emu.inverse.inversion.forward_parameter_error), is at most
``max_variance_ratio``: data that would pin a parameter down through a perfect model do not tell it
through an emulator that cannot recover it. Two parameters that trade off exactly each keep half
their prior variance (ratio 0.5, correlation -1) however many data there are: not separately
identified.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..forward import ForwardModel
from .problem import InverseProblem

PRIOR_PRECISION = 12.0  # 1 / variance of the uniform prior on [0, 1]
PRIOR_MEAN = 0.5


@dataclass
class Identifiability:
    """Per parameter: median ratio, per-variable ratios, posterior correlations; per entity: ratio, cov."""

    params: list
    variables: list
    ratio: np.ndarray  # (n_obs, P) posterior / prior variance, all variables together
    ratio_by_var: np.ndarray  # (n_obs, V, P) each variable alone
    cov: np.ndarray  # (n_obs, P, P) posterior covariance in unit space
    corr: np.ndarray  # (P, P) median posterior correlation over entities
    sigma: np.ndarray  # (V,) median residual std per variable (physical units)
    max_variance_ratio: float
    emulator_var: np.ndarray | None = None  # (P,) unit-space variance the forward model's error adds

    @property
    def median_ratio(self) -> np.ndarray:
        """(P,) the data's posterior/prior variance, linearised through the forward model."""
        return np.nanmedian(self.ratio, axis=0)

    @property
    def emulator_ratio(self) -> np.ndarray:
        """(P,) the forward model's own parameter error as a share of the prior variance (0 if unknown)."""
        if self.emulator_var is None:
            return np.zeros(len(self.params))
        return PRIOR_PRECISION * np.asarray(self.emulator_var, np.float64)

    @property
    def total_ratio(self) -> np.ndarray:
        """(P,) what the calibration leaves of the prior variance: the data's ratio plus the emulator's part."""
        return np.clip(self.median_ratio + self.emulator_ratio, 0.0, 1.0)

    @property
    def identified(self) -> np.ndarray:
        """(P,) the verdict reported: the data, through this forward model, pin the parameter down."""
        return self.total_ratio <= self.max_variance_ratio

    @property
    def data_identified(self) -> np.ndarray:
        """(P,) the data alone pin it down (the emulator's part left out): which parameters the map keeps
        at their local estimates instead of returning them toward the prior (uncertainty.posterior_refined,
        whose intervals count the emulator's part separately)."""
        return self.median_ratio <= self.max_variance_ratio

    def partners(self, j: int, min_abs_corr: float = 0.7) -> list[tuple[str, float]]:
        """The parameters whose posterior correlation with parameter j is at least min_abs_corr in size."""
        return [(self.params[k], float(self.corr[j, k])) for k in range(len(self.params))
                if k != j and abs(self.corr[j, k]) >= min_abs_corr]

    def to_dict(self) -> dict:
        """The figures behind each verdict, for metrics.json (``identifiability/<param>/...``)."""
        out = {}
        med, emu, tot, ok = self.median_ratio, self.emulator_ratio, self.total_ratio, self.identified
        byv = np.nanmedian(self.ratio_by_var, axis=0)
        for j, p in enumerate(self.params):
            out[p] = {"identified": bool(ok[j]),
                      "posterior_to_prior_variance": float(med[j]),
                      "emulator_error_to_prior_variance": float(emu[j]),
                      "posterior_to_prior_variance_with_emulator_error": float(tot[j]),
                      "posterior_to_prior_variance_by_variable": {v: float(byv[k, j])
                                                                  for k, v in enumerate(self.variables)},
                      "posterior_correlation": {q: float(self.corr[j, k]) for k, q in enumerate(self.params)
                                                if k != j},
                      "trades_off_with": [q for q, _ in self.partners(j)],
                      "posterior_std_unit": float(np.sqrt(np.nanmedian(self.cov[:, j, j])))}
        out["_criterion"] = (f"identified: median over observed entities of posterior/prior variance, plus the "
                             f"emulator's parameter error on held-out PPE members, <= {self.max_variance_ratio} "
                             "(linearised at the solution; uniform prior on the bounds; residual std as the error, "
                             "inflated for autocorrelation)")
        out["_residual_std"] = {v: float(s) for v, s in zip(self.variables, self.sigma)}
        return out

    def lines(self) -> list[str]:
        """One line per parameter for the terminal."""
        out = []
        med, emu, ok = self.median_ratio, self.emulator_ratio, self.identified
        for j, p in enumerate(self.params):
            word = "identified" if ok[j] else "NOT identified"
            extra = ", ".join(f"{q} r={c:+.2f}" for q, c in self.partners(j))
            out.append(f"  {p:24s} {word:15s} posterior/prior variance {med[j]:.3f}"
                       + (f" + emulator {emu[j]:.3f}" if self.emulator_var is not None else "")
                       + (f"; trades off with {extra}" if extra else ""))
        return out


def jacobian(problem: InverseProblem, forward: ForwardModel, theta: torch.Tensor, idx, eps: float = 0.02
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y0 (n,T,V), J (n,T,V,P)): the observed variables at ``theta[idx]`` and their derivatives with
    respect to each parameter's unit-space position (central differences, one-sided at a bound)."""
    t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    u0 = problem.to_unit(theta[t].float()).clamp(0, 1)
    f, s = problem.forcing[t], problem.static[t]

    def run(u):
        return forward.chunked(f, s, problem.full_theta(problem.from_unit(u)))[..., problem.response_index]

    y0 = run(u0)
    cols = []
    for j in range(problem.n_params):
        up, dn = u0.clone(), u0.clone()
        up[:, j] = (u0[:, j] + eps).clamp(max=1.0)
        dn[:, j] = (u0[:, j] - eps).clamp(min=0.0)
        du = (up[:, j] - dn[:, j]).clamp_min(1e-6)
        cols.append((run(up) - run(dn)) / du[:, None, None])
    return y0, torch.stack(cols, -1)


def _lag1(r: np.ndarray) -> float:
    """Lag-1 autocorrelation of a residual series with gaps (NaN), clipped to [0, 0.98]."""
    a, b = r[:-1], r[1:]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 10:
        return 0.0
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(np.clip((a * b).sum() / den, 0.0, 0.98)) if den > 0 else 0.0


def assess(problem: InverseProblem, forward: ForwardModel, theta: torch.Tensor, time_mask, idx=None,
           max_variance_ratio: float = 0.1, extra_var: np.ndarray | None = None, eps: float = 0.02
           ) -> Identifiability:
    """The linearised posterior at ``theta`` for the observed entities ``idx`` (default: all observed).

    ``time_mask`` (T,) selects the scored days; ``extra_var`` (V,) adds a known error variance per
    variable (e.g. the emulator's held-out error) to the residual variance.
    """
    idx = np.flatnonzero(problem.observed) if idx is None else np.asarray(idx)
    tm = np.asarray(time_mask, bool)
    y0, J = jacobian(problem, forward, theta, idx, eps)
    obs = problem.obs[torch.as_tensor(idx)].numpy()[:, tm].astype(np.float64)
    y0, J = y0.numpy()[:, tm].astype(np.float64), J.numpy()[:, tm].astype(np.float64)
    n, _, V = obs.shape
    P = problem.n_params
    res = obs - y0
    # residual std per variable pooled over entities (one entity's few days are a noisy estimate)
    sigma = np.sqrt(np.nanmean(res ** 2, axis=(0, 1)))
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, np.nanstd(obs, axis=(0, 1)) * 1e-3 + 1e-12)
    var = sigma ** 2 + (0 if extra_var is None else np.asarray(extra_var, np.float64))
    ratio, ratio_v, covs = np.full((n, P), np.nan), np.full((n, V, P), np.nan), np.full((n, P, P), np.nan)
    eye = np.eye(P) * PRIOR_PRECISION
    for i in range(n):
        Fv = []
        for v in range(V):
            ok = np.isfinite(obs[i, :, v])
            if ok.sum() < 3:
                Fv.append(np.zeros((P, P)))
                continue
            k = (1 + (rho := _lag1(res[i, :, v]))) / (1 - rho)
            Jv = J[i, ok, v]
            Fv.append(Jv.T @ Jv / (var[v] * k))
        for v in range(V):
            ratio_v[i, v] = np.diag(np.linalg.inv(Fv[v] + eye)) * PRIOR_PRECISION
        C = np.linalg.inv(sum(Fv) + eye)
        covs[i] = C
        ratio[i] = np.diag(C) * PRIOR_PRECISION
    d = np.sqrt(np.einsum("npp->np", covs))
    corr = np.nanmedian(covs / (d[:, :, None] * d[:, None, :]), axis=0)
    return Identifiability(list(problem.param_names), list(problem.variables), ratio, ratio_v, covs, corr,
                           sigma, float(max_variance_ratio))


def shrink_to_prior(u: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """The linear-Gaussian posterior mean in unit space: the data's estimate ``u`` pulled toward the
    prior mean by the prior's share of the posterior precision (= the variance ratio). A parameter the
    data cannot tell (ratio near 1) returns to the middle of its range instead of staying wherever the
    optimiser left it."""
    return (1 - ratio) * u + ratio * PRIOR_MEAN


def shrink_jointly(u: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``shrink_to_prior`` for several parameters at once: (u*, A) with u* = 0.5 + A (u - 0.5) and
    A = I - 12 C, C (..., W, W) their posterior covariance under the uniform prior.

    The linear-Gaussian posterior mean given the data's estimate ``u``: a combination the data fix
    (a short axis of C) stays where it is; one they cannot tell (a long axis) returns to the prior
    mean. Two parameters that trade off (fff with FMAX) thus slide along their valley to the point
    nearest the middle of the range instead of each being pulled to the middle and leaving the
    valley. With a diagonal C this is ``shrink_to_prior`` with ratio 12 C_jj."""
    cov = np.asarray(cov, np.float64)
    A = np.eye(cov.shape[-1]) - PRIOR_PRECISION * cov
    d = np.asarray(u, np.float64) - PRIOR_MEAN
    return PRIOR_MEAN + np.einsum("...ij,...j->...i", A, d), A


def typical_covariance(cov: np.ndarray) -> np.ndarray:
    """(P, P) one posterior covariance for entities without data: the median variance and the median
    correlation over the observed entities' (n, P, P), made positive semi-definite."""
    cov = np.asarray(cov, np.float64)
    diag = np.einsum("npp->np", cov)
    var = np.nanmedian(diag, axis=0)
    sd = np.sqrt(diag)
    corr = np.nanmedian(cov / np.maximum(sd[:, :, None] * sd[:, None, :], 1e-30), axis=0)
    np.fill_diagonal(corr, 1.0)
    w, v = np.linalg.eigh(np.nan_to_num((corr + corr.T) / 2))
    corr = (v * np.clip(w, 0, None)) @ v.T
    corr /= np.sqrt(np.outer(np.diag(corr), np.diag(corr))).clip(1e-12)
    s = np.sqrt(np.clip(np.nan_to_num(var, nan=1 / PRIOR_PRECISION), 0, 1 / PRIOR_PRECISION))
    return corr * np.outer(s, s)


def _weights(obs: np.ndarray, res: np.ndarray, extra_var) -> np.ndarray:
    """(n, V) inverse error variance per entity and variable: pooled residual variance (+ extra),
    inflated by the entity's lag-1 residual autocorrelation."""
    sigma2 = np.nanmean(res ** 2, axis=(0, 1))
    sigma2 = np.where(np.isfinite(sigma2) & (sigma2 > 0), sigma2, np.nanvar(obs, axis=(0, 1)) * 1e-6 + 1e-24)
    var = sigma2 + (0 if extra_var is None else np.asarray(extra_var, np.float64))
    n, _, V = obs.shape
    w = np.zeros((n, V))
    for i in range(n):
        for v in range(V):
            rho = _lag1(res[i, :, v])
            w[i, v] = (1 - rho) / ((1 + rho) * var[v])
    return w


def local_update(problem: InverseProblem, forward: ForwardModel, u_all: np.ndarray, idx, time_mask,
                 prior_mean: np.ndarray, prior_var: np.ndarray, extra_var=None, iters: int = 3,
                 max_step: float = 0.25, eps: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Each observed entity's own posterior mode, by damped Gauss-Newton in unit space, under a
    Gaussian prior (``prior_mean``, ``prior_var`` (n, P): what the regional parameter network says
    there, with its uncertainty). Returns (u (n, P), posterior covariance (n, P, P)).

    The network fits all sites with one function of their attributes; this step lets each observed
    site's data correct it where they can (an identified parameter) and leaves it where they cannot.
    A step is kept only where it lowers the site's objective (data misfit + prior)."""
    idx = np.asarray(idx)
    tm = np.asarray(time_mask, bool)
    obs = problem.obs[torch.as_tensor(idx)].numpy()[:, tm].astype(np.float64)
    u = np.clip(np.asarray(u_all, np.float64)[idx], 0, 1)
    pm, pp = np.asarray(prior_mean, np.float64), 1 / np.maximum(np.asarray(prior_var, np.float64), 1e-6)
    full = np.asarray(u_all, np.float64).copy()
    n, P = u.shape

    def run(uu):
        full[idx] = uu
        th = problem.from_unit(torch.as_tensor(full, dtype=torch.float32))
        return th

    def objective(y, uu, w):
        r = np.where(np.isfinite(obs), obs - y, 0.0)
        return 0.5 * ((r ** 2).sum(1) * w).sum(1) + 0.5 * (pp * (uu - pm) ** 2).sum(1)

    cov = np.zeros((n, P, P))
    for _ in range(iters + 1):
        y0, J = jacobian(problem, forward, run(u), idx, eps)
        y0, J = y0.numpy()[:, tm].astype(np.float64), J.numpy()[:, tm].astype(np.float64)
        res = obs - y0
        w = _weights(obs, res, extra_var)
        ok = np.isfinite(obs)
        r0 = np.where(ok, res, 0.0)
        Jm = np.where(ok[..., None], J, 0.0)
        H = np.einsum("ntvp,ntvq,nv->npq", Jm, Jm, w) + np.einsum("np,pq->npq", pp, np.eye(P))
        cov = np.linalg.inv(H)
        if _ == iters:
            break
        g = np.einsum("ntvp,ntv,nv->np", Jm, r0, w) - pp * (u - pm)
        du = np.einsum("npq,nq->np", cov, g)
        du *= np.minimum(1.0, max_step / np.maximum(np.abs(du).max(1, keepdims=True), 1e-12))
        u_new = np.clip(u + du, 0, 1)
        y1 = forward.chunked(problem.forcing[torch.as_tensor(idx)], problem.static[torch.as_tensor(idx)],
                             problem.full_theta(run(u_new)[torch.as_tensor(idx)]))[..., problem.response_index]
        y1 = y1.numpy()[:, tm].astype(np.float64)
        better = objective(y1, u_new, w) < objective(y0, u, w)
        u = np.where(better[:, None], u_new, u)
    return u, cov


def krige(lat, lon, values: np.ndarray, lat_new, lon_new, lengths=(1.0, 2.0, 4.0, 8.0, 16.0),
          noise: np.ndarray | None = None):
    """Simple kriging of (n,) values at points to new points on the sphere: exponential covariance
    of great-circle distance, length scale and nugget share by maximum marginal likelihood.
    ``noise`` (n,): the known error variance of each value (a local estimate's posterior variance);
    it is kept out of the field's variance, so the variance returned is that of the field itself at
    the new points, not of another noisy estimate there. Returns (mean (m,), variance (m,)); zero
    mean (the values are residuals of a regression)."""
    from ppe_ingest.base.geometry import great_circle_deg

    v = np.asarray(values, np.float64)
    e = np.zeros(len(v)) if noise is None else np.clip(np.asarray(noise, np.float64), 0.0, None)
    # the field's variance: the values' mean square less their known noise (at least a tenth of it)
    s2 = max(float(np.mean(v ** 2)) - float(e.mean()), 0.1 * float(np.mean(v ** 2)))
    if len(v) < 3 or s2 <= 0:
        return np.zeros(len(lat_new)), np.full(len(lat_new), s2)
    d = great_circle_deg(lat[:, None], lon[:, None], lat[None], lon[None])
    dn = great_circle_deg(np.asarray(lat_new)[:, None], np.asarray(lon_new)[:, None], lat[None], lon[None])
    best = None
    for L in lengths:
        for nug in (0.05, 0.2, 0.5):
            K = s2 * ((1 - nug) * np.exp(-d / L) + nug * np.eye(len(v))) + np.diag(e)
            try:
                c = np.linalg.cholesky(K)
            except np.linalg.LinAlgError:
                continue
            a = np.linalg.solve(c, v)
            nll = 0.5 * a @ a + np.log(np.diag(c)).sum()
            if best is None or nll < best[0]:
                best = (nll, L, nug, K)
    _, L, nug, K = best
    k = s2 * (1 - nug) * np.exp(-dn / L)
    Ki = np.linalg.inv(K)
    mean = k @ Ki @ v
    var = np.maximum(s2 - np.einsum("mi,ij,mj->m", k, Ki, k), 0.0)
    return mean, var
