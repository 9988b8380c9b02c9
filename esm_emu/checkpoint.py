"""Training checkpoints: model, optimiser, scheduler, sampler, RNG states, step, best validation loss.

Everything is stored as tensors or plain Python types so `torch.load(..., weights_only=True)`
reads it back (no pickled code). Files are written under a temporary name and renamed, so a
kill during the write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError, user_error_from_os


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
        torch.save(state, tmp)  # atomic_path gives the mode the umask gives (or the replaced file's)
    return path


def read_torch_file(path: str | Path, map_location="cpu", what: str = "checkpoint"):
    """`torch.load(path, weights_only=True)` with one-line errors naming the file.

    A file holding pickled Python objects beyond tensors and plain types is refused; the message
    never suggests loading it unsafely.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a {what} file")
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise user_error_from_os(e) from None
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a torch file at all, or a truncated one
            raise UserError(f"{path}: not a readable esm-emu {what} (corrupt, or not a torch file)") from None
        raise UserError(f"{path}: not an esm-emu {what}: it holds Python objects other than tensors and "
                        "plain types, which esm-emu never loads") from None
    except Exception as e:  # a truncated, corrupt or foreign file
        raise UserError(f"{path}: not a readable esm-emu {what} ({type(e).__name__})") from None


def emulator_entry(obj, path: str | Path) -> dict:
    """The 'emulator' entry of a loaded checkpoint, or one line saying the file is not one."""
    payload = obj.get("emulator") if isinstance(obj, dict) else None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: not an esm-emu emulator checkpoint (no 'emulator' entry)")
    missing = [k for k in ("kind", "model_cfg", "param_names", "response_names", "state_dict") if k not in payload]
    if missing:
        raise UserError(f"{path}: not an esm-emu emulator checkpoint ('emulator' entry has no '{missing[0]}')")
    return payload


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a training checkpoint with weights_only=True; UserError naming the file when it cannot be
    read or holds no emulator."""
    ck = read_torch_file(path, map_location)
    emulator_entry(ck, path)
    return ck


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (the emulator provenance the inverse model records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
