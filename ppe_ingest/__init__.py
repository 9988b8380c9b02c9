"""PPE discovery, CTSM file I/O, parameter tables, training-store assembly, in-situ readers
and the built-in land simulator (the first layer: imports nothing from the other packages)."""
