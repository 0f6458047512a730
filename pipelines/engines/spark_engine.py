"""Spark adapter: a SparkSession on local[*,4] (default), the master spark-submit gave, or a configured one."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

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
    encode_result,
    settle,
    to_arrow,
    write_part_and_reduce,
)
from pipelines.engines.config import LOCAL_MASTER, NetworkSettings, SparkSettings
from pipelines.engines.quiet import (
    engine_log_dir,
    log4j2_config,
    lost_workers,
    remember_spark_memory,
    stderr_to,
    translated,
    verbose,
)
from pipelines.engines.resident import (
    load_block,
    new_store,
    read_frame_part,
    remove_store,
    write_block,
    write_frame_part,
)
from pipelines.javacheck import require_java
from pipelines.launch.network import interface_address
from pipelines.launch.ranks import RankJob, run_spark_ranks

log = logging.getLogger(__name__)

_RESULT_SCHEMA = pa.schema([("result", pa.string())])


def _read_batch(message: bytes, schema: pa.Schema) -> pa.RecordBatch:
    """One Arrow record-batch message from Spark, checked against the schema it was read with."""
    batch = pa.ipc.read_record_batch(pa.py_buffer(message), schema)
    batch.validate(full=True)  # a schema that differs from the writer's (string offset widths) fails here, loudly
    return batch


def driver_memory(total_bytes: int | None = None) -> str:
    """The local driver's heap: PIPELINES_SPARK_DRIVER_MEMORY, else 40 % of the machine's memory (1-31 GiB).

    In local mode every task runs in the driver's JVM, so its heap is the whole of Spark's memory; 31 GiB keeps
    compressed object pointers. `engine.spark.conf` (spark.driver.memory) still wins over this default.
    """
    if os.environ.get("PIPELINES_SPARK_DRIVER_MEMORY"):
        return os.environ["PIPELINES_SPARK_DRIVER_MEMORY"]
    import psutil

    total = total_bytes if total_bytes is not None else psutil.virtual_memory().total
    return f"{min(31, max(1, int(total * 0.4 / 2**30)))}g"


def _mllib_blas(spark: Any) -> str:
    """Which BLAS Spark MLlib uses in the driver: JNIBLAS (native, e.g. OpenBLAS) or the Java fallback."""
    try:
        return str(spark._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName())
    except Exception:  # an MLlib without netlib
        return "unknown"


@contextlib.contextmanager
def _spark_local_ip(local_ip: str) -> Iterator[None]:
    """SPARK_LOCAL_IP set to local_ip while the JVM starts (restored after: a later session chooses its own)."""
    before = os.environ.get("SPARK_LOCAL_IP")
    os.environ["SPARK_LOCAL_IP"] = local_ip
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SPARK_LOCAL_IP", None)
        else:
            os.environ["SPARK_LOCAL_IP"] = before


def under_spark_submit() -> bool:
    """True when this Python process was launched by spark-submit (which owns master and resources)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _batches_to_pandas(batches: Iterator[pa.RecordBatch]) -> pd.DataFrame | None:
    read = list(batches)
    if not read:
        return None
    return pa.Table.from_batches(read).to_pandas()


def _partition_frame(batches: Iterator[pa.RecordBatch], schema: Any) -> pd.DataFrame:
    """A partition's batches as one pandas frame; an empty partition as zero rows of the Spark schema's types."""
    pdf = _batches_to_pandas(batches)
    if pdf is not None:
        return pdf
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema).empty_table().to_pandas()


class _KeyedResults:
    """Accumulator param of {key: JSON result}: a task run again (a retry, an evicted part remade) overwrites."""

    def zero(self, value: dict[int, str]) -> dict[int, str]:
        return {}

    def addInPlace(self, value1: dict[int, str], value2: dict[int, str]) -> dict[int, str]:  # noqa: N802 (Spark's name)
        value1.update(value2)
        return value1


def _in_order(results: dict[int, str], expected: int, what: str) -> list[dict[str, Any]]:
    """Decoded per-partition results in partition order; every partition must have reported."""
    if sorted(results) != list(range(expected)):
        raise RuntimeError(f"{what}: {len(results)} of {expected} partitions reported their results to the driver")
    return [decode_result(results[i]) for i in range(expected)]


@dataclass(frozen=True)
class _ResidentFrame:
    """A persisted frame on a local master: partition i is an Arrow file in `store`, `steps` mapped on reading."""

    store: str
    parts: int
    schema: pa.Schema  # of the stored parts
    steps: tuple[tuple[PartitionFn, pa.Schema], ...] = ()  # map_partitions not yet run, in order

    @property
    def out_schema(self) -> pa.Schema:
        return self.steps[-1][1] if self.steps else self.schema

    def then(self, fn: PartitionFn, schema: pa.Schema) -> _ResidentFrame:
        return _ResidentFrame(self.store, self.parts, self.schema, (*self.steps, (fn, schema)))

    def read(self, index: int) -> pd.DataFrame:
        """Partition `index` with every step applied (in the Python worker that runs the task)."""
        pdf = read_frame_part(self.store, index).to_pandas()
        for fn, schema in self.steps:
            pdf = conform(fn(pdf), schema)
        return pdf


@dataclass(frozen=True)
class _ResidentBlocks:
    """Blocks on a local master: Spark caches one small handle per block; the arrays are files in `store`."""

    handles: Any
    store: str


class SparkEngine(Engine):
    """Runs stages on a SparkSession."""

    kind = "spark"

    def __init__(
        self,
        settings: SparkSettings | None = None,
        partitions: int = 4,
        session: Any = None,
        network: NetworkSettings | None = None,
    ) -> None:
        self.settings = settings or SparkSettings()
        self.network = network or NetworkSettings()
        self.partitions = partitions
        self.spark = session
        self._owns_session = session is None
        self._submitter: cf.ThreadPoolExecutor | None = None
        self._stores: set[str] = set()  # directories of resident blocks and frames not yet released
        self.log_file: Any = None

    def start(self) -> None:
        if self.spark is not None:
            return
        require_java()
        conf = dict(self.settings.conf)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        local_ip = os.environ["SPARK_LOCAL_IP"]
        if self.network.interface:  # the driver listens on the interface's address (the executors connect to it)
            local_ip, _ = interface_address(self.network.interface)
            conf.setdefault("spark.driver.host", local_ip)
            conf.setdefault("spark.driver.bindAddress", local_ip)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.appName(self.settings.app_name or "pipelines")
        if under_spark_submit():
            if self.settings.master:
                log.warning("spark-submit gave the master; ignoring engine.spark.master=%s", self.settings.master)
        else:
            builder = builder.master(self.settings.master or LOCAL_MASTER)
            builder = builder.config("spark.ui.enabled", "false")
            builder = builder.config("spark.ui.showConsoleProgress", "false")
            builder = builder.config("spark.sql.shuffle.partitions", str(self.partitions))
            builder = builder.config("spark.driver.memory", driver_memory())
        builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Python workers over Unix sockets: about 20 ms less per task than TCP (every model pass is a Python job)
        builder = builder.config("spark.python.unix.domain.socket.enabled", "true")
        quiet = not verbose() and not under_spark_submit()
        if quiet:  # the JVM's log and its own stderr lines go to a file (the path is logged and in the manifest)
            log4j, self.log_file = log4j2_config(engine_log_dir(), "warn")
            ours = "-Dlog4j2.configurationFile=" + shlex.quote(log4j.as_uri())
            conf["spark.driver.extraJavaOptions"] = f"{ours} {conf.get('spark.driver.extraJavaOptions', '')}".strip()
        for key, value in conf.items():
            builder = builder.config(key, value)
        with (
            stderr_to(self.log_file) if quiet and self.log_file else contextlib.nullcontext(),
            _spark_local_ip(local_ip),
        ):
            self.spark = builder.getOrCreate()
        remember_spark_memory(self.spark.sparkContext.master, self.spark.sparkContext.getConf(), self.log_file)
        self.spark.sparkContext.setLogLevel("WARN" if quiet or verbose() else "ERROR")
        log.info("spark session ready: %s", self.spark.sparkContext.master)
        if self.log_file:
            log.info("spark logs: %s", self.log_file)
        ui = self.spark.sparkContext.uiWebUrl
        if ui:
            log.info("spark UI: %s", ui, extra={"dashboard": ui})

    def stop(self) -> None:
        for store in list(self._stores):
            self._drop_store(store)
        if self._submitter is not None:
            if self.spark is not None:
                self.spark.sparkContext.cancelAllJobs()
            self._submitter.shutdown(wait=False, cancel_futures=True)
            self._submitter = None
        if self._owns_session and self.spark is not None and not under_spark_submit():
            self.spark.stop()
        self.spark = None

    @property
    def parallelism(self) -> int:
        return max(1, self.spark.sparkContext.defaultParallelism)

    def describe(self) -> dict[str, Any]:
        sc = self.spark.sparkContext
        return {
            "engine": "spark",
            "version": self.spark.version,
            "master": sc.master,
            "app_id": sc.applicationId,
            "parallelism": self.parallelism,
            "spark_submit": under_spark_submit(),
            "driver_memory": sc.getConf().get("spark.driver.memory", "1g"),
            "mllib_blas": _mllib_blas(self.spark),
            **({"interface": self.network.interface} if self.network.interface else {}),
            **({"log": str(self.log_file)} if self.log_file else {}),
        }

    def rank_launcher(self) -> str:
        """Under spark-submit or with a cluster master, ranks run in the executors (`spark`); else horovodrun."""
        remote = not self._local
        return "spark" if under_spark_submit() or remote else "horovodrun"

    @translated
    def run_ranks(self, job: RankJob) -> list[dict[str, Any]]:
        """The ranks as one barrier stage of this Spark application (GPUs as Spark task resources)."""
        return run_spark_ranks(self.spark.sparkContext, job)

    def matrix_ops(self) -> Any:
        """MLlib distributed-matrix operations on this session (`engines.spark_matrix`)."""
        from pipelines.engines.spark_matrix import SparkMatrixOps

        return SparkMatrixOps(self.spark)

    @translated
    def run_tasks(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        items = list(items)
        if not items:
            return []
        rdd = self.spark.sparkContext.parallelize(list(enumerate(items)), len(items))
        pairs = rdd.map(lambda pair: (pair[0], fn(pair[1]))).collect()
        return [result for _, result in sorted(pairs, key=lambda pair: pair[0])]

    def submit(self, fn: Callable[[T], R], item: T, key: str) -> cf.Future[R]:
        if self._submitter is None:  # driver threads, each waiting on its own one-task job (Spark runs them at once)
            threads = max(64, self.parallelism)  # never fewer threads than slots: a queued job would count as running
            self._submitter = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spark-submit")
        sc = self.spark.sparkContext
        future: cf.Future[R] = cf.Future()

        def job() -> None:
            try:
                sc.setJobDescription(key)
                settle(future, sc.parallelize([0], 1).map(lambda _: captured(fn, item)).collect()[0])
            except BaseException as exc:  # the task's process kept dying, or the session stopped
                future.set_exception(lost_workers(exc) or exc)

        self._submitter.submit(job)
        return future

    def from_tasks(self, fn: Callable[[T], pd.DataFrame], items: Sequence[T], schema: pa.Schema) -> Any:
        return self._tasks_frame(fn, items, schema)

    def _tasks_frame(
        self,
        fn: Callable[[T], pd.DataFrame],
        items: Sequence[T],
        schema: pa.Schema,
        on_part: Callable[[int, pd.DataFrame], None] | None = None,
    ) -> Any:
        """Partition i is fn(items[i]); `on_part(i, part)` sees each part as its task makes it."""
        items = list(items)
        index = self.spark.sparkContext.parallelize([(i,) for i in range(len(items))], max(1, len(items)))
        seeds = self.spark.createDataFrame(index, "task int")

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for i in batch.column(0).to_pylist():
                    pdf = fn(items[i])
                    if on_part is not None:
                        on_part(i, pdf)
                    yield from to_arrow(pdf, schema).to_batches()

        return seeds.mapInArrow(run, _spark_schema(schema))

    @translated
    def persist_tasks(
        self, fn: Callable[[T], pd.DataFrame], items: Sequence[T], schema: pa.Schema, reduce: ReduceFn
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Each task reduces the part it makes: a second job would ship every cached row to Python again.

        On a local master each part is an Arrow file the Python workers map; later passes read it there, so
        no row crosses into the JVM unless a step needs Spark itself. Elsewhere Spark caches the frame and
        the reductions come back through an accumulator.
        """
        items = list(items)
        if self._local:
            return self._resident_frame(fn, items, schema, reduce)
        results = self.spark.sparkContext.accumulator({}, _KeyedResults())
        frame = self.persist(
            self._tasks_frame(fn, items, schema, lambda i, pdf: results.add({i: encode_result(reduce(pdf))}))
        )
        try:
            return frame, _in_order(results.value, len(items), "persist_tasks")
        except BaseException:
            self.release(frame)
            raise

    def _resident_frame(
        self, fn: Callable[[T], pd.DataFrame], items: list[T], schema: pa.Schema, reduce: ReduceFn
    ) -> tuple[_ResidentFrame, list[dict[str, Any]]]:
        store = new_store(kind="frame")
        self._stores.add(store)

        def make(i: int) -> str:
            pdf = fn(items[i])
            write_frame_part(store, i, to_arrow(pdf, schema))
            return encode_result(reduce(pdf))

        try:
            return _ResidentFrame(store, len(items), schema), self._per_part(len(items), make)
        except BaseException:
            self._drop_store(store)
            raise

    def _per_part(self, parts: int, task: Callable[[int], str]) -> list[dict[str, Any]]:
        """Run task(i) for every part i of a resident frame as Spark tasks; their encoded results, in order."""
        return [decode_result(text) for text in self.run_tasks(task, range(parts))]

    def hosts_not_seeing(self, path: str) -> list[str]:
        """A local master's workers share the driver's disk; a cluster's are probed by one task per slot."""
        return [] if self._local else super().hosts_not_seeing(path)

    @property
    def _local(self) -> bool:
        """Every Python worker runs on the driver's host (a local master)."""
        return bool(self.spark.sparkContext.master.startswith("local"))

    def _drop_store(self, store: str) -> None:
        remove_store(store)
        self._stores.discard(store)

    def _frame(self, frame: Any) -> Any:
        """A Spark DataFrame of any frame: a resident one is read (its steps applied) by one task per part."""
        if not isinstance(frame, _ResidentFrame):
            return frame
        return self.from_tasks(frame.read, range(frame.parts), frame.out_schema)

    def map_partitions(self, frame: Any, fn: PartitionFn, schema: pa.Schema) -> Any:
        if isinstance(frame, _ResidentFrame):
            return frame.then(fn, schema)

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            pdf = _batches_to_pandas(batches)
            if pdf is not None:
                yield from to_arrow(fn(pdf), schema).to_batches()

        return frame.mapInArrow(run, _spark_schema(schema))

    @translated
    def write_mapped(
        self, frame: Any, fn: PartitionFn, path: str, schema: pa.Schema, reduce: ReduceFn
    ) -> list[dict[str, Any]]:
        """One job: each task maps its partition, reduces what it hands to the Parquet writer, and reports it.

        A resident frame's tasks write their part files themselves (every worker shares the driver's disk).
        """
        if isinstance(frame, _ResidentFrame):
            os.makedirs(path)
            return self._per_part(
                frame.parts, lambda i: write_part_and_reduce(reduce, fn(frame.read(i)), path, i, schema)
            )
        results = self.spark.sparkContext.accumulator({}, _KeyedResults())
        empty = frame.schema

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            out = fn(_partition_frame(batches, empty))
            task = TaskContext.get()
            assert task is not None  # this runs inside a Spark task
            results.add({task.partitionId(): encode_result(reduce(out))})
            yield from to_arrow(out, schema).to_batches()

        self.write_parquet(frame.mapInArrow(run, _spark_schema(schema)), path, schema)
        return _in_order(results.value, self.num_partitions(frame), "write_mapped")

    def where_set(self, frame: Any, column: str, keep: Sequence[str]) -> Any:
        if isinstance(frame, _ResidentFrame):  # filtered in the workers: only the kept rows reach the JVM
            kept = pa.schema([frame.out_schema.field(name) for name in keep])
            return frame.then(lambda pdf: pdf.loc[pdf[column].notna(), list(keep)], kept)
        return frame.where(frame[column].isNotNull()).select(*keep)

    @translated
    def reduce_partitions(self, frame: Any, fn: ReduceFn) -> list[dict[str, Any]]:
        if isinstance(frame, _ResidentFrame):
            return self._per_part(frame.parts, lambda i: encode_result(fn(frame.read(i))))
        empty = frame.schema

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            pdf = _partition_frame(batches, empty)
            yield pa.RecordBatch.from_pylist([{"result": encode_result(fn(pdf))}], schema=_RESULT_SCHEMA)

        rows = frame.mapInArrow(run, _spark_schema(_RESULT_SCHEMA)).collect()
        return [decode_result(row["result"]) for row in rows]

    @translated
    def persist(self, frame: Any) -> Any:
        from pyspark import StorageLevel

        frame = self._frame(frame).persist(StorageLevel.MEMORY_AND_DISK)
        frame.count()
        return frame

    def release(self, frame: Any) -> None:
        if isinstance(frame, _ResidentFrame):
            self._drop_store(frame.store)
        else:
            frame.unpersist()

    @translated
    def to_blocks(self, frame: Any, fn: BlockFn) -> Any:
        """Each partition's Arrow batches go straight to a Python task (no Row conversion) that builds its block."""
        from pyspark import StorageLevel

        rdd, schema = self._arrow_batch_rdd(self._frame(frame))
        store = new_store() if self._local else None

        def build(index: int, messages: Iterator[bytes]) -> Iterator[Any]:
            table = pa.Table.from_batches([_read_batch(m, schema) for m in messages], schema)
            if table.num_rows:  # the whole partition: fn sees it once
                block = {**fn(table.to_pandas()), "part": index}
                yield write_block(store, index, block) if store else block

        # persisted lazily: the caller's first pass (Blocks' checks) builds and caches them, saving a pass
        built = rdd.mapPartitionsWithIndex(build).persist(StorageLevel.MEMORY_AND_DISK)
        if store is None:  # workers on other hosts: Spark caches the blocks themselves
            return built
        self._stores.add(store)  # every worker is on this host: Spark caches handles, the workers map the files
        return _ResidentBlocks(built, store)

    def _arrow_batch_rdd(self, frame: Any) -> tuple[Any, pa.Schema]:
        """An RDD of the frame's Arrow record-batch messages (as Spark's Arrow export writes them), and their schema."""
        from pyspark.rdd import RDD
        from pyspark.serializers import NoOpSerializer
        from pyspark.sql.pandas.types import to_arrow_schema

        jrdd = frame._jdf.toArrowBatchRdd()  # Dataset's Arrow export (every pyspark this package allows has it)
        timezone, large = self.spark._jconf.getConfs(
            ["spark.sql.session.timeZone", "spark.sql.execution.arrow.useLargeVarTypes"]
        )
        schema = to_arrow_schema(frame.schema, timezone=timezone, prefers_large_types=large == "true")
        return RDD(jrdd.toJavaRDD(), self.spark.sparkContext, NoOpSerializer()), schema

    @translated
    def map_blocks(self, blocks: Any, fn: Callable[[Block], R]) -> list[R]:
        if isinstance(blocks, _ResidentBlocks):
            return blocks.handles.map(lambda handle: fn(load_block(handle))).collect()
        return blocks.map(fn).collect()

    def release_blocks(self, blocks: Any) -> None:
        if isinstance(blocks, _ResidentBlocks):
            blocks.handles.unpersist()
            self._drop_store(blocks.store)
        else:
            blocks.unpersist()

    @translated
    def write_parquet(self, frame: Any, path: str, schema: pa.Schema) -> None:
        self._frame(frame).write.mode("errorifexists").parquet(path)

    def read_parquet(self, path: str) -> Any:
        return self.spark.read.parquet(path)

    @translated
    def to_pandas(self, frame: Any) -> pd.DataFrame:
        frame = self._frame(frame)
        table = frame.toArrow() if hasattr(frame, "toArrow") else pa.Table.from_pandas(frame.toPandas())
        return table.to_pandas()

    def num_partitions(self, frame: Any) -> int:
        return frame.parts if isinstance(frame, _ResidentFrame) else frame.rdd.getNumPartitions()
