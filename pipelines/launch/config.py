"""Config sections of the launch room: dask-jobqueue workers and batch jobs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from pipelines.settings import Directive, EnvName, SafeText, StrictModel


class AdaptiveSettings(StrictModel):
    """Adaptive scaling bounds (in jobs); a worker is retired only after `wait_count` idle checks."""

    minimum: int = Field(default=1, ge=0)
    maximum: PositiveInt = 4
    wait_count: PositiveInt = 10
    interval: Directive = "2s"


class JobqueueSettings(StrictModel):
    """Dask workers as SLURM/PBS jobs through dask-jobqueue."""

    scheduler: Literal["slurm", "pbs"] = "slurm"
    cores: PositiveInt = 1
    memory: Directive = "2GB"
    memory_directive: bool = True
    processes: PositiveInt = 1
    gpus: int = Field(default=0, ge=0, description="GPUs per job: --gres=gpu:N (PBS ngpus) and GPU worker resources")
    walltime: Directive = "01:00:00"
    queue: Directive | None = None
    account: Directive | None = None
    interface: Directive | None = Field(default=None, description="worker interface: a name, 'auto' or None")
    scheduler_interface: Directive | None = None
    job_extra_directives: list[Directive] = Field(default_factory=list)
    env: dict[EnvName, SafeText] = Field(default_factory=dict)
    python: SafeText | None = None
    jobs: PositiveInt = 1
    adaptive: AdaptiveSettings | None = None
    lifetime: Directive | None = Field(default=None, description="'none', a walltime, or default 90 % of walltime")
    lifetime_stagger: Directive | None = None
    local_directory: SafeText | None = None
    log_directory: SafeText | None = None
    death_timeout: PositiveInt = 60
    start_timeout: PositiveInt = 300


class SparkBatchSettings(StrictModel):
    """Spark standalone inside a batch job."""

    master_port: int = Field(default=7077, ge=1024, le=65535)
    webui_port: int = Field(default=8080, ge=0, le=65535)
    worker_memory: Directive = "4g"
    executor_memory: Directive = "2g"


class BatchSettings(StrictModel):
    """A batch job for `pipelines submit`: resources, environment, and what runs inside it."""

    mode: Literal["spark", "dask", "horovod", "local"] = "local"
    nodes: PositiveInt = 1
    tasks_per_node: PositiveInt = 1
    cpus_per_task: PositiveInt = 1
    gpus_per_node: int = Field(default=0, ge=0)
    memory: Directive | None = None
    walltime: Directive = "01:00:00"
    partition: Directive | None = None
    account: Directive | None = None
    extra_directives: list[Directive] = Field(default_factory=list)
    modules: list[SafeText] = Field(default_factory=list)
    env: dict[EnvName, SafeText] = Field(default_factory=dict)
    spark: SparkBatchSettings = Field(default_factory=SparkBatchSettings)
    dask_worker_memory: Directive = "2GB"
    pbs_resources: Literal["select", "nodes"] = Field(default="select", description="PBS Pro select= or Torque nodes=")


class ArraySettings(StrictModel):
    """A SLURM/PBS job array, one array task per index (`launch/array.py`, docs/ARRAYS.md)."""

    max_concurrent: PositiveInt | None = Field(default=None, description="array tasks running at once (`%N`)")
    walltime: Directive = "01:00:00"
    partition: Directive | None = Field(default=None, description="SLURM partition or PBS queue")
    mem: Directive | None = None
    cpus_per_task: PositiveInt = 1
    gpus: int = Field(default=0, ge=0, description="GPUs per array task")
    account: Directive | None = None
    extra_directives: list[Directive] = Field(default_factory=list)
    modules: list[SafeText] = Field(default_factory=list)
    env: dict[EnvName, SafeText] = Field(default_factory=dict)
    requeue: bool = Field(default=True, description="let the scheduler requeue tasks hit by preemption or node failure")
