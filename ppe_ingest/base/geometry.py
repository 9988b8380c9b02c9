"""Great-circle distance and nearest-gridcell matching: the one place points meet gridcells.

Distances are central angles in degrees (haversine form, accurate at small separations where
the arccos form loses precision). Every layer that pairs sites, surfdata rows or observations
with gridcells goes through `nearest_gridcell`.
"""
from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.22  # CTSM's SHR_CONST_REARTH, km


def great_circle_deg(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle (central) angle in degrees between points; arrays broadcast."""
    p1, p2 = np.radians(np.asarray(lat1, float)), np.radians(np.asarray(lat2, float))
    dphi = p2 - p1
    dlam = np.radians(np.asarray(lon2, float) - np.asarray(lon1, float))
    h = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlam / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def nearest_gridcell(lat, lon, grid_lat, grid_lon, max_deg: float | None = None,
                     block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each point (lat, lon), the index of the nearest gridcell and its distance in degrees.

    Points farther than `max_deg` from every gridcell, and points without a location (NaN), get
    index -1 and distance inf. Works in blocks of points so that memory stays (block x gridcells).
    """
    lat = np.atleast_1d(np.asarray(lat, float)).ravel()
    lon = np.atleast_1d(np.asarray(lon, float)).ravel()
    glat = np.asarray(grid_lat, float).ravel()
    glon = np.asarray(grid_lon, float).ravel()
    idx = np.full(lat.size, -1, dtype=np.int64)
    dist = np.full(lat.size, np.inf)
    if glat.size == 0:
        return idx, dist
    for i in range(0, lat.size, block):
        d = great_circle_deg(lat[i:i + block, None], lon[i:i + block, None], glat[None, :], glon[None, :])
        d = np.where(np.isnan(d), np.inf, d)  # gridcells without a location never match
        k = d.argmin(axis=1)
        idx[i:i + block] = k
        dist[i:i + block] = d[np.arange(k.size), k]
    idx[~np.isfinite(dist)] = -1
    if max_deg is not None:
        idx[dist > max_deg] = -1
    return idx, dist
