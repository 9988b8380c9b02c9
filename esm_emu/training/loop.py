"""The training loop: the same code on one process or many (see esm_emu.distributed).

AdamW, warmup+cosine or OneCycle learning rate, gradient clipping, early stopping on the
validation loss, bf16 autocast on CUDA, seeded and deterministic on CPU. Every
`checkpoint_every` steps (and on SIGTERM, which Slurm sends before killing a job) rank 0 writes
`checkpoint.pt`; a restarted run resumes from it and follows the same loss trajectory. `best.pt`
holds the emulator with the lowest validation loss (what `load_emulator(run_dir)` loads).
"""
from __future__ import annotations

import csv
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError
from ppe_ingest.base.memory import release_memory
from ppe_ingest.store import TRAIN, VAL

from ..checkpoint import load_checkpoint, read_torch_file, rng_state, save_checkpoint, set_rng_state
from ..data import SequenceStore, SummaryTable, WindowSampler, make_batch, validation_windows
from ..distributed import Distributed
from ..emulator import Emulator, EmulatorEnsemble, TabularEmulator, core_names, emulator_from_payload
from ..models import is_tabular
from ..normalize import Normalizer, Scaler
from .losses import SequenceLoss, series_scales

__all__ = ["SequenceLoss", "train"]  # SequenceLoss lives in losses.py; importable here as before

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOG = "train_log.csv"


class TabularLoss(nn.Module):
    def __init__(self, emu: TabularEmulator):
        super().__init__()
        self.emu = emu

    def forward(self, theta, target, mask):
        target = torch.where(mask, target, torch.zeros_like(target))  # see SequenceLoss
        zp = self.emu.forward_normalized(self.emu.norm.theta(theta))
        zt = self.emu.normalize_response(target)
        se = torch.where(mask, (zp.float() - zt) ** 2, torch.zeros_like(zt))
        return se.sum(0), mask.sum(0).to(se.dtype)


class SequenceTask:
    """Windows from a training store for an LSTM/transformer emulator.

    With `model.runoff: components` the store is read for the core outputs (QOVER, QDRAI instead of
    QRUNOFF); with `train.loss: nse` every batch row carries its series' NSE* weights."""

    def __init__(self, cfg: dict, dist: Distributed):
        from ppe_ingest import store as contract

        d, t, mcfg = cfg["data"], cfg["train"], cfg["model"]
        responses = cfg["responses"]
        if mcfg.get("runoff", "direct") == "components" and responses is None:
            responses = contract.response_names(contract.open_store(cfg["store"]))
        core = core_names(mcfg, responses) if responses is not None else None
        try:
            self.store = store = SequenceStore(cfg["store"], cfg["forcing"], cfg["static"], cfg["params"], core,
                                               reading=d.get("reading", "auto"), memory_mb=d.get("memory_mb", 1024.0))
        except UserError as e:
            if core != responses and "is not in the store" in str(e):
                raise UserError(f"{e} (emulator.model.runoff: components needs "
                                f"{', '.join(c for c in core if c not in responses)})") from None
            raise
        responses = store.response_names if responses is None else list(responses)
        self.warmup = store.warmup_days if d["warmup"] is None else d["warmup"]
        norm = Normalizer.from_store(store.ds, store.forcing_names, store.static_names, store.param_names,
                                     store.response_names)
        self.emu = Emulator.build(mcfg, norm, store.forcing_names, store.static_names,
                                  store.param_names, responses)
        pairs = store.pairs([TRAIN], [TRAIN])
        if d.get("max_train_members"):  # a nested subset (the same for every seed): learning curves
            ms = np.unique(pairs[:, 0])
            keep = np.random.default_rng(0).permutation(ms)[:d["max_train_members"]]
            pairs = pairs[np.isin(pairs[:, 0], keep)]
        if t.get("bootstrap"):  # bagging over gridcells: this member's resample of the training gridcells
            gs = np.unique(pairs[:, 1])
            draw = np.random.default_rng([t["seed"], 104729]).choice(gs, len(gs), replace=True)
            pairs = np.concatenate([pairs[pairs[:, 1] == g] for g in draw])
        self.sampler = WindowSampler(store, pairs, d["window"], self.warmup, d["batch_size"],
                                     t["seed"], dist.rank, dist.world_size, prefetch=d.get("prefetch", 0))
        vm, vg, vt = validation_windows(store, d["val_windows"], d["window"], self.warmup, t["seed"])
        sl = slice(dist.rank, None, dist.world_size)
        self.val = make_batch(store, vm[sl], vg[sl], vt[sl], d["window"] + self.warmup, self.warmup)
        self.rank, self.world_size = dist.rank, dist.world_size
        self.loss = self._make_loss(cfg, store, norm)
        self.weights = None
        if t["loss"] == "nse":
            if not store.in_memory:
                raise UserError(f"{store.path}: emulator.train.loss: nse needs the store's responses in memory "
                                f"(its per-series weights), but data.reading is {d.get('reading', 'auto')!r} "
                                f"and the store needs {store.nbytes / 2**20:.0f} MB; set emulator.data.reading: "
                                "memory or another train.loss")
            self.weights = self._series_weights(store, norm)
            self.val_weights = torch.from_numpy(self.weights[vm[sl], vg[sl]])

    def _make_loss(self, cfg, store, norm):
        from ppe_ingest import store as contract

        t = cfg["train"]
        probe = SequenceLoss(self.emu, "normalized")
        self.extra = probe.extra.numpy()
        extra_names = probe.scored_names[len(store.response_names):]
        score_scaler = None
        if extra_names:
            mean, std, log = contract.norm_stats(store.ds).lookup(extra_names, contract.GROUP_VARIABLE)
            score_scaler = Scaler(mean, std, log, contract.norm_stats(store.ds).log_eps)
        phys_std = None
        if t["loss"] != "normalized":  # std of each scored variable over the training split, physical units
            phys_std = store.train_std(self.extra)  # streamed in blocks: no copy of the train split
        self.score_scaler, self.phys_std = score_scaler, phys_std
        return SequenceLoss(self.emu, t["loss"], phys_std, t["runoff_space"], score_scaler)

    def _series_weights(self, store, norm):
        """(M, G, 2, V) NSE* weights of every series over the training years (after the warm-up)."""
        days = (store.split_time == TRAIN) & (np.arange(store.n_time) >= self.warmup)
        nc = len(store.response_names)
        w = [series_scales(store.responses, norm.response, self.phys_std[:nc], days)]
        for k in range(len(self.extra)):
            x = (store.responses @ self.extra[k])[..., None]
            w.append(series_scales(x, self.score_scaler, self.phys_std[nc + k:nc + k + 1], days))
        return np.concatenate(w, -1)

    def batch_args(self, device):
        pairs, _ = self.sampler.global_indices(self.sampler.step)
        b = self.sampler.next_batch().to(device)
        args = (b.forcing, b.static, b.theta, b.target, b.mask)
        if self.weights is None:
            return args
        p = pairs[self.rank::self.world_size]
        return (*args, torch.from_numpy(self.weights[p[:, 0], p[:, 1]]).to(device))

    def val_args(self, device):
        b = self.val.to(device)
        args = (b.forcing, b.static, b.theta, b.target, b.mask)
        return args if self.weights is None else (*args, self.val_weights.to(device))


class TabularTask:
    """Members of a summary PPE for the tabular emulator; validation members chosen by seed."""

    def __init__(self, cfg: dict, dist: Distributed):
        tab = SummaryTable(cfg["store"], cfg["responses"], cfg["params"])
        t, d = cfg["train"], cfg["data"]
        n = len(tab.theta)
        if tab.split_member is not None:
            train_idx, val_idx = np.flatnonzero(tab.split_member == TRAIN), np.flatnonzero(tab.split_member == VAL)
        else:
            perm = np.random.default_rng([t["seed"], 31]).permutation(n)
            nval = max(1, int(round(d["val_fraction"] * n)))
            val_idx, train_idx = np.sort(perm[:nval]), np.sort(perm[nval:])
        self.emu = build_tabular(cfg["model"], tab.theta[train_idx], tab.y[train_idx], tab.param_names,
                                 tab.response_names)
        self.theta = torch.tensor(tab.theta, dtype=torch.float32)
        self.y = torch.tensor(tab.y, dtype=torch.float32)
        self.train_idx, self.val_idx = train_idx, val_idx
        self.batch_size, self.seed, self.dist = d["batch_size"], t["seed"], dist
        self.sampler = _IndexSampler(len(train_idx), d["batch_size"], t["seed"], dist.rank, dist.world_size)
        self.loss = TabularLoss(self.emu)

    def batch_args(self, device):
        rows = self.train_idx[self.sampler.next_rows()]
        y = self.y[rows]
        return self.theta[rows].to(device), y.to(device), torch.isfinite(y).to(device)

    def val_args(self, device):
        rows = self.val_idx[self.dist.rank::self.dist.world_size]
        y = self.y[rows]
        return self.theta[rows].to(device), y.to(device), torch.isfinite(y).to(device)


class _IndexSampler:
    """Row indices for step k from (seed, k), sharded by rank; state is (seed, step)."""

    def __init__(self, n, batch_size, seed, rank, world_size):
        if batch_size % world_size:
            raise UserError(f"emulator.data.batch_size: {batch_size} is not divisible by the {world_size} ranks")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.step = rank, world_size, 0

    def next_rows(self):
        rows = np.random.default_rng([self.seed, self.step]).integers(0, self.n, self.batch_size)
        self.step += 1
        return rows[self.rank::self.world_size]

    def state_dict(self):
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, s):
        self.seed, self.step = int(s["seed"]), int(s["step"])


def build_tabular(model_cfg, theta_train, y_train, param_names, response_names) -> TabularEmulator:
    """A tabular emulator whose normaliser comes from the training members (outputs standardised)."""
    def sc(x):
        return Scaler(np.nanmean(x, 0), np.nanstd(x, 0), [False] * x.shape[1], 1e-6)

    from ..models.tabular import OutputTransform

    tf = OutputTransform(y_train.shape[1])
    if model_cfg.get("output_transform", "none") == "boxcox":
        tf.fit(y_train)
    with torch.no_grad():
        y_t = tf(torch.as_tensor(y_train, dtype=torch.float32)).double().numpy()
    norm = Normalizer(Scaler([], [], [], 1e-6), Scaler([], [], [], 1e-6), sc(theta_train), sc(y_t))
    frac = float(model_cfg.get("output_pca") or 0.0)
    if frac > 0:  # the core learns the leading principal components of the standardised outputs
        from ..models.tabular import OutputPCA

        with torch.no_grad():
            z = norm.response(torch.as_tensor(y_t, dtype=torch.float32)).double().numpy()
        model_cfg = {**dict(model_cfg), "pca_components": OutputPCA.n_components(z, frac)}
    emu = TabularEmulator.build(model_cfg, norm, param_names, response_names)
    emu.out_tf.load_state_dict(tf.state_dict())
    if frac > 0:
        emu.core.pca.fit(z)
    return emu


def _schedule(opt, t: dict):
    total, warm = t["max_steps"], min(t["warmup_steps"], t["max_steps"] - 1)
    if t["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t["lr"], total_steps=total,
                                                   pct_start=max(warm, 1) / total)
    if t["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, _constant)
    return torch.optim.lr_scheduler.LambdaLR(opt, _WarmupCosine(warm, total))


def _constant(step):
    return 1.0


class _WarmupCosine:
    """Linear warm-up to the base LR, then cosine decay to 1% of it."""

    def __init__(self, warmup, total):
        self.warmup, self.total = warmup, total

    def __call__(self, step):
        if step < self.warmup:
            return (step + 1) / self.warmup
        p = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p))


def _seed_everything(seed: int, rank: int):
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)  # same init on every rank (DDP also broadcasts rank 0's weights)


class _SigtermFlag:
    """Remember SIGTERM instead of dying, so the loop can checkpoint and exit cleanly."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_log(path: Path, history: list[dict]):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "val_loss"])
            w.writeheader()
            for row in history:
                w.writerow(row)


def train(cfg: dict, dist: Distributed | None = None, resume: bool = True, progress: bool = True,
          config_text: str | None = None) -> dict:
    """Train the emulator described by a validated `emulator:` config; returns a summary dict.

    summary: steps done, final and best validation loss, stop reason ("max_steps", "early_stop",
    "sigterm"), wall and CPU time of this process, losses per step (this process's view of the global loss).
    With `train.ensemble: K > 1` (sequence kinds) K members train one after another into
    run_dir/member<k> (seeds seed..seed+K-1), each resumable; run_dir/best.pt then holds the ensemble.
    A sequence emulator that finished then gets its predictive spread calibrated on the validation
    series (esm_emu.spread), stored in best.pt; summary["spread_calibration"] is that entry.
    """
    dist = dist or Distributed()
    if cfg["train"].get("ensemble", 1) > 1 and not is_tabular(cfg["model"]):
        out = _train_ensemble(cfg, dist, resume, progress, config_text)
    else:
        out = _train_one(cfg, dist, resume, progress, config_text)
        release_memory()
    if dist.is_root and out["stop"] != "sigterm" and not is_tabular(cfg["model"]):
        out["spread_calibration"] = _calibrate_spread(cfg, Path(cfg["run_dir"]) / BEST, progress)
    return out


def _calibrate_spread(cfg, best: Path, progress: bool) -> dict:
    """Fit the calibrated spread of the emulator in `best` on the validation series (one prediction
    pass, the store streamed) and write it into `best` (every other entry kept)."""
    from ..evaluate import calibrate_spread

    meta = read_torch_file(best, what="emulator checkpoint")
    emu = emulator_from_payload(meta["emulator"])
    store = None
    try:  # the responses users score (QRUNOFF itself with runoff: components)
        store = SequenceStore(cfg["store"], emu.forcing_names, emu.static_names, emu.param_names,
                              emu.response_names, reading="stream")
        warmup = store.warmup_days if cfg["data"]["warmup"] is None else cfg["data"]["warmup"]
        entry = calibrate_spread(emu, store, int(warmup), progress=False)
    except UserError as e:  # e.g. a store with QOVER and QDRAI but no QRUNOFF: the emulator stays as trained
        if progress:
            print(f"note: spread not calibrated ({e})", flush=True)
        return {"skipped": str(e)}
    finally:
        if store is not None:
            store.close()
    save_checkpoint(best, {**meta, "emulator": emu.payload()})
    if progress:
        cov = entry["validation_coverage"]
        print("spread calibrated on " f"{entry['validation_series']} validation series; days within 2 sd: "
              + ", ".join(f"{v} {c['raw_2sd']:.2f} -> {c['calibrated_2sd']:.2f}" for v, c in cov.items()
                          if c["raw_2sd"] is not None and c["calibrated_2sd"] is not None), flush=True)
    return entry


MEMBER_DIR = "member{k}"


def _train_ensemble(cfg, dist: Distributed, resume: bool, progress: bool, config_text: str | None) -> dict:
    t = cfg["train"]
    run_dir = Path(cfg["run_dir"])
    K = t["ensemble"]
    summaries, members = [], []
    for k in range(K):
        over = {"train.seed": int(t["seed"]) + k, "train.ensemble": 1, "run_dir": str(run_dir / MEMBER_DIR.format(k=k))}
        if t.get("init_from"):  # fine-tuning an ensemble: each member from the same member of the previous run
            member_ck = Path(t["init_from"]).parent / MEMBER_DIR.format(k=k) / BEST
            if member_ck.is_file():
                over["train.init_from"] = str(member_ck)
        sub = cfg.override(over)
        if dist.is_root and progress:
            print(f"ensemble member {k + 1}/{K} (seed {int(t['seed']) + k})", flush=True)
        s = _train_one(sub, dist, resume, progress, None)
        release_memory()  # the member's store and steps, before the next member loads its own
        summaries.append(s)
        if s["stop"] == "sigterm":
            break
        if dist.is_root:
            p = run_dir / MEMBER_DIR.format(k=k) / BEST
            members.append(emulator_from_payload(read_torch_file(p, what="emulator checkpoint")["emulator"]))
    out = {"steps": sum(s["steps"] for s in summaries), "stop": summaries[-1]["stop"],
           "best_val": float(np.mean([s["best_val"] for s in summaries])),
           "wall_s": sum(s["wall_s"] for s in summaries), "cpu_s": sum(s["cpu_s"] for s in summaries),
           "losses": [x for s in summaries for x in s["losses"]], "run_dir": str(run_dir),
           "members": [{"seed": int(t["seed"]) + k, "steps": s["steps"], "stop": s["stop"], "best_val": s["best_val"]}
                       for k, s in enumerate(summaries)]}
    if dist.is_root and out["stop"] != "sigterm":
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            _write_text(run_dir / "config.yaml", config_text)
        ens = EmulatorEnsemble(members)
        save_checkpoint(run_dir / BEST, {"emulator": ens.payload(), "step": out["steps"], "val_loss": out["best_val"],
                                         "members": out["members"], "config": _plain(cfg)})
        rows, off = [], 0
        for k in range(K):
            log = run_dir / MEMBER_DIR.format(k=k) / LOG
            with open(log, newline="") as f:
                for r in csv.DictReader(f):
                    rows.append({**r, "step": int(r["step"]) + off})
            off += summaries[k]["steps"]
        _write_log(run_dir / LOG, rows)
    return out


def _train_one(cfg: dict, dist: Distributed, resume: bool, progress: bool, config_text: str | None) -> dict:
    t = cfg["train"]
    run_dir = Path(cfg["run_dir"])
    if t["threads"] > 0:
        torch.set_num_threads(t["threads"])
    cuda = dist.device.type == "cuda"
    if t["deterministic"] and not cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    _seed_everything(t["seed"], dist.rank)
    task = (TabularTask if is_tabular(cfg["model"]) else SequenceTask)(cfg, dist)
    if getattr(task.emu.core, "fits", False):  # gp, mlp_ensemble: one fit, no SGD steps
        return _fit_tabular(task, cfg, dist, run_dir, config_text)
    model = dist.wrap(task.loss)
    emu = task.emu
    opt = torch.optim.AdamW(emu.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    sched = _schedule(opt, t)
    start, best_val, bad_vals, history = 0, math.inf, 0, []
    ckpt_path = run_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if ck.get("world_size", 1) != dist.world_size and dist.is_root:
            print(f"note: resuming a {ck.get('world_size')}-rank checkpoint on {dist.world_size} ranks")
        emu.load_state_dict(ck["emulator"]["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        task.sampler.load_state_dict(ck["sampler"])
        if ck.get("world_size", 1) == dist.world_size and dist.rank < len(ck["rng"]):
            set_rng_state(ck["rng"][dist.rank])
        start, best_val, bad_vals, history = ck["step"], ck["best_val"], ck["bad_vals"], list(ck["history"])
        if dist.is_root:
            print(f"resuming {ckpt_path} at step {start}", flush=True)
    elif t.get("init_from"):  # fine-tuning (e.g. on a store grown by a PPE wave): weights only
        emu.load_state_dict(load_checkpoint(Path(t["init_from"]))["emulator"]["state_dict"])
        if dist.is_root:
            print(f"fine-tuning from {t['init_from']}", flush=True)
    if dist.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            _write_text(run_dir / "config.yaml", config_text)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and t["bf16"])

    def validate():
        emu.eval()
        with torch.no_grad(), autocast:
            sse, cnt = task.loss(*task.val_args(dist.device))
        emu.train()
        return _val_reduce(dist, sse, cnt)

    def checkpoint(step):
        rngs = _gather_rng(dist)
        if dist.is_root:
            save_checkpoint(ckpt_path, {"emulator": emu.payload(), "optimizer": opt.state_dict(),
                                        "scheduler": sched.state_dict(), "sampler": task.sampler.state_dict(),
                                        "rng": rngs, "step": step, "best_val": best_val, "bad_vals": bad_vals,
                                        "history": history, "world_size": dist.world_size, "config": _plain(cfg)})
            _write_log(run_dir / LOG, history)

    stop, t0, c0 = "max_steps", time.perf_counter(), time.process_time()
    from ppe_ingest.base.progress import progress as _progress

    bar = _progress(total=t["max_steps"], initial=start, desc="train", enabled=progress and dist.is_root)
    step = start
    with _SigtermFlag() as sigterm:
        emu.train()
        term = False  # SIGTERM on any rank, agreed by all (reduced with the step's loss)
        while step < t["max_steps"]:
            if term if dist.is_distributed else sigterm.set:
                checkpoint(step)
                stop = "sigterm"
                break
            args = task.batch_args(dist.device)
            with autocast:
                sse, cnt = model(*args)
            gcnt = dist.reduce_sum(cnt.detach()).clamp_min(1.0)
            # sum over this rank's rows / global count, times world size: DDP's gradient average
            # then equals the gradient of the global-batch mean, whatever the number of ranks.
            loss = (sse / gcnt).mean() * dist.world_size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(emu.parameters(), t["grad_clip"])
            opt.step()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            step += 1
            # one collective for the logged loss and the SIGTERM flag (a sync point per step fewer)
            red = dist.reduce_sum(torch.stack([(sse.detach() / gcnt).mean(),
                                               torch.tensor(float(sigterm.set), dtype=sse.dtype, device=sse.device)]))
            gl, term = float(red[0].item()), bool(red[1].item() > 0)
            row = {"step": step, "loss": gl, "lr": lr, "val_loss": ""}
            if step % t["val_every"] == 0 or step == t["max_steps"]:
                v = validate()
                row["val_loss"] = v
                if v < best_val:
                    best_val, bad_vals = v, 0
                    if dist.is_root:
                        save_checkpoint(run_dir / BEST, {"emulator": emu.payload(), "step": step, "val_loss": v,
                                                         "config": _plain(cfg)})
                else:
                    bad_vals += 1
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{gl:.4f}", val=f"{best_val:.4f}")
            if bad_vals >= t["patience"]:
                stop = "early_stop"
                checkpoint(step)
                break
            if step % t["checkpoint_every"] == 0 or step == t["max_steps"]:
                checkpoint(step)
    bar.close()
    if hasattr(task.sampler, "close"):  # stop reading ahead, close a streamed store
        task.sampler.close()
        task.store.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if dist.is_root and not (run_dir / BEST).exists():  # no validation happened (e.g. SIGTERM at once)
        save_checkpoint(run_dir / BEST, {"emulator": emu.payload(), "step": step, "val_loss": best_val,
                                         "config": _plain(cfg)})
    return {"steps": step, "stop": stop, "best_val": best_val, "wall_s": wall, "cpu_s": cpu,
            "losses": [h["loss"] for h in history], "run_dir": str(run_dir)}


def _fit_tabular(task: TabularTask, cfg: dict, dist: Distributed, run_dir: Path, config_text: str | None) -> dict:
    """Fit a kind that fits itself (gp by marginal likelihood, mlp_ensemble with its own held-out
    rows) on the training members; best.pt and checkpoint.pt hold the fitted model. The validation
    members stay unseen, so the validation loss and the evaluation are out of sample."""
    t0, c0 = time.perf_counter(), time.process_time()
    emu = task.emu
    emu.core.seed = int(cfg["train"]["seed"])
    rows = task.train_idx
    with torch.no_grad():
        x = emu.norm.theta(task.theta[rows])
        y = emu.normalize_response(task.y[rows])
    emu.core.fit(x, y)
    emu.eval()
    with torch.no_grad():
        sse, cnt = task.loss(*task.val_args(torch.device("cpu")))
    val = float((sse.double() / cnt.double().clamp_min(1)).mean()) if len(task.val_idx) else math.nan
    if dist.is_root:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            _write_text(run_dir / "config.yaml", config_text)
        for name in (BEST, CHECKPOINT):
            save_checkpoint(run_dir / name, {"emulator": emu.payload(), "step": 1, "val_loss": val,
                                             "config": _plain(cfg)})
    return {"steps": 1, "stop": "fitted", "best_val": val, "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0, "losses": [], "run_dir": str(run_dir)}


def _val_reduce(dist: Distributed, sse, cnt) -> float:
    tot = dist.reduce_sum(torch.stack([sse.double(), cnt.double()]))
    return float((tot[0] / tot[1].clamp_min(1)).mean())


def _gather_rng(dist: Distributed) -> list:
    """Every rank's RNG state, in rank order (only rank 0 needs the list)."""
    mine = rng_state()
    if not dist.is_distributed:
        return [mine]
    import torch.distributed as tdist

    out = [None] * dist.world_size
    tdist.all_gather_object(out, mine)
    return out


def _plain(x):
    """A config as plain types (for weights_only loading)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
