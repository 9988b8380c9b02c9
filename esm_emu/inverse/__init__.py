"""Inverse inference: from forcing and observed responses at sites, infer spatially varying CTSM
parameters with uncertainty (KGSSL embedding + dPL through the frozen emulator or simulator).

Main entry: ``run_inversion(cfg, entities, observations, forward, table, out_dir)`` ->
``(parameter map Dataset, metrics dict)``; ``esm-emu invert CONFIG`` on the command line.
"""
from .config import inverse_config, load_inverse_config
from .forward import EmulatorForward, ForwardModel, SimulatorForward, load_forward
from .inversion import run_inversion
from .param_map import build_param_map, cluster_param_map, read_param_map, write_param_map

__all__ = ["run_inversion", "inverse_config", "load_inverse_config", "ForwardModel", "EmulatorForward",
           "SimulatorForward", "load_forward", "build_param_map", "read_param_map", "write_param_map",
           "cluster_param_map"]
