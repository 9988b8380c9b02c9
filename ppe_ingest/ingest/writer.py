"""Write the training store: a whole PPE streamed into the layout `ppe_ingest.store` defines.

How it is written: `write_store` streams members through one set of float32 (gridcell, time)
buffers (one per variable, reused): each member's history files are read once, checked (NaN, fill
values), fingerprinted (forcing identity, SHA-1), added to the train-split statistics (Chan
streaming mean/variance in float64, in 64-gridcell blocks) and written as one (1, G, T) slab with
netCDF4-python into the pre-created store. No dask: the graph cost more than the reads at PPE
sizes. Peak memory is one member's data plus small fixed costs (1 MiB read block, 1 MiB HDF5
chunk cache per variable: netCDF's default 64 MiB per variable kept ~11 full-size members of every
variable resident). `open_ensemble` still gives the lazy dask view of a PPE for interactive use.

Storage: chunks (member=1, gridcell<=chunk_gridcell, time<=chunk_time), balanced so the last
chunk is not mostly empty (400 gridcells -> 7 x 58, not 7 x 64 = 12% padding). Uncompressed by
default: on a simulator PPE (8 members x 400 gridcells x 3 years, 6 variables) zlib level 1 with
shuffle made the store 28% smaller (34.7 vs 48.1 MB) but its write 5x slower (2.7-3.1 s vs
0.5-0.7 s), far below the read rate; pass ``complevel`` when disk matters more than time.

Reads and thread safety: netCDF-3 history files (CTSM's usual NETCDF3_64BIT_OFFSET, and what
`esm-emu simulate` writes uncompressed) are read by `classic`, in blocks of whole records, without
netCDF-C: netCDF-C issues one read() per time step per variable on such files, which made it the
bottleneck (about 3x slower). That path makes no netCDF-C/HDF5 call and needs no lock. Every other
file (netCDF-4/HDF5, CDF-5, lat/lon output) goes through netCDF4-python with the global lock
``NC_LOCK`` held for every netCDF4 call: HDF5 and netCDF-C are not thread-safe (concurrent opens
crash in HDF5's free lists). A lock rather than h5netcdf, because h5netcdf cannot read the
netCDF-3 files real CTSM PPEs are made of and h5py serialises its calls with its own lock anyway.
"""
from __future__ import annotations

import math
from pathlib import Path

import netCDF4
import numpy as np

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.ctsmio.vocabulary import FORCING, LAI_DERIVATION, LOG_RESPONSES, RESPONSES, SOIL_LAYER_REDUCTION
from ppe_ingest.store import SPLIT_ATTRS, TEST, TRAIN, VAL, log_transform

from .checks import Report, nan_count
from ppe_ingest.base.netcdf import NC_LOCK
from ppe_ingest.ctsmio.surfdata import read_static

from .discover import HistFile, Ppe

DEFAULT_LOG_VARS = LOG_RESPONSES


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
        raise UserError(f"{path}: cannot read data ({type(e).__name__}: {e}); the file is truncated or corrupt") from None
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
    data = {v: (("member", "gridcell", "time"), da.stack(per_var[v])) for v in variables}
    ds = xr.Dataset(data, coords={
        "member": np.array(ppe.members, dtype=object), "gridcell": np.arange(G),
        "time": ("time", times, {"units": h0[0].time_units, "calendar": h0[0].calendar}),
        "grid1d_lat": ("gridcell", h0[0].lat, {"units": "degrees_north"}),
        "grid1d_lon": ("gridcell", h0[0].lon, {"units": "degrees_east"})})
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

    Held-out years are drawn from all years but the first (which serves as warm-up).
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
    uy = np.unique(years)
    st = np.zeros(len(years), dtype="i1")
    if len(uy) > 1 and test_years:
        held = rng.choice(uy[1:], size=min(int(test_years), len(uy) - 1), replace=False)
        st[np.isin(years, held)] = TEST
    return sm, sg, st


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

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")


# ---------------------------------------------------------------- writing

class _ForcingDiffers(Exception):
    pass


def write_store(ppe: Ppe, out: str | Path, variables=None, table=None, seed: int = 0, split: dict | None = None,
                log_vars=DEFAULT_LOG_VARS, log_eps: float = 1e-8, chunk_gridcell: int = 64,
                chunk_time: int = 365, catalog: str | None = None, progress: bool = True,
                forcing_per_member: bool = False, theta=None, complevel: int = 0) -> Path:
    """Stream the PPE into the training store at `out` (atomically); return its path."""
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
    try:
        return _write(ppe, Path(out), variables, table, seed, split or {}, log_vars, log_eps, chunk_gridcell,
                      chunk_time, catalog, progress, forcing_per_member, theta, location, reduction, complevel)
    except _ForcingDiffers:
        return _write(ppe, Path(out), variables, table, seed, split or {}, log_vars, log_eps, chunk_gridcell,
                      chunk_time, catalog, progress, True, theta, location, reduction, complevel)


def _member_buffers(variables, G: int, T: int) -> dict[str, np.ndarray]:
    """One float32 (gridcell, time) buffer per variable, reused for every member."""
    return {v: np.empty((G, T), dtype="f4") for v in variables}


def _read_member(ppe: Ppe, member: str, by_tape: dict[str, list[str]], bufs: dict[str, np.ndarray]) -> None:
    """Fill `bufs` with `member`'s values: each history file opened once, every variable read once.

    netCDF-3 files with 1-D (gridcell) output go through `classic.read_record_vars` (block reads,
    no netCDF-C, no lock); anything else through netCDF4-python under ``NC_LOCK``. Fill values
    (``_FillValue``/``missing_value``, CTSM's 1e36) become +inf here so that NaN stored in a file
    (bad input) can still be told apart from missing; the caller turns inf into NaN.
    """
    for tape, vs in by_tape.items():
        t0 = 0
        for h in ppe.files(member, tape):
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
                for f in fills[v]:
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


def _train_moments(m: _Moments, a: np.ndarray, rows: np.ndarray, cols: np.ndarray, log_eps: float | None,
                   block: int = 64) -> None:
    """Add the train (gridcell, time) part of `a` to `m`, `block` gridcells at a time (bounded temporaries)."""
    idx = np.flatnonzero(rows)
    all_cols = bool(cols.all())
    for i in range(0, idx.size, block):
        sub = a[idx[i:i + block]]
        if not all_cols:
            sub = sub[:, cols]
        m.add(log_transform(sub, log_eps) if log_eps is not None else sub)


def _balanced(n: int, most: int) -> int:
    """The chunk length <= `most` that splits `n` into equal chunks (no mostly-empty last chunk)."""
    most = max(1, min(n, most))
    return -(-n // -(-n // most))


def _write(ppe, out, variables, table, seed, split, log_vars, log_eps, chunk_gridcell, chunk_time, catalog,
           progress, forcing_per_member, theta, location, reduction, complevel=0) -> Path:
    from ppe_ingest.base.progress import progress as _progress

    from ppe_ingest.base.netcdf import history_line

    report: Report = ppe.report
    tapes = choose_tape(ppe, variables)
    by_tape = {t: [v for v in variables if tapes[v] == t] for t in sorted(set(tapes.values()))}
    ref_files = {v: ppe.files(ppe.members[0], tapes[v]) for v in variables}
    h0 = ref_files[variables[0]][0]
    raw_time = np.concatenate([h.times for h in ref_files[variables[0]]])
    G, T = h0.lat.size, raw_time.size
    attrs = {}
    for t, vs in by_tape.items():
        attrs.update(_var_attrs(ppe.files(ppe.members[0], t)[0], vs))
    forcing = [v for v in variables if v in FORCING]
    years = (np.array([d.year for d in netCDF4.num2date(raw_time, h0.time_units, h0.calendar)])
             if T else np.array([], int))
    sm_all, sg, st = make_split(len(ppe.members), G, years, seed, **split)
    split_of = dict(zip(ppe.members, sm_all))
    static, fields, static_units = read_static(ppe.surfdata, h0.lat, h0.lon)
    params = list(theta.columns)
    lo = np.array([table[p].bounds()[0] if table is not None and p in table else np.nan for p in params])
    hi = np.array([table[p].bounds()[1] if table is not None and p in table else np.nan for p in params])
    train_g = sg == TRAIN
    train_t = st == TRAIN
    log_vars = [v for v in log_vars if v in variables]
    norm_vars = [*variables, *fields, *params]
    norm_groups = ["variable"] * len(variables) + ["static"] * len(fields) + ["param"] * len(params)
    moments = {v: _Moments() for v in variables}
    cg, ct = _balanced(G, chunk_gridcell), _balanced(T, chunk_time)
    bufs = _member_buffers(variables, G, T)

    with atomic_path(out, inputs=[h.path for h in ppe.hist]) as tmp:
        nc = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            nc.createDimension("member", None)
            for d, n in (("gridcell", G), ("time", T), ("param", len(params)), ("field", len(fields)),
                         ("norm_var", len(norm_vars))):
                nc.createDimension(d, n)
            vmem = nc.createVariable("member", str, ("member",))
            vmem.long_name = "PPE member"
            nc.createVariable("gridcell", "i4", ("gridcell",))[:] = np.arange(G, dtype="i4")
            vt = nc.createVariable("time", "f8", ("time",))
            vt[:] = raw_time
            vt.units, vt.calendar = h0.time_units, h0.calendar
            vt.long_name = "time"
            for name, vals, units in (("grid1d_lat", h0.lat, "degrees_north"),
                                      ("grid1d_lon", h0.lon, "degrees_east")):
                x = nc.createVariable(name, "f8", ("gridcell",))
                x[:], x.units = vals, units
            for name, vals in (("param", params), ("field", fields), ("norm_var", norm_vars)):
                x = nc.createVariable(name, str, (name,))
                for i, s in enumerate(vals):
                    x[i] = s
            x = nc.createVariable("norm_group", str, ("norm_var",))
            x.long_name = "what each norm_var is: variable (forcing/response), static field or param"
            for i, s in enumerate(norm_groups):
                x[i] = s
            out_vars = {}
            comp = dict(zlib=True, complevel=int(complevel), shuffle=True) if complevel else {}
            for v in variables:
                per_member = v not in FORCING or forcing_per_member
                dims = ("member", "gridcell", "time") if per_member else ("gridcell", "time")
                chunks = (1, cg, ct) if per_member else (cg, ct)
                x = nc.createVariable(v, "f4", dims, chunksizes=chunks, fill_value=np.float32(np.nan), **comp)
                # Each member slab covers whole chunks and is written once, so a chunk cache only
                # costs memory: netCDF's default (64 MiB per variable) kept ~11 full-size members of
                # every variable resident. 1 MiB (size=0 is ignored by netCDF-C) keeps RSS flat.
                x.set_var_chunk_cache(size=1 << 20, nelems=11, preemption=1.0)
                x.set_auto_maskandscale(False)  # buffers are written as they are (NaN = missing)
                x.setncatts(attrs[v])
                out_vars[v] = x
            forcing_ref = None
            k = 0
            bar = _progress(ppe.members, desc="ingest", unit="member", enabled=progress)
            for m in bar:
                _read_member(ppe, m, by_tape, bufs)
                bad = False
                for v in variables:
                    a = bufs[v]
                    if a.size == 0:
                        continue
                    amin, amax = a.min(), a.max()  # two fast passes: NaN shows in both, fill (+inf) in amax
                    if np.isnan(amax):
                        t_bad = int(np.flatnonzero(np.isnan(a).any(axis=0))[0])
                        f = _file_at(ppe, m, tapes[v], t_bad)
                        report.add(f, m, f"variable {v} has {nan_count(a)} NaN values (first at time index {t_bad})")
                        bad = True
                        break
                    if np.isinf(amax) or np.isinf(amin):
                        filled = np.isinf(a)
                        if v in FORCING:
                            t_bad = int(np.flatnonzero(filled.any(axis=0))[0])
                            report.add(_file_at(ppe, m, tapes[v], t_bad), m, f"forcing {v} has missing (fill) values")
                            bad = True
                            break
                        a[filled] = np.nan  # fill values: missing
                        del filled
                if bad:
                    continue
                if forcing and not forcing_per_member:
                    if forcing_ref is None:
                        forcing_ref = {v: _digest(bufs[v]) for v in forcing}
                    elif any(_digest(bufs[v]) != forcing_ref[v] for v in forcing):
                        raise _ForcingDiffers
                is_train = split_of[m] == TRAIN
                for v in variables:
                    a = bufs[v]
                    shared = v in FORCING and not forcing_per_member
                    if shared:
                        if k == 0:
                            out_vars[v][:, :] = a
                    else:
                        out_vars[v][k, :, :] = a
                    if is_train if not shared else k == 0:
                        _train_moments(moments[v], a, train_g, train_t, log_eps if v in log_vars else None)
                vmem[k] = m
                k += 1
            del bufs
            if k == 0:
                raise UserError(f"{ppe.root}: no member left to ingest; first problem: {report.lines()[0]}")
            kept = [vmem[j] for j in range(k)]
            sm = np.array([split_of[m] for m in kept], dtype="i1")
            th = theta.loc[kept].to_numpy("f8")
            x = nc.createVariable("theta", "f8", ("member", "param"))
            x[:, :] = th
            x.long_name = "parameter values each member ran with (from its paramfile and namelist_mods)"
            for name, vals in (("theta_min", lo), ("theta_max", hi)):
                y = nc.createVariable(name, "f8", ("param",))
                y[:] = vals
                y.long_name = "table bound (NaN where unknown)"
            y = nc.createVariable("param_location", str, ("param",))
            z = nc.createVariable("theta_reduction", str, ("param",))
            for j, p in enumerate(params):
                y[j], z[j] = location[p], reduction[p]
            s = nc.createVariable("static", "f8", ("gridcell", "field"))
            s[:, :] = static
            s.long_name = "static surface fields (surfdata)"
            s.soil_layer_reduction = SOIL_LAYER_REDUCTION
            if "LAI_MAX" in fields:
                s.lai_derivation = LAI_DERIVATION
            s.units = " ".join(f"{f}:{static_units[f] or '1'}" for f in fields)
            for name, vals, dim in (("split_member", sm, "member"), ("split_gridcell", sg, "gridcell"),
                                    ("split_time", st, "time")):
                y = nc.createVariable(name, "i1", (dim,))
                y[:] = vals
                y.setncatts(SPLIT_ATTRS)
            means, stds = [], []
            for v in variables:
                means.append(moments[v].mean if moments[v].n else np.nan)
                stds.append(moments[v].std)
            trm = sm == TRAIN
            for j in range(len(fields)):
                col = static[train_g, j]
                means.append(np.nanmean(col))
                stds.append(np.nanstd(col))
            for j in range(len(params)):
                col = th[trm, j]
                means.append(np.nanmean(col) if trm.any() else np.nan)
                stds.append(np.nanstd(col) if trm.any() else np.nan)
            for name, vals in (("norm_mean", means), ("norm_std", stds)):
                y = nc.createVariable(name, "f8", ("norm_var",))
                y[:] = np.asarray(vals, dtype="f8")
                y.long_name = f"{name[5:]} over the train split (log(max(x,0)+log_eps) for log_transform_vars)"
            nc.setncatts({
                "title": "esm-emu training store", "source_ppe": str(ppe.root), "catalog": catalog or "",
                "history": history_line(f"ingest {ppe.root}"), "esm_emu_version": _version(),
                "forcing_shared_across_members": int(bool(forcing) and not forcing_per_member),
                "log_transform_vars": " ".join(log_vars), "log_eps": float(log_eps), "log_clip_min": 0.0,
                "split_seed": int(seed), "warmup_days": int(min(365, T)),
                "layout": ppe.layout, "skipped": report.to_json(),
                "history_tapes": " ".join(f"{v}:{tapes[v]}" for v in variables)})
        finally:
            nc.close()
    return out


def _digest(a: np.ndarray) -> bytes:
    """Identity fingerprint of an array (SHA-1: ~3x faster than BLAKE2b here; not a security use)."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(a).view(np.uint8).reshape(-1), usedforsecurity=False).digest()


def _file_at(ppe: Ppe, member: str, tape: str, t: int) -> Path:
    """The history file of `member` holding time index `t` of `tape`."""
    for h in ppe.files(member, tape):
        if t < len(h.times):
            return h.path
        t -= len(h.times)
    return ppe.files(member, tape)[-1].path


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("esm-emu")
    except Exception:  # noqa: BLE001 - not installed: source checkout
        return "unknown"
