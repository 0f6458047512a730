"""The engine seam: the few operations stages need, written once per engine (Spark, Dask).

Partition functions speak pandas in and out; each engine converts at its own boundary (Arrow for
Spark's mapInArrow, native pandas partitions for Dask), so stage logic is written once.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import json
import os
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.engines.config import NetworkSettings
from pipelines.launch.ranks import RankJob

if TYPE_CHECKING:
    from pipelines.engines.matrix import MatrixOps

T = TypeVar("T")
R = TypeVar("R")

PartitionFn = Callable[[pd.DataFrame], pd.DataFrame]
ReduceFn = Callable[[pd.DataFrame], dict[str, Any]]
Block = dict[str, Any]
BlockFn = Callable[[pd.DataFrame], Block]
# Engine-native values, opaque to everyone but the engine that made them (callers hand them back to it):
Frame = Any  # a distributed frame: a Spark DataFrame, or a dask DataFrame
BlockHandle = Any  # model blocks kept on the workers: a cached RDD, or Dask futures


def to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert a pandas partition to Arrow with exactly the declared schema (column order and types)."""
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def conform(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Round-trip a pandas partition through Arrow so every partition has identical dtypes."""
    return to_arrow(frame, schema).to_pandas()


def empty_frame(schema: pa.Schema) -> pd.DataFrame:
    """A zero-row pandas frame with the dtypes a schema converts to (Dask's meta)."""
    return schema.empty_table().to_pandas()


def encode_result(result: dict[str, Any]) -> str:
    """Serialize a per-partition reduction as JSON (never pickle) for transport to the driver."""
    return json.dumps(result, allow_nan=True)


def decode_result(text: str) -> dict[str, Any]:
    """Inverse of encode_result."""
    result: dict[str, Any] = json.loads(text)
    return result


def write_part_and_reduce(reduce: ReduceFn, part: pd.DataFrame, path: str, index: int, schema: pa.Schema) -> str:
    """Write one partition as `part.<index>.parquet` under path; return reduce of it, encoded (one task)."""
    pq.write_table(to_arrow(part, schema), os.path.join(path, f"part.{index}.parquet"))
    return encode_result(reduce(part))


class TaskError(RuntimeError):
    """A submitted task raised on its worker: the exception's type and message, in one line."""


def captured(fn: Callable[[T], R], item: T) -> tuple[bool, Any]:
    """Run fn(item) on a worker: (True, result), or (False, "Type: message") so the engine does not retry it."""
    try:
        return True, fn(item)
    except Exception as exc:
        text = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return False, text.splitlines()[0] if text else type(exc).__name__


def settle(future: cf.Future[Any], pair: tuple[bool, Any]) -> None:
    """Complete a driver-side Future from a captured (ok, value) pair."""
    ok, value = pair
    if ok:
        future.set_result(value)
    else:
        future.set_exception(TaskError(value))


def sees_path(path: str) -> tuple[str, bool]:
    """(this host's name, whether `path` exists here): where a worker task runs."""
    import os
    import socket

    return socket.gethostname(), os.path.exists(path)


class Engine(abc.ABC):
    """A started Spark or Dask backend. Use as a context manager; frames are engine-native."""

    kind: str = "abstract"
    network: NetworkSettings = NetworkSettings()  # the interface everything binds to; ranks' rendezvous timeout

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hosts_not_seeing(self, path: str) -> list[str]:
        """Hosts of workers that cannot see `path` (one probe task per task slot; engines may probe every worker)."""
        seen = self.run_tasks(sees_path, [path] * self.parallelism)
        return sorted({host for host, ok in seen if not ok})

    @abc.abstractmethod
    def start(self) -> None:
        """Connect to or start the backend."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release what start() acquired (a local cluster is shut down, a remote one is left running)."""

    @property
    @abc.abstractmethod
    def parallelism(self) -> int:
        """How many tasks run at once (cores across workers)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for the manifest: versions, master or scheduler address, workers."""

    @abc.abstractmethod
    def run_tasks(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Run fn on each item as independent tasks across workers; results in item order."""

    @abc.abstractmethod
    def submit(self, fn: Callable[[T], R], item: T, key: str) -> cf.Future[R]:
        """Start fn(item) now as one task on a worker; the Future ends with its result or raises `TaskError`.

        A task that raises is not retried by the engine (the caller decides); `key` names it in the engine's UI.
        """

    @abc.abstractmethod
    def from_tasks(self, fn: Callable[[T], pd.DataFrame], items: Sequence[T], schema: pa.Schema) -> Frame:
        """Build a lazy frame whose partition i is fn(items[i]) (conformed to schema)."""

    @abc.abstractmethod
    def map_partitions(self, frame: Frame, fn: PartitionFn, schema: pa.Schema) -> Frame:
        """Apply a pandas-to-pandas function to each partition, lazily."""

    @abc.abstractmethod
    def where_set(self, frame: Frame, column: str, keep: Sequence[str]) -> Frame:
        """The rows whose `column` is not null, with only the `keep` columns, filtered where the data lives."""

    @abc.abstractmethod
    def reduce_partitions(self, frame: Frame, fn: ReduceFn) -> list[dict[str, Any]]:
        """Run fn on each partition and collect its small JSON-able result, in partition order."""

    @abc.abstractmethod
    def persist(self, frame: Frame) -> Frame:
        """Materialize a frame in cluster memory (spilling to disk where the engine does)."""

    @abc.abstractmethod
    def release(self, frame: Frame) -> None:
        """Drop a persisted frame."""

    @abc.abstractmethod
    def write_parquet(self, frame: Frame, path: str, schema: pa.Schema) -> None:
        """Write a frame with the given schema as a directory of Parquet part files (path must not exist)."""

    @abc.abstractmethod
    def write_mapped(
        self, frame: Frame, fn: PartitionFn, path: str, schema: pa.Schema, reduce: ReduceFn
    ) -> list[dict[str, Any]]:
        """Write fn of each partition as `write_parquet` does; return reduce of each written part (one job).

        reduce sees the frame fn returned, before it is converted to the schema for writing.
        """

    def persist_tasks(
        self, fn: Callable[[T], pd.DataFrame], items: Sequence[T], schema: pa.Schema, reduce: ReduceFn
    ) -> tuple[Frame, list[dict[str, Any]]]:
        """Persist the frame of `from_tasks(fn, items, schema)`; return it and reduce of each partition, in order.

        reduce may see the frame fn returned rather than its conversion to the schema: it must not depend on
        the difference (nullable or Arrow-backed dtypes).

        This default reduces in a second job over the persisted frame; an engine whose second job would move
        every row again overrides it to reduce each part in the task that makes it.
        """
        frame = self.persist(self.from_tasks(fn, items, schema))
        try:
            return frame, self.reduce_partitions(frame, reduce)
        except BaseException:
            self.release(frame)
            raise

    @abc.abstractmethod
    def read_parquet(self, path: str) -> Frame:
        """Read a directory of Parquet files as a frame."""

    @abc.abstractmethod
    def to_pandas(self, frame: Frame) -> pd.DataFrame:
        """Collect a frame to the driver (small results only)."""

    @abc.abstractmethod
    def num_partitions(self, frame: Frame) -> int:
        """Number of partitions of a frame."""

    @abc.abstractmethod
    def to_blocks(self, frame: Frame, fn: BlockFn) -> BlockHandle:
        """Persist fn(partition) -> dict of NumPy arrays for each partition, kept on the workers.

        fn is called once per partition, on the whole partition. Each block also gets "part", its partition
        index (blocks of empty partitions may be left out). An engine may build them on the first pass.
        """

    @abc.abstractmethod
    def map_blocks(self, blocks: BlockHandle, fn: Callable[[Block], R]) -> list[R]:
        """Run fn on each persisted block where it lives; results in block order."""

    @abc.abstractmethod
    def release_blocks(self, blocks: BlockHandle) -> None:
        """Drop persisted blocks."""

    def rank_launcher(self) -> str:
        """The Horovod launcher a deep stage uses by default here: `horovodrun` starts ranks on this host."""
        return "horovodrun"

    def run_ranks(self, job: RankJob) -> list[dict[str, Any]]:
        """Run Horovod ranks as tasks on this engine's own workers; one fact dict per rank (where it ran)."""
        raise NotImplementedError(f"the {self.kind} engine cannot start Horovod ranks on its workers")

    def matrix_ops(self) -> MatrixOps:
        """Distributed matrix operations on this engine's workers (`engines.matrix`)."""
        raise NotImplementedError(f"the {self.kind} engine has no distributed matrices")

    def partition_sizes(self, frame: Frame) -> list[int]:
        """Row count of each partition."""
        return [r["rows"] for r in self.reduce_partitions(frame, lambda pdf: {"rows": len(pdf)})]

    def count(self, frame: Frame) -> int:
        """Total row count."""
        return sum(self.partition_sizes(frame))
