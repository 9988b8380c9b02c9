"""Inversion as a library: a validated ``inverse:`` section in, a parameter map and metrics out.

`run_from_config` loads what the section names (parameter table, entities, observations, forward
model, truth), runs the inversion and writes its outputs; `esm-emu invert` and the run pipeline
both call it.
"""
from __future__ import annotations

from collections.abc import Mapping

from ppe_ingest.base.errors import UserError

from .config import InverseConfig


def check_inputs(cfg: Mapping) -> None:
    """Every input file the section names is there and of the right kind: one line naming the key
    and file otherwise. Cheap (no torch, no xarray), so a bad input is refused at once."""
    from ppe_ingest.base.netcdf import require_netcdf

    for key in ("entities", "store", "truth"):
        path = cfg.get(key)
        if path and not str(path).endswith(".zarr"):
            require_netcdf(path, f"inverse.{key}")
    if not cfg.get("entities") and not cfg.get("store"):
        raise UserError("inverse: give entities (forcing + static netCDF) or store (training store)")
    if not cfg.get("observations"):
        raise UserError("inverse.observations: list at least one observation netCDF file")
    for path in cfg["observations"]:
        require_netcdf(path, "inverse.observations")
    forward = cfg.get("forward") or {}
    if forward.get("kind") == "emulator":
        from pathlib import Path

        ckpt = forward.get("checkpoint")
        if not ckpt:
            raise UserError("inverse.forward.checkpoint: give the emulator checkpoint (.pt) or training run "
                            "folder (forward.kind is emulator)")
        path = Path(ckpt) / "best.pt" if Path(ckpt).is_dir() else Path(ckpt)
        if not path.is_file():
            raise UserError(f"inverse.forward.checkpoint: {path}: emulator checkpoint not found")


def load_entities(cfg: Mapping):
    """(gridcell|site, time) forcing and static fields from ``entities`` or the training ``store``."""
    from ppe_ingest.base.netcdf import open_xarray
    from ppe_ingest.ctsmio.history import interval_start
    from ppe_ingest.store import MEMBER, entities_view

    path = cfg.get("entities") or cfg.get("store")
    if path is None:
        raise UserError("inverse: give entities (forcing + static netCDF) or store (training store)")
    ds = open_xarray(path, "inverse.entities" if cfg.get("entities") else "inverse.store")
    if MEMBER in ds.dims:  # a training store: its member-free view (forcing is shared by the PPE)
        ds = interval_start(entities_view(ds))
    return ds.load()


def load_observations(paths):
    """Observation files (the observation schema) merged into one Dataset."""
    from ppe_ingest.base.netcdf import require_netcdf
    from ppe_ingest.obs.io import merge_obs, read_obs

    if not paths:
        raise UserError("inverse.observations: list at least one observation netCDF file")
    dss = [read_obs(require_netcdf(p, "inverse.observations")) for p in paths]
    return dss[0] if len(dss) == 1 else merge_obs(dss, source="inverse.observations")


def store_design(path) -> dict | None:
    """The PPE design in a training store: parameter name -> the members' values (None without a store)."""
    if not path:
        return None
    from ppe_ingest.base.netcdf import open_xarray
    from ppe_ingest.store import PARAM, THETA

    ds = open_xarray(path, "inverse.store")
    if THETA not in ds.variables or PARAM not in ds.dims:
        return None
    th = ds[THETA].transpose(..., PARAM).load()
    return {str(p): th.sel({PARAM: p}).values.astype(float) for p in th[PARAM].values}


# The fewest held-out parameter vectors an emulator error variance is measured on: from n vectors a
# variance carries a relative sampling error of about sqrt(2/n), 50 % at 8. A wave of 16 members holds
# 4 validation and test members; 2 test members gave fff's emulator part 0.00 on one quickstart seed
# (bench/RESULTS.md, "Quickstart twin: the emulator's parameter error from all test members when a wave
# holds few").
MIN_HELD_OUT_MEMBERS = 8


def _held_out_members(path, forward, variables, prefix: str | None = None):
    """(store, indices of the members the emulator was not trained on: validation and test) for an
    emulator forward model whose store has them and every observed variable; None otherwise. With
    ``prefix`` (a PPE wave's member prefix) only that wave's, the emulator's error where the calibration
    went, where it has at least MIN_HELD_OUT_MEMBERS of them; else all the store's.

    Validation members count: the emulator's error differs far more between parameter vectors than
    between a vector's gridcells, so its variance is measured on as many vectors as there are (20 in
    the quickstart instead of 10); validation only chose the checkpoint and the spread's scale."""
    if not path or forward.kind != "emulator":
        return None
    import numpy as np

    from ppe_ingest.base.netcdf import open_xarray
    from ppe_ingest.store import MEMBER, SPLIT_MEMBER, TEST, VAL

    ds = open_xarray(path, "inverse.store")
    split = ds[SPLIT_MEMBER].values
    held = np.flatnonzero((split == TEST) | (split == VAL))
    if prefix:
        names = np.array([str(m) for m in ds[MEMBER].values])
        mine = held[np.char.startswith(names[held], prefix)]
        held = mine if len(mine) >= MIN_HELD_OUT_MEMBERS else held
    if not len(held) or any(v not in ds.data_vars for v in variables):
        return None
    return ds, held


def forward_held_out_error(path, forward, variables, warmup_days: int = 180, max_gridcells: int = 64,
                           prefix: str | None = None) -> dict | None:
    """RMSE of the emulator on the store's held-out (validation and test) members, per observed variable,
    over its gridcells (at most ``max_gridcells``) after the warm-up: the forward model's own error."""
    found = _held_out_members(path, forward, variables, prefix)
    if found is None:
        return None
    ds, held = found
    import numpy as np
    import torch

    from ppe_ingest.store import GRIDCELL, MEMBER, PARAM, THETA, entities_view, static_values

    ent = entities_view(ds)
    cells = np.arange(min(ds.sizes[GRIDCELL], max_gridcells))
    forcing = torch.as_tensor(np.stack([ent[n].transpose(GRIDCELL, "time").values[cells]
                                        for n in forward.forcing_names], -1), dtype=torch.float32)
    static = torch.as_tensor(static_values(ds, forward.static_names)[cells], dtype=torch.float32)
    theta_all = ds[THETA].transpose(MEMBER, PARAM).sel({PARAM: forward.param_names}).values
    ridx = forward.response_index(list(variables))
    sq, n = np.zeros(len(variables)), np.zeros(len(variables))
    for m in held:
        th = torch.as_tensor(theta_all[m], dtype=torch.float32).expand(len(cells), -1)
        y = forward.chunked(forcing, static, th)[..., ridx].numpy()[:, warmup_days:]
        for k, v in enumerate(variables):
            ref = ds[v].isel({MEMBER: int(m)}).transpose(GRIDCELL, "time").values[cells][:, warmup_days:]
            ok = np.isfinite(ref)
            sq[k] += float(((y[..., k][ok] - ref[ok]) ** 2).sum())
            n[k] += int(ok.sum())
    return {v: float(np.sqrt(sq[k] / n[k])) for k, v in enumerate(variables) if n[k]}


def held_out_series(path, forward, variables, n_series: int = 192, seed: int = 0,
                    prefix: str | None = None) -> dict | None:
    """``n_series`` (member, gridcell) series of the store's held-out (validation and test) members:
    forcing, static fields, the parameters the member ran with and its responses, for measuring what
    inverting through the emulator gets wrong where the answer is known (None without a store or
    held-out members).

    The squared parameter errors are right-skewed (a few series the emulator gets badly wrong), so the
    mean over few series mostly falls short of the true mean: with 48 the emulator part came out lower
    on 24 of 30 seed x parameter cells of the quickstart twin than with 192, and the intervals covered
    85-95 % of the truths in 13 cells instead of 18 (bench/RESULTS.md)."""
    found = _held_out_members(path, forward, variables, prefix)
    if found is None:
        return None
    ds, held = found
    import numpy as np
    import torch

    from ppe_ingest.store import GRIDCELL, MEMBER, PARAM, THETA, entities_view, static_values

    rng = np.random.default_rng([seed, 41])
    G = ds.sizes[GRIDCELL]
    pairs = sorted({(int(rng.choice(held)), int(rng.integers(G))) for _ in range(n_series)})
    cells = np.array([g for _, g in pairs])
    ent = entities_view(ds)
    forcing = np.stack([ent[n].transpose(GRIDCELL, "time").values[cells] for n in forward.forcing_names], -1)
    static = static_values(ds, forward.static_names)[cells]
    theta = ds[THETA].transpose(MEMBER, PARAM).sel({PARAM: forward.param_names}).values[[m for m, _ in pairs]]
    resp = np.stack([np.stack([ds[v].isel({MEMBER: m, GRIDCELL: g}).values for m, g in pairs]) for v in variables], -1)

    def t32(a):
        return torch.as_tensor(np.asarray(a, np.float32))

    return {"forcing": t32(forcing), "static": t32(static), "theta": t32(theta), "response": t32(resp)}


def run_from_config(cfg: InverseConfig, progress: bool = True, spinup_years: int = 0, warm_from=None,
                    warm_steps: int | None = None, held_out_prefix: str | None = None):
    """Load everything a validated ``inverse:`` section names, invert, write outputs; return (map, metrics).

    Its paths (observations included) are already resolved and checked by the validation; their
    kinds are checked here before anything heavy is imported. In a twin experiment (``truth``
    given, forward model an emulator of the built-in simulator) the simulator, spun up for
    ``spinup_years`` as the PPE was, is the true model the skill is also measured with.
    ``warm_from``/``warm_steps``: a previous wave's inverse state to start from (run_inversion);
    ``held_out_prefix``: the emulator's error is measured on that wave's validation and test members
    where it has enough of them, else on all the store's (_held_out_members).
    """
    check_inputs(cfg)

    from ppe_ingest.base.netcdf import open_xarray
    from ppe_ingest.param_table import default_table_path, load_param_table

    from ..forward import load_forward
    from .inversion import run_inversion

    if cfg.forward.kind == "emulator":  # a file that is no emulator is refused before the data are read
        from pathlib import Path

        from ..checkpoint import emulator_entry, read_torch_file

        ckpt = Path(cfg.forward.checkpoint)
        ckpt = ckpt / "best.pt" if ckpt.is_dir() else ckpt
        emulator_entry(read_torch_file(ckpt, what="emulator checkpoint"), ckpt)
    table = load_param_table(cfg.param_table or default_table_path())
    entities = load_entities(cfg)
    observations = load_observations(cfg.observations)
    forward = load_forward(cfg.forward.kind, cfg.forward.checkpoint, cfg.params, cfg.variables, entities)
    if cfg.forward.kind == "simulator":  # the physics options the PPE was simulated with
        forward.physics = dict(cfg.forward.physics)
        if spinup_years:  # and its spin-up: every run starts where the PPE's did
            from .inversion import SpunUp

            forward = SpunUp(forward, spinup_years)
    truth = open_xarray(cfg.truth, "inverse.truth", load=True) if cfg.truth else None
    reference = None
    if truth is not None and cfg.forward.kind == "emulator":  # a twin: its true model is the simulator
        try:
            reference = load_forward("simulator", None, forward.param_names, cfg.variables, entities)
            reference.response_index(cfg.variables)
            if spinup_years:
                from .inversion import SpunUp

                reference = SpunUp(reference, spinup_years)
        except UserError:
            reference = None
    return run_inversion(cfg, entities, observations, forward, table, out_dir=cfg.out, truth=truth,
                         progress=progress, sources=list(cfg.observations), design=store_design(cfg.store),
                         emulator_error=forward_held_out_error(cfg.store, forward, cfg.variables,
                                                               cfg.dpl.warmup_days, prefix=held_out_prefix),
                         held_out=held_out_series(cfg.store, forward, cfg.variables, seed=cfg.seed,
                                                  prefix=held_out_prefix),
                         reference=reference, warm_from=warm_from, warm_steps=warm_steps)
