"""Spark's memory on one node: the local heap sized from the machine, a real JVM heap exhaustion told in one line,
and MLlib on native BLAS (OpenBLAS from scripts/setup.sh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.engines.spark_engine import driver_memory

GiB = 2**30
OOM_SCRIPT = """
from pipelines.engines.config import SparkSettings
from pipelines.engines.quiet import worker_errors
from pipelines.engines.spark_engine import SparkEngine

engine = SparkEngine(SparkSettings(conf={"spark.driver.memory": "512m"}), partitions=2)
engine.start()
frame = engine.spark.range(0, 25_000_000, numPartitions=2).selectExpr("id", "cast(id as string) as s")
try:
    with worker_errors():
        frame.groupBy().agg({"s": "collect_list"}).collect()
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_driver_heap_is_sized_from_the_machine(monkeypatch):
    monkeypatch.delenv("PIPELINES_SPARK_DRIVER_MEMORY", raising=False)
    assert driver_memory(24 * GiB) == "9g"  # 40 % of this machine
    assert driver_memory(1 * GiB) == "1g"  # never below 1 GiB
    assert driver_memory(512 * GiB) == "31g"  # compressed oops stay on
    monkeypatch.setenv("PIPELINES_SPARK_DRIVER_MEMORY", "6g")
    assert driver_memory(24 * GiB) == "6g"


def test_user_conf_wins_and_blas_is_recorded(spark_engine):
    facts = spark_engine.describe()
    assert facts["driver_memory"]  # recorded in every manifest's engine facts
    if not Path("/usr/lib/x86_64-linux-gnu/libblas.so.3").exists():
        pytest.skip("no system libblas.so.3 (scripts/setup.sh installs libopenblas0-pthread as root)")
    assert facts["mllib_blas"] == "JNIBLAS"  # MLlib's netlib found the native library, not its Java fallback


@pytest.mark.slow
@pytest.mark.spark
def test_jvm_heap_exhaustion_is_one_line_naming_the_setting(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", OOM_SCRIPT], capture_output=True, text=True, timeout=600, cwd=tmp_path
    ).stdout.strip()
    assert out.startswith("EnvironmentProblem: spark ran out of JVM memory (Java heap space)"), out
    assert "spark.driver.memory (now 512m)" in out and "\n" not in out
