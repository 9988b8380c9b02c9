"""The anchored parameter update: a few bounded gradient steps that move theta so a model's own
output comes closer to the observations, with the forward model supplying only the sensitivity.

The prediction after an update is anchored on what the model (CTSM) actually produced,

    y(theta) = y_model + F(x, s, theta) - F(x, s, theta_now),

so a forward model that is biased in level (an emulator, the built-in simulator standing in for
CTSM) still moves the parameters the right way. The objective is the pooled 1 - NSE of
`esm_emu.metrics` over sites, each site with its own observed mean.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ppe_ingest.base.errors import UserError

from ..forward import ForwardModel
from ..metrics import nse_terms
from .problem import bounds_from_table

EDGE = 1e-4  # the first guess is pulled this far (in unit range) inside its bounds, so its logit is finite


def forward_inputs(fwd: ForwardModel, hist: dict, cells: np.ndarray, fsurdat: str | Path | None):
    """forcing (site, day, F) and static (site, S) at history gridcells `cells`, as `fwd` names them.

    `hist` is `ppe_ingest.ctsmio.history.read_history` output holding the forcing fields; the
    static fields come from `fsurdat` (as ingest derives them)."""
    forcing = np.stack([hist["data"][n][:, cells].T for n in fwd.forcing_names], axis=-1)
    if not fwd.static_names:
        return forcing, np.zeros((cells.size, 0))
    if not fsurdat:
        raise UserError("fsurdat: the forward model needs static fields "
                        f"({', '.join(fwd.static_names)}); give fsurdat in the config")
    from ppe_ingest.ctsmio.surfdata import read_static

    values, fields, _ = read_static(Path(fsurdat), hist["lat"][cells], hist["lon"][cells])
    missing = [f for f in fwd.static_names if f not in fields]
    if missing:
        raise UserError(f"{fsurdat}: static field {missing[0]} needed by the forward model is missing")
    return forcing, values[:, [fields.index(f) for f in fwd.static_names]]


def pooled_loss(sim: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Pooled 1 - NSE over (site, time), differentiable: total squared error over total squared
    anomaly from each site's mean (the torch twin of `1 - metrics.pooled_nse`)."""
    num, den, _ = nse_terms(sim, obs, axis=1)
    return num.sum() / den.sum().clamp(min=1e-30)


def anchored_update(fwd: ForwardModel, forcing, static, y_model, y_obs, theta: Mapping[str, float],
                    bounds: Mapping, steps: int, lr: float, response: str,
                    fixed: Mapping[str, float] | None = None, where: str = "parameters"):
    """Adam steps on `theta` (kept inside `bounds` by a logistic transform) against the anchored
    prediction of `response`.

    forcing (site, T, F), static (site, S), y_model and y_obs (site, T) with NaN where unobserved;
    `bounds` maps each name to {min, max} (any `bounds_from_table` form); `fixed` gives the
    forward model's other parameters. `where` names the parameters' config key in errors.
    Returns (new theta, predicted 1 - NSE after the update).
    """
    names = list(theta)
    order = fwd.param_names
    fixed = dict(fixed or {})
    unknown = [n for n in names if n not in order]
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: not an input of the {fwd.kind} (it takes {', '.join(order)})")
    lacking = [n for n in order if n not in names and n not in fixed]
    if lacking:
        raise UserError(f"{where}: the {fwd.kind} also needs {lacking[0]}; list it in {where}")
    r = fwd.response_index([response])[0]
    dt, run_dt = torch.float64, torch.get_default_dtype()
    lo, hi, _ = (torch.as_tensor(a, dtype=dt) for a in bounds_from_table(bounds, names))
    t0 = torch.tensor([theta[n] for n in names], dtype=dt)
    u0 = ((t0 - lo) / (hi - lo)).clamp(EDGE, 1 - EDGE)
    z = torch.log(u0 / (1 - u0)).clone().requires_grad_(True)
    x = torch.as_tensor(forcing, dtype=dt).to(run_dt)
    s = torch.as_tensor(static, dtype=dt).to(run_dt)
    obs = torch.as_tensor(y_obs, dtype=dt)
    observed = torch.isfinite(obs)
    anchor = torch.as_tensor(y_model, dtype=dt)

    def full(t):
        cols = [t[names.index(n)] if n in names else torch.tensor(float(fixed[n]), dtype=dt) for n in order]
        return torch.stack(cols).expand(x.shape[0], -1).to(run_dt)

    def bounded(zz):
        return lo + (hi - lo) * torch.sigmoid(zz)

    with torch.no_grad():
        f_now = fwd(x, s, full(t0))[..., r].to(dt)

    def loss_of(zz):
        pred = anchor + (fwd(x, s, full(bounded(zz)))[..., r].to(dt) - f_now)
        if not torch.isfinite(pred[observed]).all():
            raise UserError(f"the {fwd.kind} gave a non-finite objective; check the forcing in the history files")
        return pooled_loss(pred, obs)

    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(z)
        loss.backward()
        opt.step()
    with torch.no_grad():
        predicted = float(loss_of(z))
        t = bounded(z)
    return {n: float(t[i]) for i, n in enumerate(names)}, predicted
