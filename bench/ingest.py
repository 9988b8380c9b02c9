"""Ingest throughput and peak memory on a simulator-layout PPE, against raw netCDF4 reads of the same files.

Builds (once, cached under ``--workdir``) a PPE in the layout ``esm-emu simulate`` writes (default
64 members x 400 gridcells x 10 years daily, one uncompressed NETCDF3_64BIT_OFFSET history file per
member with the simulator's 19 forcing/response fields), then ingests 6 of those variables into the
training store and compares with reading the same 6 variables of the same files with netCDF4 alone
(auto-masking off: the plain, fastest netCDF4 read, so the ratio is the strict one).

``--source simulator`` runs the built-in simulator; ``--source synthetic`` uses the simulator's own
PPE writer (design, paramfiles, namelist_mods, surfdata, ``write_history`` files, same names and
layout) with its physics replaced by cheap synthetic responses: the benchmark measures the ingest,
not the simulator.

Timing: the page cache is warmed by reading every history file once; raw reads are timed before and
after the ingest and the faster one is used. The ingest runs in a child process that imports
everything first; its wall time covers discovery, member parameter values (paramfiles,
namelist_mods, design check) and the store write. Peak memory is the child's max RSS (VmHWM in
/proc/self/status: unlike ``getrusage`` ru_maxrss it is not inherited from the parent across
fork+exec) minus its RSS after those imports, compared with one member's data (ingested variables x
gridcells x days x 4 bytes, float32).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ppe_ingest.ctsmio.vocabulary import RESPONSES

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record

VARS = ["RAIN", "TBOT", "FSDS", "QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"]

CHILD = r"""
import json, sys, time
import netCDF4, numpy, pandas, tqdm
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.writer import write_store
from ppe_ingest.ingest.theta import check_design, member_theta, ppe_table, read_design
import ppe_ingest.base.netcdf, ppe_ingest.ctsmio.paramfile, ppe_ingest.ctsmio.user_nl, ppe_ingest.param_table

def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024

from ppe_ingest.ingest.parallel import pool

ppe_dir, out, variables, complevel = sys.argv[1], sys.argv[2], sys.argv[3].split(), int(sys.argv[4])
workers = int(sys.argv[5]) or None
base = status_mb("VmRSS")
with pool(workers) as workers_pool:  # a LocalCluster of N workers is started (and timed apart) here
    t0 = time.perf_counter()
    ppe = discover(ppe_dir, variables=variables, pool=workers_pool)
    t1 = time.perf_counter()
    table = ppe_table(ppe)
    theta = member_theta(ppe, table=table)
    if ppe.design is not None:
        check_design(theta[0], read_design(ppe.design), str(ppe.design), ppe.report, theta[2])
    t2 = time.perf_counter()
    write_store(ppe, out, variables=variables, table=table, theta=theta, progress=False, complevel=complevel,
                pool=workers_pool)
    t3 = time.perf_counter()
print(json.dumps({"discover": t1 - t0, "theta": t2 - t1, "store": t3 - t2, "wall": t3 - t0, "base_mb": base,
                  "peak_mb": status_mb("VmHWM"), "end_mb": status_mb("VmRSS")}))
"""

PHASES = r"""
import json, sys, time
import netCDF4, numpy as np
from ppe_ingest.ingest import writer as W
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.theta import member_theta, ppe_table

ppe_dir, out, variables, n = sys.argv[1], sys.argv[2], sys.argv[3].split(), int(sys.argv[4])
ppe = discover(ppe_dir, variables=variables)
table = ppe_table(ppe)
lay = W._plan(ppe, variables, table, member_theta(ppe, table=table)[0], W.WriteOptions())
plan = W._MemberPlan.of(lay, W.DEFAULT_LOG_EPS)
bufs = W._member_buffers(variables, lay.G, lay.T)
cost = dict.fromkeys(("raw netCDF4 read", "read + convert + forcing compare (classic)", "-", "check (NaN, fill)",
                      "train statistics", "store write"), 0.0)
nc = netCDF4.Dataset(out, "w")
W._define_coordinates(nc, lay)
dv = W._define_variables(nc, lay, 0, 64, 365)
ref = None
for k, m in enumerate(ppe.members[:n]):
    files = {t: ppe.files(m, t) for t in plan.by_tape}
    t = time.perf_counter()
    for h in files[next(iter(files))]:
        with netCDF4.Dataset(h.path) as ds:
            ds.set_auto_maskandscale(False)
            for v in variables:
                ds.variables[v][...]
    cost["raw netCDF4 read"] += time.perf_counter() - t
    work = dict(bufs)
    same = [True]
    if ref is not None:
        work.update({v: W._Same(ref[v], same) for v in plan.forcing})
    t = time.perf_counter()
    W._read_member(files, plan.by_tape, work)  # one pass over each file, as the ingest reads it
    t1 = t2 = time.perf_counter()
    resp = {v: a for v, a in bufs.items() if ref is None or v not in plan.forcing}
    W._check_member(files, plan, resp)
    t3 = time.perf_counter()
    for v, a in resp.items():
        W._train_moments(a, plan.train_rows, plan.train_cols, plan.log_eps if v in plan.log_vars else None)
    t4 = time.perf_counter()
    for v, a in resp.items():
        if lay.shared(v):
            dv[v][:, :] = a
        else:
            dv[v][k, :, :] = a
    t5 = time.perf_counter()
    for key, a, b in zip(list(cost)[1:], (t, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
        cost[key] += b - a
    if ref is None:
        ref = {v: bufs[v].copy() for v in plan.forcing}
nc.close()
print(json.dumps({k: v / n for k, v in cost.items() if k != "-"}))
"""


def synthetic_run_ensemble(weather, sites, member_params, spinup_years, progress=None, memory_mb=None,
                           physics_options=None):
    """Stand-in for `simulator.ppe.run_ensemble`: (M, G, T) float32 responses from forcing and parameters, cheaply."""
    import numpy as np

    G, T = sites.sizes["gridcell"], weather.sizes["time"]
    p = np.stack([np.asarray(v, float).reshape(len(v), -1).mean(axis=1) for v in member_params.values()], axis=1)
    f = 0.25 + 0.5 * (p - p.min(0)) / np.where(np.ptp(p, 0) > 0, np.ptp(p, 0), 1)  # (M, P) in [0.25, 0.75]
    rain = weather["RAIN"].values.astype("f4")
    fsds = weather["FSDS"].values.astype("f4")
    tbot = weather["TBOT"].values.astype("f4")
    rng = np.random.default_rng(G * T + len(p))
    out = {k: np.empty((len(p), G, T), np.float32) for k in RESPONSES}
    for i, fi in enumerate(f):
        noise = 1 + 0.1 * rng.standard_normal((G, T), dtype="f4")
        q = rain * fi[0] * noise
        lh = 0.3 * fsds * (1.2 - fi[-1]) * noise
        sw = 15 + 10 * fi[1 % len(fi)] + 5 * noise
        vals = {"QRUNOFF": q, "QOVER": 0.3 * q, "QDRAI": 0.7 * q, "EFLX_LH_TOT": lh, "QSOIL": lh * 1.2e-7,
                "QVEGT": lh * 2.4e-7, "QVEGE": lh * 4e-8, "SOILWATER_10CM": sw,
                "H2OSNO": np.maximum(0, 273.15 - tbot) * 5 * noise, "TWS": 500 + 8 * sw, "ZWT": 1 + fi[0] * noise}
        for k, v in vals.items():
            out[k][i] = v
        if progress is not None:
            progress.update(1)
    return out


def build_ppe(folder: Path, members: int, gridcells: int, years: int, source: str) -> float:
    """Write the PPE into `folder` (via a temporary sibling, renamed when complete); return seconds."""
    import yaml

    from ppe_ingest.base.config import validate
    from ppe_ingest.simulator import ppe as ppe_mod
    from ppe_ingest.simulator.config import SCHEMA

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cfg = {"n_members": members, "n_gridcells": gridcells, "n_years": years, "spinup_years": 0,
           "compress": False, "members_per_batch": 8, "table": str(REPO / "configs" / "params_hydrology.csv")}
    t = time.perf_counter()
    if source == "simulator":
        cfg_file = folder.with_name(folder.name + ".yaml")
        cfg_file.write_text(yaml.safe_dump({"simulate": cfg}))
        subprocess.run([sys.executable, "-m", "esm_emu.cli", "simulate", str(cfg_file), "--out", str(tmp), "--quiet"],
                       check=True)
    else:
        ppe_mod.run_ensemble = synthetic_run_ensemble  # same writer and layout, cheap responses
        ppe_mod.simulate(validate(cfg, SCHEMA, "bench"), tmp, quiet=True)
    tmp.rename(folder)
    return time.perf_counter() - t


def raw_read(files, variables) -> tuple[float, int]:
    """Seconds and bytes to read `variables` of every file with plain netCDF4 (no masking)."""
    import netCDF4

    t = time.perf_counter()
    nbytes = 0
    for f in files:
        with netCDF4.Dataset(f) as ds:
            ds.set_auto_maskandscale(False)
            for v in variables:
                nbytes += ds.variables[v][...].nbytes
    return time.perf_counter() - t, nbytes


def warm(files) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def _child(code: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"ingest failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--gridcells", type=int, default=400)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--source", choices=("simulator", "synthetic"), default="simulator",
                    help="how the benchmark PPE's values are made (layout identical)")
    ap.add_argument("--workdir", help="keep the PPE (built once per size and source) and the store here")
    ap.add_argument("--complevel", type=int, default=0, help="zlib level of the store (0: uncompressed)")
    ap.add_argument("--workers", default="0", metavar="N[,N...]",
                    help="also ingest on dask LocalClusters of these sizes (0: in this process, the default "
                         "one-worker path), e.g. 0,1,2")
    ap.add_argument("--phase-members", type=int, default=16,
                    help="members timed phase by phase (read, compare, check, statistics, write; 0: none)")
    ap.add_argument("--no-record", action="store_true", help="print only (trial runs); do not append to RESULTS.md")
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        ppe = work / f"ppe_{args.source}_{args.members}m_{args.gridcells}g_{args.years}y"
        memo = ppe.with_name(ppe.name + ".built")
        if not ppe.is_dir():
            memo.write_text(f"{build_ppe(ppe, args.members, args.gridcells, args.years, args.source):.0f}\n")
        built = f"built once in {memo.read_text().strip()} s" if memo.is_file() else "reused"
        files = sorted((ppe / "hist").glob("*.nc"))
        disk_mb = sum(f.stat().st_size for f in files) / 1e6
        load0 = os.getloadavg()
        warm(files)
        raw1, nbytes = raw_read(files, VARS)
        out = work / "store.nc"
        runs = {}
        for w in worker_counts:
            out.unlink(missing_ok=True)
            runs[w] = _child(CHILD, ppe, out, " ".join(VARS), args.complevel, w)
        raw2, _ = raw_read(files, VARS)
        phases = (_child(PHASES, ppe, work / "phases.nc", " ".join(VARS), args.phase_members)
                  if args.phase_members else None)
        (work / "phases.nc").unlink(missing_ok=True)
        load1 = os.getloadavg()
        raw_s = min(raw1, raw2)
        mb = nbytes / 1e6
        member_mb = nbytes / args.members / 2**20
        res = runs[worker_counts[0]]
        peak = res["peak_mb"] - res["base_mb"]
        store_mb = out.stat().st_size / 1e6
        lines = [
            f"PPE ({args.source}, {built}): {args.members} members x {args.gridcells} gridcells x {args.years} years "
            f"daily, {len(files)} NETCDF3_64BIT_OFFSET history files ({disk_mb:.0f} MB on disk); ingested "
            f"{len(VARS)} variables = {mb:.0f} MB",
            f"raw netCDF4 read of those variables (no masking): {raw_s:.2f} s, {mb / raw_s:.0f} MB/s "
            f"(before/after the ingests: {raw1:.2f} / {raw2:.2f} s)",
        ]
        for w, r in runs.items():
            how = ("in this process (default)" if w == 0
                   else f"dask LocalCluster of {w} worker(s), cluster start not counted")
            lines += [f"ingest, {how}: {r['wall']:.2f} s, {mb / r['wall']:.0f} MB/s (discover {r['discover']:.2f} s, "
                      f"member parameters {r['theta']:.2f} s, store {r['store']:.2f} s); "
                      f"ingest / raw throughput {raw_s / r['wall']:.2f} (goal >= 0.8 in this process, quiet machine)"]
        if phases:
            tot = sum(v for k, v in phases.items() if k != "raw netCDF4 read")
            each = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in phases.items())
            lines.append(f"where one member's time goes (first {args.phase_members} members, in this process, ms per "
                         f"member; ingest phases sum to {tot * 1e3:.0f} ms): {each}")
        lines += [
            f"peak memory above post-import RSS (max RSS, first run): {peak:.0f} MiB = {peak / member_mb:.2f} x one "
            f"member's data ({member_mb:.1f} MiB = {len(VARS)} vars x {args.gridcells} x {args.years * 365} x 4 B); "
            f"post-import RSS {res['base_mb']:.0f} MiB, max RSS {res['peak_mb']:.0f} MiB",
            f"store: {store_mb:.0f} MB, zlib level {args.complevel}",
            *(["values: synthetic responses written by the simulator's own PPE writer (same files, names, "
               "layout); the benchmark measures the ingest, not the simulator"] if args.source == "synthetic" else []),
            f"load average (1 min) before/after: {load0[0]:.1f} / {load1[0]:.1f} on {os.cpu_count()} CPUs shared "
            "with other jobs; page cache warm for all reads",
        ]
        cmd = "bench/ingest.py " + " ".join(
            a if not a.startswith(str(work)) else "WORKDIR" for a in sys.argv[1:])
        if args.no_record:
            print("\n".join(lines))
        else:
            record("ingest throughput and memory", lines, command=cmd)


if __name__ == "__main__":
    main()
