"""Training data from the ingest store: windows over members x gridcells x time, and summary tables.

`SequenceStore` reads a training store (see the store contract in DESIGN/ingest) into float32
arrays with its names, splits and coordinates, or, when the store is larger than memory allows,
reads each batch's windows from the file on demand (`reading`, `StoreArray`), a thread reading
ahead of the loop (`esm_emu.loader`). `WindowSampler` draws windows of
`warmup + window` days; the loss covers the last `window` days, only where the response is
finite and the day is a training year. The global batch of step k depends only on (seed, k), and
each rank takes its own slice of it (DistributedSampler-style), so any number of ranks sees the
same global batch and a resumed run the same sequence of batches.
"""
from __future__ import annotations

from contextlib import contextmanager
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


# `reading: auto` keeps the arrays training reads in memory up to this size per process, and reads
# windows from the store above it (data.memory_mb in the emulator config).
DEFAULT_MEMORY_MB = 1024.0
READINGS = ("auto", "memory", "stream")
_BLOCK_BYTES = 64 << 20  # bytes per block when a statistic streams over the store


class StoreArray:
    """Stacked store variables (..., V) read from the file on demand: what SequenceStore holds in
    place of an in-memory array when the store is streamed.

    `dims` is the logical order (("member", "gridcell", "time") or ("gridcell", "time")); values
    are decoded as xarray decodes them (fill and missing values to NaN, scale and offset) and cast
    to float32, so a window read here equals the same window of the in-memory array bit for bit.
    Indexing takes the two patterns the package uses: windows ``a[m[:, None], g[:, None], t]``
    (t (B, L), consecutive days per row) and whole series ``a[m, g]``. One netCDF handle per
    process, reads under base.netcdf.NC_LOCK (HDF5 is not thread-safe).
    """

    def __init__(self, path: Path, names: Sequence[str], dims: tuple, shape: tuple):
        self.path, self.names, self.dims = Path(path), list(names), tuple(dims)
        self.shape = (*shape, len(self.names))
        self.dtype = np.dtype(np.float32)
        self._nc, self._pid, self._vars, self._key = None, None, None, None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def _variables(self):
        import os

        import netCDF4

        # a forked process opens its own; so does an array whose shared handle another one closed
        if self._nc is None or self._pid != os.getpid() or self._key not in _OPEN:
            st = os.stat(self.path)
            key = (str(self.path.resolve()), os.getpid(), st.st_ino, st.st_mtime_ns)
            if key not in _OPEN:
                _OPEN[key] = netCDF4.Dataset(self.path)
            self._nc, self._key = _OPEN[key], key
            self._pid = os.getpid()
            self._vars = []
            for n in self.names:
                v = self._nc[n]
                v.set_auto_maskandscale(False)
                a = v.ncattrs()
                miss = [np.asarray(v.getncattr(k)).ravel() for k in ("_FillValue", "missing_value") if k in a]
                scale = v.getncattr("scale_factor") if "scale_factor" in a else None
                offset = v.getncattr("add_offset") if "add_offset" in a else None
                self._vars.append((v, [x for m in miss for x in m if not np.isnan(x)], scale, offset))
        return self._vars

    def _read(self, j: int, index: dict) -> np.ndarray:
        v, miss, scale, offset = self._variables()[j]
        x = np.asarray(v[tuple(index[d] for d in v.dimensions)])
        if miss or scale is not None or offset is not None:
            x = x.astype(np.float64 if x.dtype.itemsize > 4 else np.float32)
            for mv in miss:
                x[x == mv] = np.nan
            if scale is not None:
                x = x * scale
            if offset is not None:
                x = x + offset
        return x

    def window(self, index: dict, out: np.ndarray) -> None:
        """out (..., V) <- the values at `index` (dim name -> int or slice), variable by variable."""
        with _locks():
            for j in range(len(self.names)):
                x = self._read(j, index)
                sliced = [d for d in self._variables()[j][0].dimensions if not isinstance(index[d], (int, np.integer))]
                want = [d for d in self.dims if d in sliced]
                if sliced != want:
                    x = np.transpose(x, [sliced.index(d) for d in want])
                out[..., j] = x

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        keyed = self.dims[:len(key)]
        arrs = [np.asarray(k) for k in key]
        if len(key) == len(self.dims) and arrs[-1].ndim == 2:  # windows: (..., t (B, L))
            t = arrs[-1]
            rows = [np.broadcast_to(a, t.shape)[:, 0] for a in arrs[:-1]]
            out = np.empty((*t.shape, len(self.names)), np.float32)
            for i in range(t.shape[0]):
                t0, n = int(t[i, 0]), t.shape[1]
                if n and not np.array_equal(t[i], np.arange(t0, t0 + n)):
                    raise IndexError("StoreArray: window rows must be consecutive days")
                idx = {d: int(r[i]) for d, r in zip(keyed[:-1], rows)}
                idx[self.dims[-1]] = slice(t0, t0 + n)
                self.window(idx, out[i])
            return out
        if len(key) == len(self.dims) - 1 and all(a.ndim == 1 for a in arrs):  # whole series: (N, T, V)
            n = len(arrs[0])
            out = np.empty((n, self.shape[-2], len(self.names)), np.float32)
            for i in range(n):
                idx = {d: int(a[i]) for d, a in zip(keyed, arrs)}
                idx[self.dims[-1]] = slice(None)
                self.window(idx, out[i])
            return out
        raise IndexError("StoreArray: index with windows a[m[:, None], g[:, None], t] or series a[m, g]")

    def blocks(self, members: np.ndarray, gridcells: np.ndarray, days: np.ndarray | None = None):
        """(member, gridcell indices, values (g, T or days, V)) over `members`, a few MB at a time."""
        step = max(1, int(_BLOCK_BYTES // max(1, self.shape[-2] * len(self.names) * 4)))
        for m in members:
            for k in range(0, len(gridcells), step):
                g = np.asarray(gridcells[k:k + step])
                lo, hi = int(g.min()), int(g.max()) + 1
                x = np.empty((hi - lo, self.shape[-2], len(self.names)), np.float32)
                idx = {"member": int(m), "gridcell": slice(lo, hi), "time": slice(None)}
                self.window(idx, x)
                x = x[g - lo]
                yield m, g, (x if days is None else x[:, days])

    def close(self) -> None:
        """Close the file (every StoreArray of this file in this process shares the handle)."""
        if self._nc is not None:
            with _locks():
                if _OPEN.pop(self._key, None) is not None:
                    try:
                        self._nc.close()
                    except Exception:  # already closed
                        pass
        self._nc = self._vars = None


# Open store files, one handle per (file, process), closed only by StoreArray.close: a netCDF4
# handle left to the garbage collector would be closed in whatever thread (or inside whatever
# HDF5 call) the collection happens, which HDF5 does not survive.
_OPEN: dict = {}


@contextmanager
def _locks():
    """The project's netCDF lock and xarray's (dask reads the same library from its threads)."""
    from xarray.backends.netCDF4_ import NETCDF4_PYTHON_LOCK

    from ppe_ingest.base.netcdf import NC_LOCK

    with NC_LOCK, NETCDF4_PYTHON_LOCK:
        yield


def _read_stack(ds, names, order, shape) -> np.ndarray:
    """Variables stacked on a last axis, filled one at a time (peak: the stack + one variable)."""
    out = np.empty((*shape, len(names)), np.float32)
    for j, v in enumerate(names):
        out[..., j] = ds[v].transpose(*order).values
    return out


class SequenceStore:
    """A training store's arrays: forcing (G,T,F) or (M,G,T,F), responses (M,G,T,R), theta, static.

    `reading`: "memory" loads forcing and responses into float32 arrays; "stream" leaves them in
    the file (StoreArray) and reads each batch's windows on demand, so memory is bounded by the
    batch, not the store; "auto" (default) loads both when they take at most `memory_mb`, else the
    forcing alone when it does (it has no member axis when shared), streaming the responses. All
    give the same values, hence the same batches and loss trajectory. `in_memory` says whether
    the responses are in memory, `forcing_in_memory` the forcing.
    """

    def __init__(self, path, forcing: Sequence[str] | None = None, static: Sequence[str] | None = None,
                 params: Sequence[str] | None = None, responses: Sequence[str] | None = None,
                 reading: str = "auto", memory_mb: float = DEFAULT_MEMORY_MB):
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
        if reading not in READINGS:
            raise UserError(f"emulator.data.reading: {reading!r} is not one of {', '.join(READINGS)}")
        self.forcing_shared = contract.forcing_shared(ds)
        self.n_member, self.n_gridcell, self.n_time = (ds.sizes[d] for d in ("member", "gridcell", "time"))
        order = ("gridcell", "time") if self.forcing_shared else ("member", "gridcell", "time")
        fshape = tuple(ds.sizes[d] for d in order)
        rorder = ("member", "gridcell", "time")
        rshape = (self.n_member, self.n_gridcell, self.n_time)
        self.nbytes = 4 * (int(np.prod(fshape)) * len(self.forcing_names)
                           + int(np.prod(rshape)) * len(self.response_names))
        budget = memory_mb * 2**20
        fbytes = 4 * int(np.prod(fshape)) * len(self.forcing_names)
        # auto: everything in memory when it fits; else the forcing alone when it fits (every
        # member's window reads it: ~2/3 of the reads of a batch), the responses streamed
        self.in_memory = reading == "memory" or (reading == "auto" and self.nbytes <= budget)
        self.forcing_in_memory = self.in_memory or (reading == "auto" and fbytes <= budget)
        if self.forcing_in_memory:
            self.forcing = _read_stack(ds, self.forcing_names, order, fshape)
            if not np.all(np.isfinite(self.forcing)):
                bad = self.forcing_names[int(np.argwhere(~np.isfinite(self.forcing))[0, -1])]
                raise UserError(f"{path}: forcing {bad} has missing values")
        else:  # streamed: forcing is checked window by window as batches are read (forcing_for)
            self.forcing = StoreArray(path, self.forcing_names, order, fshape)
        if self.in_memory:
            self.responses = _read_stack(ds, self.response_names, rorder, rshape)
        else:
            self.responses = StoreArray(path, self.response_names, rorder, rshape)
        self.theta = ds["theta"].sel(param=self.param_names).transpose("member", "param").values.astype(np.float32)
        self.static = contract.static_values(ds, self.static_names).astype(np.float32)
        for name, arr in (("theta", self.theta), ("static", self.static)):
            if not np.all(np.isfinite(arr)):
                raise UserError(f"{path}: {name} has missing values; the emulator needs every value")
        self.split_member = ds[contract.SPLIT_MEMBER].values.astype(np.int8)
        self.split_gridcell = ds[contract.SPLIT_GRIDCELL].values.astype(np.int8)
        self.split_time = ds[contract.SPLIT_TIME].values.astype(np.int8)
        self.members = [str(m) for m in ds["member"].values]
        self.time = ds["time"].values
        nan = np.full(len(self.split_gridcell), np.nan)
        self.lat = ds[contract.LAT].values if contract.LAT in ds else nan
        self.lon = ds[contract.LON].values if contract.LON in ds else nan
        self.warmup_days = int(ds.attrs.get(contract.ATTR_WARMUP, 0))

    def forcing_for(self, m: np.ndarray, g: np.ndarray, t0: np.ndarray | int, length: int) -> np.ndarray:
        """Forcing windows (B, length, F) for member/gridcell index arrays starting at t0."""
        t = np.asarray(t0).reshape(-1, 1) + np.arange(length)
        if self.forcing_shared:
            f = self.forcing[np.asarray(g)[:, None], t]
        else:
            f = self.forcing[np.asarray(m)[:, None], np.asarray(g)[:, None], t]
        if not self.forcing_in_memory and not np.all(np.isfinite(f)):
            bad = self.forcing_names[int(np.argwhere(~np.isfinite(f))[0, -1])]
            raise UserError(f"{self.path}: forcing {bad} has missing values")
        return f

    def pairs(self, member_split: Sequence[int], gridcell_split: Sequence[int]) -> np.ndarray:
        """(N, 2) member, gridcell index pairs whose splits are in the given sets."""
        ms = np.flatnonzero(np.isin(self.split_member, member_split))
        gs = np.flatnonzero(np.isin(self.split_gridcell, gridcell_split))
        return np.stack(np.meshgrid(ms, gs, indexing="ij"), -1).reshape(-1, 2)

    def response_blocks(self, members: np.ndarray, gridcells: np.ndarray, days: np.ndarray | None = None):
        """(member, gridcell indices, responses (g, days, R)) blocks of a few MB, read or sliced."""
        if not self.in_memory:
            yield from self.responses.blocks(members, gridcells, days)
            return
        step = max(1, int(_BLOCK_BYTES // max(1, self.n_time * len(self.response_names) * 4)))
        for m in members:
            for k in range(0, len(gridcells), step):
                g = np.asarray(gridcells[k:k + step])
                x = self.responses[m, g]
                yield m, g, (x if days is None else x[:, days])

    def train_std(self, combos: np.ndarray | None = None) -> np.ndarray:
        """Population std (NaN skipped) of each response, then of each linear combination
        `responses @ combos[k]`, over the train split's members, gridcells and days: streamed in
        float64 blocks (Chan et al.'s pairwise update), the same in memory and streamed."""
        combos = np.zeros((0, len(self.response_names))) if combos is None else np.asarray(combos, np.float64)
        n_out = len(self.response_names) + len(combos)
        n, mean, m2 = np.zeros(n_out), np.zeros(n_out), np.zeros(n_out)
        ms = np.flatnonzero(self.split_member == TRAIN)
        gs = np.flatnonzero(self.split_gridcell == TRAIN)
        days = self.split_time == TRAIN
        for _, _, x in self.response_blocks(ms, gs, days):
            x = x.astype(np.float64).reshape(-1, x.shape[-1])
            cols = [x[:, r] for r in range(x.shape[1])] + [x @ c for c in combos]
            for k, c in enumerate(cols):
                c = c[np.isfinite(c)]
                if not len(c):
                    continue
                nb, mb = len(c), c.mean()
                m2b = float(((c - mb) ** 2).sum())
                tot = n[k] + nb
                d = mb - mean[k]
                mean[k] += d * nb / tot
                m2[k] += m2b + d * d * n[k] * nb / tot
                n[k] = tot
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, np.sqrt(m2 / np.maximum(n, 1)), np.nan)

    def close(self) -> None:
        for a in (self.forcing, self.responses):
            if isinstance(a, StoreArray):
                a.close()


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
                 seed: int, rank: int = 0, world_size: int = 1, prefetch: int = 0):
        self.store, self.pairs = store, pairs
        self.window, self.warmup, self.length = window, warmup, window + warmup
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        # batches read ahead by a thread (esm_emu.loader) from a streamed store; in memory a batch is a
        # few array copies (~1 ms), and a thread would only compete with the ranks for the cores
        self.prefetch = 0 if store.in_memory else int(prefetch)
        self._loader = None
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
        self.close()
        self.seed, self.step = int(state["seed"]), int(state["step"])

    def global_indices(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        rows = rng.integers(0, len(self.pairs), self.batch_size)
        starts = rng.integers(0, self.store.n_time - self.length + 1, self.batch_size)
        return self.pairs[rows], starts

    def batch(self, step: int) -> Batch:
        """This rank's share of the global batch of `step` (only its rows are read)."""
        pairs, starts = self.global_indices(step)
        sl = slice(self.rank, None, self.world_size)
        return make_batch(self.store, pairs[sl, 0], pairs[sl, 1], starts[sl], self.length, self.warmup,
                          time_split=TRAIN)

    def next_batch(self) -> Batch:
        if self.prefetch <= 0:
            b = self.batch(self.step)
        else:
            from .loader import Prefetcher

            if self._loader is None or self._loader.next_step != self.step:
                self.close()
                self._loader = Prefetcher(self.batch, self.step, self.prefetch)
            b = self._loader.get(self.step)
        self.step += 1
        return b

    def close(self) -> None:
        """Stop reading ahead (the loop ended or jumped to another step)."""
        if self._loader is not None:
            self._loader.close()
            self._loader = None


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
