"""Emulator training throughput (sequence-timesteps/s) and inference speed vs the built-in simulator.

Training: the package's own loss module and optimiser on batches from a training store, with the
settings of an emulator config (default configs/emulator_lstm.yaml). Inference: gridcell-years per
second of the emulator (one-year series, physical units in/out) against `run_land` (the built-in
simulator) on the same machine. GPU figures when CUDA is available; otherwise it says so.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record


def _cfg(config: str, store: str):
    from esm_emu.training.config import SCHEMA
    from ppe_ingest.base.config import read_yaml, validate

    raw = read_yaml(config)["emulator"]
    raw["store"] = store
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(REPO / "run" / "store.nc"),
                    help="training store (esm-emu simulate configs/quickstart.yaml --out run/ppe; "
                         "esm-emu ingest run/ppe --out run/store.nc)")
    ap.add_argument("--config", default=str(REPO / "configs" / "emulator_lstm.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gridcells", type=int, default=256, help="gridcell-years per inference call")
    args = ap.parse_args()
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
