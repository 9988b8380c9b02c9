"""Routing from gridcell runoff to streamflow at a gauge: a differentiable gamma unit hydrograph.

Runoff leaving the soil column (QRUNOFF) reaches a basin's outlet days later. As in the
differentiable HBV models (Feng et al. 2022, WRR, "Differentiable, learnable, regionalized
process-based models with multiphysical outputs can approach state-of-the-art hydrologic
prediction accuracy"; the UH of Mizukami et al. 2016 / Clark et al. 2008), the delay is a gamma
unit hydrograph with two bounded, learnable parameters per basin:

    alpha = UH_SHAPE  (ROUTA + 0.1 in dHBV; 0.1 .. 3.0 here)
    theta = UH_SCALE  (ROUTB + 0.5 in dHBV, days; 0.5 .. 7.0 here)
    h(t)  = t**(alpha-1) exp(-t/theta) / (Gamma(alpha) theta**alpha),   t = 0.5, 1.5, ... days,

normalised over its `UH_DAYS` taps so that routing conserves the runoff volume (the sum of the
taps is 1; only the last `UH_DAYS - 1` days of a series carry water that has not yet arrived).
The mean delay is alpha * theta days: a larger scale delays and flattens the peak.

`route(q, shape, scale)` routes (B, T) runoff; `RoutedForward` wraps any forward model so that
its QRUNOFF reaches the gauge routed while its other responses are untouched. The two routing
parameters are inferred like any other parameter (they are the last two columns of theta) and
land in the parameter map; they are not CTSM parameters and are never written into CTSM files.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ppe_ingest.base.errors import UserError

from .forward import ForwardModel

UH_DAYS = 15
ROUTING_PARAMS = ("UH_SHAPE", "UH_SCALE")
# name -> (min, max, default); the default is a short delay (mean 1.5 days), as a small basin gives
ROUTING_BOUNDS = {"UH_SHAPE": (0.1, 3.0, 1.0), "UH_SCALE": (0.5, 7.0, 1.5)}
ROUTING_ATTRS = {"UH_SHAPE": ("gamma unit hydrograph shape (alpha)", "1"),
                 "UH_SCALE": ("gamma unit hydrograph scale (theta)", "days")}
ROUTED_VARIABLES = ("QRUNOFF",)
ROUTING_KINDS = ("gamma", "none")


def unit_hydrograph(shape: torch.Tensor, scale: torch.Tensor, days: int = UH_DAYS) -> torch.Tensor:
    """(B, days) gamma unit hydrograph weights (each row sums to 1), differentiable in both parameters."""
    shape = torch.as_tensor(shape).reshape(-1, 1)
    scale = torch.as_tensor(scale, dtype=shape.dtype).reshape(-1, 1)
    t = (torch.arange(days, dtype=shape.dtype) + 0.5)[None, :]
    logw = (shape - 1.0) * torch.log(t) - t / scale - torch.lgamma(shape) - shape * torch.log(scale)
    return torch.softmax(logw, dim=1)   # exp(logw) / sum: the normalised taps, stable for any shape


def route(q: torch.Tensor, shape, scale, days: int = UH_DAYS) -> torch.Tensor:
    """Route (B, T) runoff through each row's gamma unit hydrograph: out[t] = sum_k h[k] q[t-k].

    Causal, per row; before the series starts the runoff is taken as the first day's (a steady
    start), so a run that starts from a spun-up state is not biased low in its first days.
    """
    if q.dim() != 2:
        raise ValueError(f"route: runoff must be (B, T), got shape {tuple(q.shape)}")
    B, T = q.shape
    h = unit_hydrograph(torch.as_tensor(shape, dtype=q.dtype).expand(B),
                        torch.as_tensor(scale, dtype=q.dtype).expand(B), days)
    pad = torch.cat([q[:, :1].expand(B, days - 1), q], 1)          # (B, T + days - 1)
    # grouped conv1d: one channel per row, the flipped taps make it a causal convolution
    out = torch.nn.functional.conv1d(pad[None], h.flip(1)[:, None, :], groups=B)
    return out[0, :, :T]


def routing_kind(routing: Mapping | None, variable: str) -> str:
    """The routing configured for an observed variable (`inverse.routing`), `none` when unset."""
    kind = str((routing or {}).get(variable, "none"))
    if kind not in ROUTING_KINDS:
        raise UserError(f"inverse.routing.{variable}: {kind!r} is not one of {', '.join(ROUTING_KINDS)}")
    if kind != "none" and variable not in ROUTED_VARIABLES:
        raise UserError(f"inverse.routing.{variable}: only {', '.join(ROUTED_VARIABLES)} can be routed "
                        "(a unit hydrograph delays runoff, not other fluxes or states)")
    return kind


def check_routing(routing: Mapping | None, variables: Sequence[str]) -> list[str]:
    """The observed variables routed with a gamma unit hydrograph; a key that is not observed is refused."""
    for v in routing or {}:
        if v not in variables:
            raise UserError(f"inverse.routing.{v}: not an observed variable (inverse.variables: "
                            f"{', '.join(variables)})")
    return [v for v in variables if routing_kind(routing, v) == "gamma"]


class RoutedForward(ForwardModel):
    """Any forward model with its runoff routed: theta is the inner model's theta plus UH_SHAPE, UH_SCALE.

    The state carried between calls is the inner model's state plus the last UH_DAYS - 1 days of
    unrouted runoff, so routing a year in monthly calls equals routing it in one call.
    """

    def __init__(self, inner: ForwardModel, routed: Sequence[str] = ROUTED_VARIABLES):
        super().__init__(inner.forcing_names, inner.static_names, list(inner.param_names) + list(ROUTING_PARAMS),
                         inner.response_names)
        self.inner = inner
        self.kind = f"{inner.kind}+gamma routing"
        self.checkpoint_sha256 = inner.checkpoint_sha256
        self.routed_index = [inner.response_names.index(v) for v in routed if v in inner.response_names]
        if len(self.routed_index) != len(routed):
            missing = [v for v in routed if v not in inner.response_names]
            raise UserError(f"routing: {missing[0]} is not produced by the {inner.kind} "
                            f"(it gives {', '.join(inner.response_names)})")

    def forward(self, forcing, static, theta, state=None, return_state: bool = False):
        n = len(self.inner.param_names)
        inner_state, tail = (None, None) if state is None else state
        y, new_inner = self.inner(forcing, static, theta[:, :n], state=inner_state, return_state=True)
        shape, scale = theta[:, n], theta[:, n + 1]
        cols, tails = list(y.unbind(-1)), []
        for k in self.routed_index:
            q = cols[k]
            prev = tail[len(tails)] if tail is not None else q[:, :1].expand(-1, UH_DAYS - 1)
            full = torch.cat([prev.to(q.dtype), q], 1)
            cols[k] = route(full, shape, scale)[:, UH_DAYS - 1:]
            tails.append(full[:, -(UH_DAYS - 1):].detach())
        out = torch.stack(cols, -1)
        return (out, (new_inner, tails)) if return_state else out


def bounds_with_routing(table, names: Sequence[str], bounds_from_table):
    """(min, max, default) arrays of `names`: the routing parameters from ROUTING_BOUNDS (a table row
    of the same name wins), the others through `bounds_from_table(table, names)`."""
    names = list(names)
    in_table = set()
    if hasattr(table, "names") and not isinstance(table, Mapping):
        in_table = {n for n in names if n in table}
    elif isinstance(table, Mapping):
        in_table = {n for n in names if n in table}
    extra = [n for n in names if n in ROUTING_BOUNDS and n not in in_table]
    rest = [n for n in names if n not in extra]
    lo, hi, d = (np.zeros(len(names)) for _ in range(3))
    if rest:
        rl, rh, rd = bounds_from_table(table, rest)
        for j, n in enumerate(rest):
            i = names.index(n)
            lo[i], hi[i], d[i] = rl[j], rh[j], rd[j]
    for n in extra:
        i = names.index(n)
        lo[i], hi[i], d[i] = ROUTING_BOUNDS[n]
    return lo, hi, d


def routed_from_param_map(pmap, site_dim: str = "site") -> dict[str, np.ndarray] | None:
    """(UH_SHAPE, UH_SCALE) per entity of a parameter map, or None when the map has no routing."""
    if "param" not in pmap.coords:
        return None
    names = [str(p) for p in pmap["param"].values]
    if not all(p in names for p in ROUTING_PARAMS):
        return None
    return {p: np.asarray(pmap["theta"].sel(param=p).values, dtype=np.float64) for p in ROUTING_PARAMS}


def with_routing(forward: ForwardModel, routing: Mapping | None, variables: Sequence[str],
                 params: Sequence[str] | None = None):
    """(forward model, parameters to infer) with routing as `inverse.routing` configures it for the
    observed `variables`: the forward wrapped in RoutedForward and UH_SHAPE, UH_SCALE added to the
    parameters when a variable is routed with gamma; both unchanged otherwise."""
    routed = check_routing(routing, variables)
    if not routed or isinstance(forward, RoutedForward):
        return forward, None if params is None else list(params)
    fwd = RoutedForward(forward, routed)
    if params is None:
        return fwd, None
    return fwd, list(params) + [p for p in ROUTING_PARAMS if p not in params]


class FixedRouting(ForwardModel):
    """A forward model whose runoff is routed with fixed unit-hydrograph parameters (same theta as the
    inner model): the DA hook's forward when its observations are streamflow at a gauge."""

    def __init__(self, inner: ForwardModel, shape: float, scale: float, routed: Sequence[str] = ROUTED_VARIABLES):
        super().__init__(inner.forcing_names, inner.static_names, inner.param_names, inner.response_names)
        self.routed = RoutedForward(inner, routed)
        self.kind = self.routed.kind
        self.checkpoint_sha256 = inner.checkpoint_sha256
        self.shape, self.scale = float(shape), float(scale)

    def forward(self, forcing, static, theta, state=None, return_state: bool = False):
        uh = torch.tensor([self.shape, self.scale], dtype=theta.dtype).expand(theta.shape[0], 2)
        return self.routed(forcing, static, torch.cat([theta, uh], 1), state=state, return_state=return_state)
