"""Throughput of the built-in simulator: the quickstart PPE (64 members x 200 gridcells x 5 years).

Times physics.run_land over the flat batch (member x gridcell), year by year with the state
carried (as `esm-emu simulate` runs it), after a spin-up (the quickstart config uses 2 years);
prints member-gridcell-years per second. The daily step is compiled (torch.compile) once per
process; the first call's compile time is reported apart (`--eager` times the eager step).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench._record import record
from ppe_ingest.simulator import physics
from ppe_ingest.simulator.sites import builtin_sites, static_tensors
from ppe_ingest.simulator.weather import forcing_tensors, generate_weather


def memory(args) -> None:
    """Peak resident memory of `esm-emu simulate` (the quickstart config) at several member counts,
    measured by /usr/bin/time -v, with the batch size simulate.batch_memory_mb gives."""
    import re
    import subprocess
    import tempfile

    from ppe_ingest.simulator.config import load_simulate_config
    from ppe_ingest.simulator.ppe import batch_members

    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    exe = Path(sys.executable).parent / "esm-emu"
    lines = []
    for m in args.members_list:
        sets = [f"n_members={m}", *args.set]
        cfg = load_simulate_config(config, sets)
        bs = batch_members(m, cfg["n_gridcells"], 365 * cfg["n_years"], cfg["batch_memory_mb"],
                           cfg["members_per_batch"])
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ["/usr/bin/time", "-v", str(exe), "simulate", str(config), "--out", f"{tmp}/ppe", "--quiet"]
            for x in sets:
                cmd += ["--set", x]
            load = os.getloadavg()[0]
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"esm-emu simulate failed:\n{r.stderr[-2000:]}")
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", r.stderr).group(1)
        lines.append(f"{m} members x {cfg['n_gridcells']} gridcells x {cfg['n_years']} years "
                     f"(+{cfg['spinup_years']} spin-up), batch_memory_mb {cfg['batch_memory_mb']:g} -> "
                     f"{bs} members per batch: peak RSS {rss / 1024:.0f} MiB, wall {wall} "
                     f"(load average {load:.1f} at start)")
    lines.append("/usr/bin/time -v of the whole command (the truth set included); 2 CPU cores shared with other "
                 "agents' jobs (wall times noisy, memory not)")
    record("simulate: peak memory against the member count", lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--memory", action="store_true",
                    help="peak RSS of `esm-emu simulate configs/quickstart.yaml` for each --members-list value")
    ap.add_argument("--members-list", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--set", action="append", default=[], help="simulate: overrides for --memory, KEY=VALUE")
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--gridcells", type=int, default=200)
    ap.add_argument("--years", type=int, default=5)
    ap.add_argument("--spinup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: as esm-emu simulate, physics.simulation_threads())")
    ap.add_argument("--eager", action="store_true", help="do not compile the daily step (ESM_EMU_SIM_COMPILE=0)")
    a = ap.parse_args(argv)
    if a.memory:
        return memory(a)
    os.environ["ESM_EMU_SIM_COMPILE"] = "0" if a.eager else "1"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    a.threads = a.threads or physics.simulation_threads()
    torch.set_num_threads(a.threads)
    sites = builtin_sites(a.gridcells, 0)
    wx = generate_weather(sites, 2000, a.years, 0)
    rng = np.random.default_rng(0)
    B = a.members * a.gridcells
    params = {"fff": rng.uniform(0.02, 5, a.members), "hksat_sf": rng.uniform(0.1, 10, a.members),
              "medlynslope": rng.uniform(1.5, 9, a.members), "n_melt_coef": rng.uniform(50, 600, a.members)}
    params = {k: torch.as_tensor(np.repeat(v, a.gridcells)) for k, v in params.items()}
    static = {k: v.repeat(a.members) for k, v in static_tensors(sites).items()}
    c_start = time.process_time()
    t0 = time.perf_counter()
    with torch.no_grad():
        first = forcing_tensors(wx.isel(time=slice(0, 365)), repeat=a.members)
        # The first call compiles the daily step (once per process): time it apart, on 2 days.
        physics.run_land({k: v[:, :2] for k, v in first.items()}, static, params)
        tc = time.perf_counter()
        state = physics.spin_up(first, static, params, n_years=a.spinup)
        t1 = time.perf_counter()
        for y in range(a.years):
            f = forcing_tensors(wx.isel(time=slice(365 * y, 365 * (y + 1))), repeat=a.members)
            _, state = physics.run_land(f, static, params, state=state, return_state=True)
    t2 = time.perf_counter()
    cpu = time.process_time() - c_start
    compiled = physics._compiled["ok"] and not a.eager
    mgy = B * a.years
    lines = [f"batch B = {a.members} members x {a.gridcells} gridcells = {B}, {a.years} years (+{a.spinup} spin-up), "
             f"torch threads {a.threads}, daily step {'compiled' if compiled else 'eager'}, "
             f"load average at start {load:.1f}",
             f"wall time: {t2 - t0:.1f} s total ({tc - t0:.1f} s first call incl. compile, {t1 - tc:.1f} s spin-up, "
             f"{t2 - t1:.1f} s run); process CPU time {cpu:.1f} s",
             f"member-gridcell-years per second (run only): {mgy / (t2 - t1):.0f}",
             "member-gridcell-years per second (incl. spin-up and compile): "
             f"{B * (a.years + a.spinup) / (t2 - t0):.0f}"]
    record("simulate: built-in simulator throughput", lines)


if __name__ == "__main__":
    main()
