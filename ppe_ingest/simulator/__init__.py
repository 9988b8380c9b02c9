"""The built-in land simulator: a CTSM-like stand-in (NOT CTSM) that writes a PPE in CTSM's layout.

`physics.run_land` is the differentiable torch model; `weather` makes daily forcing; `sites`
gives gridcell attributes; `truth` makes "true" parameter maps and synthetic observations;
`ppe` writes the ensemble; `cli` registers `esm-emu simulate`. See README.md for the equations.
"""
