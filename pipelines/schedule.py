"""Scheduled runs: cron/scrontab entries, one run of a pipeline at a time, retention of old runs."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

CRON_FIELD = re.compile(r"^[0-9*/,\-A-Za-z]+$")
MARK = "# pipelines:"


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


def cron_line(schedule: str, config: Path, workdir: Path, log_file: Path, python: str | None = None) -> str:
    """One crontab line running the pipeline (quoted), waiting for an earlier run, resuming a failed one."""
    fields = schedule.split()
    if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
        raise ConfigError(f"schedule {schedule!r}: expected five cron fields such as '0 2 * * *'")
    py = shlex.quote(python or sys.executable)
    cmd = (
        f"cd {shlex.quote(str(workdir))} && {py} -m pipelines run {shlex.quote(str(config))} --wait --resume "
        f">> {shlex.quote(str(log_file))} 2>&1"
    )
    cmd = cmd.replace("%", "\\%")  # cron turns a bare % into a newline
    return f"{' '.join(fields)} {cmd} {MARK}{config.name}"


def install(line: str, scrontab: bool, directives: list[str] | None = None) -> str:
    """Add (or replace) this pipeline's line in the user's crontab or SLURM scrontab; returns the new table."""
    tool = "scrontab" if scrontab else "crontab"
    if shutil.which(tool) is None:
        raise PipelineError(f"{tool} not found; print the entry with --dry-run and install it by hand")
    current = subprocess.run([tool, "-l"], capture_output=True, text=True)
    lines = current.stdout.splitlines() if current.returncode == 0 else []
    tag = line.rsplit(MARK, 1)[1]
    kept = [entry for entry in lines if not entry.endswith(MARK + tag)]
    block = [f"#SCRON {d}" for d in directives or []] if scrontab else []
    table = "\n".join([*kept, *block, line]) + "\n"
    subprocess.run([tool, "-"] if not scrontab else [tool, "/dev/stdin"], input=table, text=True, check=True)
    return table
