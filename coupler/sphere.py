"""Unit-sphere geometry for cells bounded by great-circle arcs: coordinates, areas, clipping.

Everything works on 3-D unit vectors, so poles and the dateline need no special cases. A
polygon batch is an array (N, V, 3) padded by repeating its last vertex; repeated vertices
give zero-length edges and zero-area fan triangles, so padding never changes a result.
"""
from __future__ import annotations

import numpy as np

# Coincident-vertex tolerance (chord length on the unit sphere, ~6e-5 m on Earth).
VERTEX_TOL = 1e-11
# A point counts as inside a great-circle half-space down to this signed distance.
INSIDE_TOL = 1e-14


def lonlat_to_xyz(lon, lat) -> np.ndarray:
    """Degrees east/north to unit vectors, shape (..., 3)."""
    lon = np.deg2rad(np.asarray(lon, dtype=np.float64))
    lat = np.deg2rad(np.asarray(lat, dtype=np.float64))
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)], axis=-1)


def xyz_to_lonlat(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors to (lon in [0, 360), lat) in degrees."""
    lon = np.rad2deg(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    lat = np.rad2deg(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
    return lon, lat


def _compact(P: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move kept vertices to the front of each row and pad with the last kept one."""
    n = keep.sum(axis=1)
    order = np.argsort(~keep, axis=1, kind="stable")
    P = np.take_along_axis(P, order[..., None], axis=1)
    vmax = max(int(n.max()) if n.size else 0, 1)
    P = P[:, :vmax]
    idx = np.minimum(np.arange(vmax)[None, :], np.maximum(n - 1, 0)[:, None])
    P = np.take_along_axis(P, idx[..., None], axis=1)
    P[n == 0] = 0.0
    return P, n


def dedupe(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop consecutive coincident vertices (cyclically); return padded polygons and counts."""
    prev = np.roll(P, 1, axis=1)
    keep = np.linalg.norm(P - prev, axis=-1) > VERTEX_TOL
    # a polygon whose vertices are all equal keeps none
    return _compact(P, keep)


def polygon_area(P: np.ndarray) -> np.ndarray:
    """Signed area (steradians, positive when counter-clockwise seen from outside) of (N, V, 3)."""
    if P.shape[1] < 3:
        return np.zeros(P.shape[0])
    a = P[:, :1, :]
    b = P[:, 1:-1, :]
    c = P[:, 2:, :]
    # Van Oosterom & Strackee (1983): tan(E/2) = a.(b x c) / (1 + a.b + b.c + c.a)
    det = np.einsum("nvk,nvk->nv", np.broadcast_to(a, b.shape), np.cross(b, c))
    den = 1.0 + (a * b).sum(-1) + (b * c).sum(-1) + (c * a).sum(-1)
    return 2.0 * np.arctan2(det, den).sum(axis=1)


def orient_ccw(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse clockwise polygons; return polygons and their (now non-negative) areas."""
    area = polygon_area(P)
    neg = area < 0
    if neg.any():
        P = P.copy()
        P[neg] = P[neg, ::-1]
    return P, np.abs(area)


def centroid_radius(P: np.ndarray, n: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vector at the vertex mean of each polygon and the largest angle to a vertex (radians)."""
    c = P.mean(axis=1) if n is None else P.sum(axis=1) - (P.shape[1] - n)[:, None] * P[:, -1]
    norm = np.linalg.norm(c, axis=-1, keepdims=True)
    c = c / np.where(norm > 0, norm, 1.0)
    cosang = np.clip(np.einsum("nk,nvk->nv", c, P), -1.0, 1.0)
    return c, np.arccos(cosang.min(axis=1))


def clip_convex(S: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Intersect each subject polygon S[i] with the convex, counter-clockwise polygon C[i].

    Sutherland-Hodgman against the great-circle planes of C's edges: each edge (c0, c1) keeps
    the half-sphere n.x >= 0 with n = c0 x c1, and an arc p->q crosses it at
    normalize(p + t (q - p)), t = dp / (dp - dq), which lies on the great circle through p, q.
    S may be concave (its area stays exact); both must fit in a hemisphere.
    """
    out = S
    nc = C.shape[1]
    for k in range(nc):
        c0 = C[:, k]
        c1 = C[:, (k + 1) % nc]
        nrm = np.cross(c0, c1)
        length = np.linalg.norm(nrm, axis=-1, keepdims=True)
        degenerate = length[:, 0] < VERTEX_TOL
        nrm = nrm / np.where(length > 0, length, 1.0)
        d = np.einsum("nvk,nk->nv", out, nrm)
        d[degenerate] = 1.0  # zero-length clip edge: everything is inside
        inside = d >= -INSIDE_TOL
        prev = np.roll(out, 1, axis=1)
        dprev = np.roll(d, 1, axis=1)
        pin = np.roll(inside, 1, axis=1)
        cross = inside != pin
        denom = dprev - d
        t = np.divide(dprev, denom, out=np.zeros_like(d), where=cross & (denom != 0))
        x = prev + t[..., None] * (out - prev)
        x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)
        nv = out.shape[1]
        cand = np.empty((out.shape[0], 2 * nv, 3))
        cand[:, 0::2] = x
        cand[:, 1::2] = out
        keep = np.empty((out.shape[0], 2 * nv), dtype=bool)
        keep[:, 0::2] = cross
        keep[:, 1::2] = inside
        out, _ = _compact(cand, keep)
    return out
