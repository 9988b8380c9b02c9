"""Inverse inference: from forcing and observed responses at sites, infer spatially varying CTSM
parameters with uncertainty (KGSSL embedding + dPL through the frozen emulator or simulator).

Main entry: ``run_inversion(cfg, entities, observations, forward, table, out_dir)`` ->
``(parameter map Dataset, metrics dict)``; ``esm-emu invert CONFIG`` on the command line.
"""
# Submodules are imported where used (esm_emu.inverse.inversion.run_inversion, ...): importing this
# package must stay cheap, because `esm-emu --help` imports every subcommand's module.
