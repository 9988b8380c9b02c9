"""The GPU emulator configuration (configs/emulator_lstm_gpu.yaml) on the quickstart's own PPE, in one
prepared run that fits a time budget, with the figures the CPU study is compared against.

1. `esm-emu run configs/quickstart.yaml --out DIR --seed S --stop-after ingest` (the quickstart's store);
2. training throughput on the GPU (steps/s, sequence-timesteps/s, peak GPU memory) of the GPU config
   and of the quickstart's own (CPU) emulator config, on that store;
3. `esm-emu run ... --stop-after train` with the GPU config's model/data/train sections as overrides
   and max_steps fitted to --budget-s from the measured step time;
4. median daily NSE on held-out members x gridcells (the quickstart report's figure) and the
   ensemble spread, appended to bench/RESULTS.md; with --keep DIR, the trained emulator
   (emulator.tar.gz) and the figures, so that `esm-emu run` can continue the same run (invert,
   write-ctsm, report) on a CPU machine with the same seed's store.

    python bench/gpu_emulator.py --out DIR --seed 3 --budget-s 240 --ensemble 2 --keep $OUT
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record

QUICKSTART = REPO / "configs" / "quickstart.yaml"
GPU = REPO / "configs" / "emulator_lstm_gpu.yaml"
VARS = ("QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM")


def gpu_sets(path: Path, ensemble: int | None) -> dict:
    """The GPU config's model/data/train keys as `emulator.SECTION.KEY` overrides of the quickstart."""
    from ppe_ingest.base.config import read_yaml

    emu = read_yaml(path)["emulator"]
    sets = {f"emulator.{sec}.{k}": v for sec in ("model", "data", "train") for k, v in (emu.get(sec) or {}).items()}
    if ensemble:
        sets["emulator.train.ensemble"] = ensemble
    return sets


def _arg(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def esm_emu_run(out: Path, seed: int, stop_after: str, sets: dict) -> float:
    cmd = [sys.executable, "-m", "esm_emu.cli", "run", str(QUICKSTART), "--out", str(out), "--seed", str(seed),
           "--stop-after", stop_after, "--quiet"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={_arg(v)}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def throughput(config: Path, store: Path, sets: dict, steps: int) -> dict:
    """Seconds per step, sequence-timesteps/s and peak GPU memory of one config's training step."""
    import torch

    from bench.train import _cfg, train_throughput

    cfg = _cfg(str(config), str(store)).override({k.split(".", 1)[1]: v for k, v in sets.items()})
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rate, s_step, _, _ = train_throughput(cfg, "cuda" if cuda else "cpu", steps, threads=torch.get_num_threads())
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"s_per_step": s_step, "seq_timesteps_per_s": rate, "gpu_mem_gib": mem,
            "batch": cfg["data"]["batch_size"], "hidden": cfg["model"]["hidden"]}


def store_fingerprint(store: Path) -> str:
    """Sums that tell whether two machines' stores of the same seed hold the same numbers."""
    import netCDF4
    import numpy as np

    with netCDF4.Dataset(store) as nc:
        q = float(np.nansum(nc["QRUNOFF"][0:2, :, :].astype("f8")))
        th = float(np.sum(nc["theta"][:]))
    return f"QRUNOFF[0:2] sum {q:.6e}, theta sum {th:.6e}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the run folder (esm-emu run --out)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=240.0, help="seconds for training the GPU config")
    ap.add_argument("--ensemble", type=int, help="members (default: the GPU config's)")
    ap.add_argument("--max-steps", type=int, help="steps per member (default: fitted to --budget-s)")
    ap.add_argument("--throughput-steps", type=int, default=30)
    ap.add_argument("--keep", type=Path, help="folder for emulator.tar.gz and the figures")
    args = ap.parse_args(argv)
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)"
    print(f"device: {dev}", flush=True)
    t_prep = esm_emu_run(args.out, args.seed, "ingest", {})
    store = args.out / "store.nc"
    fp = store_fingerprint(store)
    print(f"simulate + ingest: {t_prep:.0f} s; store {fp}", flush=True)

    sets = gpu_sets(GPU, args.ensemble)
    tp_gpu = throughput(QUICKSTART, store, {k: v for k, v in sets.items() if ".train." not in k},
                        args.throughput_steps)
    tp_qs = throughput(QUICKSTART, store, {}, args.throughput_steps)
    print(f"throughput: GPU config {tp_gpu}; quickstart config {tp_qs}", flush=True)
    K = int(sets.get("emulator.train.ensemble", 1))
    if args.max_steps:
        steps = args.max_steps
    else:  # validation every val_every steps and the logged loss's sync: ~15% over the bare step
        steps = int(args.budget_s / (K * tp_gpu["s_per_step"] * 1.15) // 100 * 100)
        steps = max(300, min(steps, int(sets.get("emulator.train.max_steps", 5000))))
    sets["emulator.train.max_steps"] = steps
    t_train = esm_emu_run(args.out, args.seed, "train", sets)
    stages = json.loads((args.out / "stages.json").read_text())
    metrics = json.loads((args.out / "emulator" / "eval" / "metrics.json").read_text())
    g = metrics["groups"]["members_x_gridcells"]
    nse = {v: g["variables"][v]["NSE_median"] for v in VARS}
    spread = {v: (g["variables"][v].get("spread_median"), g["variables"][v].get("coverage_2sd")) for v in VARS}
    spread_text = "; ".join(f"{v} {s[0]:.3f} / {s[1]:.2f}" for v, s in spread.items() if s[0] is not None)
    lines = [
        f"device: {dev}; quickstart PPE seed {args.seed}, store {fp}",
        f"GPU config: LSTM hidden {tp_gpu['hidden']}, batch {tp_gpu['batch']}, bf16 autocast, {K} members x "
        f"{steps} steps ({'--max-steps' if args.max_steps else f'fitted to a {args.budget_s:.0f} s budget'}), "
        f"runoff components",
        f"  training step {tp_gpu['s_per_step'] * 1e3:.1f} ms: {1 / tp_gpu['s_per_step']:.1f} steps/s, "
        f"{tp_gpu['seq_timesteps_per_s'] / 1e6:.2f} M sequence-timesteps/s, peak GPU memory "
        f"{tp_gpu['gpu_mem_gib']:.2f} GiB",
        f"  train stage {stages['train']['wall_s']:.0f} s (training {stages['train']['train_wall_s']:.0f} s, "
        f"then the evaluation on CPU); {stages['train']['steps']} steps in all, stop: {stages['train']['stop']}",
        f"quickstart config on the same GPU: hidden {tp_qs['hidden']}, batch {tp_qs['batch']}: "
        f"{tp_qs['s_per_step'] * 1e3:.1f} ms/step, {tp_qs['seq_timesteps_per_s'] / 1e6:.2f} M sequence-timesteps/s, "
        f"{tp_qs['gpu_mem_gib']:.2f} GiB",
        f"median daily NSE, held-out members x gridcells (n = {g.get('n_series')}): "
        + " / ".join(f"{v} {nse[v]:.3f}" for v in VARS),
        "ensemble spread / std (median) / share of days within +-2 spreads: " + (spread_text or "one member"),
        f"simulate + ingest {t_prep:.0f} s, train run {t_train:.0f} s",
    ]
    text = record(f"Emulator on a GPU: configs/emulator_lstm_gpu.yaml on the quickstart PPE (seed {args.seed})",
                  lines)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        (args.keep / "results.md").write_text(text)
        (args.keep / "stages.json").write_text(json.dumps(stages, indent=2))
        with tarfile.open(args.keep / "emulator.tar.gz", "w:gz") as tar:
            tar.add(args.out / "emulator", arcname="emulator",
                    filter=lambda ti: None if ti.name.endswith(("checkpoint.pt", ".csv")) else ti)


if __name__ == "__main__":
    main()
