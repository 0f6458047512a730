"""Engine noise kept off the terminal (JVM and worker output into a log file) and worker errors told plainly.

A pipelines error raised inside a Spark Python worker reaches the driver as a Py4JJavaError or a
PythonException whose text holds the worker's traceback; Dask may wrap it too. `worker_errors` finds the
original kind and message in that text and raises it again as that kind (the engine's exception chained).
A task the engine gave up on because the processes running it died (a killed Python worker or executor
after Spark's task retries, Dask's KilledWorker) comes out as one `EngineFailure` line (docs/FAULTS.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from pipelines.errors import KINDS, EngineFailure, EnvironmentProblem, PipelineError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# `pipelines.errors.DataError: message` as Python prints the last line of a traceback.
_RAISED = re.compile(r"pipelines\.errors\.(\w+): ([^\n]*)")
# Spark's last word on a task it gave up on: "Task 1 in stage 2.0 failed 4 times, most recent failure: Lost task
# 1.3 in stage 2.0 (TID 9) (127.0.0.1 executor driver): org.apache.spark.SparkException: <reason>".
_GAVE_UP = re.compile(
    r"failed (\d+) times?, most recent failure: Lost task .*?\): (?:[\w.$]+(?:Exception|Error): )?(.*)"
)
# Reasons that say the process running the task died, not that the task's own code raised: a Python worker
# that crashed, was never started (its daemon lost it) or stopped mid-stream (the JVM read EOF), an executor lost.
_DIED = ("Python worker exited unexpectedly", "Python daemon failed to launch worker", "ExecutorLostFailure")
_DIED_MID_STREAM = "java.io.EOFException"
_RESUME = "the run is kept; `pipelines run --resume` continues it"


def verbose() -> bool:
    """Whether the user asked for engine logs on the terminal (`pipelines -v`)."""
    return logging.getLogger("pipelines").isEnabledFor(logging.DEBUG)


LOG_KEEP_DAYS = 7


def engine_log_dir() -> Path:
    """A folder for this process's engine logs (Spark's log4j file, worker output); its path is logged.

    Engine logs older than LOG_KEEP_DAYS are removed from it (a run's own log stays in its run directory).
    """
    base = os.environ.get("PIPELINES_LOG_DIR")
    folder = Path(base) if base else Path(tempfile.gettempdir()) / f"pipelines-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    prune_logs(folder, LOG_KEEP_DAYS * 86400)
    return folder


def prune_logs(folder: Path, max_age_s: float) -> None:
    """Remove the engine log files (`*.log`, `*.properties`) in `folder` not written for `max_age_s` seconds."""
    cutoff = time.time() - max_age_s
    for path in [*folder.glob("*.log"), *folder.glob("*.properties")]:
        with contextlib.suppress(OSError):  # another process may remove or still write it
            if path.stat().st_mtime < cutoff:
                path.unlink()


def _chain(exc: BaseException) -> Iterator[tuple[BaseException, str]]:
    """An exception and its causes, each once, with its text."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            text = str(current)
        except Exception:  # a Py4J error whose JVM is gone
            text = ""
        yield current, text
        current = current.__cause__ or current.__context__


def original_error(exc: BaseException) -> PipelineError | None:
    """The pipelines error a worker raised, rebuilt from an engine's wrapping exception (None if there is none)."""
    for current, text in _chain(exc):
        if isinstance(current, PipelineError):
            return current
        found = _RAISED.findall(text)
        if found:
            name, message = found[-1]
            kind = KINDS.get(name, PipelineError)
            return kind(message.strip())
    return None


def lost_workers(exc: BaseException) -> EngineFailure | None:
    """A task the engine gave up on because the processes running it kept dying, told in one line (else None)."""
    for current, text in _chain(exc):
        if type(current).__name__ == "KilledWorker" and len(current.args) == 3:  # dask.distributed
            task, worker, allowed = current.args
            where = getattr(worker, "address", worker)
            return EngineFailure(
                f"dask gave up on task {task!r}: {allowed + 1} workers died running it (the last {where}); {_RESUME}"
            )
        found = _GAVE_UP.search(text)
        reason = found.group(2).strip() if found else ""
        if found and (reason == _DIED_MID_STREAM or any(died in reason for died in _DIED)):
            reason = reason.split(". Consider")[0].rstrip(".")
            if reason == _DIED_MID_STREAM:
                reason = f"its Python worker stopped mid-stream ({reason})"
            return EngineFailure(f"spark gave up on a task after {found.group(1)} attempts: {reason}; {_RESUME}")
    return None


_JVM_GONE = (  # the JVM (or its SparkContext) is gone: an OOM may have stopped it, and only its log still says
    "SparkContext was shut down",
    "Connection refused",
    "Py4JNetworkError",
    "Answer from Java side is empty",
    'SparkContext.dagScheduler()" is null',  # the context stopped while this query was finishing
)
_spark: dict[str, Any] = {"memory": "spark.driver.memory / spark.executor.memory", "log": None}
OOM_TAIL_BYTES = 200_000


def remember_spark_memory(master: str, conf: Any, log_file: Path | None) -> None:
    """Note where this process's Spark task memory is set (and its value) and its JVM log, while the JVM can say."""
    key = "spark.driver.memory" if master.startswith("local") else "spark.executor.memory"
    _spark.update(memory=f"{key} (now {conf.get(key, '1g')})", log=log_file)


def _tail(path: Path, size: int) -> str:
    """The last `size` bytes of a file as text."""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        return fh.read().decode(errors="replace")


def out_of_memory(exc: BaseException) -> EnvironmentProblem | None:
    """A JVM heap exhausted on the driver or an executor, as one line naming the setting to raise (else None)."""
    texts = [text for _, text in _chain(exc)]
    own_log = _spark["log"]
    if own_log and any(gone in text for text in texts for gone in _JVM_GONE):  # an OOM stopped the JVM: its log says
        texts.append(_tail(own_log, OOM_TAIL_BYTES) if own_log.exists() else "")
    for text in texts:
        found = re.search(r"java\.lang\.OutOfMemoryError: ?([^\n]*)", text)
        if found:
            what = found.group(1).strip() or "OutOfMemoryError"
            return EnvironmentProblem(
                f"spark ran out of JVM memory ({what}): raise engine.spark.conf {_spark['memory']}, "
                f"or use more partitions (engine.partitions); {_RESUME}"
            )
    return None


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """Raise a pipelines error that a worker raised as its own kind and message, not the engine's wrapper;
    workers lost beyond the engine's retries as an EngineFailure."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        found = original_error(exc) or out_of_memory(exc) or lost_workers(exc)
        if found is None:
            raise
        raise found from exc


def translated(method: F) -> F:
    """Decorate an engine action so worker-side pipelines errors come out as themselves."""

    @wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with worker_errors():
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send this process's file descriptor 2 to `path` for the block: children started in it keep the file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as target:
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


LOG4J2 = """\
# Written by pipelines: Spark's JVM logs go to a file, not the terminal.
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
"""


def log4j2_config(folder: Path, level: str = "info") -> tuple[Path, Path]:
    """A log4j2 properties file that writes Spark's JVM log to `folder`/spark-<pid>.log: (config, log)."""
    log_file = folder / f"spark-{os.getpid()}.log"
    config = folder / f"log4j2-{os.getpid()}.properties"
    config.write_text(LOG4J2.format(level=level, path=log_file.as_posix()))
    return config, log_file
