"""Schema of the `emulator:` section of a YAML config (validated by ppe_ingest.base.config)."""
from __future__ import annotations

from pathlib import Path

from ppe_ingest.base.config import Field, load_config, section_type

MODEL = {
    "name": Field(str, "lstm", help="model from the zoo: lstm, transformer, tabular, gp, mlp_ensemble"),
    "hidden": Field(int, 64, min=1, max=4096, help="LSTM hidden size / transformer d_model / MLP width"),
    "embed": Field(int, 32, min=1, max=4096, help="size of the static+parameter conditioning embedding (lstm)"),
    "layers": Field(int, 1, min=1, max=16),
    "dropout": Field(float, 0.0, min=0.0, max=0.9),
    "ea_gate": Field(bool, False, help="lstm: EA-LSTM input gate from the conditioning alone"),
    "heads": Field(int, 4, min=1, max=64, help="transformer attention heads"),
    "context": Field(int, 365, min=2, max=3660, help="transformer: days each step attends to"),
    "kernel": Field(str, "matern52", choices=["matern52", "rbf"], help="gp: ARD kernel"),
    "mean": Field(str, "linear", choices=["linear", "constant"], help="gp: mean function"),
    "restarts": Field(int, 3, min=1, help="gp: random starts of the marginal-likelihood fit"),
    "fit_steps": Field(int, 300, min=1, help="gp, mlp_ensemble: optimiser steps of the fit"),
    "members": Field(int, 8, min=1, help="mlp_ensemble: number of MLPs"),
    "output_transform": Field(str, "none", choices=["none", "boxcox"],
                              help="tabular kinds: per-output Box-Cox before standardising (skewed outputs)"),
    "output_pca": Field(float, 0.0, min=0.0, max=1.0,
                        help="tabular kinds: fit the core on the principal components holding this fraction of "
                             "the output variance (0: off; for many outputs per member, e.g. 0.999)"),
    "pca_components": Field(int, 0, min=0, help="set by training from output_pca (do not set by hand)"),
    "runoff": Field(str, "direct", choices=["direct", "components"],
                    help="sequence kinds: predict QRUNOFF itself, or QOVER and QDRAI with QRUNOFF = their sum "
                         "(the store must hold both; the runoff partition then closes exactly)"),
}

DATA = {
    "window": Field(int, 365, min=1, max=7320, help="days per training window that count in the loss"),
    "warmup": Field(int, None, min=0, max=3660, nullable=True,
                    help="spin-up days before each window (default: store's warmup_days)"),
    "batch_size": Field(int, 32, min=1, max=8192, help="global batch (split over ranks)"),
    "val_windows": Field(int, 64, min=1, max=100_000),
    "val_fraction": Field(float, 0.2, gt=0.0, max=0.5, help="tabular: members held for validation"),
    "max_train_members": Field(int, None, min=1, nullable=True,
                               help="train on at most this many training members (seeded subset; learning curves)"),
    "reading": Field(str, "auto", choices=["auto", "memory", "stream"],
                     help="memory: load the store's forcing and responses; stream: read each batch's windows "
                          "from the store (memory bounded by the batch, not the store); auto: memory when "
                          "they fit in memory_mb"),
    "memory_mb": Field(float, 1024.0, min=0, max=10_000_000,
                       help="reading auto: the most the store's arrays may take in memory, per rank (MB)"),
    "prefetch": Field(int, 2, min=0, max=64, help="batches a thread reads ahead of the loop (0: read in the loop)"),
}

TRAIN = {
    "seed": Field(int, 0, min=0, max=2**32 - 1),
    "max_steps": Field(int, 1000, min=1, max=10_000_000),
    "lr": Field(float, 3e-3, gt=0.0),
    "weight_decay": Field(float, 1e-4, min=0.0),
    "schedule": Field(str, "cosine", choices=["cosine", "onecycle", "constant"]),
    "warmup_steps": Field(int, 50, min=0, max=10_000_000),
    "grad_clip": Field(float, 1.0, min=0.0, help="max gradient norm; 0 turns clipping off"),
    "val_every": Field(int, 50, min=1, max=10_000_000),
    "patience": Field(int, 10, min=1, max=1_000_000, help="validations without improvement before stopping early"),
    "checkpoint_every": Field(int, 50, min=1, max=10_000_000),
    "threads": Field(int, 0, min=0, max=1024, help="torch CPU threads per rank (0: torch default)"),
    "deterministic": Field(bool, True, help="torch.use_deterministic_algorithms on CPU"),
    "bf16": Field(bool, True, help="bf16 autocast on CUDA (ignored on CPU)"),
    "loss": Field(str, "both", choices=["normalized", "physical", "both", "nse"],
                  help="squared error of normalised responses, of physical ones / their std, the mean of both, "
                       "or nse: NSE* (each series' error / its own variance; esm_emu/training/losses.py)"),
    "runoff_space": Field(str, "blend", choices=["blend", "physical", "log"],
                          help="loss nse: runoff scored in physical units (peaks), log space (recessions) or both"),
    "ensemble": Field(int, 1, min=1, max=64,
                      help="sequence kinds: train this many members (seeds seed..seed+K-1); the emulator "
                           "returns their mean and spread"),
    "bootstrap": Field(bool, False, help="ensemble: each member trains on a bootstrap sample of the gridcells"),
    "init_from": Field(str, None, nullable=True, path=True,
                       help="fine-tune: start from this checkpoint's emulator weights (e.g. RUN_DIR/best.pt of the "
                            "previous wave; same architecture and store normalisation), fresh optimiser and steps"),
}

EVALUATE = {
    "at_end": Field(bool, True, help="evaluate on the held-out splits after training"),
    "plots": Field(bool, True),
    "batch_size": Field(int, 64, min=1, max=8192),
    "max_series": Field(int, 2000, min=1, max=10_000_000,
                        help="at most this many member x gridcell series per group (seeded subset)"),
}

SCHEMA = {
    "store": Field(str, path=True, help="training store (esm-emu ingest) or summary store (tabular)"),
    "run_dir": Field(str, "emulator_run", output_path=True, help="checkpoints, logs, evaluation"),
    "responses": Field(list, None, items=str, nullable=True),
    "forcing": Field(list, None, items=str, nullable=True),
    "static": Field(list, None, items=str, nullable=True),
    "params": Field(list, None, items=str, nullable=True),
    "model": Field(dict, {}, schema=MODEL),
    "data": Field(dict, {}, schema=DATA),
    "train": Field(dict, {}, schema=TRAIN),
    "evaluate": Field(dict, {}, schema=EVALUATE),
}


EmulatorConfig = section_type(SCHEMA, "EmulatorConfig")


def load_emulator_config(path: str | Path, sets=(), values=None, check_files=True) -> EmulatorConfig:
    """The validated `emulator:` section of a YAML file with command-line overrides; paths are
    relative to the file's folder, the default run_dir too."""
    cfg = load_config(path, SCHEMA, "emulator", sets, values, check_files)
    if not Path(cfg.run_dir).is_absolute():  # only the default can still be relative
        cfg = cfg.override({"run_dir": str(Path(path).resolve().parent / cfg.run_dir)})
    return cfg
