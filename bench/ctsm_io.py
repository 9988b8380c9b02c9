"""CTSM file writers: PPE member files per second and surfdata rewrite time (no shared data needed).

Usage: python bench/ctsm_io.py [--members 64] [--gridcells 400]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import record
from ppe_ingest.ctsmio.paramfile import NPFT, create_paramfile, read_paramfile
from ppe_ingest.ctsmio.surfdata import create_surfdata_1d, read_surfdata, write_surfdata
from ppe_ingest.design import make_design, write_member_files
from ppe_ingest.param_table import default_table_path, load_param_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--gridcells", type=int, default=400)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        table = load_param_table(default_table_path())
        scal = {p.name: p.default for p in table if p.location == "paramfile" and not p.pft}
        base = create_paramfile(d / "base.nc", {**scal, "medlynslope": np.full(NPFT, 4.84)})
        design = make_design(table, a.members, seed=0, include_default=True)
        t0 = time.perf_counter()
        paths = write_member_files(design, d / "ppe", base, table)
        t_members = time.perf_counter() - t0
        t0 = time.perf_counter()
        for m in design.member.values:
            read_paramfile(d / "ppe" / "paramfiles" / f"{m}.nc", list(scal))
        t_read = time.perf_counter() - t0

        n = a.gridcells
        sand = rng.uniform(10, 60, n)
        fields = {"PCT_SAND": sand, "PCT_CLAY": rng.uniform(5, 100 - sand - 1), "ORGANIC": rng.uniform(0, 50, n),
                  "FMAX": rng.uniform(0.1, 0.6, n), "zbedrock": rng.uniform(0.5, 8, n),
                  "SLOPE": rng.uniform(0, 10, n), "STD_ELEV": rng.uniform(0, 300, n)}
        t0 = time.perf_counter()
        surf = create_surfdata_1d(d / "surfdata.nc", rng.uniform(-60, 70, n), rng.uniform(0, 360, n), fields)
        t_create = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_surfdata(surf, d / "surfdata_new.nc",
                       {"FMAX": rng.uniform(0.1, 0.6, n), "zbedrock": fields["zbedrock"] * 1.1})
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_surfdata(d / "surfdata_new.nc")
        t_rsurf = time.perf_counter() - t0
    nm = design.sizes["member"]
    record("CTSM file I/O (ppe_ingest.ctsmio, design)", [
        f"write_member_files: {nm} members ({len(paths)} files) in {t_members:.2f} s = {nm / t_members:.1f} members/s",
        f"read_paramfile ({len(scal)} scalars) x {nm}: {t_read:.2f} s = {nm / t_read:.1f} files/s",
        f"create_surfdata_1d ({n} gridcells, 7 fields): {t_create * 1e3:.1f} ms",
        f"write_surfdata (FMAX, zbedrock over {n} gridcells): {t_write * 1e3:.1f} ms",
        f"read_surfdata ({n} gridcells): {t_rsurf * 1e3:.1f} ms",
    ])


if __name__ == "__main__":
    main()
