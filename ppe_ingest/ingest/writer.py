"""Write the training store: a whole PPE streamed into the layout `ppe_ingest.store` defines.

How it is written: `write_store` streams members through float32 (gridcell, time) buffers (one
per variable): each member's history files are read once, checked (NaN, fill values), added to the
train-split statistics (Chan streaming mean/variance in float64, in 64-gridcell blocks, one
accumulator per member merged in member order) and written as one (1, G, T) slab with netCDF4-python
into the pre-created store. Shared forcing: the first good member's forcing is the reference,
written once; every later member's forcing is compared with it block by block as it is read (by
value, never stored; SHA-1 fingerprints of the forcing had cost half as much as reading it), and a
difference that is not a bad value starts the store again with forcing per member.

Where (`parallel.pool`): in this process by default (two sets of buffers reused in turn: a writer
thread writes one member while the next is read into the other set), or on
dask.distributed workers (`esm-emu ingest --workers N`, `--scheduler`): workers read, convert,
check and add up the statistics of whole members and return them; this process stays the one
writer and takes the members in order, so the store (values, statistics, split, skip report) is
the same bit for bit. At most `IN_FLIGHT_BYTES` of members are read ahead of the writer. No dask
array graph: per member tasks are enough and the graph cost more than the reads at PPE sizes.
Peak memory in this process is two members' data (one being written, one read; one member when
two would pass IN_FLIGHT_BYTES) plus fixed costs (a 16 MiB mapped read window, 1 MiB HDF5 chunk
cache per variable: netCDF's default 64 MiB per variable kept ~11 full-size members of every
variable resident). `open_ensemble` still gives the lazy dask view of a PPE.

Storage: chunks (member=1, gridcell<=chunk_gridcell, time<=chunk_time), balanced so the last
chunk is not mostly empty (400 gridcells -> 7 x 58, not 7 x 64 = 12% padding). Uncompressed by
default: on a simulator PPE (8 members x 400 gridcells x 3 years, 6 variables) zlib level 1 with
shuffle made the store 28% smaller (34.7 vs 48.1 MB) but its write 5x slower (2.7-3.1 s vs
0.5-0.7 s), far below the read rate; pass ``complevel`` when disk matters more than time.

Reads and thread safety: netCDF-3 history files (CTSM's usual NETCDF3_64BIT_OFFSET, and what
`esm-emu simulate` writes uncompressed) are read by `classic`, in mapped windows of whole records,
without netCDF-C: netCDF-C issues one read() per time step per variable on such files, which made it the
bottleneck (about 3x slower). That path makes no netCDF-C/HDF5 call and needs no lock. Every other
file (netCDF-4/HDF5, CDF-5, lat/lon output) goes through netCDF4-python with the global lock
``NC_LOCK`` held for every netCDF4 call: HDF5 and netCDF-C are not thread-safe (concurrent opens
crash in HDF5's free lists). A lock rather than h5netcdf, because h5netcdf cannot read the
netCDF-3 files real CTSM PPEs are made of and h5py serialises its calls with its own lock anyway.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import netCDF4
import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.netcdf import NC_LOCK
from ppe_ingest.ctsmio.surfdata import read_static
from ppe_ingest.ctsmio.vocabulary import (
    FORCING,
    LAI_DERIVATION,
    LAI_FIELDS,
    LOG_RESPONSES,
    RESPONSES,
    SOIL_LAYER_REDUCTION,
)
from ppe_ingest.store import (
    ATTR_CATALOG,
    ATTR_FORCING_SHARED,
    ATTR_HISTORY,
    ATTR_HISTORY_TAPES,
    ATTR_LAI_DERIVATION,
    ATTR_LAYOUT,
    ATTR_LOG_CLIP_MIN,
    ATTR_LOG_EPS,
    ATTR_LOG_VARS,
    ATTR_SKIPPED,
    ATTR_SOIL_LAYER_REDUCTION,
    ATTR_SOURCE_PPE,
    ATTR_SPLIT_SEED,
    ATTR_TITLE,
    ATTR_VERSION,
    ATTR_WARMUP,
    DEFAULT_LOG_EPS,
    FIELD,
    GRIDCELL,
    GROUP_PARAM,
    GROUP_STATIC,
    GROUP_VARIABLE,
    LAT,
    LON,
    MEMBER,
    NORM_GROUP,
    NORM_MEAN,
    NORM_STD,
    NORM_VAR,
    PARAM,
    PARAM_LOCATION,
    SPLIT_ATTRS,
    SPLIT_GRIDCELL,
    SPLIT_MEMBER,
    SPLIT_TIME,
    STATIC,
    TEST,
    THETA,
    THETA_MAX,
    THETA_MIN,
    THETA_REDUCTION,
    TIME,
    TRAIN,
    VAL,
    log_transform,
)

from .checks import nan_count
from .discover import HistFile, Ppe

DEFAULT_LOG_VARS = LOG_RESPONSES
WARMUP_DAYS = 365  # at most the first year is warm-up (never a held-out year, see make_split)
IN_FLIGHT_BYTES = 4 << 30  # a parallel ingest holds at most this much of members read but not yet written (>= 2)


# ---------------------------------------------------------------- reading

def _read_file(path: Path, variables: tuple[str, ...], layout: str) -> dict[str, np.ndarray]:
    """Read `variables` of one history file as float32 (time, gridcell), fill values -> NaN.

    NaN values that are not fill values are kept as NaN and counted by the caller (bad input).
    """
    out = {}
    try:
        with NC_LOCK:
            with netCDF4.Dataset(path, "r") as ds:
                ds.set_auto_maskandscale(False)
                for v in variables:
                    var = ds.variables[v]
                    raw = var[...]
                    fills = [getattr(var, a) for a in ("_FillValue", "missing_value") if hasattr(var, a)]
                    arr = np.asarray(raw, dtype="f4").reshape(raw.shape[0], -1)
                    for f in fills:
                        arr[raw.reshape(arr.shape) == f] = np.inf  # marked; NaN stays "bad"
                    out[v] = arr
    except (OSError, RuntimeError, KeyError, IndexError, ValueError) as e:
        raise UserError(f"{path}: cannot read data ({type(e).__name__}: {e}); "
                        "the file is truncated or corrupt") from None
    return out


def choose_tape(ppe: Ppe, variables) -> dict[str, str]:
    """For each variable the tape that holds it at the finest time step (all on one time axis)."""
    ref = ppe.members[0]
    chosen = {}
    for v in variables:
        cands = [h for h in ppe.files(ref) if v in h.variables]
        if not cands:
            raise UserError(f"{ppe.root}: variable {v} is in no history file of member {ref}")
        best = min(cands, key=lambda h: (float(np.median(np.diff(h.times))) if len(h.times) > 1 else 1e9, h.tape))
        chosen[v] = best.tape
    axes = {t: np.concatenate([h.times for h in ppe.files(ref, t)]) for t in set(chosen.values())}
    first = next(iter(axes))
    for t, ax in axes.items():
        if ax.shape != axes[first].shape or not np.allclose(ax, axes[first]):
            raise UserError(f"{ppe.root}: variables come from tapes {first} and {t} with different time axes; "
                            "ingest one frequency at a time with --vars")
    return chosen


def open_ensemble(ppe: Ppe, variables):
    """A lazy dask-backed xarray Dataset of `variables` with dims (member, gridcell, time)."""
    import dask
    import dask.array as da
    import xarray as xr

    tapes = choose_tape(ppe, variables)
    ref_files = [h for t in sorted(set(tapes.values())) for h in ppe.files(ppe.members[0], t)]
    by_tape = {t: [v for v in variables if tapes[v] == t] for t in set(tapes.values())}
    G = ref_files[0].lat.size
    per_var = {v: [] for v in variables}
    for m in ppe.members:
        pieces = {v: [] for v in variables}
        for t, vs in sorted(by_tape.items()):
            for h in ppe.files(m, t):
                block = dask.delayed(_read_file, pure=True)(h.path, tuple(vs), h.layout,
                                                          dask_key_name=f"read-{h.path}-{t}")
                for v in vs:
                    part = da.from_delayed(block[v], shape=(len(h.times), G), dtype="f4")
                    pieces[v].append(part)
        for v in variables:
            per_var[v].append(da.concatenate(pieces[v], axis=0).T)
    h0 = ppe.files(ppe.members[0], tapes[variables[0]])
    times = np.concatenate([h.times for h in h0])
    data = {v: ((MEMBER, GRIDCELL, TIME), da.stack(per_var[v])) for v in variables}
    ds = xr.Dataset(data, coords={
        MEMBER: np.array(ppe.members, dtype=object), GRIDCELL: np.arange(G),
        TIME: (TIME, times, {"units": h0[0].time_units, "calendar": h0[0].calendar}),
        LAT: (GRIDCELL, h0[0].lat, {"units": "degrees_north"}),
        LON: (GRIDCELL, h0[0].lon, {"units": "degrees_east"})})
    return xr.decode_cf(ds)


def _var_attrs(h: HistFile, variables) -> dict[str, dict]:
    """CTSM metadata (long_name, units, cell_methods) of `variables` in history file `h`."""
    with NC_LOCK, netCDF4.Dataset(h.path) as ds:
        out = {}
        for v in variables:
            var = ds.variables[v]
            out[v] = {a: var.getncattr(a) for a in ("long_name", "units", "cell_methods") if a in var.ncattrs()}
        return out


# ---------------------------------------------------------------- split and statistics

def _pick(n: int, frac: float, rng, pool: np.ndarray) -> np.ndarray:
    k = int(round(frac * n)) if frac < 1 else int(frac)
    if frac > 0 and k == 0 and len(pool) >= 3:
        k = 1
    return pool[:k]


def make_split(n_member: int, n_gridcell: int, years: np.ndarray, seed: int, val_members=0.1,
               test_members=0.1, val_gridcells=0.1, test_gridcells=0.1, test_years=1):
    """split_member, split_gridcell, split_time (0 train, 1 val, 2 test) chosen by `seed`.

    Held-out years are drawn from the whole years after the first (which serves as warm-up); `years`
    is the year of each time step by the start of its averaging interval (`interval_years`). Asking
    for more held-out years than there are is refused, not clamped.
    """
    rng = np.random.default_rng(seed)

    def split(n, fv, ft):
        s = np.zeros(n, dtype="i1")
        perm = rng.permutation(n)
        test = _pick(n, ft, rng, perm)
        val = _pick(n, fv, rng, perm[len(test):])
        if n - len(test) - len(val) < 1:
            raise UserError(f"split: {n} items leave none for training (val {fv}, test {ft})")
        s[test], s[val] = TEST, VAL
        return s

    sm = split(n_member, val_members, test_members)
    sg = split(n_gridcell, val_gridcells, test_gridcells)
    uy, counts = np.unique(years, return_counts=True)
    st = np.zeros(len(years), dtype="i1")
    # held-out years: whole years after the warm-up year (a year with under 90 % of the steps of the
    # fullest one, e.g. the few days a run goes past its last New Year, is never held out on its own)
    whole = uy[1:][counts[1:] >= 0.9 * counts.max()] if len(uy) else uy
    if test_years and int(test_years) > len(whole):
        parts = [f"{int(y)} ({int(c)} steps)" for y, c in zip(uy, counts)]
        have = ", ".join(parts if len(parts) <= 6 else [*parts[:3], "...", *parts[-2:]]) or "none"
        raise UserError(f"ingest.split.test_years: {int(test_years)} held-out year(s) asked for, but the history "
                        f"holds {len(whole)} whole year(s) after the warm-up year (years: {have}); "
                        "lower test_years (0: no held-out years)")
    if test_years:
        held = rng.choice(whole, size=int(test_years), replace=False)
        st[np.isin(years, held)] = TEST
    return sm, sg, st


def interval_years(files) -> np.ndarray:
    """The year of each time step of history `files` (concatenated), by the day it describes
    (`ctsmio.history.record_days`: CTSM stamps an average at the interval's end, so the last day of
    2002 is stamped 2003-01-01 00:00 and must count in 2002). Uses `time_bounds`/`time_bnds` where
    every file has them, else the stamps and their spacing."""
    from ppe_ingest.ctsmio.history import record_days

    times, bounds = [], []
    for h in files:
        times.append(netCDF4.num2date(np.asarray(h.times, dtype=float), h.time_units, h.calendar))
        with NC_LOCK, netCDF4.Dataset(h.path) as ds:
            b = next((ds.variables[n] for n in ("time_bounds", "time_bnds") if n in ds.variables), None)
            ok = b is not None and b.ndim == 2 and b.shape == (len(h.times), 2)
            vals = np.ma.filled(np.asarray(b[:], dtype=float), np.nan) if ok else None
        if bounds is not None and vals is not None and np.isfinite(vals).all():
            bounds.append(netCDF4.num2date(vals, h.time_units, h.calendar))
        else:
            bounds = None
    if not times or not sum(len(t) for t in times):
        return np.array([], int)
    days = record_days(np.concatenate(times), None if bounds is None else np.concatenate(bounds))
    return np.array([d.year for d in days])


class _Moments:
    """Streaming mean/variance (Chan et al. pairwise merge) with float64 accumulators, NaN-aware.

    Takes float32 blocks as they are: sums are accumulated in float64 without a float64 copy.
    """

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        s = float(x.sum(dtype="f8"))
        if not math.isfinite(s):  # missing values (NaN) in the block
            x = x[np.isfinite(x)]
            s = float(x.sum(dtype="f8"))
        n = x.size
        if n == 0:
            return
        mean = s / n
        m2 = float(np.square(x - x.dtype.type(mean)).sum(dtype="f8"))
        tot = self.n + n
        d = mean - self.mean
        self.mean += d * n / tot
        self.m2 += m2 + d * d * self.n * n / tot
        self.n = tot

    def merge(self, other: _Moments) -> None:
        """Add another accumulator's values (Chan's pairwise merge; the same result on 1 or N workers,
        since the writer merges each member's moments in member order)."""
        if not other.n:
            return
        tot = self.n + other.n
        d = other.mean - self.mean
        self.mean += d * other.n / tot
        self.m2 += other.m2 + d * d * self.n * other.n / tot
        self.n = tot

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")


# ---------------------------------------------------------------- writing

class _ForcingDiffers(Exception):
    pass


@dataclass(frozen=True)
class WriteOptions:
    """write_store's choices about one store's split, statistics, storage and logging (see write_store)."""

    seed: int = 0
    split: Mapping = field(default_factory=dict)      # make_split's fractions
    log_vars: tuple = DEFAULT_LOG_VARS
    log_eps: float = DEFAULT_LOG_EPS
    chunk_gridcell: int = 64
    chunk_time: int = 365
    catalog: str | None = None
    progress: bool = True
    forcing_per_member: bool = False
    complevel: int = 0


def write_store(ppe: Ppe, out: str | Path, variables=None, table=None, seed: int = 0, split: dict | None = None,
                log_vars=DEFAULT_LOG_VARS, log_eps: float = DEFAULT_LOG_EPS, chunk_gridcell: int = 64,
                chunk_time: int = 365, catalog: str | None = None, progress: bool = True,
                forcing_per_member: bool = False, theta=None, complevel: int = 0, pool=None) -> Path:
    """Stream the PPE into the training store at `out` (atomically); return its path.

    `pool` (`parallel.pool`): where members are read and checked; None: in this process.
    """
    from .parallel import Pool
    from .theta import check_design, member_theta, ppe_table, read_design

    report = ppe.report
    if variables is None:
        present = set().union(*(set(h.variables) for h in ppe.hist)) if ppe.hist else set()
        variables = [v for v in (*FORCING, *RESPONSES) if v in present]
    variables = list(dict.fromkeys(variables))
    if not variables:
        raise UserError(f"{ppe.root}: none of the CTSM forcing/response variables "
                        f"({', '.join(FORCING + RESPONSES)}) is in the history files")
    if table is None:
        table = ppe_table(ppe)
    if theta is None:
        theta, location, reduction = member_theta(ppe, table=table)
        if ppe.design is not None:
            check_design(theta, read_design(ppe.design), str(ppe.design), report, reduction)
    else:
        theta, location, reduction = theta
    # members dropped while reading parameters
    ppe.members = [m for m in ppe.members if m not in report.bad_members()]
    theta = theta.loc[[m for m in theta.index if m in ppe.members]]
    if not ppe.members:
        raise UserError(f"{ppe.root}: no member left to ingest")
    opts = WriteOptions(seed=seed, split=split or {}, log_vars=tuple(log_vars), log_eps=log_eps,
                        chunk_gridcell=chunk_gridcell, chunk_time=chunk_time, catalog=catalog, progress=progress,
                        forcing_per_member=forcing_per_member, complevel=complevel)
    members = _MemberTheta(theta, location, reduction)
    pool = pool or Pool()
    try:
        return _write(ppe, Path(out), variables, table, members, opts, pool)
    except _ForcingDiffers:
        return _write(ppe, Path(out), variables, table, members, replace(opts, forcing_per_member=True), pool)


def _member_buffers(variables, G: int, T: int) -> dict[str, np.ndarray]:
    """One float32 (gridcell, time) buffer per variable, reused for every member."""
    return {v: np.empty((G, T), dtype="f4") for v in variables}


class _Same:
    """A read destination that compares instead of storing: ``flag[0]`` stays True while every block
    written into it equals (by value) the same block of `ref`, the reference member's forcing."""

    def __init__(self, ref: np.ndarray, flag: list):
        self.ref, self.flag = ref, flag

    shape = property(lambda self: self.ref.shape)
    dtype = property(lambda self: self.ref.dtype)
    T = property(lambda self: _Same(self.ref.T, self.flag))

    def __getitem__(self, idx) -> _Same:
        return _Same(self.ref[idx], self.flag)

    def __setitem__(self, idx, block) -> None:
        if self.flag[0]:
            self.flag[0] = bool(np.array_equal(self.ref[idx], block))


def _read_member(files: dict[str, list[HistFile]], by_tape: dict[str, list[str]], bufs: dict) -> None:
    """Fill `bufs` with one member's values from its `files` (tape -> history files in time order):
    each history file opened once, every variable read once. A `_Same` in `bufs` compares the
    variable with a reference instead (nothing stored, no fill values converted).

    netCDF-3 files with 1-D (gridcell) output go through `classic.read_record_vars` (block reads,
    no netCDF-C, no lock); anything else through netCDF4-python under ``NC_LOCK``. Fill values
    (``_FillValue``/``missing_value``, CTSM's 1e36) become +inf here so that NaN stored in a file
    (bad input) can still be told apart from missing; the caller turns inf into NaN.
    """
    for tape, vs in by_tape.items():
        t0 = 0
        for h in files[tape]:
            n = len(h.times)
            dst = {v: bufs[v][:, t0:t0 + n] for v in vs}
            try:
                fills = _read_classic(h, vs, dst)
                if fills is None:
                    fills = _read_netcdf4(h, vs, dst)
            except (OSError, RuntimeError, KeyError, IndexError, ValueError) as e:
                raise UserError(f"{h.path}: cannot read data ({type(e).__name__}: {e}); "
                                "the file is truncated or corrupt") from None
            for v in vs:
                for f in fills[v] if isinstance(dst[v], np.ndarray) else ():
                    hit = dst[v] == f
                    if hit.any():
                        np.putmask(dst[v], hit, np.inf)
            t0 += n


def _fill_values(attrs: dict, dtype) -> list:
    vals = {np.asarray(attrs[a]).astype(dtype).item() for a in ("_FillValue", "missing_value") if a in attrs}
    return [dtype.type(f) for f in vals]


def _read_classic(h: HistFile, vs, dst: dict[str, np.ndarray]) -> dict[str, list] | None:
    """Read `vs` of a netCDF-3 1-D history file into the (gridcell, time) views `dst`; None if not such a file."""
    from .classic import NotClassic, read_header, read_record_vars

    try:
        hdr = read_header(h.path)
    except NotClassic:
        return None
    shape = (next(iter(dst.values())).shape[0],)
    for v in vs:
        cv = hdr.variables[v]
        if not cv.is_record or cv.shape != shape:
            return None  # e.g. lat/lon output: netCDF4 flattens it
    if hdr.numrecs != next(iter(dst.values())).shape[1]:
        raise ValueError(f"{hdr.numrecs} records, discovery read {next(iter(dst.values())).shape[1]} time steps")
    read_record_vars(h.path, vs, out={v: dst[v].T for v in vs}, header=hdr)
    return {v: _fill_values(hdr.variables[v].attrs, dst[v].dtype) for v in vs}


def _read_netcdf4(h: HistFile, vs, dst: dict[str, np.ndarray]) -> dict[str, list]:
    """Read `vs` with netCDF4-python under NC_LOCK into the (gridcell, time) views `dst`."""
    fills = {}
    with NC_LOCK, netCDF4.Dataset(h.path, "r") as ds:
        ds.set_auto_maskandscale(False)
        for v in vs:
            var = ds.variables[v]
            raw = var[...]
            dst[v][...] = raw.reshape(raw.shape[0], -1).T  # (time, gridcell) -> (gridcell, time), as f4
            fills[v] = _fill_values({a: var.getncattr(a) for a in var.ncattrs()}, dst[v].dtype)
            del raw
    return fills


def _train_moments(a: np.ndarray, idx: np.ndarray, cols: np.ndarray, log_eps: float | None,
                   block: int = 64) -> _Moments:
    """Moments of the train part of `a` (rows `idx`, time steps where `cols`), `block` gridcells at a
    time (bounded temporaries)."""
    m = _Moments()
    all_cols = bool(cols.all())
    for i in range(0, idx.size, block):
        sub = a[idx[i:i + block]]
        if not all_cols:
            sub = sub[:, cols]
        m.add(log_transform(sub, log_eps) if log_eps is not None else sub)
    return m


def _balanced(n: int, most: int) -> int:
    """The chunk length <= `most` that splits `n` into equal chunks (no mostly-empty last chunk)."""
    most = max(1, min(n, most))
    return -(-n // -(-n // most))


@dataclass(frozen=True)
class _MemberTheta:
    """The parameters each member ran with: theta (member x param DataFrame), location and reduction per param."""

    theta: object
    location: Mapping[str, str]
    reduction: Mapping[str, str]


@dataclass
class _Layout:
    """What the store holds, worked out before anything is written."""

    variables: list[str]
    tapes: dict[str, str]                 # variable -> history tape it is read from
    by_tape: dict[str, list[str]]
    h0: HistFile                          # first history file of the first member: grid and time units
    time: np.ndarray                      # raw time values of the chosen tapes
    attrs: dict[str, dict]                # CTSM metadata of each variable
    split_of: dict[str, int]              # member -> split code
    split_gridcell: np.ndarray
    split_time: np.ndarray
    static: np.ndarray                    # (gridcell, field)
    fields: list[str]
    static_units: dict[str, str]
    params: list[str]
    lo: np.ndarray                        # table bounds, NaN where unknown
    hi: np.ndarray
    log_vars: list[str]
    forcing_per_member: bool

    @property
    def G(self) -> int:
        return self.h0.lat.size

    @property
    def T(self) -> int:
        return self.time.size

    @property
    def forcing(self) -> list[str]:
        return [v for v in self.variables if v in FORCING]

    def shared(self, v: str) -> bool:
        """Is `v` stored once for all members, (gridcell, time)?"""
        return v in FORCING and not self.forcing_per_member

    @property
    def norm_vars(self) -> list[str]:
        return [*self.variables, *self.fields, *self.params]

    @property
    def norm_groups(self) -> list[str]:
        return ([GROUP_VARIABLE] * len(self.variables) + [GROUP_STATIC] * len(self.fields)
                + [GROUP_PARAM] * len(self.params))


def _plan(ppe: Ppe, variables: list[str], table, theta, opts: WriteOptions) -> _Layout:
    """The store's layout: tapes, time axis, split, static fields and parameter bounds."""
    tapes = choose_tape(ppe, variables)
    by_tape = {t: [v for v in variables if tapes[v] == t] for t in sorted(set(tapes.values()))}
    ref_files = ppe.files(ppe.members[0], tapes[variables[0]])
    h0 = ref_files[0]
    raw_time = np.concatenate([h.times for h in ref_files])
    attrs = {}
    for t, vs in by_tape.items():
        attrs.update(_var_attrs(ppe.files(ppe.members[0], t)[0], vs))
    years = interval_years(ref_files)
    sm_all, sg, st = make_split(len(ppe.members), h0.lat.size, years, opts.seed, **opts.split)
    static, fields, static_units = read_static(ppe.surfdata, h0.lat, h0.lon)
    params = list(theta.columns)
    lo = np.array([table[p].bounds()[0] if table is not None and p in table else np.nan for p in params])
    hi = np.array([table[p].bounds()[1] if table is not None and p in table else np.nan for p in params])
    return _Layout(variables=variables, tapes=tapes, by_tape=by_tape, h0=h0, time=raw_time, attrs=attrs,
                   split_of=dict(zip(ppe.members, sm_all)), split_gridcell=sg, split_time=st, static=static,
                   fields=fields, static_units=static_units, params=params, lo=lo, hi=hi,
                   log_vars=[v for v in opts.log_vars if v in variables],
                   forcing_per_member=opts.forcing_per_member)


def _write(ppe: Ppe, out: Path, variables: list[str], table, members: _MemberTheta, opts: WriteOptions,
           pool) -> Path:
    """Lay out the store, stream the members into it, then write theta, static fields, split,
    normalisation statistics and global attributes."""
    lay = _plan(ppe, variables, table, members.theta, opts)
    with atomic_path(out, inputs=[h.path for h in ppe.hist]) as tmp:
        nc = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            _define_coordinates(nc, lay)
            data_vars = _define_variables(nc, lay, opts.complevel, opts.chunk_gridcell, opts.chunk_time)
            kept, moments = _stream_members(ppe, lay, opts, nc.variables[MEMBER], data_vars, pool)
            th, sm = _write_theta(nc, lay, members, kept)
            _write_static(nc, lay)
            _write_splits(nc, lay, sm)
            _write_norm_stats(nc, lay, moments, th, sm)
            _write_global_attrs(nc, ppe, lay, opts)
        finally:
            nc.close()
    return out


def _define_coordinates(nc, lay: _Layout) -> None:
    """Dims, coordinates (member, gridcell, time, lat/lon) and the name lists (param, field, norm_var/group)."""
    nc.createDimension(MEMBER, None)
    for d, n in ((GRIDCELL, lay.G), (TIME, lay.T), (PARAM, len(lay.params)), (FIELD, len(lay.fields)),
                 (NORM_VAR, len(lay.norm_vars))):
        nc.createDimension(d, n)
    vmem = nc.createVariable(MEMBER, str, (MEMBER,))
    vmem.long_name = "PPE member"
    nc.createVariable(GRIDCELL, "i4", (GRIDCELL,))[:] = np.arange(lay.G, dtype="i4")
    vt = nc.createVariable(TIME, "f8", (TIME,))
    vt[:] = lay.time
    vt.units, vt.calendar = lay.h0.time_units, lay.h0.calendar
    vt.long_name = "time"
    for name, vals, units in ((LAT, lay.h0.lat, "degrees_north"), (LON, lay.h0.lon, "degrees_east")):
        x = nc.createVariable(name, "f8", (GRIDCELL,))
        x[:], x.units = vals, units
    for name, vals in ((PARAM, lay.params), (FIELD, lay.fields), (NORM_VAR, lay.norm_vars)):
        _write_strings(nc.createVariable(name, str, (name,)), vals)
    x = nc.createVariable(NORM_GROUP, str, (NORM_VAR,))
    x.long_name = "what each norm_var is: variable (forcing/response), static field or param"
    _write_strings(x, lay.norm_groups)


def _write_strings(var, values) -> None:
    for i, s in enumerate(values):
        var[i] = s


def _define_variables(nc, lay: _Layout, complevel: int, chunk_gridcell: int, chunk_time: int) -> dict:
    """The float32 forcing/response variables, chunked (1, gridcell, time) per member; name -> variable."""
    cg, ct = _balanced(lay.G, chunk_gridcell), _balanced(lay.T, chunk_time)
    comp = {"zlib": True, "complevel": int(complevel), "shuffle": True} if complevel else {}
    out = {}
    for v in lay.variables:
        shared = lay.shared(v)
        dims = (GRIDCELL, TIME) if shared else (MEMBER, GRIDCELL, TIME)
        chunks = (cg, ct) if shared else (1, cg, ct)
        x = nc.createVariable(v, "f4", dims, chunksizes=chunks, fill_value=np.float32(np.nan), **comp)
        # Each member slab covers whole chunks and is written once, so a chunk cache only
        # costs memory: netCDF's default (64 MiB per variable) kept ~11 full-size members of
        # every variable resident. 1 MiB (size=0 is ignored by netCDF-C) keeps RSS flat.
        x.set_var_chunk_cache(size=1 << 20, nelems=11, preemption=1.0)
        x.set_auto_maskandscale(False)  # buffers are written as they are (NaN = missing)
        x.setncatts(lay.attrs[v])
        out[v] = x
    return out


def _stream_members(ppe: Ppe, lay: _Layout, opts: WriteOptions, vmem, data_vars: dict, pool) -> tuple[list, dict]:
    """Each member: read, check, compare its forcing with the first member's, write its slab, add its
    train moments. The reading, checking and moments run where `pool` puts them (this process, or
    dask workers); this process is the one writer and takes the members in order, so the store, the
    report and the statistics are the same on 1 or N workers. Returns the members kept and the
    variables' train moments."""
    from ppe_ingest.base.progress import progress as _progress

    plan = _MemberPlan.of(lay, opts.log_eps)
    moments = {v: _Moments() for v in lay.variables}
    n_sent = len(lay.variables) - (len(plan.forcing) if plan.shared_forcing else 0)
    member_bytes = 4 * lay.G * lay.T * max(1, n_sent)
    # In this process, two sets of buffers when two members fit in IN_FLIGHT_BYTES: one is read
    # while the writer thread writes the other (write and read overlap); else one, written in turn.
    n_sets = 0 if pool.parallel else (2 if 2 * member_bytes <= IN_FLIGHT_BYTES else 1)
    buf_sets = [_member_buffers(lay.variables, lay.G, lay.T) for _ in range(n_sets)]
    kept: list[str] = []
    members = list(ppe.members)
    bar = _progress(total=len(members), desc="ingest", unit="member", enabled=opts.progress)
    out = _SlabWriter(overlap=n_sets != 1)

    def write(k: int, member: str, data: dict) -> None:
        for v, a in data.items():
            if lay.shared(v):
                data_vars[v][:, :] = a  # the first kept member's forcing only
            else:
                data_vars[v][k, :, :] = a
        vmem[k] = member

    def take(res: _MemberResult) -> None:
        bar.update(1)
        if res.problem is not None:
            ppe.report.add(Path(res.problem[0]), res.member, res.problem[1])  # raises unless --skip-bad
            return
        if res.forcing_same is False:
            raise _ForcingDiffers
        out.submit(write, len(kept), res.member, res.data)
        for v, mo in res.moments.items():
            moments[v].merge(mo)
        kept.append(res.member)

    n_tasks = [0]

    def task(m: str, ref) -> tuple:
        bufs = buf_sets[n_tasks[0] % n_sets] if n_sets else None
        n_tasks[0] += 1
        return ({t: ppe.files(m, t) for t in plan.by_tape}, m, plan, lay.split_of[m] == TRAIN, ref, bufs)

    try:
        i, ref = 0, None
        if plan.shared_forcing:
            # the reference forcing: the first good member's, read here (it is written once)
            while i < len(members) and not kept:
                res = _process_member(*task(members[i], None))
                i += 1
                take(res)
                if kept:  # the reference member's forcing buffers: later members compare, never write, them
                    ref = {v: res.data[v] for v in plan.forcing}
        shared = pool.share(ref)
        # members in flight bounded by memory as well as by workers: a 20,000-gridcell decade of 3
        # responses is 0.9 GB per member
        window = max(2, IN_FLIGHT_BYTES // member_bytes)
        for res in pool.map(_process_member, (task(m, shared) for m in members[i:]), window=window):
            take(res)
        out.close()
    finally:
        out.close(raising=False)
        bar.close()
    if not kept:
        raise UserError(f"{ppe.root}: no member left to ingest; first problem: {ppe.report.lines()[0]}")
    return kept, moments


class _SlabWriter:
    """The store's one writer. With `overlap`, on a thread: writing member k overlaps reading member
    k + 1 (netCDF4-python releases the GIL in nc_put_vara; NC_LOCK keeps netCDF-C single-threaded,
    so a netCDF-4 input file is read between writes, not during one). At most one write in flight:
    the caller's buffers of member k are free again once member k + 1 is submitted."""

    def __init__(self, overlap: bool):
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="store-writer") if overlap else None
        self._pending = None

    def _locked(self, fn, *args) -> None:
        with NC_LOCK:
            fn(*args)

    def submit(self, fn, *args) -> None:
        self.wait()
        if self._ex is None:
            self._locked(fn, *args)
        else:
            self._pending = self._ex.submit(self._locked, fn, *args)

    def wait(self) -> None:
        if self._pending is not None:
            f, self._pending = self._pending, None
            f.result()  # a write's error is raised here, in the caller

    def close(self, raising: bool = True) -> None:
        """Wait for the last write (its error raised unless `raising` is False: an error is on its way)."""
        try:
            if raising:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()
                self._pending = None
        finally:
            if self._ex is not None:
                self._ex.shutdown(wait=True)
                self._ex = None


@dataclass(frozen=True)
class _MemberPlan:
    """What reading and checking one member needs: small, sent with every task of a parallel ingest."""

    variables: tuple
    by_tape: dict
    tapes: dict
    forcing: tuple
    shared_forcing: bool
    log_vars: frozenset
    log_eps: float
    train_rows: np.ndarray  # indices of the train gridcells
    train_cols: np.ndarray  # bool per time step: a train time step
    G: int
    T: int

    @classmethod
    def of(cls, lay: _Layout, log_eps: float) -> _MemberPlan:
        return cls(tuple(lay.variables), lay.by_tape, lay.tapes, tuple(lay.forcing),
                   bool(lay.forcing) and not lay.forcing_per_member, frozenset(lay.log_vars), log_eps,
                   np.flatnonzero(lay.split_gridcell == TRAIN), lay.split_time == TRAIN, lay.G, lay.T)


@dataclass
class _MemberResult:
    """One member read and checked: its first problem (file, reason), or its data and train moments."""

    member: str
    problem: tuple[str, str] | None = None
    data: dict = field(default_factory=dict)      # variable -> (gridcell, time) float32 to write
    moments: dict = field(default_factory=dict)   # variable -> _Moments of its train part
    forcing_same: bool | None = None              # forcing identical to the reference (None: not compared)


def _process_member(files: dict[str, list[HistFile]], member: str, plan: _MemberPlan, is_train: bool,
                    ref: dict | None, bufs: dict | None = None) -> _MemberResult:
    """Read member `member` from `files` (tape -> history files in time order), check it, compare its
    forcing with `ref` (the reference member's; None: this is the reference) and add up the train
    moments. Runs in the writer's process (`bufs`: buffers reused member after member) or on a
    dask worker (bufs None: fresh arrays, returned to the writer)."""
    compare = plan.shared_forcing and ref is not None
    if bufs is None:
        bufs = _member_buffers([v for v in plan.variables if not (compare and v in plan.forcing)], plan.G, plan.T)
    res = _MemberResult(member)
    if compare:
        # The forcing is compared with the reference member's block by block as it is read, never
        # stored: cheaper than fingerprinting it (SHA-1 cost half as much as reading it) and no
        # memory beyond the one reference. The reference passed the checks, so equal forcing does too.
        same = [True]
        work = {v: _Same(ref[v], same) if v in plan.forcing else bufs[v] for v in plan.variables}
        _read_member(files, plan.by_tape, work)
        res.forcing_same = same[0]
        if not same[0]:
            # bad forcing (reported) or forcing that differs (the writer starts again, forcing per member)
            forcing = _member_buffers(plan.forcing, plan.G, plan.T)
            _read_member(files, {t: [v for v in vs if v in forcing] for t, vs in plan.by_tape.items()}, forcing)
            problem = _check_member(files, plan, {**bufs, **forcing})
            return _MemberResult(member, problem) if problem is not None else res
        bufs = {v: bufs[v] for v in plan.variables if v not in plan.forcing}
    else:
        _read_member(files, plan.by_tape, bufs)
    problem = _check_member(files, plan, bufs)
    if problem is not None:
        return _MemberResult(member, problem)
    for v in bufs:
        shared = plan.shared_forcing and v in plan.forcing
        res.data[v] = bufs[v]
        if shared or is_train:  # shared forcing: its train part once (the reference member's)
            res.moments[v] = _train_moments(bufs[v], plan.train_rows, plan.train_cols,
                                            plan.log_eps if v in plan.log_vars else None)
    return res


def _check_member(files: dict[str, list[HistFile]], plan: _MemberPlan,
                  bufs: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """The first problem (file, reason) of a member: a variable holding NaN, a forcing holding fill
    values. Fill values (+inf) of responses become NaN (missing) in place."""
    for v in plan.variables:
        a = bufs.get(v)
        if a is None or a.size == 0:  # None: forcing equal to the reference's (checked there)
            continue
        amin, amax = a.min(), a.max()  # two fast passes: NaN shows in both, fill (+inf) in amax
        if np.isnan(amax):
            t_bad = int(np.flatnonzero(np.isnan(a).any(axis=0))[0])
            f = _file_at(files[plan.tapes[v]], t_bad)
            return str(f), f"variable {v} has {nan_count(a)} NaN values (first at time index {t_bad})"
        if np.isinf(amax) or np.isinf(amin):
            filled = np.isinf(a)
            if v in plan.forcing:
                t_bad = int(np.flatnonzero(filled.any(axis=0))[0])
                return str(_file_at(files[plan.tapes[v]], t_bad)), f"forcing {v} has missing (fill) values"
            a[filled] = np.nan  # fill values: missing
            del filled
    return None


def _write_theta(nc, lay: _Layout, members: _MemberTheta, kept: list) -> tuple[np.ndarray, np.ndarray]:
    """theta(member, param) of the kept members with bounds, location and reduction; returns (theta, split_member)."""
    sm = np.array([lay.split_of[m] for m in kept], dtype="i1")
    th = members.theta.loc[kept].to_numpy("f8")
    x = nc.createVariable(THETA, "f8", (MEMBER, PARAM))
    x[:, :] = th
    x.long_name = "parameter values each member ran with (from its paramfile and namelist_mods)"
    for name, vals in ((THETA_MIN, lay.lo), (THETA_MAX, lay.hi)):
        y = nc.createVariable(name, "f8", (PARAM,))
        y[:] = vals
        y.long_name = "table bound (NaN where unknown)"
    y = nc.createVariable(PARAM_LOCATION, str, (PARAM,))
    z = nc.createVariable(THETA_REDUCTION, str, (PARAM,))
    for j, p in enumerate(lay.params):
        y[j], z[j] = members.location[p], members.reduction[p]
    return th, sm


def _write_static(nc, lay: _Layout) -> None:
    s = nc.createVariable(STATIC, "f8", (GRIDCELL, FIELD))
    s[:, :] = lay.static
    s.long_name = "static surface fields (surfdata)"
    s.setncattr(ATTR_SOIL_LAYER_REDUCTION, SOIL_LAYER_REDUCTION)
    if set(LAI_FIELDS) & set(lay.fields):
        s.setncattr(ATTR_LAI_DERIVATION, LAI_DERIVATION)
    s.units = " ".join(f"{f}:{lay.static_units[f] or '1'}" for f in lay.fields)


def _write_splits(nc, lay: _Layout, split_member: np.ndarray) -> None:
    for name, vals, dim in ((SPLIT_MEMBER, split_member, MEMBER), (SPLIT_GRIDCELL, lay.split_gridcell, GRIDCELL),
                            (SPLIT_TIME, lay.split_time, TIME)):
        y = nc.createVariable(name, "i1", (dim,))
        y[:] = vals
        y.setncatts(SPLIT_ATTRS)


def _write_norm_stats(nc, lay: _Layout, moments: dict, th: np.ndarray, split_member: np.ndarray) -> None:
    """norm_mean/norm_std over the train split: variables (streamed moments), static fields, params."""
    means, stds = [], []
    for v in lay.variables:
        means.append(moments[v].mean if moments[v].n else np.nan)
        stds.append(moments[v].std)
    train_g, trm = lay.split_gridcell == TRAIN, split_member == TRAIN
    for j in range(len(lay.fields)):
        col = lay.static[train_g, j]
        means.append(np.nanmean(col))
        stds.append(np.nanstd(col))
    for j in range(len(lay.params)):
        col = th[trm, j]
        means.append(np.nanmean(col) if trm.any() else np.nan)
        stds.append(np.nanstd(col) if trm.any() else np.nan)
    for name, vals, what in ((NORM_MEAN, means, "mean"), (NORM_STD, stds, "std")):
        y = nc.createVariable(name, "f8", (NORM_VAR,))
        y[:] = np.asarray(vals, dtype="f8")
        y.long_name = f"{what} over the train split (log(max(x,0)+log_eps) for log_transform_vars)"


def _write_global_attrs(nc, ppe: Ppe, lay: _Layout, opts: WriteOptions) -> None:
    from ppe_ingest.base.netcdf import history_line

    nc.setncatts({
        ATTR_TITLE: "esm-emu training store", ATTR_SOURCE_PPE: str(ppe.root), ATTR_CATALOG: opts.catalog or "",
        ATTR_HISTORY: history_line(f"ingest {ppe.root}"), ATTR_VERSION: _version(),
        ATTR_FORCING_SHARED: int(bool(lay.forcing) and not lay.forcing_per_member),
        ATTR_LOG_VARS: " ".join(lay.log_vars), ATTR_LOG_EPS: float(opts.log_eps), ATTR_LOG_CLIP_MIN: 0.0,
        ATTR_SPLIT_SEED: int(opts.seed), ATTR_WARMUP: int(min(WARMUP_DAYS, lay.T)),
        ATTR_LAYOUT: ppe.layout, ATTR_SKIPPED: ppe.report.to_json(),
        ATTR_HISTORY_TAPES: " ".join(f"{v}:{lay.tapes[v]}" for v in lay.variables)})


def _file_at(files: list[HistFile], t: int) -> Path:
    """The history file (of one member and tape, in time order) holding time index `t`."""
    for h in files:
        if t < len(h.times):
            return h.path
        t -= len(h.times)
    return files[-1].path


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("esm-emu")
    except Exception:  # not installed: source checkout
        return "unknown"
