"""One training job as `esm-emu train` and the run pipeline start it: the distributed setup (one
process or many under mpiexec/srun/torchrun), training, then the evaluation on held-out splits."""
from __future__ import annotations

from pathlib import Path

import yaml

from .config import EmulatorConfig


def train_job(cfg: EmulatorConfig, resume: bool = True, progress: bool = True, evaluate: bool = True,
              plots: bool | None = None) -> tuple[dict | None, dict | None]:
    """Train (resuming from the run's checkpoint unless `resume` is False), then evaluate on rank 0.

    Returns (training summary, evaluation result or None). The evaluation is skipped when
    `evaluate` or ``cfg.evaluate.at_end`` is false, or when SIGTERM stopped training; `plots`
    defaults to ``cfg.evaluate.plots``. Ranks other than 0 return (None, None).
    """
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

    run_dir = Path(summary["run_dir"])
    result = evaluate_run(run_dir, out_dir=run_dir / "eval",
                          plots=cfg.evaluate.plots if plots is None else plots, progress=progress)
    return summary, result


def run_dir_of(target: str | Path) -> Path:
    """The run directory named by `target`: a training config (YAML) or the directory itself."""
    target = Path(target)
    if target.is_file() and target.suffix in (".yaml", ".yml"):
        from .config import load_emulator_config

        return Path(load_emulator_config(target).run_dir)
    return target
