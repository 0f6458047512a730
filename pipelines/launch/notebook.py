"""`pipelines notebook`: JupyterLab inside a SLURM or PBS job, and the SSH tunnel line that reaches it.

The job (`templates/notebook.sh.j2`, values through `| q`) starts JupyterLab on its node with a free port
and a random token, waits until it listens, and writes connection.json (mode 600) into its job folder; this
side waits for that file and prints one `ssh -L` line and the URL with the token.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.atomic import atomic_write_json, atomic_write_text
from pipelines.errors import ConfigError, EnvironmentProblem
from pipelines.launch.batch import TEMPLATES, checked
from pipelines.launch.config import BatchSettings, JobqueueSettings
from pipelines.launch.jobqueue import with_interface
from pipelines.launch.schedulers import scheduler as scheduler_named

CONNECTION = "connection.json"


@dataclass(frozen=True)
class Notebook:
    """A JupyterLab server running in a batch job."""

    job: str
    scheduler: str
    jobdir: Path
    host: str
    port: int
    token: str
    dask_address: str | None = None  # the dask-jobqueue cluster started with it (`--dask`)
    dashboard_port: int | None = None

    @property
    def url(self) -> str:
        """The URL to open on the laptop once the tunnel is up."""
        return f"http://127.0.0.1:{self.port}/lab?token={self.token}"

    @property
    def dashboard_url(self) -> str | None:
        """The Dask dashboard's URL on the laptop, through the same tunnel (`--dask`)."""
        return f"http://127.0.0.1:{self.dashboard_port}/status" if self.dashboard_port else None

    def tunnel(self, login: str | None = None, user: str | None = None) -> str:
        """The one ssh line that forwards the laptop's port (and the Dask dashboard's) to the compute node."""
        login = login or socket.getfqdn()
        ports = [self.port] + ([self.dashboard_port] if self.dashboard_port else [])
        forwards = " ".join(f"-L {p}:{self.host}:{p}" for p in ports)
        return f"ssh -N {forwards} {user or getpass.getuser()}@{login}"


def notebook_cluster(
    scheduler: str,
    batch: BatchSettings,
    section: JobqueueSettings | None,
    interface: str | None,
    flags: dict[str, Any],
) -> JobqueueSettings:
    """The validated dask-jobqueue settings of `notebook --dask`: flags over the section over the notebook's job."""
    merged: dict[str, Any] = {"walltime": batch.walltime, "queue": batch.partition, "account": batch.account}
    merged = {k: v for k, v in merged.items() if v is not None}
    merged |= section.model_dump(exclude_unset=True) if section else {}
    merged |= {k: v for k, v in flags.items() if v is not None}
    try:
        settings = JobqueueSettings.model_validate({**merged, "scheduler": scheduler})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"notebook --dask: {problems}") from None
    return with_interface(settings, interface)  # engine.network.interface, as a Dask engine uses it


def render_notebook(
    batch: BatchSettings,
    jobdir: Path,
    scheduler: str,
    workdir: Path,
    python: str | None = None,
    dask: bool = False,
) -> str:
    """The batch script that starts JupyterLab (in `workdir`) on the job's node, with a Dask cluster if `dask`."""
    batch = checked(batch, "notebook", scheduler)
    if any(c.isspace() for c in str(jobdir)):
        raise ConfigError(f"{jobdir}: the job folder must not contain spaces (#SBATCH lines cannot quote)")
    python = python or sys.executable
    return TEMPLATES.get_template("notebook.sh.j2").render(
        b=batch,
        name="pipelines-notebook",
        scheduler=scheduler,
        jobdir=str(jobdir),
        workdir=str(workdir),
        root=str(workdir),
        python=python,
        bindir=str(Path(python).parent),
        dask=dask,
    )


def submit_notebook(
    batch: BatchSettings,
    scheduler: str,
    jobs_dir: Path,
    workdir: Path | None = None,
    timeout: float = 600,
    python: str | None = None,
    dask: JobqueueSettings | None = None,
) -> Notebook:
    """Submit the notebook job and wait until its server listens (or the job ends, or `timeout` passes).

    With `dask` (engine.dask.jobqueue settings) the job first starts that dask-jobqueue cluster for the notebook.
    """
    workdir = (workdir or Path.cwd()).resolve()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    jobdir = Path(jobs_dir).resolve() / "notebook" / stamp
    script = render_notebook(batch, jobdir, scheduler, workdir, python, dask is not None)
    jobdir.mkdir(parents=True, mode=0o700)
    if dask is not None:
        atomic_write_text(jobdir / "dask.json", dask.model_dump_json())
    chosen = scheduler_named(scheduler)
    path = jobdir / chosen.script_name("job")
    atomic_write_text(path, script)
    job = chosen.submit(path, workdir, "job", f"run `pipelines notebook` on a {scheduler} login node")
    atomic_write_json(jobdir / "job.json", {"scheduler": scheduler, "job_id": job, "script": str(path)})
    try:
        facts = wait_for_connection(jobdir, job, scheduler, timeout)
    except EnvironmentProblem as exc:
        if dask is not None and not (jobdir / "scheduler.json").is_file():
            raise EnvironmentProblem(f"{exc}: the Dask cluster did not start ({jobdir / 'dask-cluster.log'})") from None
        raise
    cluster = json.loads((jobdir / "scheduler.json").read_text()) if dask is not None else {}
    return Notebook(
        job,
        scheduler,
        jobdir,
        facts["host"],
        int(facts["port"]),
        facts["token"],
        cluster.get("address"),
        cluster.get("dashboard_port"),
    )


def _queued(job: str, scheduler: str) -> bool:
    return scheduler_named(scheduler).queued(job)


def wait_for_connection(jobdir: Path, job: str, scheduler: str, timeout: float) -> dict:
    """connection.json of the job once the server listens; an error naming the log if the job ends first."""
    deadline = time.monotonic() + timeout
    path = jobdir / CONNECTION
    while time.monotonic() < deadline:
        if path.is_file():
            return json.loads(path.read_text())
        if not _queued(job, scheduler):
            time.sleep(1)  # the file may land as the job leaves the queue
            if path.is_file():
                return json.loads(path.read_text())
            raise EnvironmentProblem(f"notebook job {job} ended before JupyterLab listened; see {jobdir}")
        time.sleep(1)
    raise EnvironmentProblem(f"notebook job {job}: no server after {timeout:.0f}s (still queued?); see {jobdir}")
