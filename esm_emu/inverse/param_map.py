"""The inferred-parameters contract: a Dataset ``theta(gridcell|site, param)`` with ``theta_std``,
CF attributes and provenance (emulator checkpoint sha256, observation sources, config), its
netCDF round trip, and k-means clusters for one paramfile per cluster."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

from .. import __version__


def build_param_map(entity, theta, theta_std, param_names: Sequence[str], entity_dim: str = "gridcell",
                    lat=None, lon=None, observed=None, lo=None, hi=None, default=None,
                    provenance: Mapping | None = None) -> xr.Dataset:
    """Assemble the parameter map Dataset from arrays (N,P) in physical units."""
    if entity_dim not in ("gridcell", "site"):
        raise UserError(f"parameter map: entity dimension must be gridcell or site, not {entity_dim}")
    theta, theta_std = np.asarray(theta, np.float64), np.asarray(theta_std, np.float64)
    params = [str(p) for p in param_names]
    coords = {entity_dim: np.asarray(entity), "param": np.array(params, dtype=object)}
    ds = xr.Dataset(
        {"theta": ((entity_dim, "param"), theta, {
            "long_name": "inferred parameter value", "units": "1",
            "comment": "each parameter in the units of its CTSM variable (see the parameter table)"}),
         "theta_std": ((entity_dim, "param"), theta_std, {
             "long_name": "standard deviation of the inferred parameter (ensemble and MC dropout)",
             "units": "1"})},
        coords=coords)
    if lat is not None and lon is not None:
        la, lo_ = ("grid1d_lat", "grid1d_lon") if entity_dim == "gridcell" else ("site_lat", "site_lon")
        ds[la] = (entity_dim, np.asarray(lat, np.float64), {"standard_name": "latitude", "units": "degrees_north"})
        ds[lo_] = (entity_dim, np.asarray(lon, np.float64), {"standard_name": "longitude", "units": "degrees_east"})
    if observed is not None:
        ds["observed"] = (entity_dim, np.asarray(observed, np.int8), {
            "long_name": "1 where observations constrained the entity, 0 where inferred from attributes only",
            "flag_values": np.array([0, 1], np.int8), "flag_meanings": "unobserved observed"})
    for name, arr, ln in (("param_min", lo, "lower bound"), ("param_max", hi, "upper bound"),
                          ("param_default", default, "default value")):
        if arr is not None:
            ds[name] = ("param", np.asarray(arr, np.float64), {"long_name": f"parameter {ln} from the parameter table"})
    prov = dict(provenance or {})
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "Inferred CTSM soil and hydrologic parameters",
        "source": f"esm-emu {__version__} inverse inference (KGSSL + dPL through a frozen forward model)",
        "history": f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} esm-emu invert",
        "forward_model": str(prov.get("forward_model", "")),
        "emulator_checkpoint_sha256": str(prov.get("emulator_checkpoint_sha256", "")),
        "observation_sources": json.dumps(list(prov.get("observation_sources", []))),
        "observed_variables": json.dumps(list(prov.get("observed_variables", []))),
        "config": json.dumps(prov.get("config", {}), default=str, sort_keys=True),
    }
    if prov.get("parameter_scale"):  # the scale of the prior and of the unit-space figures (inverse.scale)
        ds.attrs["parameter_scale"] = str(prov["parameter_scale"])
    return ds


def write_param_map(ds: xr.Dataset, path: str | Path, inputs: Sequence = ()) -> Path:
    """Write the map to netCDF under a temporary name and rename; never over an input."""
    path = Path(path)
    out = ds.copy()
    out["param"] = out["param"].astype(str)
    if "param2" in out.coords:
        out["param2"] = out["param2"].astype(str)
    with atomic_path(path, inputs) as tmp:
        out.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
    return path


def read_param_map(path: str | Path) -> xr.Dataset:
    """Open a parameter map and check it holds the contract's variables."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: parameter map not found")
    ds = xr.load_dataset(path)
    for v in ("theta", "theta_std"):
        if v not in ds.data_vars:
            raise UserError(f"{path}: not a parameter map: variable {v} is missing")
    if "param" not in ds.dims or not ({"gridcell", "site"} & set(ds.dims)):
        raise UserError(f"{path}: not a parameter map: theta must have dims (gridcell|site, param)")
    return ds


def param_values_at(ds: xr.Dataset, entity_dim: str, entity, param_names: Sequence[str]) -> np.ndarray:
    """(N, P) values of a parameter map at the given entity ids: from ``theta(dim, param)`` or one
    (dim,) variable per parameter (a twin experiment's truth); NaN where the map lacks either."""
    out = np.full((len(entity), len(param_names)), np.nan)
    dim = entity_dim if entity_dim in ds.dims else ("gridcell" if "gridcell" in ds.dims else "site")
    ids = ds[dim].values if dim in ds.coords else np.arange(ds.sizes[dim])
    pos = {v: i for i, v in enumerate(ids)}
    rows = [pos.get(e, -1) for e in entity]
    for j, p in enumerate(param_names):
        if "theta" in ds.data_vars and "param" in ds.dims and p in ds["param"].values:
            col = ds["theta"].sel(param=p).transpose(dim).values
        elif p in ds.data_vars and ds[p].dims == (dim,):
            col = ds[p].values
        else:
            continue
        out[:, j] = [col[r] if r >= 0 else np.nan for r in rows]
    return out


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (labels (N,), centers (k, D))."""
    rng = np.random.default_rng(seed)
    n = len(x)
    k = min(k, n)
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        centers.append(x[rng.choice(n, p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(n)])
    c = np.array(centers)
    labels = np.zeros(n, int)
    for _ in range(iters):
        labels_new = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (labels_new == j).any():
                c[j] = x[labels_new == j].mean(0)
        if (labels_new == labels).all() and _ > 0:
            break
        labels = labels_new
    return labels, c


def cluster_param_map(ds: xr.Dataset, n_clusters: int, params: Sequence[str] | None = None,
                      seed: int = 0) -> xr.Dataset:
    """Group entities by k-means on their inferred parameters (scaled to [0,1] by their bounds).

    Returns a Dataset with ``cluster(entity)`` and ``theta_cluster(cluster, param)``, the value
    each cluster's paramfile gets (the mean of its members).
    """
    dim = "gridcell" if "gridcell" in ds.dims else "site"
    params = list(params) if params else [str(p) for p in ds["param"].values]
    th = ds["theta"].sel(param=params).transpose(dim, "param").values
    lo = ds["param_min"].sel(param=params).values if "param_min" in ds else th.min(0)
    hi = ds["param_max"].sel(param=params).values if "param_max" in ds else th.max(0)
    u = (th - lo) / np.where(hi > lo, hi - lo, 1)
    labels, _ = kmeans(u, n_clusters, seed)
    k = labels.max() + 1
    centers = np.stack([th[labels == j].mean(0) for j in range(k)])
    return xr.Dataset({"cluster": (dim, labels.astype(np.int32)),
                       "theta_cluster": (("cluster_id", "param"), centers)},
                      coords={dim: ds[dim].values, "param": params, "cluster_id": np.arange(k)})
