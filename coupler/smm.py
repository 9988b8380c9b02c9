"""Sparse matrix multiplication: apply `Weights` to numpy or dask arrays along the last axis.

The horizontal axis (flattened cells, size n_a) is last; leading axes (time, level, member)
are kept. Dask arrays are mapped block by block with the horizontal axis in one chunk.
"""
from __future__ import annotations

import numpy as np

from ppe_ingest.base.errors import UserError

from .weights import Weights


def _apply_np(x: np.ndarray, M, MT_valid, skipna: bool, na_thres: float, mapped: np.ndarray) -> np.ndarray:
    lead = x.shape[:-1]
    flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    if skipna:
        valid = np.isfinite(flat)
        num = (M @ np.where(valid, flat, 0.0).T).T
        cov = (M @ valid.T.astype(np.float64)).T
        tot = np.asarray(M.sum(axis=1)).ravel()[None, :]
        frac = np.divide(cov, tot, out=np.zeros_like(cov), where=tot > 0)
        out = np.divide(num * tot, cov, out=np.full_like(num, np.nan), where=cov > 0)
        out[frac < max(1.0 - na_thres, 1e-12)] = np.nan
    else:
        out = (M @ flat.T).T
    out[:, ~mapped] = np.nan
    return out.reshape(*lead, M.shape[0])


def apply_weights(w: Weights, x, skipna: bool = False, na_thres: float = 1.0, keep_unmapped: bool = False):
    """Return W @ x over the last axis of `x` (numpy or dask), shape (..., n_b).

    skipna: NaN source values are left out and each destination value is renormalised by the
    weight that remains (as xESMF's skipna); a destination keeps a value only while the missing
    share of its weight is below `na_thres`. Destination cells with no weights are NaN unless
    `keep_unmapped` (then 0, as the plain matrix product gives).
    """
    if x.shape[-1] != w.n_a:
        raise UserError(f"the field has {x.shape[-1]} cells on its horizontal axis, the weights expect n_a={w.n_a}")
    M = w.matrix()
    mapped = np.ones(w.n_b, bool) if keep_unmapped else w.mapped()
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None
    if da is not None and isinstance(x, da.Array):
        x = x.rechunk({x.ndim - 1: -1})
        return x.map_blocks(_apply_np, M, None, skipna, na_thres, mapped, dtype=np.float64,
                            chunks=x.chunks[:-1] + ((w.n_b,),))
    return _apply_np(np.asarray(x), M, None, skipna, na_thres, mapped)
