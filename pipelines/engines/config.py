"""Config section of the engine seam: which engine, how to reach it, how finely data is partitioned."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt

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


InterfaceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,15}$")]  # a Linux interface name, or 'auto'


class NetworkSettings(StrictModel):
    """Where the engine and the training ranks talk: one interface for all, and how long a rank waits to meet."""

    # None: each engine's own default and, for ranks, the interface that routes to the rendezvous; a name (ib0,
    # hsn0) or 'auto' (a fabric when the node has one): the Dask cluster, Spark's driver and Horovod's Gloo
    # sockets all bind to it, and dask-jobqueue workers and scheduler use it unless their own setting is given
    interface: InterfaceName | None = None
    # a rank that cannot reach the Gloo rendezvous within this stops with the address it tried (also Gloo's own
    # connect timeout between ranks, HOROVOD_GLOO_TIMEOUT_SECONDS)
    rendezvous_timeout_s: PositiveFloat = 30.0


class EngineConfig(StrictModel):
    """Which engine runs the data stages, and how finely data is partitioned."""

    kind: Literal["spark", "dask"] = "dask"
    partitions: PositiveInt = 4
    # a model stage whose train split's features take at most this many MiB (float64) is fitted in this process,
    # with the same algorithm and block identities (so the same results); 0 fits every split on the engine
    in_process_mb: float = Field(default=64.0, ge=0)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    dask: DaskSettings = Field(default_factory=DaskSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
