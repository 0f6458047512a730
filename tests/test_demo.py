"""The default job a newcomer runs first (`make demo` -> `pipelines demo`): the whole road, quietly, with reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import CONF_DIR, demo_network

ROOT = Path(__file__).resolve().parent.parent


def test_demo_network_reads_the_image_pipelines_data():
    """The demo CNN trains on whichever bundled images the demo ingests (digits where Fashion-MNIST is missing)."""
    config = demo_network(CONF_DIR / "demo_cnn.yaml", CONF_DIR / "digits.yaml", [])
    assert config.dataset.path == "bundled:digits/images"
    assert tuple(config.dataset.image.shape) == (8, 8)
    assert [s.stage for s in config.stages] == ["ingest", "deep"]
    assert config.stages[1].ranks == 2


@pytest.mark.slow
def test_demo_runs_both_engines_trains_a_cnn_and_writes_reports(tmp_path):
    """`pipelines demo` ingests and models tables and images on Spark and Dask and trains a 2-rank CNN."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "COLUMNS": "160"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI itself must keep TensorFlow quiet
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 0, terminal[-4000:]
    runs = tmp_path / "runs"
    images = "fashion-mnist" if (runs / "fashion-mnist").is_dir() else "digits"
    for pipeline in (images, "fair"):
        engines = sorted(
            json.loads((d / "manifest.json").read_text())["engine"]["kind"]
            for d in (runs / pipeline).iterdir()
            if d.is_dir() and not d.is_symlink()
        )
        assert engines == ["dask", "spark"], pipeline
    (cnn_run,) = [d for d in (runs / "demo-cnn").iterdir() if d.is_dir() and not d.is_symlink()]
    metrics = json.loads((cnn_run / "metrics.json").read_text())["cnn"]
    assert metrics["test"]["accuracy"] > 0.7  # 2 epochs on 15,000 Fashion-MNIST images reach about 0.87
    manifest = json.loads((cnn_run / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    reports = sorted(r for r in runs.glob("*/*/report.html") if not r.parent.is_symlink())
    assert len(reports) == 5, reports  # two image runs, two table runs, one network run
    assert f"report: {os.path.relpath(cnn_run / 'report.html', tmp_path)}" in terminal
    for noise in ("Traceback", "oneDNN", "WARN NativeCodeLoader", "log4j", "incubator modules"):
        assert noise not in terminal, noise
