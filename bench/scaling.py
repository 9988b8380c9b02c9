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


def worker(config: str, store: str, steps: int, run_dir: str):
    from esm_emu.distributed import Distributed
    from esm_emu.training.config import SCHEMA
    from esm_emu.training.loop import train
    from ppe_ingest.base.config import read_yaml, validate

    raw = read_yaml(config)["emulator"]
    raw.update(store=store, run_dir=run_dir)
    raw["train"].update(max_steps=steps, val_every=10 ** 6, checkpoint_every=10 ** 6, threads=1, patience=10 ** 6)
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
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.config, args.store, args.steps, args.run_dir)
    if not Path(args.store).exists():
        sys.exit(f"{args.store}: training store not found (esm-emu simulate + esm-emu ingest first)")
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found (pip install mpich mpi4py)")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            cmd = [mpiexec, "-n", str(n), sys.executable, __file__, "--worker", "--store", args.store,
                   "--config", args.config, "--steps", str(args.steps), "--run-dir", f"{tmp}/run{n}"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                sys.exit(f"mpiexec -n {n} failed:\n{out.stderr[-3000:]}")
            res = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
            rates[n] = res["timesteps"] / res["wall_s"]
    base = rates[args.ranks[0]] / args.ranks[0]
    lines = [f"same global batch, {args.steps} steps, 1 torch thread per rank, gloo on CPU"]
    for n, r in rates.items():
        lines.append(f"{n} rank(s): {r:,.0f} sequence-timesteps/s, efficiency {r / (n * base):.2f}")
    lines.append("CPU: 2 cores shared with other jobs while measured")
    record("Emulator training scaling over MPI ranks (CPU)", lines)


if __name__ == "__main__":
    main()
