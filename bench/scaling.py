"""Training throughput at 1 and 2 MPI ranks on CPU (gloo DDP, same global batch) and the efficiency.

Runs the package's training loop (`esm_emu.training.loop.train`) under a real `mpiexec -n N`,
one torch thread per rank, no validation or checkpoint inside the timed steps.
Efficiency = throughput(N) / (N x throughput(1)).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record


def worker(config: str, store: str, steps: int, run_dir: str, batch_scale: int = 1, batch_div: int = 1):
    from esm_emu.distributed import Distributed
    from esm_emu.training.config import SCHEMA
    from esm_emu.training.loop import train
    from ppe_ingest.base.config import read_yaml, validate

    raw = read_yaml(config)["emulator"]
    raw.update(store=store, run_dir=run_dir)
    raw["train"].update(max_steps=steps, val_every=10 ** 6, checkpoint_every=10 ** 6, threads=1, patience=10 ** 6)
    if "ensemble" in raw["train"]:  # one network: the throughput of one training run
        raw["train"]["ensemble"] = 1
    if batch_scale > 1:  # the same batch per rank: the global batch grows with the ranks, the LR linearly with it
        raw["data"]["batch_size"] = raw["data"].get("batch_size", 32) * batch_scale
        raw["train"]["lr"] = raw["train"].get("lr", 3e-3) * batch_scale
    if batch_div > 1:  # one rank's share of the global batch, alone: what splitting the batch saves in compute
        raw["data"]["batch_size"] = raw["data"].get("batch_size", 32) // batch_div
    cfg = validate(raw, SCHEMA, Path(config).name, Path(config).parent)
    dist = Distributed()
    with dist.guard():
        s = train(cfg, dist, resume=False, progress=False)
        dist.shutdown()
    if dist.is_root:
        length = cfg["data"]["window"] + (cfg["data"]["warmup"] or 0)
        print("RESULT " + json.dumps({"wall_s": s["wall_s"], "steps": s["steps"],
                                      "timesteps": cfg["data"]["batch_size"] * length * s["steps"]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(REPO / "run" / "store.nc"))
    ap.add_argument("--config", default=str(REPO / "configs" / "emulator_lstm.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["same-global", "same-per-rank"],
                    choices=["same-global", "same-per-rank"],
                    help="same-global: the config's global batch split over the ranks (strong scaling); "
                         "same-per-rank: each rank keeps the config's batch, global batch x N, LR x N")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--batch-scale", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--batch-div", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.config, args.store, args.steps, args.run_dir, args.batch_scale, args.batch_div)
    if not Path(args.store).exists():
        sys.exit(f"{args.store}: training store not found (esm-emu simulate + esm-emu ingest first)")
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found (pip install mpich mpi4py)")
    import os
    import time

    lines = [f"{args.steps} steps, 1 torch thread per rank, gloo on CPU, store {Path(args.store).name}, "
             f"config {Path(args.config).name}"]
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            rates = {}
            for n in args.ranks:
                scale = n if mode == "same-per-rank" else 1
                cmd = [mpiexec, "-n", str(n), sys.executable, __file__, "--worker", "--store", args.store,
                       "--config", args.config, "--steps", str(args.steps), "--run-dir", f"{tmp}/{mode}{n}",
                       "--batch-scale", str(scale)]
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    sys.exit(f"mpiexec -n {n} failed:\n{out.stderr[-3000:]}")
                res = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
                rates[n] = (res["timesteps"] / res["wall_s"], res["timesteps"] // (res["steps"] * n), load,
                            time.perf_counter() - t0)
            if mode == "same-global" and 1 in rates and max(args.ranks) > 1:
                # one rank on the per-rank share of the batch: the strong-scaling ceiling set by compute alone
                n = max(args.ranks)
                cmd = [mpiexec, "-n", "1", sys.executable, __file__, "--worker", "--store", args.store, "--config",
                       args.config, "--steps", str(args.steps), "--run-dir", f"{tmp}/div{n}", "--batch-div", str(n)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if out.returncode == 0:
                    res = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])
                    t_share = res["wall_s"] / res["steps"]
                    t_one = (res["timesteps"] * n / res["steps"]) / rates[1][0]  # s/step of the full batch, 1 rank
                    lines.append(f"same-global: 1 rank on 1/{n} of the batch: {t_share:.3f} s/step against "
                                 f"{t_one:.3f} s/step on the whole batch: compute alone caps the {n}-rank "
                                 f"efficiency at {t_one / (n * t_share):.2f} (the rest is the collectives and "
                                 "the ranks waiting for each other or for a core)")
            base = rates[args.ranks[0]][0] / args.ranks[0]
            for n, (r, per_rank, load, _) in rates.items():
                lines.append(f"{mode}: {n} rank(s), {per_rank} sequence-timesteps per rank per step: "
                             f"{r:,.0f} sequence-timesteps/s, efficiency {r / (n * base):.2f} "
                             f"(load average {load:.1f} at start)")
    lines.append("CPU: 2 cores shared with other agents' jobs while measured (load averages above 2 mean the "
                 "ranks waited for cores): the efficiencies are noisy")
    record("Emulator training scaling over MPI ranks (CPU)", lines)


if __name__ == "__main__":
    main()
