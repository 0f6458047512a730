"""Dask workers as SLURM or PBS jobs through dask-jobqueue, with the HPC pains handled.

- Network interface: `auto` picks a high-speed fabric (ib0, hsn0, ...) when the node has one, else the
  interface carrying the host's address; a named interface that does not exist is an error listing the
  ones that do (dask-jobqueue #207, #681). The scheduler (on the submitting node) and the workers (on
  compute nodes) may use different interfaces.
- Walltime: workers retire before their job's walltime (`--lifetime` with `--lifetime-stagger`), so
  their data and tasks move to other workers instead of dying mid-task (dask-jobqueue #122); new jobs
  replace them (`keep_size`: neither fixed nor adaptive scaling does by itself), so a run outlives its workers.
- Adaptive scaling: a worker must be idle for `wait_count` checks before it is retired, so it is not
  churned between pipeline steps (dask-jobqueue #701).
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
from typing import Any

from pipelines.errors import ConfigError
from pipelines.launch.config import JobqueueSettings
from pipelines.launch.network import pick_interface
from pipelines.launch.schedulers import scheduler as scheduler_named

log = logging.getLogger(__name__)


def seconds(walltime: str) -> int:
    """SLURM/PBS walltime ([days-]hh:mm:ss, mm:ss or minutes) in seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", walltime.strip())
    if not match:
        raise ConfigError(f"walltime {walltime!r}: expected [days-]hh:mm:ss")
    days, b, c = (int(g) if g else None for g in (match[1], match[3], match[4]))
    a = int(match[2])  # always there: the pattern requires it
    if b is None:
        total = a * 60  # plain minutes
    elif c is None:
        total = a * 60 + b  # mm:ss
    else:
        total = a * 3600 + b * 60 + c
    return total + (days or 0) * 86400


def lifetime(settings: JobqueueSettings) -> tuple[int, int] | None:
    """(lifetime, stagger) in seconds: retire workers before walltime (configured, or 90 % / 5 % of it)."""
    if settings.lifetime == "none":
        return None
    wall = seconds(settings.walltime)
    life = seconds(settings.lifetime) if settings.lifetime else int(wall * 0.9)
    stagger = seconds(settings.lifetime_stagger) if settings.lifetime_stagger else int(wall * 0.05)
    if life + stagger >= wall:
        raise ConfigError(f"lifetime {life}s + stagger {stagger}s must end before walltime {settings.walltime}")
    return life, stagger


def cluster_kwargs(settings: JobqueueSettings) -> dict[str, Any]:
    """dask-jobqueue arguments from `engine.dask.jobqueue` settings (GPUs: a gres/ngpus request per job and a
    `GPU` worker resource per worker, which the Dask rank launcher asks for)."""
    extra = []
    directives = list(settings.job_extra_directives)
    if settings.gpus:
        per_worker = max(1, settings.gpus // settings.processes)
        extra += ["--resources", f"GPU={per_worker}"]
        gpu = scheduler_named(settings.scheduler).gpu_directive(settings.gpus)
        directives.append(gpu)
    scheduler_interface = {}
    if settings.scheduler_interface:
        scheduler_interface = {"interface": pick_interface(settings.scheduler_interface)}
    life = lifetime(settings)
    if life is not None:
        extra += ["--lifetime", f"{life[0]}s", "--lifetime-stagger", f"{life[1]}s"]
    kwargs: dict[str, Any] = {
        "cores": settings.cores,
        "memory": settings.memory,
        "processes": settings.processes,
        "walltime": settings.walltime,
        "queue": settings.queue,
        "account": settings.account,
        "python": settings.python or sys.executable,
        "job_extra_directives": directives,
        "job_script_prologue": [f"export {k}={shlex.quote(v)}" for k, v in settings.env.items()],
        "worker_extra_args": extra,
        "interface": pick_interface(settings.interface),
        "scheduler_options": {"dashboard_address": ":0", **scheduler_interface},
        "local_directory": settings.local_directory,
        "log_directory": settings.log_directory,
        "death_timeout": settings.death_timeout,
    }
    skip = scheduler_named(settings.scheduler).memory_directive_skip
    if settings.memory_directive is False and skip:
        kwargs["job_directives_skip"] = list(skip)
    return {k: v for k, v in kwargs.items() if v is not None}


def with_interface(settings: JobqueueSettings, interface: str | None) -> JobqueueSettings:
    """The settings with engine.network's interface for the workers and the scheduler, where they name none."""
    if not interface:
        return settings
    own = {"interface": settings.interface, "scheduler_interface": settings.scheduler_interface}
    return settings.model_copy(update={k: v or interface for k, v in own.items()})


def make_cluster(settings: JobqueueSettings) -> Any:
    """A started dask-jobqueue SLURMCluster or PBSCluster from `engine.dask.jobqueue` settings."""

    cls = scheduler_named(settings.scheduler).jobqueue_cluster()
    cluster = cls(**cluster_kwargs(settings))
    log.info(
        "dask-jobqueue %s cluster at %s; job script:\n%s",
        settings.scheduler,
        cluster.scheduler_address,
        cluster.job_script(),
    )
    return cluster


def scale(cluster: Any, settings: JobqueueSettings) -> int:
    """Fixed (`jobs`) or adaptive scaling; returns how many workers to wait for before starting."""
    per_job = settings.processes
    if settings.adaptive is not None:
        a = settings.adaptive
        cluster.adapt(minimum_jobs=a.minimum, maximum_jobs=a.maximum, wait_count=a.wait_count, interval=a.interval)
        return max(1, a.minimum) * per_job
    cluster.scale(jobs=settings.jobs)
    if lifetime(settings) is not None:
        keep_size(cluster)
    return settings.jobs * per_job


KEEP_EVERY_MS = 3000


def keep_size(cluster: Any) -> None:
    """Start a new job for each worker that left on its own (retired at its lifetime) while the cluster runs.

    Dask forgets a lost worker after `distributed.deploy.lost-worker-timeout`, but only a scale call opens its
    job again: every few seconds this scales to the jobs the cluster already plans (adaptive scaling sees its
    plan unchanged and would not). The callback stops when the cluster closes.
    """
    from distributed.core import Status
    from tornado.ioloop import PeriodicCallback

    def again() -> None:
        if cluster.status == Status.running:
            cluster.scale(jobs=len(cluster.worker_spec))

    callback = PeriodicCallback(again, KEEP_EVERY_MS)
    cluster.periodic_callbacks["pipelines-keep-size"] = callback
    cluster.loop.add_callback(callback.start)
