"""Training checkpoints: model, optimiser, scheduler, sampler, RNG states, step, best validation loss.

Everything is stored as tensors or plain Python types so `torch.load(..., weights_only=True)`
reads it back (no pickled code). Files are written under a temporary name and renamed, so a
kill during the write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError


def rng_state() -> dict:
    """torch, numpy and python RNG states as tensors and plain types."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": int(version), "state": torch.tensor(pystate, dtype=torch.int64),
                       "gauss": gauss}}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """torch.save `state` to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the temporary file is 0600; give the usual permissions
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; UserError naming the file when it cannot be read."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as e:
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (the emulator provenance the inverse model records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
