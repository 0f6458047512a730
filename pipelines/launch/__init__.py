"""The launch room: spark-submit entry, dask-jobqueue clusters, batch scripts, cron, Horovod launchers."""
