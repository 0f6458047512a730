"""Dask adapter: a distributed Client on a LocalCluster (default) or an existing scheduler."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
from distributed import wait
from distributed.diagnostics.plugin import WorkerPlugin

from pipelines.engines.base import (
    Block,
    BlockFn,
    Engine,
    PartitionFn,
    R,
    ReduceFn,
    T,
    captured,
    conform,
    decode_result,
    empty_frame,
    encode_result,
    sees_path,
    settle,
    write_part_and_reduce,
)
from pipelines.engines.config import DaskSettings, NetworkSettings
from pipelines.engines.quiet import engine_log_dir, lost_workers, stderr_to, translated, verbose
from pipelines.launch.network import pick_interface
from pipelines.launch.ranks import RankJob, run_dask_ranks

log = logging.getLogger(__name__)


def quiet_logger(name: str) -> None:
    """Send a library logger's records through the root logger only (our handlers decide where they show)."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
    logger.propagate = True


class StderrTo(WorkerPlugin):
    """A worker plugin: the worker process's stderr appends to a file (a worker its nanny restarts gets it too)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self, worker: Any) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(fd, 2)
        os.close(fd)


def _reduce_one(fn: ReduceFn, part: pd.DataFrame) -> str:
    return encode_result(fn(part))


def _with_part(fn: BlockFn, pdf: pd.DataFrame, index: int) -> Block:
    return {**fn(pdf), "part": index}


class DaskEngine(Engine):
    """Runs stages on a dask.distributed cluster."""

    kind = "dask"

    def __init__(
        self, settings: DaskSettings | None = None, client: Any = None, network: NetworkSettings | None = None
    ) -> None:
        self.settings = settings or DaskSettings()
        self.network = network or NetworkSettings()
        self.client = client
        self._owns_client = client is None
        self._cluster: Any = None
        self.log_file: Any = None

    def start(self) -> None:
        from distributed import Client, LocalCluster

        # Keep object columns as they are: image bytes are binary, not text (dask would cast them to str).
        dask.config.set({"dataframe.convert-string": False})
        for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if not verbose():  # distributed's records go to the run log through the root logger, not to stderr
            quiet_logger("distributed")
        if self.client is not None:
            return
        wait = self.settings.wait_for_workers
        if self.settings.jobqueue is not None:
            from pipelines.launch.jobqueue import make_cluster, scale, with_interface

            jq = with_interface(self.settings.jobqueue, self.network.interface)
            self._cluster = make_cluster(jq)
            self.client = Client(self._cluster)
            wait = scale(self._cluster, jq)
            log.info("waiting up to %ss for %d dask-jobqueue worker(s)", jq.start_timeout, wait)
            try:
                self.client.wait_for_workers(wait, timeout=jq.start_timeout)
            except BaseException:
                self.stop()  # cancel the jobs we submitted
                raise
            wait = 0
        elif self.settings.scheduler_file:
            self.client = Client(scheduler_file=self.settings.scheduler_file)
        elif self.settings.scheduler:
            self.client = Client(self.settings.scheduler)
        else:
            if not verbose():  # worker processes keep the log file as their stderr
                self.log_file = engine_log_dir() / f"dask-{os.getpid()}.log"
            with stderr_to(self.log_file) if self.log_file else contextlib.nullcontext():
                self._cluster = LocalCluster(
                    n_workers=self.settings.n_workers,
                    threads_per_worker=self.settings.threads_per_worker,
                    memory_limit=self.settings.memory_limit,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.WARNING,
                    interface=pick_interface(self.network.interface),
                )
            self.client = Client(self._cluster)
            if self.log_file:  # a worker restarted after a death is spawned later, with the terminal as stderr
                self.client.register_plugin(StderrTo(str(self.log_file)), name="pipelines-stderr")
        if wait:
            self.client.wait_for_workers(wait, timeout=600)
        log.info("dask client ready: %s", self.client.scheduler.address)
        if self.log_file:
            log.info("dask worker logs: %s", self.log_file)
        link = self.dashboard()
        if link:
            log.info("dask dashboard: %s", link, extra={"dashboard": link})

    def dashboard(self) -> str | None:
        """The Dask dashboard's address, when the scheduler serves one."""
        try:
            served = self.client.scheduler_info().get("services", {}).get("dashboard")
            return self.client.dashboard_link if served else None
        except Exception:  # no scheduler info: no dashboard to show
            return None

    def stop(self) -> None:
        """Close the client; a cluster we started (local, or jobqueue jobs) is shut down, its jobs cancelled."""
        if self._owns_client and self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    @property
    def parallelism(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def hosts_not_seeing(self, path: str) -> list[str]:
        """Every worker probes `path` (client.run reaches each one, busy or not)."""
        seen = self.client.run(sees_path, path)
        return sorted({host for host, ok in seen.values() if not ok})

    def rank_launcher(self) -> str:
        """On a cluster that is not our LocalCluster, ranks run as tasks on its workers (`dask`)."""
        from distributed import LocalCluster

        return "horovodrun" if isinstance(self._cluster, LocalCluster) else "dask"

    @translated
    def run_ranks(self, job: RankJob) -> list[dict[str, Any]]:
        """The ranks as tasks pinned to distinct workers (GPUs as worker resources); rendezvous on the client."""
        return run_dask_ranks(self.client, job)

    def matrix_ops(self) -> Any:
        """dask.array matrix operations on this client (`engines.dask_matrix`)."""
        from pipelines.engines.dask_matrix import DaskMatrixOps

        return DaskMatrixOps(self.client)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "dask",
            "version": dask.__version__,
            "scheduler": self.client.scheduler.address,
            "workers": len(self.client.nthreads()),
            "threads": self.parallelism,
            **({"jobqueue": self.settings.jobqueue.scheduler} if self.settings.jobqueue else {}),
            **({"interface": self.network.interface} if self.network.interface else {}),
            **({"log": str(self.log_file)} if self.log_file else {}),
        }

    @translated
    def run_tasks(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        futures = self.client.map(fn, list(items), pure=False)
        return self.client.gather(futures)

    def submit(self, fn: Callable[[T], R], item: T, key: str) -> cf.Future[R]:
        future: cf.Future[R] = cf.Future()
        task = self.client.submit(captured, fn, item, key=f"{key}-{uuid.uuid4().hex[:8]}", pure=False)

        def done(task: Any) -> None:
            try:
                settle(future, task.result())
            except BaseException as exc:  # cancelled, or the worker running it was lost beyond retries
                future.set_exception(lost_workers(exc) or exc)

        task.add_done_callback(done)
        future.engine_task = task  # type: ignore[attr-defined]  # keeps the Dask future (and its task) alive
        return future

    def from_tasks(self, fn: Callable[[T], pd.DataFrame], items: Sequence[T], schema: pa.Schema) -> Any:
        def part(item: T) -> pd.DataFrame:
            return conform(fn(item), schema)

        return dd.from_map(part, list(items), meta=empty_frame(schema), enforce_metadata=False)

    def map_partitions(self, frame: Any, fn: PartitionFn, schema: pa.Schema) -> Any:
        def part(pdf: pd.DataFrame) -> pd.DataFrame:
            return conform(fn(pdf), schema)

        return frame.map_partitions(part, meta=empty_frame(schema), enforce_metadata=False)

    def where_set(self, frame: Any, column: str, keep: Sequence[str]) -> Any:
        return frame[frame[column].notnull()][list(keep)]

    @translated
    def reduce_partitions(self, frame: Any, fn: ReduceFn) -> list[dict[str, Any]]:
        parts = [dask.delayed(_reduce_one)(fn, p) for p in frame.to_delayed()]
        return [decode_result(text) for text in dask.compute(*parts)]

    @translated
    def persist(self, frame: Any) -> Any:
        return self.client.persist(frame)

    @translated
    def to_blocks(self, frame: Any, fn: BlockFn) -> Any:
        parts = [dask.delayed(_with_part)(fn, p, i) for i, p in enumerate(frame.to_delayed())]
        futures = self.client.compute(parts)
        wait(futures)  # materialized on the workers; nothing comes back to the driver
        for future in futures:
            if future.status == "error":
                future.result()  # raises the worker's exception here
        return futures

    @translated
    def map_blocks(self, blocks: Any, fn: Callable[[Block], R]) -> list[R]:
        return self.client.gather(self.client.map(fn, blocks, pure=False))

    def release_blocks(self, blocks: Any) -> None:
        for future in blocks:
            future.release()

    def release(self, frame: Any) -> None:
        del frame

    @translated
    def write_parquet(self, frame: Any, path: str, schema: pa.Schema) -> None:
        frame.to_parquet(path, write_index=False, engine="pyarrow", schema=schema, write_metadata_file=False)

    @translated
    def write_mapped(
        self, frame: Any, fn: PartitionFn, path: str, schema: pa.Schema, reduce: ReduceFn
    ) -> list[dict[str, Any]]:
        """Each partition is mapped once, by one task that writes its part file and reduces it."""
        os.makedirs(path)
        mapped = self.map_partitions(frame, fn, schema).to_delayed()
        tasks = [dask.delayed(write_part_and_reduce)(reduce, p, path, i, schema) for i, p in enumerate(mapped)]
        return [decode_result(text) for text in dask.compute(*tasks)]

    def read_parquet(self, path: str) -> Any:
        return dd.read_parquet(path, engine="pyarrow")

    @translated
    def to_pandas(self, frame: Any) -> pd.DataFrame:
        return frame.compute().reset_index(drop=True)

    def num_partitions(self, frame: Any) -> int:
        return frame.npartitions
