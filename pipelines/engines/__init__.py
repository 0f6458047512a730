"""Engine factory: the one place that chooses between the Spark and Dask adapters."""

from __future__ import annotations

from pipelines.engines.base import Engine
from pipelines.engines.config import EngineConfig


def make_engine(config: EngineConfig) -> Engine:
    """An unstarted engine for the config's kind (use it as a context manager)."""
    if config.kind == "spark":
        from pipelines.engines.spark_engine import SparkEngine

        return SparkEngine(config.spark, partitions=config.partitions, network=config.network)
    from pipelines.engines.dask_engine import DaskEngine

    return DaskEngine(config.dask, network=config.network)


__all__ = ["Engine", "make_engine"]
