"""Classical models on Spark and Dask (issue 3: not implemented yet; ingest output is their input)."""
