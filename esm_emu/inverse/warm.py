"""The inverse networks' state between PPE waves: wave k's dPL members start from wave k-1's, on
the same KGSSL embedding, so a wave refines the previous estimate instead of learning it again."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ppe_ingest.base.atomic import atomic_path
from ppe_ingest.base.errors import UserError

STATE_FILE = "inverse_state.pt"


def save_state(out_dir, params, entity, nets: list, pre=None, scale: str = "linear") -> Path:
    """Write the dPL members' weights and the KGSSL embedding they read (``pre``, an
    inversion.Pretrained, or None for g_A) as ``inverse_state.pt``; ``scale``: the unit space their
    outputs are on (inverse.scale)."""
    path = Path(out_dir) / STATE_FILE
    payload = {"params": list(params), "entity": [str(e) for e in np.asarray(entity)], "nets": list(nets),
               "scale": str(scale),
               "z": None, "has_z": None, "kg_theta": None, "kg_history": None}
    if pre is not None:
        payload.update(z=pre.z, has_z=pre.has_z, kg_theta=pre.theta, kg_history=pre.history)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_state(path, params, entity, n_members: int, scale: str = "linear") -> dict:
    """A previous wave's state, checked against this inversion: same parameters, unit-space scale,
    entities and ensemble size (else a UserError naming the file and what differs)."""
    from ..checkpoint import read_torch_file

    path = Path(path)
    st = read_torch_file(path, what="inverse state")
    if not isinstance(st, dict) or "nets" not in st:
        raise UserError(f"{path}: not an esm-emu inverse state")
    if list(st.get("params", [])) != list(params):
        raise UserError(f"{path}: inferred parameters {st.get('params')} differ from this inversion's {list(params)}")
    if st.get("scale", "log") != scale:  # states written before inverse.scale existed were on the log scale
        raise UserError(f"{path}: its parameters are on the {st.get('scale', 'log')} scale, this inversion's "
                        f"inverse.scale is {scale}")
    ent = [str(e) for e in np.asarray(entity)]
    if list(st.get("entity", [])) != ent:
        raise UserError(f"{path}: its {len(st.get('entity', []))} entities are not this inversion's {len(ent)}")
    if len(st["nets"]) != n_members:
        raise UserError(f"{path}: {len(st['nets'])} dPL members, this inversion has {n_members} "
                        "(inverse.uncertainty.ensemble)")
    return st
