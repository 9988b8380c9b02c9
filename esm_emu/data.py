"""Training data from the ingest store: windows over members x gridcells x time, and summary tables.

`SequenceStore` reads a training store (see the store contract in DESIGN/ingest) into float32
arrays with its names, splits and coordinates. `WindowSampler` draws windows of
`warmup + window` days; the loss covers the last `window` days, only where the response is
finite and the day is a training year. The global batch of step k depends only on (seed, k), and
each rank takes its own slice of it (DistributedSampler-style), so any number of ranks sees the
same global batch and a resumed run the same sequence of batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ppe_ingest import store as contract
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import RESPONSES
from ppe_ingest.store import TRAIN, VAL


def _open(path):
    """A netCDF file opened lazily, with a one-line error when it cannot be (summary stores)."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: store not found (write it with `esm-emu ingest`)")
    try:
        return xr.open_dataset(path, chunks={})
    except Exception as e:  # any reader failure is a bad file for the user
        raise UserError(f"{path}: cannot open as a store ({type(e).__name__}: {e})") from None


def _pick(requested, available, what, path):
    if requested is None:
        return list(available)
    missing = [n for n in requested if n not in available]
    if missing:
        raise UserError(f"{path}: {what} {missing[0]!r} is not in the store (has: {', '.join(available) or 'none'})")
    return list(requested)


class SequenceStore:
    """A training store's arrays in memory: forcing (G,T,F) or (M,G,T,F), responses (M,G,T,R), theta, static."""

    def __init__(self, path, forcing: Sequence[str] | None = None, static: Sequence[str] | None = None,
                 params: Sequence[str] | None = None, responses: Sequence[str] | None = None):
        self.path = Path(path)
        ds = contract.open_store(path, required=(contract.THETA, contract.STATIC, contract.SPLIT_MEMBER,
                                                 contract.SPLIT_GRIDCELL, contract.SPLIT_TIME))
        self.ds = ds
        self.forcing_names = _pick(forcing, contract.forcing_names(ds), "forcing", path)
        self.response_names = _pick(responses, contract.response_names(ds), "response", path)
        self.param_names = _pick(params, contract.param_names(ds), "param", path)
        self.static_names = _pick(static, contract.static_names(ds), "static field", path)
        if not self.response_names:
            raise UserError(f"{path}: no response variables ({', '.join(RESPONSES)}) in the store")
        if not self.forcing_names:
            raise UserError(f"{path}: no forcing variables in the store")
        self.forcing_shared = contract.forcing_shared(ds)
        order = ("gridcell", "time") if self.forcing_shared else ("member", "gridcell", "time")
        self.forcing = np.stack([ds[v].transpose(*order).values.astype(np.float32) for v in self.forcing_names], -1)
        self.responses = np.stack([ds[v].transpose("member", "gridcell", "time").values.astype(np.float32)
                                   for v in self.response_names], -1)
        self.theta = ds["theta"].sel(param=self.param_names).transpose("member", "param").values.astype(np.float32)
        self.static = contract.static_values(ds, self.static_names).astype(np.float32)
        for name, arr in (("theta", self.theta), ("static", self.static)):
            if not np.all(np.isfinite(arr)):
                raise UserError(f"{path}: {name} has missing values; the emulator needs every value")
        if not np.all(np.isfinite(self.forcing)):
            bad = self.forcing_names[int(np.argwhere(~np.isfinite(self.forcing))[0, -1])]
            raise UserError(f"{path}: forcing {bad} has missing values")
        self.split_member = ds[contract.SPLIT_MEMBER].values.astype(np.int8)
        self.split_gridcell = ds[contract.SPLIT_GRIDCELL].values.astype(np.int8)
        self.split_time = ds[contract.SPLIT_TIME].values.astype(np.int8)
        self.members = [str(m) for m in ds["member"].values]
        self.time = ds["time"].values
        nan = np.full(len(self.split_gridcell), np.nan)
        self.lat = ds[contract.LAT].values if contract.LAT in ds else nan
        self.lon = ds[contract.LON].values if contract.LON in ds else nan
        self.warmup_days = int(ds.attrs.get(contract.ATTR_WARMUP, 0))
        self.n_member, self.n_gridcell, self.n_time = self.responses.shape[:3]

    def forcing_for(self, m: np.ndarray, g: np.ndarray, t0: np.ndarray | int, length: int) -> np.ndarray:
        """Forcing windows (B, length, F) for member/gridcell index arrays starting at t0."""
        t = np.asarray(t0).reshape(-1, 1) + np.arange(length)
        if self.forcing_shared:
            return self.forcing[np.asarray(g)[:, None], t]
        return self.forcing[np.asarray(m)[:, None], np.asarray(g)[:, None], t]

    def pairs(self, member_split: Sequence[int], gridcell_split: Sequence[int]) -> np.ndarray:
        """(N, 2) member, gridcell index pairs whose splits are in the given sets."""
        ms = np.flatnonzero(np.isin(self.split_member, member_split))
        gs = np.flatnonzero(np.isin(self.split_gridcell, gridcell_split))
        return np.stack(np.meshgrid(ms, gs, indexing="ij"), -1).reshape(-1, 2)


@dataclass
class Batch:
    forcing: torch.Tensor   # (B, L, F) physical
    static: torch.Tensor    # (B, S)
    theta: torch.Tensor     # (B, P)
    target: torch.Tensor    # (B, L, R) physical, 0 where masked
    mask: torch.Tensor      # (B, L, R) bool: counts in the loss

    def to(self, device):
        return Batch(*(getattr(self, f).to(device) for f in ("forcing", "static", "theta", "target", "mask")))


class WindowSampler:
    """Global batches of windows for step k from (seed, k); each rank keeps rows rank::world_size."""

    def __init__(self, store: SequenceStore, pairs: np.ndarray, window: int, warmup: int, batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1):
        self.store, self.pairs = store, pairs
        self.window, self.warmup, self.length = window, warmup, window + warmup
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        if len(pairs) == 0:
            raise UserError(f"{store.path}: no member x gridcell pairs in the training split")
        if self.length > store.n_time:
            raise UserError(f"{store.path}: warmup {warmup} + window {window} days is longer than the "
                            f"store's {store.n_time} days; shorten emulator.data.window or warmup")
        if batch_size % world_size:
            raise UserError(f"emulator.data.batch_size: {batch_size} is not divisible by the {world_size} ranks")

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.step = int(state["seed"]), int(state["step"])

    def global_indices(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        rows = rng.integers(0, len(self.pairs), self.batch_size)
        starts = rng.integers(0, self.store.n_time - self.length + 1, self.batch_size)
        return self.pairs[rows], starts

    def next_batch(self) -> Batch:
        pairs, starts = self.global_indices(self.step)
        self.step += 1
        sl = slice(self.rank, None, self.world_size)
        return make_batch(self.store, pairs[sl, 0], pairs[sl, 1], starts[sl], self.length, self.warmup,
                          time_split=TRAIN)


def make_batch(store: SequenceStore, m, g, t0, length: int, warmup: int, time_split: int | None = TRAIN) -> Batch:
    """Windows (m, g, t0..t0+length); the mask drops NaNs, the warm-up and (if set) other splits' days."""
    m, g, t0 = np.asarray(m), np.asarray(g), np.asarray(t0)
    t = t0[:, None] + np.arange(length)
    y = store.responses[m[:, None], g[:, None], t]
    mask = np.isfinite(y)
    mask[:, :warmup] = False
    if time_split is not None:
        mask &= (store.split_time[t] == time_split)[..., None]
    return Batch(torch.from_numpy(store.forcing_for(m, g, t0, length)), torch.from_numpy(store.static[g]),
                 torch.from_numpy(store.theta[m]), torch.from_numpy(np.where(mask, y, 0.0).astype(np.float32)),
                 torch.from_numpy(mask))


def validation_windows(store: SequenceStore, n: int, window: int, warmup: int, seed: int):
    """Fixed windows for early stopping: val members or val gridcells (never test ones), training years."""
    pairs = store.pairs([TRAIN, VAL], [TRAIN, VAL])
    is_val = (store.split_member[pairs[:, 0]] == VAL) | (store.split_gridcell[pairs[:, 1]] == VAL)
    pairs = pairs[is_val]
    if len(pairs) == 0:
        raise UserError(f"{store.path}: no validation members or gridcells (split_member/split_gridcell == {VAL})")
    rng = np.random.default_rng([seed, 7919])
    rows = rng.integers(0, len(pairs), n)
    starts = rng.integers(0, store.n_time - (window + warmup) + 1, n)
    return pairs[rows, 0], pairs[rows, 1], starts


class SummaryTable:
    """A summary PPE: theta (N,P) and outputs (N,R), no time (tabular mode).

    Reads a netCDF with `theta(member, param)` and outputs as `y(member, output)` (as written by
    `ppe_ingest.ingest.summary.build_summary_store`) or as variables on `member` alone; an optional
    `split_member` (0 train, 1 val, 2 test) fixes the split.
    """

    def __init__(self, path, responses: Sequence[str] | None = None, params: Sequence[str] | None = None):
        self.path = Path(path)
        ds = _open(path)
        if "theta" not in ds:
            raise UserError(f"{path}: variable 'theta' is missing (not a summary store)")
        ds = ds.load()
        if "y" in ds and set(ds["y"].dims) == {"member", "output"}:  # y(member, output) layout
            candidates = [str(o) for o in ds["output"].values]
            self.response_names = _pick(responses, candidates, "output", path)
            y = ds["y"].assign_coords(output=candidates).sel(output=self.response_names)
            self.y = y.transpose("member", "output").values.astype(np.float64)
        else:  # one variable per output on `member`
            candidates = [str(v) for v, da in ds.data_vars.items()
                          if da.dims == ("member",) and not str(v).startswith("split")]
            self.response_names = _pick(responses, candidates, "output", path)
            self.y = np.stack([ds[v].values.astype(np.float64) for v in self.response_names], -1)
        if not self.response_names:
            raise UserError(f"{path}: no outputs on the member dimension")
        self.param_names = _pick(params, [str(p) for p in ds["param"].values], "param", path)
        theta = ds["theta"].assign_coords(param=[str(p) for p in ds["param"].values])
        self.theta = theta.sel(param=self.param_names).transpose("member", "param").values.astype(np.float64)
        ok = np.all(np.isfinite(self.theta), 1) & np.all(np.isfinite(self.y), 1)
        self.theta, self.y = self.theta[ok], self.y[ok]
        self.members = [str(m) for m, k in zip(ds["member"].values, ok) if k]
        self.attrs = dict(ds.attrs)
        self.split_member = ds["split_member"].values[ok].astype(np.int8) if "split_member" in ds else None
