"""Where a build's entries are lowered: worker processes on this host (builder.py), or a Ray
cluster (ray_executor.py). Records are always committed by the driver, through FileStore."""
