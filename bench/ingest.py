"""Ingest throughput and peak memory on a simulator PPE, against raw netCDF4 reads of the same files.

Builds a PPE with the built-in simulator (default 64 members x 400 gridcells x 10 years daily,
uncompressed history files), then ingests 6 variables. Peak memory is the child process's
``resource.getrusage`` max RSS minus its RSS after imports (so interpreter and library code are
not counted), compared with one member's data (6 variables x gridcells x days x 4 bytes).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._record import record  # noqa: E402

VARS = ["RAIN", "TBOT", "FSDS", "QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"]

CHILD = r"""
import resource, sys, time, json
from ppe_ingest.ingest.discover import discover
from ppe_ingest.ingest.store import write_store
import xarray, dask, netCDF4, numpy
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
write_store(discover(sys.argv[1], variables=sys.argv[3].split()), sys.argv[2], variables=sys.argv[3].split(),
            progress=False)
wall = time.perf_counter() - t
print(json.dumps({"wall": wall, "base_kb": base, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def raw_read(files, variables) -> tuple[float, int]:
    import netCDF4
    import numpy as np

    t = time.perf_counter()
    nbytes = 0
    for f in files:
        with netCDF4.Dataset(f) as ds:
            for v in variables:
                nbytes += np.asarray(ds[v][:]).nbytes
    return time.perf_counter() - t, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--gridcells", type=int, default=400)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--workdir", help="keep the PPE here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        ppe = work / "ppe"
        cfg = work / "bench_sim.yaml"
        table = Path(__file__).resolve().parents[1] / "configs" / "params_hydrology.csv"
        cfg.write_text(f"simulate:\n  n_members: {args.members}\n  n_gridcells: {args.gridcells}\n"
                       f"  n_years: {args.years}\n  spinup_years: 0\n  compress: false\n  table: {table}\n")
        if not ppe.exists():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "esm_emu.cli", "simulate", str(cfg), "--out", str(ppe), "--quiet"],
                           check=True)
            print(f"simulated the PPE in {time.perf_counter() - t:.1f} s")
        files = sorted((ppe / "hist").glob("*.nc"))
        raw_read(files[:2], VARS)  # warm the page cache equally for both measurements
        raw_read(files, VARS)
        raw_s, nbytes = raw_read(files, VARS)
        out = work / "store.nc"
        import json

        r = subprocess.run([sys.executable, "-c", CHILD, str(ppe), str(out), " ".join(VARS)],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"ingest failed:\n{r.stderr}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        mb = nbytes / 1e6
        member_mb = mb / args.members
        peak_mb = (res["peak_kb"] - res["base_kb"]) / 1024
        lines = [
            f"PPE: {args.members} members x {args.gridcells} gridcells x {args.years} years daily, "
            f"{len(VARS)} variables, {len(files)} uncompressed history files, {mb:.0f} MB of variable data",
            f"raw netCDF4 read: {raw_s:.2f} s, {mb / raw_s:.0f} MB/s",
            f"ingest (discover + store write): {res['wall']:.2f} s, {mb / res['wall']:.0f} MB/s",
            f"ingest / raw throughput: {raw_s / res['wall']:.2f} (goal >= 0.5)",
            f"peak memory above baseline (max RSS): {peak_mb:.0f} MB = {peak_mb / member_mb:.2f} x one member's data "
            f"({member_mb:.1f} MB) (goal < 2); absolute max RSS {res['peak_kb'] / 1024:.0f} MB",
            "note: 2 shared CPU cores, other jobs running; page cache warm for both reads",
        ]
        record("ingest throughput and memory", lines)


if __name__ == "__main__":
    main()
