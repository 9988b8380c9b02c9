"""Regridding between component grids, site/basin-to-grid mapping, the emulator as a coupled
component and DLND stream writers (may import ppe_ingest and esm_emu, never cime_hooks)."""
