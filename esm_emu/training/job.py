"""One training job as `esm-emu train` and the run pipeline start it: the distributed setup (one
process or many under mpiexec/srun/torchrun), training, then the evaluation on held-out splits."""
from __future__ import annotations

from pathlib import Path

import yaml

from ppe_ingest.base.errors import UserError
from ppe_ingest.base.memory import release_memory

from .config import EmulatorConfig

STOPPED_EXIT = 3  # exit status of `esm-emu train` (and `run`) stopped by SIGTERM before the end
EXPORT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


def train_job(cfg: EmulatorConfig, resume: bool = True, progress: bool = True, evaluate: bool = True,
              plots: bool | None = None) -> tuple[dict | None, dict | None]:
    """Train (resuming from the run's checkpoint unless `resume` is False), then evaluate on rank 0.

    Returns (training summary, evaluation result or None). The evaluation is skipped when
    `evaluate` or ``cfg.evaluate.at_end`` is false, or when SIGTERM stopped training; `plots`
    defaults to ``cfg.evaluate.plots``. Ranks other than 0 return (None, None).
    """
    check_train_paths(cfg)  # before torch is imported: a bad path is refused at once
    from ..distributed import Distributed
    from .loop import train

    config_text = ("# The emulator section this run trained with (the file plus command-line overrides).\n"
                   + yaml.safe_dump({"emulator": cfg.to_dict()}, sort_keys=False))
    dist = Distributed()
    with dist.guard():
        summary = train(cfg, dist, resume=resume, progress=progress, config_text=config_text)
        dist.shutdown()
    if not dist.is_root:
        return None, None
    if summary["stop"] == "sigterm" or not (evaluate and cfg.evaluate.at_end):
        return summary, None
    from ..evaluate import evaluate_run

    release_memory()  # training's free heap, before the evaluation reads the store again
    run_dir = Path(summary["run_dir"])
    result = evaluate_run(run_dir, out_dir=run_dir / "eval",
                          plots=cfg.evaluate.plots if plots is None else plots, progress=progress)
    return summary, result


def run_dir_of(target: str | Path) -> Path:
    """The run directory named by `target`: a training config (YAML) or the directory itself."""
    target = Path(target)
    if target.suffix in (".yaml", ".yml") and not target.is_dir():
        from .config import load_emulator_config

        return Path(load_emulator_config(target).run_dir)  # a missing config: one line naming it
    return target


def checkpoint_of(run: str | Path) -> Path:
    """The emulator checkpoint of a run directory (its best.pt) or a checkpoint file; UserError
    naming it when there is none. Cheap: no torch import."""
    run = Path(run)
    ckpt = run / "best.pt" if run.is_dir() else run
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: emulator checkpoint not found")
    return ckpt


def check_train_paths(cfg: EmulatorConfig) -> None:
    """What training needs from the file system, checked before torch is imported: the store is a
    netCDF file and run_dir is (or can become) a folder."""
    from ppe_ingest.base.netcdf import require_netcdf

    require_netcdf(cfg.store, "emulator.store", "training store")
    run_dir = Path(cfg.run_dir)
    for p in (run_dir, *run_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"emulator.run_dir: {p}: is a file, not a folder")
            break


def check_export_paths(source: str | Path, out: str | Path) -> Path:
    """Check an export before anything heavy runs: the checkpoint exists, `out` is a .pt file
    name and not the checkpoint itself; return the checkpoint."""
    from ppe_ingest.base.atomic import refuse_overwrite

    ckpt = checkpoint_of(source)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out: {out}: is a folder; give the TorchScript file name (e.g. emulator.pt)")
    if out.suffix not in EXPORT_SUFFIXES:
        raise UserError(f"--out: {out}: give the TorchScript output a .pt extension")
    refuse_overwrite(out, [ckpt])
    return ckpt
