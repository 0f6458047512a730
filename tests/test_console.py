"""The terminal: quiet engines, one-line errors with exit codes by kind, train/test metric names, `pipelines runs`.

Errors and runs go through the real CLI (`python -m pipelines` in a subprocess, stderr not a TTY) on a real
Dask LocalCluster and a real local SparkSession; worker-side errors through the session's real engines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.errors import ConfigError, DataError, EnvironmentProblem

ENGINE_NOISE = ("WARN", "log4j", "incubator", "Setting default log level", "NativeCodeLoader", "distributed.")
TYPES = {"types": {"a": "float", "b": "float"}}  # declared: a stray text value is rejected, not a level
BAD_CSV = "a,b,y\n1,2,0\n3,abc,1\n5,6,0\n7,8,1\n9,10,0\n"


def _config(tmp_path: Path, name: str, engine: str, path: str = "d.csv", **ingest: object) -> Path:
    data = {
        "name": name,
        "engine": {"kind": engine, "partitions": 2},
        "dataset": {"name": name, "format": "csv", "path": path, "features": ["a", "b"], "label": "y", **TYPES},
        "stages": [{"stage": "ingest", **ingest}],
    }
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(yaml.safe_dump(data))
    return conf


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINES_LOG_DIR": str(tmp_path / "engine-logs"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=400
    )


def _error_line(stderr: str, kind: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{kind}:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _run_log(tmp_path: Path, pipeline: str) -> str:
    (log,) = (tmp_path / "runs" / pipeline).glob("*/logs/run.log")
    return log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["dask", "spark"])
def test_rejected_rows_end_as_one_data_error_line_naming_file_and_row(tmp_path, engine):
    (tmp_path / "d.csv").write_text(BAD_CSV)
    conf = _config(tmp_path, "bad", engine, max_rejected_fraction=0.0)
    done = _cli(tmp_path, "run", str(conf))
    assert done.returncode == 3, done.stderr
    line = _error_line(done.stderr, "data error")
    assert "1 of 5 rows rejected" in line and "d.csv row 3, column b: not a number: 'abc'" in line
    assert "Traceback" not in done.stderr and "Traceback" in _run_log(tmp_path, "bad")
    assert not [n for n in ENGINE_NOISE if n in done.stderr], done.stderr  # JVM and worker logs are in files
    assert "bad: stage ingest started" in done.stderr and "\x1b[" not in done.stderr  # plain progress lines
    if engine == "spark":
        manifest = json.loads(next((tmp_path / "runs" / "bad").glob("*/manifest.json")).read_text())
        assert Path(manifest["engine"]["log"]).is_file()  # the JVM's log file is recorded
        assert "incubator" in Path(manifest["engine"]["log"]).read_text()  # the JVM's own stderr went there


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["dask", "spark"])
def test_missing_input_file_is_a_data_error(tmp_path, engine):
    conf = _config(tmp_path, "gone", engine, path="nothere.csv")
    done = _cli(tmp_path, "run", str(conf))
    assert done.returncode == 3, done.stderr
    assert "nothere.csv: input file not found" in _error_line(done.stderr, "data error")
    assert "Traceback" not in done.stderr and "Traceback" in _run_log(tmp_path, "gone")


def test_bad_config_key_is_a_config_error_naming_file_and_key(tmp_path):
    conf = _config(tmp_path, "typo", "dask", max_rejected_frac=0)
    done = _cli(tmp_path, "run", str(conf))
    assert done.returncode == 2, done.stderr
    line = _error_line(done.stderr, "config error")
    assert "typo.yaml" in line and "stages[0].max_rejected_frac: unknown key" in line
    assert "Traceback" not in done.stderr


def test_unknown_run_is_a_usage_error(tmp_path):
    done = _cli(tmp_path, "runs", "--compare", "nope1", "nope2")
    assert done.returncode == 2 and "nope1: no such run directory or run id" in _error_line(done.stderr, "usage error")


@pytest.mark.parametrize("kind", [DataError, ConfigError, EnvironmentProblem])
def test_worker_errors_come_back_as_their_own_kind(engine, kind):
    import pandas as pd
    import pyarrow as pa

    def fail(item: int) -> int:
        if item == 2:
            raise kind(f"part-{item}.csv: row 7: bad value")
        return item

    def reduce(pdf: pd.DataFrame) -> dict:
        if len(pdf) and int(pdf["x"].iloc[0]) == 2:
            raise kind("in a partition: x=2")
        return {"n": len(pdf)}

    with pytest.raises(kind, match=r"^part-2\.csv: row 7: bad value$"):
        engine.run_tasks(fail, [1, 2, 3])
    frame = engine.from_tasks(lambda i: pd.DataFrame({"x": [i]}), [1, 2], pa.schema([("x", pa.int64())]))
    with pytest.raises(kind, match=r"^in a partition: x=2$"):
        engine.reduce_partitions(frame, reduce)


def _table_config(tmp_path: Path, seed: int) -> Path:
    rows = ["a,b,y"] + [f"{i},{(i * 7) % 11},{2 * i + (i * 7) % 11 + (i % 3)}" for i in range(60)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    data = {
        "name": "lin",
        "engine": {"kind": "dask", "partitions": 2},
        "dataset": {"name": "lin", "format": "csv", "path": "t.csv", "features": ["a", "b"], "label": "y"},
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.25, "seed": seed}},
            {"stage": "model", "name": "lm", "model": "linear_regression", "plots": False},
        ],
    }
    conf = tmp_path / f"lin{seed}.yaml"
    conf.write_text(yaml.safe_dump(data))
    return conf


@pytest.mark.slow
def test_runs_lists_and_compares_real_runs_with_train_and_test_metric_names(tmp_path):
    for seed in (1, 2):
        done = _cli(tmp_path, "run", str(_table_config(tmp_path, seed)))
        assert done.returncode == 0, done.stderr
    runs = (p.parent for p in (tmp_path / "runs" / "lin").glob("*/manifest.json"))
    first, second = sorted(p for p in runs if not p.is_symlink())
    metrics = json.loads((second / "metrics.json").read_text())["lm"]
    assert {"train_r_squared", "train_adj_r_squared", "test_r2", "test_rmse"} <= set(metrics)
    assert not {"r2", "rmse", "r_squared"} & set(metrics)
    facts = json.loads((second / "manifest.json").read_text())["stages"][-1]
    assert facts["train_r_squared"] == metrics["train_r_squared"] == metrics["summary"]["r_squared"]
    assert facts["test_r2"] == metrics["test_r2"]

    listed = _cli(tmp_path, "runs")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.index(second.name) < listed.stdout.index(first.name)  # newest first
    assert listed.stdout.count("succeeded") == 2 and "lm.test_r2=" in listed.stdout and "dask" in listed.stdout
    assert _cli(tmp_path, "runs", "other").returncode == 2  # a pipeline with no runs

    compared = _cli(tmp_path, "runs", "--compare", str(first), second.name[:18])
    assert compared.returncode == 0, compared.stderr
    out = compared.stdout
    assert "stages[0].split.seed" in out and "lm.test_r2" in out and "lm.train_r_squared" in out
    a = json.loads((first / "metrics.json").read_text())["lm"]["test_r2"]
    assert f"{metrics['test_r2'] - a:+.4g}" in out  # the change, b - a


def test_engine_logs_older_than_a_week_are_pruned(tmp_path, monkeypatch):
    """The engine log folder keeps recent logs and drops those not written for LOG_KEEP_DAYS (runs' logs stay)."""
    from pipelines.engines.quiet import LOG_KEEP_DAYS, engine_log_dir

    monkeypatch.setenv("PIPELINES_LOG_DIR", str(tmp_path))
    old, fresh, other = tmp_path / "spark-1.log", tmp_path / "dask-2.log", tmp_path / "notes.txt"
    for path in (old, fresh, other):
        path.write_text("x")
    stale = os.path.getmtime(fresh) - LOG_KEEP_DAYS * 86400 - 60
    os.utime(old, (stale, stale))
    os.utime(other, (stale, stale))
    assert engine_log_dir() == tmp_path
    assert not old.exists() and fresh.exists() and other.exists()
