"""Exit codes as pipelines/errors.py states them, one CLI test per kind (`python -m pipelines` in a subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import cli, errors
from pipelines.runs.lock import pipeline_lock


def _config(tmp_path: Path, name: str = "codes", **dataset: object) -> Path:
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,abc,1\n5,6,0\n7,8,1\n")
    data = {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": "dask", "partitions": 1},
        "dataset": {
            "name": name,
            "format": "csv",
            "path": "d.csv",
            "features": ["a", "b"],
            "label": "y",
            "types": {"b": "float"},  # declared: 'abc' is to be rejected (undeclared, it would make b a category)
            **dataset,
        },
        "stages": [{"stage": "ingest", "max_rejected_fraction": 0.0}],
    }
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(yaml.safe_dump(data))
    return conf


def _cli(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIPELINES_LOG_DIR": str(tmp_path / "engine-logs"), "COLUMNS": "200"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )


def _kind_line(done: subprocess.CompletedProcess[str], kind: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"{kind}:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_the_documented_codes_are_the_classes_codes():
    doc = errors.__doc__ or ""
    for code, words in [(1, "internal"), (2, "config or usage"), (3, "data"), (4, "environment"), (130, "interrupt")]:
        assert f"{code} {words}" in doc, (code, words)
    assert (errors.ConfigError.exit_code, errors.UsageError.exit_code) == (2, 2)
    assert (errors.DataError.exit_code, errors.EnvironmentProblem.exit_code) == (3, 4)
    assert errors.EngineFailure.exit_code == errors.PipelineError.exit_code == 5
    assert (errors.INTERNAL, errors.INTERRUPTED) == (1, 130)


def test_config_error_exits_2(tmp_path):
    done = _cli(tmp_path, "run", str(_config(tmp_path)), "-s", "engine.kind=nope")
    assert done.returncode == 2
    assert "engine.kind" in _kind_line(done, "config error")


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "CONF", "--resume", "no-such-run"], "--resume no-such-run: no such run directory"),
        (["run"], "run: give a CONFIG, or --resume RUN_DIR"),
        (["run", "CONF", "--engine", "flink"], "--engine: unknown engine(s)"),
    ],
)
def test_usage_error_exits_2(tmp_path, args, says):
    conf = str(_config(tmp_path))
    done = _cli(tmp_path, *[conf if a == "CONF" else a for a in args])
    assert done.returncode == 2
    assert says in _kind_line(done, "usage error")


def test_data_error_exits_3(tmp_path):
    done = _cli(tmp_path, "run", str(_config(tmp_path)))
    assert done.returncode == 3
    assert "d.csv row 3, column b: not a number: 'abc'" in _kind_line(done, "data error")


@pytest.mark.skipif(shutil.which("qsub") is not None, reason="this machine has PBS's qsub")
def test_environment_error_exits_4_when_the_scheduler_client_is_missing(tmp_path):
    done = _cli(tmp_path, "submit", str(_config(tmp_path)), "--scheduler", "pbs")
    assert done.returncode == 4
    assert "qsub not found" in _kind_line(done, "environment error")


def test_a_run_refused_for_a_held_lock_exits_5(tmp_path):
    conf = _config(tmp_path, "locked")
    with pipeline_lock(tmp_path / "runs", "locked"):
        done = _cli(tmp_path, "run", str(conf))
    assert done.returncode == 5
    assert "another run of pipeline 'locked' is in progress" in _kind_line(done, "error")


def test_a_bug_exits_1_and_an_interrupt_130(tmp_path, monkeypatch):
    def bug(args):
        raise ZeroDivisionError("division by zero")

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setenv("PIPELINES_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "cmd_report", bug)  # the parser binds the command functions when main() builds it
    assert cli.main(["report", str(tmp_path)]) == errors.INTERNAL
    monkeypatch.setattr(cli, "cmd_report", interrupt)
    assert cli.main(["report", str(tmp_path)]) == errors.INTERRUPTED
