"""esm-emu: emulators of CTSM perturbed-parameter ensembles and parameter inference through them."""
__version__ = "0.1.0"
