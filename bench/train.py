"""Emulator training throughput (sequence-timesteps/s) and inference speed vs the built-in simulator.

Training: the package's own loss module and optimiser on batches from a training store, with the
settings of an emulator config (default configs/emulator_lstm.yaml). Inference: gridcell-years per
second of the emulator (one-year series, physical units in/out) against `run_land` (the built-in
simulator) on the same machine. GPU figures when CUDA is available; otherwise it says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record


def _cfg(config: str, store: str, data: dict | None = None):
    from esm_emu.training.config import SCHEMA
    from ppe_ingest.base.config import read_yaml, validate

    raw = read_yaml(config)["emulator"]
    raw["store"] = store
    raw.setdefault("data", {}).update(data or {})
    raw["run_dir"] = "/nonexistent-not-written"
    return validate(raw, SCHEMA, Path(config).name, Path(config).parent)


def train_throughput(cfg, device: str, steps: int, threads: int):
    import torch

    from esm_emu.distributed import Distributed
    from esm_emu.training.loop import SequenceTask

    torch.set_num_threads(threads)
    dist = Distributed(device=device)
    task = SequenceTask(cfg, dist)
    model = task.loss.to(dist.device)
    opt = torch.optim.AdamW(task.emu.parameters(), lr=1e-3)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dist.device.type == "cuda")

    def step():
        args = task.batch_args(dist.device)
        with amp:
            sse, cnt = model(*args)
        loss = (sse / cnt.clamp_min(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    B, L = cfg["data"]["batch_size"], task.sampler.length
    return B * L * steps / dt, dt / steps, task, dc / steps


def inference_speed(task, n_gc: int, threads: int):
    """Gridcell-years/s: emulator on one-year series from the store vs run_land on generated weather."""
    import numpy as np
    import torch

    from ppe_ingest.simulator.physics import run_land
    from ppe_ingest.simulator.sites import builtin_sites, static_tensors
    from ppe_ingest.simulator.weather import forcing_tensors, generate_weather

    torch.set_num_threads(threads)
    st, emu = task.store, task.emu.cpu().eval()
    pairs = st.pairs([0, 1, 2], [0, 1, 2])
    pairs = pairs[np.arange(n_gc) % len(pairs)]
    f = torch.from_numpy(st.forcing_for(pairs[:, 0], pairs[:, 1], np.zeros(n_gc, int), 365))
    s = torch.from_numpy(st.static[pairs[:, 1]])
    th = torch.from_numpy(st.theta[pairs[:, 0]])
    with torch.no_grad():
        emu(f[:8], s[:8], th[:8])
        t0 = time.perf_counter()
        emu(f, s, th)
        t_emu = time.perf_counter() - t0
    sites = builtin_sites(n_gc, seed=0)
    wx = generate_weather(sites, 2000, 1, seed=0)
    t0 = time.perf_counter()
    with torch.no_grad():
        run_land(forcing_tensors(wx), static_tensors(sites))
    t_sim = time.perf_counter() - t0
    return n_gc / t_emu, n_gc / t_sim


def write_synthetic_store(path: Path, gb: float, gridcells: int = 400, years: int = 10, seed: int = 0) -> Path:
    """A training store of about `gb` GB in the ppe_ingest/store.py contract (shared forcing, five
    responses: QRUNOFF = QOVER + QDRAI, EFLX_LH_TOT, SOILWATER_10CM), written member by member in
    the ingest writer's chunking (1, 80, 365), uncompressed.

    The values are smooth seasonal series shaped by two parameters and two static fields (a
    throughput bench, not physics); the normalisation statistics come from the first 8 members.
    """
    import netCDF4
    import numpy as np

    from ppe_ingest.base.atomic import atomic_path

    G, T = gridcells, 365 * years
    R = ("QRUNOFF", "QOVER", "QDRAI", "EFLX_LH_TOT", "SOILWATER_10CM")
    logs = ("QRUNOFF", "QOVER", "QDRAI")
    M = max(16, int(gb * 1e9 // (G * T * len(R) * 4)))
    rng = np.random.default_rng(seed)
    doy = np.arange(T) % 365
    season = np.sin(2 * np.pi * (doy - 80) / 365)[None, :]
    lat = rng.uniform(25, 50, G)
    forcing = {"RAIN": np.abs(rng.gamma(0.5, 2e-5, (G, T))), "SNOW": np.abs(rng.gamma(0.2, 1e-5, (G, T))),
               "TBOT": 283 + 12 * season + rng.normal(0, 2, (G, T)),
               "FSDS": 180 + 120 * season + rng.normal(0, 30, (G, T)),
               "FLDS": 300 + 20 * season + rng.normal(0, 10, (G, T)), "QBOT": 0.006 + 0.003 * season + 0 * lat[:, None],
               "PBOT": 95000 + rng.normal(0, 200, (G, T)), "WIND": np.abs(rng.normal(3, 1, (G, T)))}
    theta = np.stack([rng.uniform(0.2, 2.0, M), rng.uniform(2.0, 8.0, M)], 1)
    static = np.stack([rng.uniform(10, 80, G), rng.uniform(0.1, 0.5, G)], 1)
    base = forcing["FSDS"] / 250.0

    def member(m):
        a, b = theta[m]
        q = 1e-5 * a * (1 + static[:, 0:1] / 80) * np.abs(np.sin(np.arange(T) / (7 + 30 * static[:, 1:2])))
        return {"QRUNOFF": q, "QOVER": 0.25 * q, "QDRAI": 0.75 * q, "EFLX_LH_TOT": 20 * b * base * (1 + 0.1 * season),
                "SOILWATER_10CM": 20 + 5 * season * a + static[:, 0:1] / 10}

    split_m = np.zeros(M, "i1")
    split_m[-max(2, M // 10):] = 1
    split_g = np.zeros(G, "i1")
    split_g[-max(2, G // 10):] = 1
    split_t = np.zeros(T, "i1")
    split_t[-365:] = 2
    tr_t = split_t == 0
    sample = [member(m) for m in range(8)]
    names, mean, std, group = [], [], [], []
    for k, v in forcing.items():
        names.append(k), mean.append(v[:, tr_t].mean()), std.append(v[:, tr_t].std()), group.append("variable")
    for k in R:
        x = np.stack([d[k][:, tr_t] for d in sample])
        x = np.log(x + 1e-8) if k in logs else x
        names.append(k), mean.append(x.mean()), std.append(x.std()), group.append("variable")
    for i, k in enumerate(("PCT_SAND", "FMAX")):
        names.append(k), mean.append(static[:, i].mean()), std.append(static[:, i].std()), group.append("static")
    for i, k in enumerate(("baseflow_scalar", "medlynslope")):
        names.append(k), mean.append(theta[:, i].mean()), std.append(theta[:, i].std()), group.append("param")
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        for d, n in (("member", M), ("gridcell", G), ("time", T), ("param", 2), ("field", 2), ("norm_var", len(names))):
            nc.createDimension(d, n)
        nc.setncatts({"log_transform_vars": " ".join(logs), "log_eps": 1e-8, "warmup_days": 180,
                      "forcing_shared_across_members": 1, "title": "synthetic training store (bench/train.py)"})
        v = nc.createVariable("member", str, ("member",))
        for m in range(M):
            v[m] = f"SYN{m + 1:05d}"
        nc.createVariable("gridcell", "i4", ("gridcell",))[:] = np.arange(G)
        t = nc.createVariable("time", "f8", ("time",))
        t.setncatts({"units": "days since 2000-01-01 00:00:00", "calendar": "noleap"})
        t[:] = np.arange(T)
        for name, vals in (("param", ["baseflow_scalar", "medlynslope"]), ("field", ["PCT_SAND", "FMAX"]),
                           ("norm_var", names), ("norm_group", group)):
            x = nc.createVariable(name, str, ("norm_var",) if name.startswith("norm") else (name,))
            for i, s_ in enumerate(vals):
                x[i] = s_
        nc.createVariable("norm_mean", "f8", ("norm_var",))[:] = np.array(mean)
        nc.createVariable("norm_std", "f8", ("norm_var",))[:] = np.array(std)
        nc.createVariable("theta", "f8", ("member", "param"))[:] = theta
        nc.createVariable("theta_min", "f8", ("param",))[:] = [0.2, 2.0]
        nc.createVariable("theta_max", "f8", ("param",))[:] = [2.0, 8.0]
        nc.createVariable("static", "f8", ("gridcell", "field"))[:] = static
        nc.createVariable("grid1d_lat", "f8", ("gridcell",))[:] = lat
        nc.createVariable("grid1d_lon", "f8", ("gridcell",))[:] = rng.uniform(240, 290, G)
        for name, vals, dim in (("split_member", split_m, "member"), ("split_gridcell", split_g, "gridcell"),
                                ("split_time", split_t, "time")):
            nc.createVariable(name, "i1", (dim,))[:] = vals
        for k, v in forcing.items():
            x = nc.createVariable(k, "f4", ("gridcell", "time"), chunksizes=(min(G, 80), 365),
                                  fill_value=np.float32(np.nan))
            x[:] = v.astype(np.float32)
        out = {k: nc.createVariable(k, "f4", ("member", "gridcell", "time"), chunksizes=(1, min(G, 80), 365),
                                    fill_value=np.float32(np.nan)) for k in R}
        for m in range(M):
            for k, v in member(m).items():
                out[k][m] = v.astype(np.float32)
    return path


def _ooc_child(args):
    """One measurement in its own process (so that a memory limit applies to it alone): JSON on stdout."""
    import json
    import resource

    data = {"reading": args.reading, "prefetch": args.prefetch}
    if args.reading == "auto":  # the forcing fits, the responses do not: responses streamed
        data["memory_mb"] = args.auto_mb
    cfg = _cfg(args.config, args.store, data=data)
    tps, sps, task, cps = train_throughput(cfg, "cpu", args.steps, args.threads)
    task.sampler.close()
    print("RESULT " + json.dumps({"tps": tps, "s_per_step": sps, "cpu_per_step": cps,
                                  "in_memory": task.store.in_memory, "forcing_in_memory": task.store.forcing_in_memory,
                                  "store_gb": Path(args.store).stat().st_size / 1e9,
                                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def out_of_core(args):
    """Stream a store 3x larger than the address-space limit (prlimit --as) and compare with memory."""
    import json
    import shutil
    import subprocess

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / f"synthetic5_{args.store_gb:g}gb.nc", work / f"synthetic5_{args.small_gb:g}gb.nc"
    for path, gb in ((big, args.store_gb), (small, args.small_gb)):
        if not path.exists():
            t0 = time.perf_counter()
            write_synthetic_store(path, gb)
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    limit = int(args.limit_gb * 2**30)
    # A memory cgroup (v1) limits resident memory and page cache together, as a batch scheduler does;
    # without one, prlimit --as limits address space, which torch alone reserves ~2.4 GB of.
    cg_root = Path("/sys/fs/cgroup/memory")
    cgroup = cg_root / f"esm_emu_bench_{os.getpid()}"
    try:
        cgroup.mkdir()
        (cgroup / "memory.limit_in_bytes").write_text(str(limit))
        how = f"memory cgroup limit {args.limit_gb:g} GiB (memory.limit_in_bytes: resident memory + page cache)"
    except OSError:
        cgroup = None
        how = f"prlimit --as={limit} ({args.limit_gb:g} GiB of address space)"
    runs = [("stream", big, True), ("auto", big, True), ("stream", small, True), ("memory", small, False)]
    lines = [f"config {Path(args.config).name}: batch {_cfg(args.config, str(small))['data']['batch_size']}, "
             f"{args.steps} timed steps, {args.threads} torch thread(s), prefetch {args.prefetch}; {how} "
             "on the limited runs"]
    for reading, store, limited in runs:
        cmd = [sys.executable, __file__, "--ooc-child", "--reading", reading, "--store", str(store), "--config",
               args.config, "--steps", str(args.steps), "--threads", str(args.threads),
               "--prefetch", str(args.prefetch), "--auto-mb", str(args.auto_mb)]
        join = None
        if limited and cgroup is not None:
            procs = cgroup / "cgroup.procs"

            def join(procs=procs):
                procs.write_text(str(os.getpid()))
        elif limited:
            cmd = [shutil.which("prlimit"), f"--as={limit}", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, preexec_fn=join)
        if out.returncode != 0:
            lines.append(f"{reading} on {store.name} {'under the limit ' if limited else ''}FAILED: "
                         f"{(out.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
        what = ("in memory" if r["in_memory"] else "forcing in memory, responses streamed"
                if r["forcing_in_memory"] else "streamed")
        lines.append(f"{reading:6s} store {r['store_gb']:.2f} GB ({what}), "
                     f"{'limit ' + format(args.limit_gb, 'g') + ' GiB' if limited else 'no limit'}: "
                     f"{r['tps']:,.0f} sequence-timesteps/s ({r['s_per_step']:.3f} s/step, {r['cpu_per_step']:.3f} "
                     f"CPU-s/step), peak RSS {r['maxrss_mb']:.0f} MB")
    if cgroup is not None:
        peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
        lines.append(f"cgroup peak usage (resident + page cache) over the limited runs: {peak / 2**20:.0f} MiB "
                     f"of the {args.limit_gb:g} GiB limit (the page cache fills a cgroup up to its limit and is "
                     f"reclaimed there; the processes' own peak RSS is above); the big store is "
                     f"{big.stat().st_size / 2**30:.2f} GiB = {big.stat().st_size / limit:.1f} x the limit")
        cgroup.rmdir()
    lines.append(f"load average at the end {os.getloadavg()[0]:.1f}: the 2 CPU cores are shared with other agents' "
                 "jobs, so the figures are noisy; the store files may be partly in the page cache")
    record("Out-of-core training: a store larger than the memory limit (CPU)", lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(REPO / "run" / "store.nc"),
                    help="training store (esm-emu simulate configs/quickstart.yaml --out run/ppe; "
                         "esm-emu ingest run/ppe --out run/store.nc)")
    ap.add_argument("--config", default=str(REPO / "configs" / "emulator_lstm.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gridcells", type=int, default=256, help="gridcell-years per inference call")
    ap.add_argument("--out-of-core", action="store_true",
                    help="train from a synthetic store --store-gb large under prlimit --as=--limit-gb, streamed, "
                         "and compare with the in-memory path on a --small-gb store")
    ap.add_argument("--store-gb", type=float, default=6.0)
    ap.add_argument("--small-gb", type=float, default=0.5)
    ap.add_argument("--limit-gb", type=float, default=2.0)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--work", default="/tmp/esm_emu_bench_train", help="folder for the synthetic stores")
    ap.add_argument("--auto-mb", type=float, default=256.0,
                    help="data.memory_mb of the reading: auto run (the forcing fits, the responses do not)")
    ap.add_argument("--ooc-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reading", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ooc_child:
        return _ooc_child(args)
    if args.out_of_core:
        return out_of_core(args)
    if not Path(args.store).exists():
        sys.exit(f"{args.store}: training store not found; create it first (see --help)")
    import torch

    cfg = _cfg(args.config, args.store)
    m = cfg["model"]
    lines = [f"model {m['name']} hidden {m['hidden']}, batch {cfg['data']['batch_size']} x "
             f"{cfg['data']['window']} + warm-up days, store {Path(args.store).name}"]
    tps, sps, task, cps = train_throughput(cfg, "cpu", args.steps, args.threads)
    lines.append(f"CPU ({args.threads} threads): {tps:,.0f} sequence-timesteps/s training ({sps:.3f} s/step wall, "
                 f"{cps:.3f} CPU-s/step)")
    steps_cfg = cfg["train"]["max_steps"]
    lines.append(f"projected training time for max_steps={steps_cfg}: {steps_cfg * sps / 60:.1f} min at the measured "
                 f"wall rate; {steps_cfg * cps / args.threads / 60:.1f} min if the {args.threads} threads had "
                 f"their cores to themselves (CPU-s / threads)")
    if torch.cuda.is_available():
        gtps, gsps, _, _ = train_throughput(cfg, "cuda", args.steps * 5, args.threads)
        lines.append(f"GPU {torch.cuda.get_device_name()}: {gtps:,.0f} sequence-timesteps/s ({gsps:.4f} s/step, bf16)")
    else:
        lines.append("GPU: none available on this machine (no GPU lent to this task); GPU throughput not measured")
    emu_rate, sim_rate = inference_speed(task, args.gridcells, args.threads)
    lines.append(f"inference ({args.gridcells} gridcells x 1 year, CPU {args.threads} threads): emulator "
                 f"{emu_rate:,.1f} gridcell-years/s, simulator run_land {sim_rate:,.1f} gridcell-years/s "
                 f"(x{emu_rate / sim_rate:.1f})")
    lines.append("CPU shared with other jobs while measured")
    record("Emulator training throughput and inference speed", lines)


if __name__ == "__main__":
    main()
