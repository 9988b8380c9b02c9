"""Scripts CIME calls (PRERUN, DATA_ASSIMILATION, POSTRUN) and the installer that registers them
in a case (the last layer: may import every other package)."""
