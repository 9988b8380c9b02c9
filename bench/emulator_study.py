"""Learning-curve study of the sequence emulator: what limits its held-out skill, and at what cost.

Each run trains from the quickstart's `emulator:` section with a few overrides, on one store
(default: a quickstart store, `esm-emu quickstart` writes DIR/store.nc), then scores the median
daily NSE on held-out members x held-out gridcells (every year after the warm-up, as
`esm-emu evaluate` does for that group). Per run it records CPU seconds of training, the last
training loss and the best validation loss (train << val: data-limited; both high and still
falling: optimisation; both high and flat: capacity).

The smallest set that tells the three apart (see RUNS): the baseline; the loss and structure
changes at the baseline budget; then from the components model one axis at a time: 2x steps
(optimisation), 2x width and 2 layers (capacity), half and a quarter of the training members
(data: the curve's slope says what 2x or 4x members would give), an ensemble of two at the same
total steps, window sampling, and the other kinds (EA-LSTM, transformer) at the same budget.
Every run spends its whole step budget (no early stopping), so runs compare at equal cost.

    nice -n 5 python bench/emulator_study.py --store DIR/store.nc [--runs base,nse,...] [--seed 1]
    python bench/emulator_study.py --store DIR/store.nc --threads   # 1 vs 2 intra-op threads
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._record import record

VARS = ["QRUNOFF", "EFLX_LH_TOT", "SOILWATER_10CM"]
COMP = {"model.runoff": "components"}
ONE = {**COMP, "train.ensemble": 1, "data.reading": "memory"}  # the quickstart trains 2 members; rows compare one
RUNS = {  # name -> overrides of the quickstart emulator section (1000 steps, LSTM 64, loss both)
    "base": {},
    "comp": COMP,
    "nse": {"train.loss": "nse"},
    "comp_nse": {**COMP, "train.loss": "nse"},
    "steps2x": {**COMP, "train.max_steps": 2000},
    "wide": {**COMP, "model.hidden": 128},
    "deep": {**COMP, "model.layers": 2},
    "members_half": {**COMP, "data.max_train_members": 26},
    "members_quarter": {**COMP, "data.max_train_members": 13},
    "ens2": {**COMP, "train.ensemble": 2, "train.max_steps": 500},
    "window180": {**COMP, "data.window": 180, "data.batch_size": 64},
    "ealstm": {**COMP, "model.ea_gate": True},
    "transformer": {**COMP, "model.name": "transformer", "model.context": 365},
    # On a PPE of 256 members (26 val, 26 test, 204 train): the training members of a 64-, 128- and
    # 256-member PPE against the same held-out members, one emulator member each, and the kinds at 52.
    "m52": {**ONE, "data.max_train_members": 52},
    "m104": {**ONE, "data.max_train_members": 104},
    "m204": {**ONE, "data.max_train_members": 204},
    "m52_2x": {**ONE, "data.max_train_members": 52, "train.max_steps": 2000},
    "m204_2x": {**ONE, "data.max_train_members": 204, "train.max_steps": 2000},
    "ealstm_m52": {**ONE, "data.max_train_members": 52, "model.ea_gate": True},
    "transformer_m52": {**ONE, "data.max_train_members": 52, "model.name": "transformer", "model.context": 365},
}


def base_section(config: Path, store: str, run_dir: str, sets: dict):
    from esm_emu.training.config import load_emulator_config

    # no early stopping: every run spends its whole step budget (best.pt still keeps the best validation)
    s = {"store": store, "run_dir": run_dir, "evaluate.at_end": False, "train.threads": 1, "train.patience": 10**6,
         **sets}
    return load_emulator_config(config, sets=[f"{k}={v}" for k, v in s.items()])


def held_out_nse(run_dir: Path, store) -> dict:
    """Median daily NSE per variable on test members x test gridcells (every year after the warm-up)."""
    import numpy as np

    from esm_emu.emulator import load_emulator
    from esm_emu.evaluate import predict_pairs, score
    from ppe_ingest.store import TEST

    emu = load_emulator(run_dir)
    pairs = store.pairs([TEST], [TEST])
    idx = [store.response_names.index(v) for v in emu.response_names]
    pred = predict_pairs(emu, store, pairs[:, 0], pairs[:, 1], 64)
    obs = store.responses[pairs[:, 0], pairs[:, 1]][..., idx]
    keep = np.arange(store.n_time) >= 180
    sc = score(np.moveaxis(pred[:, keep], 1, -1), np.moveaxis(obs[:, keep], 1, -1))["NSE"]
    return {v: float(np.nanmedian(sc[:, r])) for r, v in enumerate(emu.response_names)}, len(pairs)


def run_one(name: str, sets: dict, args, store) -> dict:
    import torch

    from esm_emu.distributed import Distributed
    from esm_emu.training.loop import train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"emu_study_{name}_") as tmp:
        cfg = base_section(args.config, args.store, tmp, {"train.seed": args.seed, **sets})
        c0 = time.process_time()
        s = train(cfg, Distributed(), resume=False, progress=False)
        cpu = time.process_time() - c0
        if s["stop"] == "sigterm":  # training stops gracefully on SIGTERM; the study must stop too
            print(f"emulator_study: SIGTERM during run {name}; stopping (no further runs)", file=sys.stderr)
            raise SystemExit(128 + 15)
        nse, n = held_out_nse(Path(tmp), store)
    tail = s["losses"][-50:]
    return {"name": name, "sets": sets, "steps": s["steps"], "stop": s["stop"], "cpu_s": cpu,
            "train_loss": sum(tail) / max(1, len(tail)), "best_val": s["best_val"], "nse": nse, "n": n}


def threads(args) -> list[str]:
    """Seconds per training step of the quickstart emulator on CPU: 1 and 2 intra-op threads, and with
    2 threads, bf16 autocast and torch.compile (each the median of 10 steps after 2 warm-up steps; the
    compiled variant's warm-up includes the compilation, reported separately)."""
    import torch

    from esm_emu.distributed import Distributed
    from esm_emu.training.loop import SequenceTask

    cfg = base_section(args.config, args.store, "/nonexistent-not-written", COMP)
    task = SequenceTask(cfg, Distributed())
    batches = [task.batch_args(torch.device("cpu")) for _ in range(12)]  # same batches for every variant
    out = []

    def timed(n_threads: int, label: str, loss_fn, autocast: bool = False):
        torch.set_num_threads(n_threads)
        opt = torch.optim.AdamW(task.emu.parameters(), lr=1e-4)
        times = []
        t_first = None
        for i, b in enumerate(batches):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                sse, cnt = loss_fn(*b)
            loss = (sse.float() / cnt.clamp_min(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            if i == 0:
                t_first = dt
            if i >= 2:
                times.append(dt)
        times.sort()
        out.append(f"{label:28s}: median {times[len(times) // 2]:.3f} s/step, best {times[0]:.3f} s/step"
                   f" (first step {t_first:.1f} s)")
        print(out[-1], flush=True)

    timed(1, "threads=1", task.loss)
    timed(2, "threads=2", task.loss)
    timed(2, "threads=2, bf16 autocast", task.loss, autocast=True)
    try:
        compiled = torch.compile(task.loss)
        timed(2, "threads=2, torch.compile", compiled)
    except Exception as e:  # a compiler missing on this machine is a figure too
        out.append(f"threads=2, torch.compile: failed ({type(e).__name__}: {str(e)[:120]})")
    out.append(f"load average at the end: {os.getloadavg()[0]:.1f} (other jobs make every figure slower)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", action="store_true",
                    help="only time a training step: 1 vs 2 intra-op threads, bf16, torch.compile")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        lines = threads(args)
        if not args.no_record:
            record("Emulator training step on CPU: threads, bf16 autocast, torch.compile (quickstart section)", lines)
        return
    from esm_emu.data import SequenceStore

    store = SequenceStore(args.store, responses=VARS + ["QOVER", "QDRAI"])
    lines = [f"store {args.store}: {store.n_member} members x {store.n_gridcell} gridcells x {store.n_time} days; "
             f"seed {args.seed}; median daily NSE on held-out members x gridcells",
             f"{'run':16s} {'steps':>5s} {'cpu_s':>7s} {'train':>7s} {'val':>7s} "
             + " ".join(f"{v:>14s}" for v in VARS) + "  overrides"]
    for name in args.runs.split(","):
        r = run_one(name, RUNS[name], args, store)
        line = (f"{name:16s} {r['steps']:5d} {r['cpu_s']:7.1f} {r['train_loss']:7.4f} {r['best_val']:7.4f} "
                + " ".join(f"{r['nse'][v]:14.3f}" for v in VARS) + f"  {r['sets'] or '(quickstart)'}")
        lines.append(line)
        print(line, flush=True)
    lines.append("train/val: this run's own loss (comparable within one loss kind only)")
    if not args.no_record:
        record(f"Emulator learning-curve study (seed {args.seed})", lines)


if __name__ == "__main__":
    main()
