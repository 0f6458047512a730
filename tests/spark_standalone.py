"""A real Spark standalone cluster for tests: a master and N workers started by PID, and spark-submit."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def spark_home() -> Path:
    """The pip pyspark's SPARK_HOME (bin/spark-class, bin/spark-submit)."""
    import pyspark

    return Path(pyspark.__file__).parent


@contextlib.contextmanager
def standalone(
    folder: Path, port: int, workers: int = 2, cores: int = 1, memory: str = "3g"
) -> Iterator[tuple[str, dict[str, str], list[int]]]:
    """Start a master and `workers` workers, wait until all registered; yield (master URL, environment, worker
    JVM pids)."""
    home = spark_home()
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    cls = [str(home / "bin" / "spark-class")]
    url = f"spark://127.0.0.1:{port}"
    log_path = folder / "spark-master.log"
    procs = []
    with open(log_path, "w") as master_log:
        master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)]
        procs.append(
            subprocess.Popen([*cls, *master, "--webui-port", "0"], env=env, stdout=master_log, stderr=subprocess.STDOUT)
        )
        worker = ["org.apache.spark.deploy.worker.Worker", "--cores", str(cores), "--memory", memory]
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [*cls, *worker, "--webui-port", "0", url],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        try:
            deadline = time.monotonic() + 120
            while log_path.read_text().count("Registering worker") < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standalone workers did not register: {log_path}")
                time.sleep(0.5)
            yield url, env, [p.pid for p in procs[1:]]
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(30)


def submit(url: str, env: dict[str, str], *args: str, cores: int = 2) -> subprocess.CompletedProcess:
    """spark-submit the pipelines entry point to the master with `cores` one-core executors."""
    import pipelines.__main__ as entry

    argv = [str(spark_home() / "bin" / "spark-submit"), "--master", url, "--total-executor-cores", str(cores)]
    argv += ["--executor-cores", "1", "--conf", "spark.executor.memory=2g"]
    return subprocess.run([*argv, entry.__file__, *args], env=env, capture_output=True, text=True)
