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

from pipelines.atomic import atomic_write_json, atomic_write_text
from pipelines.errors import ConfigError, EnvironmentProblem
from pipelines.launch.batch import TEMPLATES, checked
from pipelines.launch.config import BatchSettings
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

    @property
    def url(self) -> str:
        """The URL to open on the laptop once the tunnel is up."""
        return f"http://127.0.0.1:{self.port}/lab?token={self.token}"

    def tunnel(self, login: str | None = None, user: str | None = None) -> str:
        """The one ssh line that forwards the laptop's port to the server on the compute node."""
        login = login or socket.getfqdn()
        return f"ssh -N -L {self.port}:{self.host}:{self.port} {user or getpass.getuser()}@{login}"


def render_notebook(
    batch: BatchSettings, jobdir: Path, scheduler: str, workdir: Path, python: str | None = None
) -> str:
    """The batch script that starts JupyterLab (in `workdir`) on the job's node."""
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
    )


def submit_notebook(
    batch: BatchSettings,
    scheduler: str,
    jobs_dir: Path,
    workdir: Path | None = None,
    timeout: float = 600,
    python: str | None = None,
) -> Notebook:
    """Submit the notebook job and wait until its server listens (or the job ends, or `timeout` passes)."""
    workdir = (workdir or Path.cwd()).resolve()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    jobdir = Path(jobs_dir).resolve() / "notebook" / stamp
    script = render_notebook(batch, jobdir, scheduler, workdir, python)
    jobdir.mkdir(parents=True, mode=0o700)
    chosen = scheduler_named(scheduler)
    path = jobdir / chosen.script_name("job")
    atomic_write_text(path, script)
    job = chosen.submit(path, workdir, "job", f"run `pipelines notebook` on a {scheduler} login node")
    atomic_write_json(jobdir / "job.json", {"scheduler": scheduler, "job_id": job, "script": str(path)})
    facts = wait_for_connection(jobdir, job, scheduler, timeout)
    return Notebook(job, scheduler, jobdir, facts["host"], int(facts["port"]), facts["token"])


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
