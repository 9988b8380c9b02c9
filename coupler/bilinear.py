"""Bilinear weights: inside quadrilaterals of source centres on structured (2-D) source grids,
linear inside a spherical Delaunay triangulation of the centres elsewhere.

Destination points between the last source row and a pole, and every point of an unstructured
source, use the triangulation (the convex hull of the centres on the unit sphere), much as ESMF
fills polar gaps when its pole option is on. Points outside the source grid stay unmapped.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, cKDTree

from ppe_ingest.base.errors import UserError

from . import sphere
from .grids import Grid


def _quads(src: Grid) -> np.ndarray:
    ny, nx = src.shape
    lon = src.lon.reshape(ny, nx)
    step = np.median(np.abs(np.diff(lon[0]))) if nx > 1 else 360.0
    periodic = nx > 2 and abs(((lon[0, 0] - lon[0, -1]) % 360.0) - step) < 0.5 * step
    idx = np.arange(ny * nx).reshape(ny, nx)
    right = np.roll(idx, -1, axis=1)
    ncol = nx if periodic else nx - 1
    a, b = idx[:-1, :ncol], right[:-1, :ncol]
    c, d = right[1:, :ncol], idx[1:, :ncol]
    q = np.stack([a, b, c, d], -1).reshape(-1, 4)
    return q[src.mask[q].all(axis=1)]


def _inside(P: np.ndarray, p: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """p inside the spherical polygon P (n, V, 3) of either orientation (great-circle edges)."""
    nrm = np.cross(P, np.roll(P, -1, axis=1))
    d = np.einsum("nvk,nk->nv", nrm, p)
    return (d >= -tol).all(1) | (d <= tol).all(1)


def _tangent(P: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Gnomonic coordinates of P (n, V, 3) on the plane tangent at p (n, 3); p maps to (0, 0)."""
    e1 = np.cross(np.array([0.0, 0.0, 1.0]), p)
    small = np.linalg.norm(e1, axis=-1) < 1e-8
    e1[small] = np.cross(np.array([1.0, 0.0, 0.0]), p[small])
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    e2 = np.cross(p, e1)
    Q = P / np.einsum("nvk,nk->nv", P, p)[..., None]
    return np.stack([np.einsum("nvk,nk->nv", Q, e1), np.einsum("nvk,nk->nv", Q, e2)], -1)


def _bilinear_st(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve (1-s)(1-t)A + s(1-t)B + st C + (1-s)t D = 0 for (s, t) by Newton's method."""
    A, B, C, D = T[:, 0], T[:, 1], T[:, 2], T[:, 3]
    s = np.full(T.shape[0], 0.5)
    t = np.full(T.shape[0], 0.5)
    for _ in range(20):
        F = (((1 - s) * (1 - t))[:, None] * A + (s * (1 - t))[:, None] * B
             + (s * t)[:, None] * C + ((1 - s) * t)[:, None] * D)
        Fs = (1 - t)[:, None] * (B - A) + t[:, None] * (C - D)
        Ft = (1 - s)[:, None] * (D - A) + s[:, None] * (C - B)
        det = Fs[:, 0] * Ft[:, 1] - Fs[:, 1] * Ft[:, 0]
        det = np.where(np.abs(det) > 1e-300, det, 1e-300)
        ds = (F[:, 0] * Ft[:, 1] - F[:, 1] * Ft[:, 0]) / det
        dt = (Fs[:, 0] * F[:, 1] - Fs[:, 1] * F[:, 0]) / det
        s, t = s - ds, t - dt
        if max(np.abs(ds).max(initial=0), np.abs(dt).max(initial=0)) < 1e-14:
            break
    return np.clip(s, 0, 1), np.clip(t, 0, 1)


def _locate(polys_idx: np.ndarray, X: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """For each point, a polygon (row of polys_idx into X) containing it, or -1."""
    V = X[polys_idx]
    cen, rad = sphere.centroid_radius(V)
    hits = cKDTree(cen).query_ball_point(pts, 2.0 * np.sin(min(rad.max() + 1e-9, np.pi) / 2.0))
    lens = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
    found = np.full(len(pts), -1)
    if lens.sum() == 0:
        return found
    pi = np.repeat(np.arange(len(pts)), lens)
    ci = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits])
    ok = _inside(V[ci], pts[pi])
    found[pi[ok][::-1]] = ci[ok][::-1]  # the first containing polygon wins
    return found


def bilinear_weights(src: Grid, dst: Grid):
    """Bilinear `Weights` from the centres of `src` to the centres of `dst`."""
    from .weights import Weights

    X = src.centers_xyz()
    di = np.flatnonzero(dst.mask)
    pts = dst.centers_xyz()[di]
    rows, cols, S = [], [], []
    left = np.ones(di.size, bool)
    if len(src.shape) == 2 and min(src.shape) > 1:
        q = _quads(src)
        if len(q):
            f = _locate(q, X, pts)
            hit = f >= 0
            if hit.any():
                T = _tangent(X[q[f[hit]]], pts[hit])
                s, t = _bilinear_st(T)
                w4 = np.stack([(1 - s) * (1 - t), s * (1 - t), s * t, (1 - s) * t], -1)
                rows.append(np.repeat(di[hit], 4))
                cols.append(q[f[hit]].ravel())
                S.append(w4.ravel())
                left = ~hit
    if left.any():
        si = np.flatnonzero(src.mask)
        if si.size >= 4:
            tri = si[ConvexHull(X[si]).simplices]
            # drop hull triangles much larger than the grid spacing (outside a regional grid)
            spacing = np.median(cKDTree(X[si]).query(X[si], k=2)[0][:, 1])
            V = X[tri]
            edge = np.linalg.norm(V - np.roll(V, 1, axis=1), axis=-1).max(1)
            tri = tri[edge <= 6 * spacing]
            if len(tri):
                li = np.flatnonzero(left)
                f = _locate(tri, X, pts[li])
                hit = f >= 0
                if hit.any():
                    V = X[tri[f[hit]]]
                    lam = np.linalg.solve(np.transpose(V, (0, 2, 1)), pts[li[hit]][..., None])[..., 0]
                    lam = np.clip(lam, 0, None)
                    lam /= lam.sum(1, keepdims=True)
                    rows.append(np.repeat(di[li[hit]], 3))
                    cols.append(tri[f[hit]].ravel())
                    S.append(lam.ravel())
    if not rows:
        raise UserError(f"bilinear: no destination point of {dst.source or 'the destination grid'} "
                        "lies inside the source grid")
    row, col, S = np.concatenate(rows), np.concatenate(cols), np.concatenate(S)
    keep = S > 1e-15
    row, col, S = row[keep], col[keep], S[keep]
    order = np.lexsort((col, row))
    frac_b = (np.bincount(row, minlength=dst.n) > 0).astype(float)
    return Weights(S=S[order], row=row[order], col=col[order], n_a=src.n, n_b=dst.n,
                   frac_a=src.mask.astype(float), frac_b=frac_b, src=src, dst=dst,
                   method="bilinear", normalization="none")
