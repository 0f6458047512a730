"""Batch scripts (`pipelines submit`): Spark standalone, Dask, Horovod or a local run inside one SLURM/PBS job.

The scripts are Jinja2 templates in `pipelines/launch/templates/` (`job.sh.j2` and one template per mode
extending it; `slurm_header.j2`/`pbs_header.j2` for the directives). Every value placed in the script body
goes through the `q` filter (`shlex.quote`), so `$(...)`, `;` or quotes in a value stay literal text;
directive values (`#SBATCH`/`#PBS` lines, parsed by the scheduler, not the shell) are restricted to plain
characters by the config types (`Directive` in pipelines/settings.py).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import jinja2
from pydantic import ValidationError

from pipelines.atomic import atomic_write_json, atomic_write_text
from pipelines.errors import ConfigError
from pipelines.launch.config import BatchSettings
from pipelines.launch.schedulers import scheduler as scheduler_named

MODES = ("spark", "dask", "horovod", "local")
PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # as `Name` in pipelines/settings.py


def quote(value: Any) -> str:
    """The `q` filter: one shell word whose text is the value's, whatever characters it holds."""
    return shlex.quote(str(value))


def environment() -> jinja2.Environment:
    """The templates' environment: nothing escaped for HTML, undefined names are errors, `q` quotes."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipelines.launch", "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = quote
    return env


TEMPLATES = environment()  # the job-script templates (batch jobs and arrays)


def checked(batch: BatchSettings, pipeline: str, scheduler: str) -> BatchSettings:
    """The batch settings validated again (a caller may have changed them), the pipeline name and scheduler known."""
    scheduler_named(scheduler)  # a known one
    try:
        batch = BatchSettings.model_validate(batch.model_dump())
    except ValidationError as exc:
        raise ConfigError(f"batch: {exc}") from None
    if not PIPELINE_NAME.match(pipeline):
        raise ConfigError(f"pipeline name {pipeline!r}: letters, digits, '_', '.' and '-' only")
    return batch


def render(
    batch: BatchSettings,
    pipeline: str,
    conf: Path,
    jobdir: Path,
    scheduler: str,
    workdir: Path,
    python: str | None = None,
    overrides: list[str] | None = None,
) -> str:
    """The batch script that runs `conf` (the resolved config copy) of `pipeline` in `batch.mode`.

    The settings are checked again here (a caller may have changed them after loading), so directive values
    stay plain whoever calls.
    """
    batch = checked(batch, pipeline, scheduler)
    if any(c.isspace() for c in str(jobdir)):
        raise ConfigError(f"{jobdir}: the job folder (runs_dir) must not contain spaces (#SBATCH lines cannot quote)")
    python = python or sys.executable
    return TEMPLATES.get_template(f"{batch.mode}.sh.j2").render(
        b=batch,
        name=f"pipelines-{pipeline}",
        scheduler=scheduler,
        jobdir=str(jobdir),
        conf=str(conf),
        workdir=str(workdir),
        python=python,
        bindir=str(Path(python).parent),
        overrides=list(overrides or []),
    )


def submit(
    batch: BatchSettings,
    pipeline: str,
    runs_dir: str | os.PathLike[str],
    config_text: str,
    scheduler: str,
    dry_run: bool,
    workdir: Path | None = None,
    python: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[str, str | None, Path]:
    """Write the job folder (config copy + script) under runs_dir and submit it.

    `config_text` is the resolved config the job runs (its runs_dir pinned to an absolute path by the
    caller, since the job may start elsewhere). Returns (script, job id or None when dry_run, job folder).
    """
    workdir = (workdir or Path.cwd()).resolve()
    runs = Path(runs_dir)
    runs = runs if runs.is_absolute() else workdir / runs
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    jobdir = runs / pipeline / "jobs" / stamp
    conf = jobdir / "config.yaml"
    script = render(batch, pipeline, conf, jobdir, scheduler, workdir, python, overrides)
    if dry_run:
        return script, None, jobdir
    jobdir.mkdir(parents=True)
    atomic_write_text(conf, config_text)
    chosen = scheduler_named(scheduler)
    path = jobdir / chosen.script_name("job")
    atomic_write_text(path, script)
    argv = chosen.submit_argv(path)
    job = chosen.submit(path, workdir, "job", f"run `pipelines submit` on a {scheduler} login node")
    atomic_write_json(jobdir / "job.json", {"scheduler": scheduler, "job_id": job, "script": str(path), "argv": argv})
    return script, job, jobdir


def job_facts() -> dict[str, Any] | None:
    """The batch job this process runs in (SLURM or PBS), for the run manifest."""
    if "SLURM_JOB_ID" in os.environ:
        return {
            "scheduler": "slurm",
            "job_id": os.environ["SLURM_JOB_ID"],
            "nodes": os.environ.get("SLURM_JOB_NODELIST"),
        }
    if "PBS_JOBID" in os.environ:
        return {"scheduler": "pbs", "job_id": os.environ["PBS_JOBID"]}
    return None
