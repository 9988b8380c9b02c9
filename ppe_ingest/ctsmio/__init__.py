"""CTSM file I/O: paramfiles, surface datasets, user_nl_clm (history files: see history.py)."""
