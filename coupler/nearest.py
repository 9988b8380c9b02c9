"""Nearest-neighbour weights on the sphere (ESMF's nearest_stod and nearest_dtos)."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ppe_ingest.base.errors import UserError

from .grids import Grid


def nearest_weights(src: Grid, dst: Grid, direction: str = "s2d"):
    """Each active destination cell takes its nearest active source cell ('s2d'), or each
    active source cell goes to its nearest active destination cell ('d2s', destinations
    receiving several sources average them)."""
    from .weights import Weights

    si, di = np.flatnonzero(src.mask), np.flatnonzero(dst.mask)
    if si.size == 0 or di.size == 0:
        raise UserError("nearest-neighbour weights need at least one active source and destination cell")
    if direction == "s2d":
        _, k = cKDTree(src.centers_xyz()[si]).query(dst.centers_xyz()[di])
        row, col, S = di, si[k], np.ones(di.size)
    elif direction == "d2s":
        _, k = cKDTree(dst.centers_xyz()[di]).query(src.centers_xyz()[si])
        row, col = di[k], si
        S = 1.0 / np.bincount(row, minlength=dst.n)[row]
    else:
        raise UserError(f"nearest direction '{direction}': expected s2d or d2s")
    order = np.lexsort((col, row))
    return Weights(S=S[order], row=row[order], col=col[order], n_a=src.n, n_b=dst.n,
                   frac_a=src.mask.astype(float), frac_b=np.bincount(row, minlength=dst.n).clip(0, 1).astype(float),
                   src=src, dst=dst, method=f"nearest_{direction}", normalization="none")
