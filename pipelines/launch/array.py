"""Job arrays (`executor: slurm|pbs` of a sweep): one SLURM/PBS array task per index, waited for, unfinished
indices resubmitted.

`run_array` writes the script (`templates/array.sh.j2`, which extends the batch job template: the same
directive headers and prologue, every value in the body through `| q`), submits ONE array job covering exactly
the given indices (SLURM `--array=3,5,7-9%4`; PBS Pro's `-J` takes a range, so `-J 0-M%4` and each task reads
its index from the written indices file), polls the queue until the array has left it, then resubmits the
indices whose `done(i)` is still False (a task killed by its walltime, cancelled, or failed) and returns those
never done. With `requeue` the scheduler itself reruns a task hit by preemption or a node failure inside the
same array. docs/ARRAYS.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydantic import ValidationError

from pipelines.atomic import atomic_write_json, atomic_write_text
from pipelines.errors import ConfigError, PipelineError, UsageError
from pipelines.launch.batch import PIPELINE_NAME, TEMPLATES, checked
from pipelines.launch.config import ArraySettings, BatchSettings
from pipelines.launch.schedulers import scheduler as scheduler_named

log = logging.getLogger(__name__)

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "R", "E"}  # SLURM states, PBS job_state letters
QUERY_PATIENCE_S = 300.0  # how long the queue may stay unreadable (a busy or restarting controller)


def render_array(
    scheduler: str,
    indices: Sequence[int],
    command: Sequence[str],
    jobdir: Path,
    settings: ArraySettings,
    *,
    cwd: Path,
    python: str | None = None,
    name: str = "pipelines-array",
) -> str:
    """The array script: each task runs `command` with its index appended, from `cwd`, logging to jobdir/logs."""
    chosen = scheduler_named(scheduler)
    try:  # checked again: a caller may have changed the settings after loading
        settings = ArraySettings.model_validate(settings.model_dump())
    except ValidationError as exc:
        raise ConfigError(f"array: {exc}") from None
    if not indices or min(indices) < 0 or len(set(indices)) != len(indices):
        raise UsageError(f"array indices must be distinct non-negative integers, got {list(indices)[:10]}")
    if not PIPELINE_NAME.match(name):
        raise ConfigError(f"array job name {name!r}: letters, digits, '_', '.' and '-' only")
    if any(c.isspace() for c in str(jobdir)):
        raise ConfigError(f"{jobdir}: the array folder must not contain spaces (#SBATCH/#PBS lines cannot quote)")
    batch = BatchSettings(
        cpus_per_task=settings.cpus_per_task,
        gpus_per_node=settings.gpus,
        memory=settings.mem,
        walltime=settings.walltime,
        partition=settings.partition,
        account=settings.account,
        extra_directives=[
            *chosen.array_directives(indices, settings.max_concurrent, settings.requeue),
            *settings.extra_directives,
        ],
        modules=settings.modules,
        env=settings.env,
    )
    python = python or sys.executable
    return TEMPLATES.get_template("array.sh.j2").render(
        b=batch,
        name=name,
        scheduler=scheduler,
        jobdir=str(jobdir),
        workdir=str(cwd),
        python=python,
        bindir=str(Path(python).parent),
        command=[str(w) for w in command],
    )


HINT = "job arrays need the scheduler's client commands"


def queued(scheduler: str, job: str) -> tuple[int, int] | None:
    """(running, pending) tasks of the array, or None once it has left the queue; raises on a query failure."""
    states = scheduler_named(scheduler).array_states(job)
    if not states:
        return None
    running = sum(s in RUNNING for s in states)
    return running, len(states) - running


def cancel(scheduler: str, job: str) -> None:
    """Cancel the array (every task); a job already gone is not an error."""
    chosen = scheduler_named(scheduler)
    chosen.run(chosen.cancel_argv(job), hint=HINT)


def submit_script(scheduler: str, script: Path, cwd: Path, what: str = "array job") -> str:
    """Submit a written script; its job id (SLURM '123', PBS '123[].server' for an array)."""
    return scheduler_named(scheduler).submit(script, cwd, what, HINT)


def cancel_stale(scheduler: str, workdir: Path) -> list[str]:
    """Cancel arrays an earlier (killed) driver left queued under workdir, so no index runs twice at once."""
    cancelled = []
    for record in sorted(workdir.glob("array-*/array.json")):
        job = json.loads(record.read_text())["job_id"]
        try:
            still = queued(scheduler, job)
        except PipelineError:
            continue
        if still is not None:
            cancel(scheduler, job)
            cancelled.append(job)
            log.info("array %s: cancelled, left queued by an earlier driver (%s)", job, record.parent)
    return cancelled


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While an array runs, SIGTERM (the driver's own job cancelled or out of time) raises SystemExit, so the
    array is cancelled with it instead of running on unwatched (main thread only: signals are delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(
    scheduler: str, job: str, indices: Sequence[int], cap: int | None, done: Callable[[int], bool], poll_s: float
) -> None:
    """Poll until the array leaves the queue, logging one line whenever its counts change.

    A task once done stays done (its result is replaced atomically and only grows), so each poll looks only at
    the indices not yet seen done.
    """
    last: tuple[int, int, int] | None = None
    finished: set[int] = set()
    failing_since: float | None = None
    at_once = f"{cap} at once" if cap else "no cap"
    while True:
        try:
            state = queued(scheduler, job)
            failing_since = None
        except PipelineError as exc:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > QUERY_PATIENCE_S:
                raise
            log.info("array %s: queue not readable, trying again: %s", job, exc)
            time.sleep(poll_s)
            continue
        finished.update(i for i in indices if i not in finished and done(i))
        now = (len(finished), *(state or (0, 0)))
        if now != last:
            log.info("array %s: %d tasks, %s; %d done, %d running, %d pending", job, len(indices), at_once, *now)
            last = now
        if state is None:
            return
        time.sleep(poll_s)


def _settled(indices: list[int], done: Callable[[int], bool], settle_s: float) -> list[int]:
    """The indices not done, looked at again for up to settle_s seconds while any are missing."""
    deadline = time.monotonic() + settle_s
    left = [i for i in indices if not done(i)]
    while left and time.monotonic() < deadline:
        time.sleep(min(1.0, settle_s))
        left = [i for i in left if not done(i)]
    return left


def run_array(
    scheduler: str,
    indices: Sequence[int],
    command: Sequence[str],
    workdir: Path,
    settings: ArraySettings,
    *,
    done: Callable[[int], bool],
    resubmits: int = 1,
    poll_s: float = 2.0,
    settle_s: float = 10.0,
    cwd: Path | None = None,
    python: str | None = None,
    name: str = "pipelines-array",
) -> list[int]:
    """Run `command INDEX` for every index as one job array; resubmit the not-done ones up to `resubmits` times.

    Each submission gets its own folder workdir/array-<UTC stamp>/ (script, indices.txt, array.json with the
    job id, logs/<index>.log). Before resubmitting, results may take `settle_s` seconds to appear (a shared
    file system's cache). Returns the indices still not done at the end (empty when all finished).
    """
    workdir = Path(workdir).resolve()
    cwd = (cwd or Path.cwd()).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cancel_stale(scheduler, workdir)
    todo = sorted(i for i in indices if not done(i))
    for round_ in range(resubmits + 1):
        if not todo:
            break
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        jobdir = workdir / f"array-{stamp}"
        script = render_array(scheduler, todo, command, jobdir, settings, cwd=cwd, python=python, name=name)
        jobdir.mkdir(parents=True)
        atomic_write_text(jobdir / "indices.txt", "".join(f"{i}\n" for i in todo))
        path = jobdir / scheduler_named(scheduler).script_name("array")
        atomic_write_text(path, script)
        job = submit_script(scheduler, path, cwd)
        atomic_write_json(jobdir / "array.json", {"scheduler": scheduler, "job_id": job, "indices": todo})
        what = "submitted" if round_ == 0 else f"resubmitted (round {round_ + 1} of {resubmits + 1})"
        log.info("array %s: %s, %d tasks (%s)", job, what, len(todo), jobdir)
        try:
            with _terminate_raises():
                _wait(scheduler, job, todo, settings.max_concurrent, done, poll_s)
        except BaseException:  # interrupted, terminated or the queue unreadable: leave no array running behind
            cancel(scheduler, job)
            log.info("array %s: cancelled with its driver", job)
            raise
        todo = _settled(todo, done, settle_s)
        log.info("array %s: ended; %d of its tasks not done", job, len(todo))
    return todo


def submit_driver(
    batch: BatchSettings,
    pipeline: str,
    runs_dir: str | os.PathLike[str],
    config_text: str,
    scheduler: str,
    overrides: list[str],
    *,
    resume: bool = False,
    dry_run: bool = False,
    workdir: Path | None = None,
    python: str | None = None,
) -> tuple[str, str | None, Path]:
    """`pipelines submit --array`: a batch job (the `batch` resources) running the pipeline once, `--resume`d or
    not, with `overrides` (each sweep's executor set to the scheduler) so its sweeps become job arrays.

    Same job folder as `pipelines submit` (runs_dir/<pipeline>/jobs/<stamp>/: config.yaml, script, job.json);
    returns (script, job id or None when dry_run, job folder).
    """
    batch = checked(batch, pipeline, scheduler)
    workdir = (workdir or Path.cwd()).resolve()
    runs = Path(runs_dir)
    runs = runs if runs.is_absolute() else workdir / runs
    jobdir = runs / pipeline / "jobs" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    if any(c.isspace() for c in str(jobdir)):
        raise PipelineError(f"{jobdir}: the job folder (runs_dir) must not contain spaces (#SBATCH lines cannot quote)")
    python = python or sys.executable
    script = TEMPLATES.get_template("array_driver.sh.j2").render(
        b=batch,
        name=f"pipelines-{pipeline}",
        scheduler=scheduler,
        jobdir=str(jobdir),
        conf=str(jobdir / "config.yaml"),
        workdir=str(workdir),
        python=python,
        bindir=str(Path(python).parent),
        overrides=list(overrides),
        resume=resume,
    )
    if dry_run:
        return script, None, jobdir
    jobdir.mkdir(parents=True)
    atomic_write_text(jobdir / "config.yaml", config_text)
    path = jobdir / scheduler_named(scheduler).script_name("driver")
    atomic_write_text(path, script)
    job = submit_script(scheduler, path, workdir, "driver job")
    atomic_write_json(jobdir / "job.json", {"scheduler": scheduler, "job_id": job, "script": str(path), "array": True})
    return script, job, jobdir
