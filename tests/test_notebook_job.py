"""`pipelines notebook` on the real single-node SLURM: JupyterLab answers on the printed port with the token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipelines.launch.config import BatchSettings
from pipelines.launch.notebook import render_notebook

ROOT = Path(__file__).resolve().parent.parent


def test_the_notebook_script_quotes_its_values(tmp_path):
    batch = BatchSettings(walltime="00:30:00", partition="gpu", account="abc123", gpus_per_node=1)
    script = render_notebook(batch, tmp_path / "job", "slurm", tmp_path / "it's here", sys.executable)
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --account=abc123" in script
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --time=00:30:00" in script
    assert f"--ServerApp.root_dir='{tmp_path}/it'\"'\"'s here'" in script
    assert "--no-browser" in script and '--ip="$HOST"' in script
    out = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_notebook_dask_settings_come_from_flags_then_the_section_then_the_job_and_are_validated(tmp_path):
    from pipelines.errors import ConfigError
    from pipelines.launch.config import JobqueueSettings
    from pipelines.launch.notebook import notebook_cluster

    batch = BatchSettings(walltime="02:00:00", partition="compute", account="abc123")
    section = JobqueueSettings.model_validate({"cores": 8, "queue": "gpu", "memory": "32GB"})
    got = notebook_cluster("pbs", batch, section, "ib0", {"jobs": 3, "cores": None, "memory": "64GB"})
    assert (got.scheduler, got.jobs, got.cores, got.memory) == ("pbs", 3, 8, "64GB")  # flags over the section
    assert (got.queue, got.walltime, got.account, got.interface) == ("gpu", "02:00:00", "abc123", "ib0")
    assert notebook_cluster("slurm", batch, None, None, {}).queue == "compute"  # the notebook's own partition
    with pytest.raises(ConfigError, match=r"notebook --dask: jobs: .*greater than 0"):
        notebook_cluster("slurm", batch, None, None, {"jobs": 0})
    script = render_notebook(batch, tmp_path / "job", "slurm", tmp_path, sys.executable, dask=True)
    assert '-m pipelines.launch.dask_service "$JOBDIR/dask.json" "$JOBDIR/scheduler.json"' in script
    assert 'export PIPELINES_DASK_SCHEDULER_FILE="$JOBDIR/scheduler.json"' in script
    assert script.index("dask_service") < script.index("jupyterlab")  # the kernels inherit the scheduler file
    out = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_pipelines_notebook_starts_jupyterlab_in_a_slurm_job(slurm, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "pipelines", "notebook", "--walltime", "00:10:00", "--jobs-dir", str(tmp_path)]
    out = subprocess.run(argv + ["--login", "login.example.org"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    tunnel, url = out.stdout.strip().splitlines()[-2:]
    port = int(url.split(":")[2].split("/")[0])
    token = url.split("token=")[1]
    assert tunnel == f"ssh -N -L {port}:{slurm.host}:{port} {os.environ.get('USER', 'root')}@login.example.org"
    assert url == f"http://127.0.0.1:{port}/lab?token={token}" and len(token) == 48
    # what the tunnel carries: a connection to the node's port with the laptop browser's Host header
    base, laptop = f"http://{slurm.host}:{port}", {"Host": f"127.0.0.1:{port}"}
    status = urllib.request.Request(f"{base}/api/status", headers={**laptop, "Authorization": f"token {token}"})
    with urllib.request.urlopen(status, timeout=10) as reply:
        assert reply.status == 200 and "started" in reply.read().decode()  # the server answers with the token
    login = urllib.request.Request(url.replace(f"http://127.0.0.1:{port}", base), headers=laptop)
    with urllib.request.urlopen(login, timeout=30) as reply:
        assert reply.status == 200 and "JupyterLab" in reply.read().decode()  # the printed URL logs in
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/contents", headers=laptop), timeout=10)
    assert refused.value.code == 403  # and refuses without it
    jobdir = next((tmp_path / "notebook").iterdir())
    job = (jobdir / "job.json").read_text().split('"job_id": "')[1].split('"')[0]
    slurm.run("scancel", job)
    assert slurm.wait_job(job, 60) == "CANCELLED"
    deadline = time.time() + 30
    while time.time() < deadline and _mentioning(token):
        time.sleep(0.5)
    assert _mentioning(token) == []  # the server went with the job


def _mentioning(text: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if text in cmd:
            found.append(f"{proc.pid}: {cmd[:160]}")
    return found


@pytest.mark.slow
def test_pipelines_notebook_dask_starts_a_jobqueue_cluster_the_kernels_find_and_cancels_it_with_the_job(
    slurm, tmp_path
):
    from distributed import Client

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "pipelines", "notebook", "--walltime", "00:10:00", "--jobs-dir", str(tmp_path)]
    argv += ["--partition", "debug", "--dask", "--dask-jobs", "1", "--dask-cores", "1", "--dask-memory", "1GB"]
    out = subprocess.run(argv + ["--login", "login.example.org"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    tunnel, url, dashboard = out.stdout.strip().splitlines()[-3:]
    port = int(url.split(":")[2].split("/")[0])
    dport = int(dashboard.split(":")[2].split("/")[0])
    assert dashboard == f"http://127.0.0.1:{dport}/status" and dport != port
    user = os.environ.get("USER", "root")
    assert tunnel == f"ssh -N -L {port}:{slurm.host}:{port} -L {dport}:{slurm.host}:{dport} {user}@login.example.org"
    jobdir = next((tmp_path / "notebook").iterdir())
    notebook_job = json.loads((jobdir / "job.json").read_text())["job_id"]
    cluster = json.loads((jobdir / "scheduler.json").read_text())
    assert cluster["dashboard_port"] == dport
    # the dashboard port answers through the tunnel's target (the scheduler's HTTP server on the node)
    with urllib.request.urlopen(f"http://{slurm.host}:{dport}/health", timeout=10) as reply:
        assert reply.read().decode() == "ok"
    # the kernels JupyterLab starts inherit the scheduler file (pipelines.engine("dask") connects through it)
    server = next(p for p in psutil.process_iter(["cmdline"]) if "jupyterlab" in " ".join(p.info["cmdline"] or []))
    assert server.environ()["PIPELINES_DASK_SCHEDULER_FILE"] == str(jobdir / "scheduler.json")
    with Client(scheduler_file=str(jobdir / "scheduler.json"), timeout=60) as client:
        client.wait_for_workers(1, timeout=180)  # the worker is a SLURM job of its own
        assert client.submit(sum, [1, 2, 39]).result(timeout=60) == 42
        workers = slurm.run("squeue", "-h", "-o", "%i %j").stdout.split("\n")
        worker_jobs = [line.split()[0] for line in workers if line.strip() and line.split()[0] != notebook_job]
        assert len(worker_jobs) == 1
    slurm.run("scancel", notebook_job)
    assert slurm.wait_job(notebook_job, 60) == "CANCELLED"
    assert slurm.wait_job(worker_jobs[0], 90) in ("CANCELLED", "COMPLETED")  # the cluster closed with the job
