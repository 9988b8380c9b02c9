"""In-situ observation readers (CAMELS-US, PLUMBER2, FLUXNET2015, AmeriFlux, ISMN) into one
``(site, time)`` schema in CTSM names and units, and source forcing mapped to CTSM forcing names.
Import the reader modules directly (``from ppe_ingest.obs.camels import read_camels_streamflow``)."""
