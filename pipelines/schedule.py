"""Runs of a pipeline: one at a time (the run lock), retention of old runs. Cron lines: pipelines/launch/cron.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import PipelineError

log = logging.getLogger(__name__)


class LockBusy(PipelineError):
    """Another run of the same pipeline holds the lock."""


@contextlib.contextmanager
def pipeline_lock(runs_dir: Path, pipeline: str, wait: bool = False, timeout: float | None = None) -> Iterator[Path]:
    """Hold runs/<pipeline>/.lock (flock) while a run goes on; a second run waits or fails with who holds it."""
    folder = Path(runs_dir) / pipeline
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not wait or (deadline is not None and time.monotonic() > deadline):
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise LockBusy(
                        f"another run of pipeline {pipeline!r} is in progress ({holder}); "
                        "it was not started again (use --wait to queue behind it)"
                    ) from None
                time.sleep(1.0)
        fh.seek(0)
        fh.truncate()
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
        fh.flush()
        yield path
    finally:
        fh.close()  # closing releases the flock


def prune_runs(runs_dir: Path, pipeline: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` finished runs (never the `latest` target or a running one)."""
    folder = Path(runs_dir) / pipeline
    latest = (folder / "latest").resolve() if (folder / "latest").exists() else None
    finished = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "manifest.json").exists()):
        status = json.loads((run / "manifest.json").read_text()).get("status")
        if status in ("succeeded", "failed") and run.resolve() != latest:
            finished.append(run)
    keep_latest = 1 if latest is not None else 0
    removed = finished[: max(0, len(finished) - max(0, keep - keep_latest))]
    for run in removed:
        shutil.rmtree(run)
        log.info("retention: removed %s", run)
    return removed
