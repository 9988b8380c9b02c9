"""The inverse problem as tensors: entities (gridcells or sites) with forcing, static fields,
attributes, observations with gaps, the parameters to infer and their bounds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ppe_ingest.base.errors import UserError
from ppe_ingest.base.geometry import nearest_gridcell

from ..forward import ForwardModel

QC_NAMES = ("{v}_mask", "{v}_qc", "qc_{v}", "qc", "mask")  # the obs schema uses VAR_mask (True = usable)


LOG_SCALE_RATIO = 20.0  # on the log scale, a positive range spanning this many times is searched in log
# The scales a parameter's uniform prior can be on. linear: min + u (max - min), the way PPE designs sample
# (ours, ppe_ingest.design, and the CLM5 PPE's Latin hypercube), so the calibration's prior is the PPE's;
# log: positive ranges spanning >= LOG_SCALE_RATIO times log-uniform, for a PPE sampled that way.
SCALES = ("linear", "log")


def log_scaled(lo, hi, scale: str = "log") -> np.ndarray:
    """(P,) bool: the parameters mapped to [0, 1] on a log scale, those whose positive range spans
    >= LOG_SCALE_RATIO times when ``scale`` is "log"; none on the linear scale."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return (scale == "log") & (lo > 0) & (hi >= LOG_SCALE_RATIO * np.where(lo > 0, lo, 1.0))


def unit_position(value, std, lo, hi, scale: str = "linear"):
    """(position in [0, 1], std in unit space) of physical values with their std, numpy, on the
    scale the inversion searches (InverseProblem.to_unit; ``scale`` one of SCALES)."""
    value, std, lo, hi = (np.asarray(x, np.float64) for x in (value, std, lo, hi))
    log = log_scaled(lo, hi, scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        span = np.where(log, np.log(np.where(log, hi / np.where(lo > 0, lo, 1.0), 2.0)), hi - lo)
        u = np.where(log, np.log(np.maximum(value, 1e-30) / np.where(lo > 0, lo, 1.0)), value - lo) / span
        u_std = np.where(log, std / np.maximum(value, 1e-30), std) / span
    return u, u_std


@dataclass
class InverseProblem:
    """Everything the inverse models need, aligned on (entity, time)."""

    entity_dim: str
    entity: np.ndarray  # (N,) ids
    time: np.ndarray  # (T,)
    forcing: torch.Tensor  # (N, T, F) physical units, forward.forcing_names order
    static: torch.Tensor  # (N, S) forward.static_names order
    attrs: torch.Tensor  # (N, A) standardized attributes for g_A / g_z
    attr_names: list[str]
    obs: torch.Tensor  # (N, T, R) NaN where unobserved or failing QC
    variables: list[str]
    observed: np.ndarray  # (N,) bool: the entity has observations in the training period
    train_time: np.ndarray  # (T,) bool
    test_time: np.ndarray  # (T,) bool
    param_names: list[str]  # parameters to infer
    lo: torch.Tensor  # (P,)
    hi: torch.Tensor  # (P,)
    default: torch.Tensor  # (P,)
    forward_default: torch.Tensor  # (P_forward,) default theta for every forward-model parameter
    forward_index: list[int]  # position of each inferred parameter in the forward model's theta
    response_index: list[int]  # position of each observed variable in the forward model's output
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)
    scale: str = "linear"  # the scale of each parameter's uniform prior and search space (SCALES)

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def full_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """(B,P) inferred parameters -> (B,P_forward), the others at their defaults."""
        full = self.forward_default.to(theta.dtype).expand(theta.shape[0], -1).clone()
        full[:, self.forward_index] = theta
        return full

    @property
    def log_scale(self) -> torch.Tensor:
        """(P,) parameters mapped to [0,1] on a log scale (`log_scaled` on this problem's bounds and scale)."""
        return torch.as_tensor(log_scaled(self.lo.cpu().numpy(), self.hi.cpu().numpy(), self.scale),
                               device=self.lo.device)

    def _log_bounds(self):
        # safe values where the parameter is linear, so torch.where never sees NaN gradients
        ls = self.log_scale
        lo = torch.where(ls, self.lo, torch.ones_like(self.lo))
        hi = torch.where(ls, self.hi, torch.full_like(self.hi, 2.0))
        return ls, lo, hi

    def to_unit(self, theta: torch.Tensor) -> torch.Tensor:
        ls, lo, hi = self._log_bounds()
        lin = (theta - self.lo) / (self.hi - self.lo)
        lg = torch.log(torch.where(ls, theta, lo).clamp_min(1e-30) / lo) / torch.log(hi / lo)
        return torch.where(ls, lg, lin)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """[0,1] -> physical units within [min, max] (on the log scale, log-uniform for wide positive ranges)."""
        ls, lo, hi = self._log_bounds()
        lin = self.lo + (self.hi - self.lo) * u
        lg = lo * torch.exp(u * torch.log(hi / lo))
        return torch.where(ls, lg, lin)

    def subset(self, idx) -> InverseProblem:
        """The same problem restricted to some entities."""
        idx = np.asarray(idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        kw = dict(self.__dict__)
        kw.update(entity=self.entity[idx], forcing=self.forcing[t], static=self.static[t], attrs=self.attrs[t],
                  obs=self.obs[t], observed=self.observed[idx],
                  lat=None if self.lat is None else self.lat[idx], lon=None if self.lon is None else self.lon[idx])
        return InverseProblem(**kw)


def bounds_from_table(table, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(min, max, default) of each named parameter from a parameter table.

    Accepts the project's parameter table (DataFrame or object with a ``.df``/``to_dataframe``),
    a DataFrame with name/min/max/default columns (or CTSM_CAMELS Parameter/Lower/Upper/Default),
    or a mapping name -> (min, max, default).
    """
    if hasattr(table, "bounds") and hasattr(table, "names") and not isinstance(table, Mapping):
        # ppe_ingest.param_table.ParamTable
        rows = {}
        for n in names:
            if n in table:
                lo, hi = table.bounds(n)
                d = table[n].default
                rows[n] = (lo, hi, (lo + hi) / 2 if d is None else float(d))
    elif isinstance(table, Mapping):
        rows = {}
        for n, v in table.items():
            if isinstance(v, Mapping):
                rows[n] = (float(v["min"]), float(v["max"]), float(v.get("default", (v["min"] + v["max"]) / 2)))
            else:
                lo, hi, *d = v
                rows[n] = (float(lo), float(hi), float(d[0]) if d else (float(lo) + float(hi)) / 2)
    else:
        df = table
        for attr in ("df", "table", "frame"):
            if not isinstance(df, pd.DataFrame) and hasattr(df, attr):
                df = getattr(df, attr)
        if not isinstance(df, pd.DataFrame) and hasattr(df, "to_dataframe"):
            df = df.to_dataframe()
        if not isinstance(df, pd.DataFrame):
            raise UserError(f"parameter table: cannot read bounds from a {type(table).__name__}")
        cols = {c.lower().strip(): c for c in df.columns}

        def col(*cands):
            for c in cands:
                if c in cols:
                    return cols[c]
            raise UserError(f"parameter table: no {cands[0]} column (columns: {', '.join(df.columns)})")

        if df.index.name and df.index.name.lower() in ("name", "parameter"):
            df = df.reset_index()
            cols = {c.lower().strip(): c for c in df.columns}
        cn, cmin, cmax = col("name", "parameter"), col("min", "lower"), col("max", "upper")
        cdef = cols.get("default")
        rows = {}
        for _, r in df.iterrows():
            lo, hi = float(r[cmin]), float(r[cmax])
            rows[str(r[cn]).strip()] = (lo, hi, float(r[cdef]) if cdef is not None else (lo + hi) / 2)
    missing = [n for n in names if n not in rows]
    if missing:
        raise UserError(f"parameter table: no row for parameter {missing[0]}")
    arr = np.array([rows[n] for n in names], dtype=np.float64).reshape(len(names), 3)
    bad = [n for n, (lo, hi, _) in zip(names, arr) if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo]
    if bad:
        raise UserError(f"parameter table: {bad[0]}: min must be finite and below max")
    return arr[:, 0], arr[:, 1], np.clip(arr[:, 2], arr[:, 0], arr[:, 1])


def _static_values(ds: xr.Dataset, names: Sequence[str], dim: str) -> np.ndarray:
    cols = []
    for n in names:
        if n in ds.data_vars and ds[n].dims == (dim,):
            cols.append(ds[n].values)
        elif "static" in ds.data_vars and "field" in ds["static"].dims and n in ds["field"].values:
            cols.append(ds["static"].sel(field=n).transpose(dim).values)
        else:
            raise UserError(f"entities: static field {n} is missing (need a ({dim},) variable {n})")
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((ds.sizes[dim], 0), np.float32)


def entity_dim_of(ds: xr.Dataset) -> str:
    for d in ("gridcell", "site", "basin"):
        if d in ds.dims:
            return d
    raise UserError(f"entities: no gridcell or site dimension (dims: {', '.join(map(str, ds.dims))})")


def _latlon(ds: xr.Dataset, dim: str):
    for la, lo in (("grid1d_lat", "grid1d_lon"), ("site_lat", "site_lon"), ("lat", "lon")):
        if la in ds.variables and lo in ds.variables and ds[la].dims == (dim,):
            return ds[la].values.astype(np.float64), ds[lo].values.astype(np.float64)
    return None, None


def _qc_mask(obs: xr.Dataset, v: str):
    for pat in QC_NAMES:
        name = pat.format(v=v)
        if name in obs.variables and name != v:
            m = obs[name]
            return m.astype(bool) if m.dtype == bool or m.dtype.kind in "iu" else m > 0
    return None


def align_observations(obs: xr.Dataset, entities: xr.Dataset, dim: str, variables: Sequence[str],
                       max_site_distance_deg: float | None = None, shared_gridcells: bool = False) -> xr.Dataset:
    """Observations (site, time) placed on the entities (by id, by a gridcell index, or nearest lat/lon).

    By lat/lon, a site farther than `max_site_distance_deg` (default: the schema's
    ``inverse.max_site_distance_deg``) from every entity is refused, naming the site. Two sites on one
    entity are refused unless `shared_gridcells`, which averages their daily values.
    """
    from .config import SCHEMA

    if max_site_distance_deg is None:
        max_site_distance_deg = SCHEMA["max_site_distance_deg"].default
    odim = "site" if "site" in obs.dims else entity_dim_of(obs)
    site_ids = obs[odim].values if odim in obs.coords else np.arange(obs.sizes[odim])
    ids = entities[dim].values if dim in entities.coords else np.arange(entities.sizes[dim])
    if "gridcell" in obs.variables and obs["gridcell"].dims == (odim,) and odim != "gridcell":
        pos = obs["gridcell"].values.astype(int)
        index = pd.Index(ids)
        loc = index.get_indexer(pos)
        if (loc < 0).any():
            loc = pos  # plain 0-based positions
    elif odim in obs.coords and pd.Index(ids).get_indexer(obs[odim].values).min(initial=0) >= 0 and \
            np.isin(obs[odim].values, ids).all():
        loc = pd.Index(ids).get_indexer(obs[odim].values)
    else:
        elat, elon = _latlon(entities, dim)
        olat, olon = _latlon(obs, odim)
        if elat is None or olat is None:
            raise UserError("observations: cannot place sites on entities: no matching ids, no gridcell index "
                            "and no site_lat/site_lon with grid1d_lat/grid1d_lon")
        with np.errstate(invalid="ignore"):
            off = np.isfinite(olat) & ((np.abs(olat) > 90) | ~np.isfinite(olon))
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise UserError(f"observations: site {site_ids[i]} has latitude {olat[i]:.6g}, longitude {olon[i]:.6g} "
                            "(latitudes lie within -90..90 degrees)")
        loc, dist = nearest_gridcell(olat, olon, elat, elon, max_deg=max_site_distance_deg)
        if (loc < 0).any():
            i = int(np.flatnonzero(loc < 0)[0])
            _, d = nearest_gridcell(olat[i:i + 1], olon[i:i + 1], elat, elon)
            where = "has no location (NaN lat/lon)" if not np.isfinite(d[0]) else \
                f"is {d[0]:.3g} degrees from the nearest gridcell, beyond inverse.max_site_distance_deg = " \
                f"{max_site_distance_deg:g}"
            raise UserError(f"observations: site {site_ids[i]} (lat {olat[i]:.4g}, lon {olon[i]:.4g}) {where}")
    loc = np.asarray(loc)
    if ((loc < 0) | (loc >= entities.sizes[dim])).any():
        raise UserError("observations: gridcell index outside the entities")
    uniq, first, counts = np.unique(loc, return_index=True, return_counts=True)
    if (counts > 1).any() and not shared_gridcells:
        g = uniq[counts > 1][0]
        names = ", ".join(str(site_ids[i]) for i in np.flatnonzero(loc == g)[:4])
        raise UserError(f"observations: sites {names} fall on one {dim} ({g}); give one site per {dim} or set "
                        "inverse.shared_gridcells: true to average them")
    out = {}
    for v in variables:
        if v not in obs.data_vars:
            raise UserError(f"observations: variable {v} is missing (have: {', '.join(map(str, obs.data_vars))})")
        da = obs[v]
        m = _qc_mask(obs, v)
        if m is not None:
            da = da.where(m)
        da = da.transpose(odim, "time")
        # align on calendar days, so datetime64 observations meet a noleap model calendar
        pos = pd.Index(day_key(da["time"].values)).get_indexer(day_key(entities["time"].values))
        vals = np.where(pos[None] >= 0, da.values[:, np.clip(pos, 0, None)], np.nan)
        arr = np.full((entities.sizes[dim], entities.sizes["time"]), np.nan, np.float32)
        if counts.max(initial=1) > 1:  # several sites on one entity: their daily mean (shared_gridcells)
            total = np.zeros_like(arr, dtype=np.float64)
            n = np.zeros_like(arr, dtype=np.int64)
            ok = np.isfinite(vals)
            np.add.at(total, loc, np.where(ok, vals, 0.0))
            np.add.at(n, loc, ok)
            with np.errstate(invalid="ignore", divide="ignore"):
                arr[:] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        else:
            arr[loc] = vals
        out[v] = ((dim, "time"), arr)
    return xr.Dataset(out)


def attributes(entities: xr.Dataset, dim: str, static_names: Sequence[str], forcing_names: Sequence[str],
               extra: Sequence[str] = ()) -> tuple[np.ndarray, list[str]]:
    """Attributes known everywhere (also at unobserved gridcells): static fields, climate means, lat/lon."""
    cols, names = [], []
    for n in list(static_names) + [e for e in extra if e not in static_names]:
        v = _static_values(entities, [n], dim)[:, 0].astype(np.float64)
        cols.append(v)
        names.append(n)
        if np.all(v > 0) and v.max() > 10 * v.min():
            # skewed positive fields (SLOPE, STD_ELEV, ...) also enter on a log scale
            cols.append(np.log(v))
            names.append(f"log_{n}")
    for n in forcing_names:
        if n in entities.data_vars:
            cols.append(entities[n].transpose(dim, "time").mean("time").values)
            names.append(f"mean_{n}")
    lat, lon = _latlon(entities, dim)
    if lat is not None:
        cols += [lat, np.cos(np.deg2rad(lon)), np.sin(np.deg2rad(lon))]
        names += ["lat", "cos_lon", "sin_lon"]
    a = np.stack(cols, axis=1).astype(np.float64)
    mu, sd = np.nanmean(a, 0), np.nanstd(a, 0)
    sd[sd == 0] = 1
    return np.nan_to_num((a - mu) / sd).astype(np.float32), names


def day_key(time) -> np.ndarray:
    """YYYYMMDD integers for datetime64 or cftime times (so noleap and standard calendars align)."""
    da = xr.DataArray(np.asarray(time), dims="time")
    return (da.dt.year * 10000 + da.dt.month * 100 + da.dt.day).values.astype(np.int64)


def _period_mask(time: np.ndarray, period, name: str = "inverse.period") -> np.ndarray:
    """Days inside a period {start, end} (dates or bare years, inclusive) or a list of years.

    A period that ends before it starts, or that holds no day of `time`, is a UserError naming `name`.
    """
    from .config import period_keys

    key = day_key(time)
    if period is None:
        return np.ones(len(key), bool)
    if isinstance(period, (list, tuple)) and period and all(isinstance(y, int) for y in period):
        m = np.isin(key // 10000, list(period))
    else:
        start, end = period_keys(period, name)
        m = np.ones(len(key), bool)
        if start is not None:
            m &= key >= start
        if end is not None:
            m &= key <= end
    if len(key) and not m.any():
        raise UserError(f"{name}: holds no day of the entities' time axis "
                        f"({_day_text(key[0])}..{_day_text(key[-1])})")
    return m


def _day_text(k) -> str:
    k = int(k)
    return f"{k // 10000:04d}-{k // 100 % 100:02d}-{k % 100:02d}"


def build_problem(entities: xr.Dataset, observations: xr.Dataset | None, forward: ForwardModel, table,
                  params: Sequence[str] | None = None, variables: Sequence[str] = ("QRUNOFF",),
                  train_period=None, test_period=None, extra_attributes: Sequence[str] = (),
                  sources: Sequence[str] = (), max_site_distance_deg: float | None = None,
                  shared_gridcells: bool = False, scale: str = "linear") -> InverseProblem:
    """Assemble the tensors of an inverse problem from xarray inputs.

    ``entities``: (gridcell|site, time) forcing variables and (gridcell|site,) static fields under
    CTSM names; ``observations``: the observation schema (site, time), placed on the entities;
    ``scale``: the parameters' prior and search scale (SCALES).
    """
    if scale not in SCALES:
        raise UserError(f"inverse.scale: {str(scale)[:40]!r} is not one of {', '.join(SCALES)}")
    dim = entity_dim_of(entities)
    if "time" not in entities.dims:
        raise UserError("entities: no time dimension")
    params = list(params or forward.param_names)
    unknown = [p for p in params if p not in forward.param_names]
    if unknown:
        raise UserError(f"inverse.params: {unknown[0]} is not an input of the {forward.kind} "
                        f"(it takes {', '.join(forward.param_names)})")
    missing = [n for n in forward.forcing_names if n not in entities.data_vars]
    if missing:
        raise UserError(f"entities: forcing variable {missing[0]} is missing")
    forcing = np.stack([entities[n].transpose(dim, "time").values for n in forward.forcing_names], -1)
    if not np.isfinite(forcing).all():
        raise UserError("entities: forcing has missing values (NaN); fill or drop those gridcells")
    static = _static_values(entities, forward.static_names, dim)
    attrs, attr_names = attributes(entities, dim, forward.static_names, forward.forcing_names, extra_attributes)
    from ..routing import bounds_with_routing  # routing parameters (UH_SHAPE, UH_SCALE) have built-in bounds

    lo, hi, d = bounds_with_routing(table, params, bounds_from_table)
    # parameters not inferred stay at their table default
    _, _, forward_default = bounds_with_routing(table, forward.param_names, bounds_from_table)
    time = entities["time"].values
    N, T = entities.sizes[dim], len(time)
    variables = list(variables)
    if observations is not None:
        o = align_observations(observations, entities, dim, variables, max_site_distance_deg, shared_gridcells)
        obs = np.stack([o[v].values for v in variables], -1)
    else:
        obs = np.full((N, T, len(variables)), np.nan, np.float32)
    train_time = _period_mask(time, train_period, "inverse.train_period")
    test_time = _period_mask(time, test_period, "inverse.test_period")
    if test_period is None:
        test_time = ~train_time if (~train_time).any() else train_time
    elif (train_time & ~test_time).any():  # held-out days are never calibration days (a test year inside it)
        train_time = train_time & ~test_time
    observed = np.isfinite(obs[:, train_time]).any(axis=(1, 2))
    lat, lon = _latlon(entities, dim)
    ids = entities[dim].values if dim in entities.coords else np.arange(N)

    def t32(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float32)

    return InverseProblem(
        entity_dim=dim, entity=ids, time=time, forcing=t32(forcing), static=t32(static), attrs=t32(attrs),
        attr_names=attr_names, obs=t32(obs), variables=variables, observed=observed, train_time=train_time,
        test_time=test_time, param_names=params, lo=t32(lo), hi=t32(hi), default=t32(d),
        forward_default=t32(forward_default), forward_index=[forward.param_names.index(p) for p in params],
        response_index=forward.response_index(variables), lat=lat, lon=lon, sources=list(sources), scale=scale)
