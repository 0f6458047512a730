"""Helpers shared by test modules (test modules never import each other)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = str(Path(sys.executable).parent / "pipelines")


def digits_config(tmp_path: Path, *deep: dict, engine: str = "dask", **ingest) -> dict:
    """Digits (1,797 8x8 images) ingested into train/val/test, then the given deep stages."""
    return {
        "name": "digits-deep",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": engine, "partitions": 3},
        "dataset": {
            "name": "digits",
            "format": "idx",
            "path": "bundled:digits/images",
            "labels_path": "bundled:digits/labels",
            "image": {"shape": [8, 8], "classes": 10},
        },
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 42}, **ingest},
            *deep,
        ],
    }


def cli(conf: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`pipelines run CONF ARGS...` to its end."""
    return subprocess.run(
        [PIPELINES, "run", str(conf), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def start(conf: Path, *args: str, err: Path | None = None) -> subprocess.Popen:
    """`pipelines run CONF ARGS...` in its own process group (its Dask workers with it), stderr to a file."""
    out = open(err, "w") if err else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    return subprocess.Popen(
        [PIPELINES, "run", str(conf), *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True
    )


def group(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Whatever happens in the block, nothing of the process's group outlives it."""
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


def run_dirs(runs: Path, pipeline: str) -> list[Path]:
    folder = runs / pipeline
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()) if folder.is_dir() else []
