"""The shared base every layer uses: errors, atomic writes, config validation, netCDF helpers,
great-circle geometry and batch-friendly progress. It imports nothing else of the project."""
