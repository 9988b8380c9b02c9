"""Append a PPE wave to an existing training store: `esm-emu ingest WAVE_DIR --append-to STORE`.

The wave is ingested on its own (same discovery, theta read-back and design checks as any PPE)
into a temporary store, checked against the store (same gridcells, days, parameters and
variables, no member twice), and its members are added along the store's unlimited member
dimension of a copy of the store that then replaces it (atomic rename). The store's normalisation
statistics and gridcell/year splits stay as they are, so an emulator trained on the store keeps
its scaling and can be fine-tuned on the grown store; the wave's members join the train split
except a ``val_members`` share that joins the validation split (validation then also covers
where the wave went) and a ``test_members`` share that joins the test split (held out: the
emulator's error where the calibration went, which the next inversion's intervals carry).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError


def _check_same(store, wave, store_path, wave_dir) -> list[str]:
    """The member variables to append; one line naming the first difference otherwise."""
    from ppe_ingest.store import GRIDCELL, LAT, LON, MEMBER, PARAM, THETA, TIME

    for d in (GRIDCELL, TIME):
        if store.sizes[d] != wave.sizes[d]:
            raise UserError(f"{wave_dir}: the wave has {wave.sizes[d]} {d}s, the store {store_path} "
                            f"{store.sizes[d]}: a wave must run on the same grid and years")
    for v in (LAT, LON):
        if v in store.variables and not np.allclose(store[v].values, wave[v].values, atol=1e-6):
            raise UserError(f"{wave_dir}: {v} differs from the store {store_path} (not the same gridcells)")
    if not np.array_equal(np.asarray(store[TIME].values), np.asarray(wave[TIME].values)):
        raise UserError(f"{wave_dir}: its days differ from those of the store {store_path}")
    sp, wp = [str(p) for p in store[PARAM].values], [str(p) for p in wave[PARAM].values]
    if sorted(sp) != sorted(wp):
        miss = sorted(set(sp) ^ set(wp))[0]
        raise UserError(f"{wave_dir}: parameter {miss} is in only one of the wave and the store {store_path} "
                        f"(store: {', '.join(sp)}; wave: {', '.join(wp)})")
    twice = sorted(set(map(str, store[MEMBER].values)) & set(map(str, wave[MEMBER].values)))
    if twice:
        raise UserError(f"{wave_dir}: member {twice[0]} is already in the store {store_path}")
    names = [v for v in store.data_vars if MEMBER in store[v].dims and v not in (THETA, "split_member")]
    missing = [v for v in names if v not in wave.data_vars]
    if missing:
        raise UserError(f"{wave_dir}: variable {missing[0]} of the store {store_path} is not in the wave's history")
    return names


def append_wave(wave_dir, store_path, val_members: float = 0.1, seed: int = 0, sets=(), test_members: float = 0.1,
                progress: bool = True, workers: int | None = None, scheduler: str | None = None,
                scheduler_file: str | None = None) -> dict:
    """Ingest ``wave_dir`` and append its members to the store at ``store_path``; return a summary.
    `workers` / `scheduler` / `scheduler_file`: where the wave is read, as for `esm-emu ingest`."""
    import netCDF4
    import xarray as xr

    from ppe_ingest.base.netcdf import require_netcdf
    from ppe_ingest.store import MEMBER, PARAM, SPLIT_MEMBER, TEST, THETA, TRAIN, VAL

    from .config import load_ingest_config
    from .pipeline import ingest_ppe

    store_path, wave_dir = Path(store_path), Path(wave_dir)
    require_netcdf(store_path, "--append-to")
    if not wave_dir.is_dir():
        raise UserError(f"{wave_dir}: not a PPE folder")
    with tempfile.TemporaryDirectory(prefix=".wave_", dir=store_path.parent) as tmpdir:
        wave_store = Path(tmpdir) / "wave_store.nc"
        cfg = load_ingest_config(None, sets, {"ppe_dir": str(wave_dir), "out": str(wave_store), "seed": seed,
                                              "workers": workers, "scheduler": scheduler,
                                              "scheduler_file": scheduler_file})
        ingest_ppe(cfg, progress=progress)
        with xr.open_dataset(store_path) as store, xr.open_dataset(wave_store) as wave:
            names = _check_same(store, wave, store_path, wave_dir)
            order = [str(p) for p in store[PARAM].values]
            w_theta = wave[THETA].transpose(MEMBER, PARAM).sel({PARAM: order}).values
            w_members = [str(m) for m in wave[MEMBER].values]
            n_old = store.sizes[MEMBER]
        n = len(w_members)
        split = np.full(n, TRAIN, np.int8)
        rng = np.random.default_rng([seed, 31])
        k = int(round(val_members * n)) if val_members < 1 else int(val_members)
        if k:
            split[rng.choice(n, min(k, n), replace=False)] = VAL
        k = int(round(test_members * n)) if test_members < 1 else int(test_members)
        free = np.flatnonzero(split == TRAIN)
        if k and len(free) > k:  # at least one member stays in training
            split[rng.choice(free, k, replace=False)] = TEST
        with atomic_path(store_path) as tmp:
            shutil.copyfile(store_path, tmp)
            with netCDF4.Dataset(wave_store) as src, netCDF4.Dataset(tmp, "a") as dst:
                rows = slice(n_old, n_old + n)
                for i, m in enumerate(w_members):
                    dst[MEMBER][n_old + i] = m
                dst[THETA][rows, :] = w_theta
                dst[SPLIT_MEMBER][rows] = split
                for v in names:
                    dst[v].set_auto_maskandscale(False)
                    src[v].set_auto_maskandscale(False)
                    for i in range(n):
                        dst[v][n_old + i] = src[v][i]
                dst.setncattr("history", f"{dst.getncattr('history') if 'history' in dst.ncattrs() else ''}\n"
                              f"appended wave {wave_dir} ({n} members: {w_members[0]} .. {w_members[-1]})".strip())
    return {"store": str(store_path), "appended": n, "members": n_old + n, "val": int((split == VAL).sum()),
            "test": int((split == TEST).sum()), "first": w_members[0], "last": w_members[-1]}
