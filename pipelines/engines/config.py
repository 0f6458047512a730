"""Config section of the engine seam: which engine, how to reach it, how finely data is partitioned."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from pipelines.launch.config import JobqueueSettings
from pipelines.settings import StrictModel

# Local mode retries a failed task only when the master says so: 4 attempts, as spark.task.maxFailures on a cluster.
LOCAL_MASTER = "local[*,4]"


class SparkSettings(StrictModel):
    """How to reach Spark; master None means the one spark-submit gave, else LOCAL_MASTER (a user's master wins)."""

    master: str | None = None
    app_name: str | None = None
    conf: dict[str, str] = Field(default_factory=dict)


class DaskSettings(StrictModel):
    """How to reach Dask: a scheduler address or file, dask-jobqueue jobs, or (default) a LocalCluster."""

    scheduler: str | None = None
    scheduler_file: str | None = None
    wait_for_workers: int = Field(default=0, ge=0)
    jobqueue: JobqueueSettings | None = None
    n_workers: PositiveInt = 2
    threads_per_worker: PositiveInt = 1
    memory_limit: str = "auto"


class EngineConfig(StrictModel):
    """Which engine runs the data stages, and how finely data is partitioned."""

    kind: Literal["spark", "dask"] = "dask"
    partitions: PositiveInt = 4
    # a model stage whose train split's features take at most this many MiB (float64) is fitted in this process,
    # with the same algorithm and block identities (so the same results); 0 fits every split on the engine
    in_process_mb: float = Field(default=64.0, ge=0)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    dask: DaskSettings = Field(default_factory=DaskSettings)
