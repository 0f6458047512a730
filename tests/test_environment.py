"""Installed stack: Horovod built with TensorFlow and Gloo; Java check messages; synthetic generator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.data.synthetic import generate
from pipelines.errors import EnvironmentProblem
from pipelines.javacheck import require_java


@pytest.mark.slow
def test_horovodrun_check_build_lists_tensorflow_and_gloo():
    exe = Path(sys.executable).parent / "horovodrun"
    if not exe.exists() and os.environ.get("PIPELINES_SKIP_HOROVOD") == "1":
        pytest.skip("PIPELINES_SKIP_HOROVOD=1")
    out = subprocess.run(
        [str(exe), "--check-build"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any("[X] TensorFlow" in line for line in lines)
    assert sum("[X] Gloo" in line for line in lines) == 2  # controller and tensor operations


def test_java_check_accepts_installed_java():
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java on this machine")
    assert require_java() >= 17


def test_java_check_rejects_old_java_fake_binary(tmp_path, monkeypatch):
    """A fake `java` printing a Java 11 banner (no real Java 11 is installed here)."""
    fake = tmp_path / "jdk" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(EnvironmentProblem, match=r"is Java 11\. Spark 4 needs Java 17\+"):
        require_java()


def test_missing_java_message(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EnvironmentProblem, match="no Java runtime found"):
        require_java()


@pytest.mark.parametrize("kind", ["classification", "regression", "blobs"])
def test_synthetic_generator_is_reproducible(tmp_path, kind):
    a = generate(tmp_path / "a", kind=kind, rows=5003, features=4, parts=3, seed=11, classes=3)
    b = generate(tmp_path / "b", kind=kind, rows=5003, features=4, parts=3, seed=11, classes=3)
    ta, tb = pq.read_table(a).to_pandas(), pq.read_table(b).to_pandas()
    assert len(ta) == 5003 and list(ta.columns) == ["x0", "x1", "x2", "x3", "y"]
    np.testing.assert_array_equal(ta.to_numpy(), tb.to_numpy())
    if kind == "regression":
        # y = 3 x.beta/sqrt(p) + 1.5 + N(0,1): least squares must recover the intercept within 0.1
        x = np.column_stack([np.ones(len(ta)), ta[["x0", "x1", "x2", "x3"]].to_numpy()])
        coef = np.linalg.lstsq(x, ta["y"].to_numpy(), rcond=None)[0]
        assert abs(coef[0] - 1.5) < 0.1
    else:
        assert set(np.unique(ta["y"])) <= set(range(3))
