"""Score new data with a finished run's saved model on Spark or Dask (`pipelines predict`; docs/PREDICT.md)."""

from pipelines.predict.job import predict

__all__ = ["predict"]
