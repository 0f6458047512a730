"""Batch scripts rendered from config (`pipelines submit`): Spark standalone, Dask or Horovod inside one job.

Every value from config that reaches the script body is quoted with `shlex.quote`, so `$(...)`, `;` or
quotes in a value stay literal text; directive values (`#SBATCH`/`#PBS` lines, parsed by the scheduler,
not the shell) are restricted to plain characters when the config is validated.
"""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.atomic import atomic_write_json, atomic_write_text
from pipelines.config import PipelineConfig, dump_config
from pipelines.errors import PipelineError
from pipelines.launch.config import BatchSettings

q = shlex.quote


def _slurm_header(b: BatchSettings, name: str, log: Path) -> list[str]:
    lines = [
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={b.nodes}",
        f"#SBATCH --ntasks-per-node={b.tasks_per_node}",
        f"#SBATCH --cpus-per-task={b.cpus_per_task}",
        f"#SBATCH --time={b.walltime}",
        f"#SBATCH --output={log}",
    ]
    if b.memory:
        lines.append(f"#SBATCH --mem={b.memory}")
    if b.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{b.gpus_per_node}")
    if b.partition:
        lines.append(f"#SBATCH --partition={b.partition}")
    if b.account:
        lines.append(f"#SBATCH --account={b.account}")
    return lines + [f"#SBATCH {d}" for d in b.extra_directives]


def _pbs_header(b: BatchSettings, name: str, log: Path) -> list[str]:
    if b.pbs_resources == "nodes":  # Torque
        select = f"nodes={b.nodes}:ppn={b.cpus_per_task * b.tasks_per_node}"
        if b.gpus_per_node:
            select += f":gpus={b.gpus_per_node}"
    else:  # PBS Pro
        select = f"select={b.nodes}:ncpus={b.cpus_per_task * b.tasks_per_node}:mpiprocs={b.tasks_per_node}"
        if b.memory:
            select += f":mem={b.memory.lower().rstrip('b')}b"
        if b.gpus_per_node:
            select += f":ngpus={b.gpus_per_node}"
    lines = [f"#PBS -N {name}", f"#PBS -l {select}", f"#PBS -l walltime={b.walltime}", "#PBS -j oe", f"#PBS -o {log}"]
    if b.partition:
        lines.append(f"#PBS -q {b.partition}")
    if b.account:
        lines.append(f"#PBS -A {b.account}")
    return lines + [f"#PBS {d}" for d in b.extra_directives]


def _prologue(b: BatchSettings, workdir: Path, python: str, jobdir: Path) -> list[str]:
    lines = ["set -euo pipefail"]
    lines += [f"module load {q(m)}" for m in b.modules]
    lines += [f"export {k}={q(v)}" for k, v in b.env.items()]
    bindir = str(Path(python).parent)
    lines += [
        f'export PATH={q(bindir)}:"$PATH"',
        f"PY={q(python)}",
        f"JOBDIR={q(str(jobdir))}",
        f"cd {q(str(workdir))}",
        "PIDS=()",
        'cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait || true; }',
        "trap cleanup EXIT",
        "trap 'exit 143' TERM INT",
    ]
    return lines


def _hosts(scheduler: str) -> str:
    if scheduler == "slurm":
        return 'HOSTS=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))'
    return 'HOSTS=($(sort -u "$PBS_NODEFILE"))'


def _on_every_node(scheduler: str, command: str, b: BatchSettings) -> str:
    """Start `command` once per node of the job, in the background."""
    if scheduler == "slurm":
        return (
            f"srun --overlap --nodes={b.nodes} --ntasks={b.nodes} --ntasks-per-node=1 "
            f"--cpus-per-task={b.cpus_per_task} {command} &"
        )
    return f'for h in "${{HOSTS[@]}}"; do pbsdsh -h "$h" -- {command} & done'


def _wait_for(what: str, test: str, seconds: int = 180) -> list[str]:
    return [
        f"for i in $(seq {seconds * 2}); do {test} && break; sleep 0.5; done",
        f"{test} || {{ echo 'timed out waiting for {what}' >&2; exit 1; }}",
    ]


def _spark_body(b: BatchSettings, scheduler: str, conf: Path, overrides: list[str]) -> list[str]:
    spark = b.spark
    worker = (
        f'"$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker --cores {b.cpus_per_task} '
        f'--memory {spark.worker_memory} --work-dir "$JOBDIR/spark-work" "$MASTER_URL"'
    )
    return [
        _hosts(scheduler),
        'SPARK_HOME=$("$PY" -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")',
        'export SPARK_HOME PYSPARK_PYTHON="$PY"',
        'MASTER_HOST="${HOSTS[0]}"',
        f'MASTER_URL="spark://$MASTER_HOST:{spark.master_port}"',
        '"$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master --host "$MASTER_HOST" '
        f'--port {spark.master_port} --webui-port {spark.webui_port} > "$JOBDIR/spark-master.log" 2>&1 &',
        "PIDS+=($!)",
        *_wait_for("the Spark master", 'grep -q "Starting Spark master" "$JOBDIR/spark-master.log"'),
        f"{_on_every_node(scheduler, worker, b)}",
        "PIDS+=($!)",
        *_wait_for(
            f"{b.nodes} Spark worker(s)",
            f'[ "$(grep -c "Registering worker" "$JOBDIR/spark-master.log")" -ge {b.nodes} ]',
        ),
        'ENTRY=$("$PY" -c "import pipelines.__main__ as m; print(m.__file__)")',
        f'"$SPARK_HOME/bin/spark-submit" --master "$MASTER_URL" --total-executor-cores {b.nodes * b.cpus_per_task} '
        f"--executor-cores {b.cpus_per_task} --executor-memory {spark.executor_memory} "
        f'"$ENTRY" run {q(str(conf))} --engine spark {" ".join(overrides)}',
    ]


def _dask_body(b: BatchSettings, scheduler: str, conf: Path, overrides: list[str]) -> list[str]:
    worker = (
        f'"$PY" -m distributed.cli.dask_worker --scheduler-file "$JOBDIR/scheduler.json" '
        f"--nthreads 1 --nworkers {b.cpus_per_task} --memory-limit {b.dask_worker_memory}"
    )
    return [
        _hosts(scheduler),
        '"$PY" -m distributed.cli.dask_scheduler --scheduler-file "$JOBDIR/scheduler.json" '
        '--dashboard-address :0 > "$JOBDIR/dask-scheduler.log" 2>&1 &',
        "PIDS+=($!)",
        *_wait_for("the Dask scheduler", '[ -s "$JOBDIR/scheduler.json" ]'),
        _on_every_node(scheduler, worker, b),
        "PIDS+=($!)",
        f'"$PY" -m pipelines run {q(str(conf))} --engine dask -s engine.dask.scheduler_file="$JOBDIR/scheduler.json" '
        f"-s engine.dask.wait_for_workers={b.nodes * b.cpus_per_task} {' '.join(overrides)}",
    ]


def _horovod_body(b: BatchSettings, scheduler: str, conf: Path, overrides: list[str]) -> list[str]:
    per_node = b.gpus_per_node or b.tasks_per_node
    return [
        _hosts(scheduler),
        f'HOSTLIST=$(printf "%s:{per_node}," "${{HOSTS[@]}}"); HOSTLIST="${{HOSTLIST%,}}"',
        f'"$PY" -m pipelines train {q(str(conf))} --np {b.nodes * per_node} --hosts "$HOSTLIST" {" ".join(overrides)}',
    ]


def _local_body(b: BatchSettings, scheduler: str, conf: Path, overrides: list[str]) -> list[str]:
    return [f'"$PY" -m pipelines run {q(str(conf))} {" ".join(overrides)}']


BODIES = {"spark": _spark_body, "dask": _dask_body, "horovod": _horovod_body, "local": _local_body}


def render(
    config: PipelineConfig,
    conf: Path,
    jobdir: Path,
    scheduler: str,
    workdir: Path,
    python: str | None = None,
    overrides: list[str] | None = None,
) -> str:
    """The batch script that runs `conf` (the resolved config copy) in the configured mode."""
    b = config.batch
    name = f"pipelines-{config.name}"
    if any(c.isspace() for c in str(jobdir)):
        raise PipelineError(f"{jobdir}: the job folder (runs_dir) must not contain spaces (#SBATCH lines cannot quote)")
    log = jobdir / ("slurm-%j.out" if scheduler == "slurm" else "pbs.out")
    header = _slurm_header(b, name, log) if scheduler == "slurm" else _pbs_header(b, name, log)
    extra = [f"-s {q(o)}" for o in overrides or []]
    body = BODIES[b.mode](b, scheduler, conf, extra)
    prologue = _prologue(b, workdir, python or sys.executable, jobdir)
    return "\n".join(["#!/bin/bash", *header, "", *prologue, "", *body, ""])


def submit(
    config: PipelineConfig, scheduler: str, dry_run: bool, workdir: Path | None = None, python: str | None = None
) -> tuple[str, str | None, Path]:
    """Write the job folder (resolved config + script) and submit it; returns (script, job id or None, folder)."""
    workdir = (workdir or Path.cwd()).resolve()
    runs = Path(config.runs_dir)
    runs = runs if runs.is_absolute() else workdir / runs
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    jobdir = runs / config.name / "jobs" / stamp
    conf = jobdir / "config.yaml"
    pinned = config.model_copy(deep=True)
    pinned.runs_dir = str(runs)
    script = render(pinned, conf, jobdir, scheduler, workdir, python)
    if dry_run:
        return script, None, jobdir
    jobdir.mkdir(parents=True)
    atomic_write_text(conf, dump_config(pinned))
    path = jobdir / ("job.sbatch" if scheduler == "slurm" else "job.pbs")
    atomic_write_text(path, script)
    argv = ["sbatch", "--parsable", str(path)] if scheduler == "slurm" else ["qsub", str(path)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=workdir)
    except FileNotFoundError:
        raise PipelineError(f"{argv[0]} not found: run `pipelines submit` on a {scheduler} login node") from None
    except subprocess.CalledProcessError as exc:
        raise PipelineError(f"{argv[0]} refused the job: {exc.stderr.strip()} (script: {path})") from None
    job = out.stdout.strip().split(";")[0]
    atomic_write_json(jobdir / "job.json", {"scheduler": scheduler, "job_id": job, "script": str(path), "argv": argv})
    return script, job, jobdir


def job_facts() -> dict[str, Any] | None:
    """The batch job this process runs in (SLURM or PBS), for the run manifest."""
    import os

    if "SLURM_JOB_ID" in os.environ:
        return {
            "scheduler": "slurm",
            "job_id": os.environ["SLURM_JOB_ID"],
            "nodes": os.environ.get("SLURM_JOB_NODELIST"),
        }
    if "PBS_JOBID" in os.environ:
        return {"scheduler": "pbs", "job_id": os.environ["PBS_JOBID"]}
    return None
