"""One run of a pipeline at a time: an flock on <runs_dir>/<pipeline>/.lock naming its holder."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.atomic import full_disk_named
from pipelines.errors import PipelineError


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
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with full_disk_named(path):
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
            fh.flush()
        yield path
    finally:
        fh.close()  # closing releases the flock
