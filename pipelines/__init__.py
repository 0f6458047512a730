"""pipelines: Spark and Dask stages that load, validate and partition data for classical and deep models."""

__version__ = "0.1.0"
