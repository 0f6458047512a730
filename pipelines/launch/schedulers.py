"""One class per batch scheduler (SLURM, PBS): its commands, directives and script names, as dask-jobqueue has one
class per scheduler. Batch scripts, job arrays, notebooks and jobqueue clusters ask these; nothing else tests
which scheduler it has."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pipelines.errors import ConfigError, EnvironmentProblem, PipelineError


def index_list(indices: Sequence[int]) -> str:
    """Sorted indices as SLURM's compact list: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts: list[str] = []
    ordered = sorted(indices)
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def client_env() -> dict[str, str]:
    """This environment without the SLURM_* variables of a job the caller may itself run in (SLURM_CONF kept)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


class Scheduler:
    """A batch scheduler's client commands and directive syntax."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # script file suffix: job.<suffix>, array.<suffix>, driver.<suffix>
    memory_directive_skip: ClassVar[tuple[str, ...]] = ()  # what dask-jobqueue skips for `memory_directive: false`

    def script_name(self, stem: str) -> str:
        """A job script's file name (`job.sbatch`, `array.pbs`, ...)."""
        return f"{stem}.{self.suffix}"

    def submit_argv(self, script: Path) -> list[str]:
        """The command that submits a script and prints its job id."""
        raise NotImplementedError

    def job_id(self, stdout: str) -> str:
        """The job id in the submit command's output."""
        return stdout.strip().split(";")[0]

    def cancel_argv(self, job: str) -> list[str]:
        """The command that cancels a job (every task of an array)."""
        raise NotImplementedError

    def queued_argv(self, job: str) -> list[str]:
        """A command whose non-empty output says the job is still queued or running."""
        raise NotImplementedError

    def array_states(self, job: str) -> list[str] | None:
        """States of an array's live tasks; None once it left the queue; raises when the queue cannot be read."""
        raise NotImplementedError

    def array_directives(self, indices: Sequence[int], max_concurrent: int | None, requeue: bool) -> list[str]:
        """The directives that make a job an array over `indices`, capped and (not) requeued."""
        raise NotImplementedError

    def gpu_directive(self, gpus: int) -> str:
        """The directive that asks for `gpus` GPUs per job."""
        raise NotImplementedError

    def jobqueue_cluster(self) -> Any:
        """dask-jobqueue's cluster class for this scheduler."""
        raise NotImplementedError

    def run(self, argv: list[str], cwd: Path | None = None, hint: str = "") -> subprocess.CompletedProcess[str]:
        """Run a client command; a missing command is an environment error naming what needs it."""
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=client_env(), cwd=cwd)
        except FileNotFoundError:
            need = hint or f"this needs the {self.name} client commands"
            raise EnvironmentProblem(f"{argv[0]} not found: {need}") from None

    def submit(self, script: Path, cwd: Path, what: str = "job", hint: str = "") -> str:
        """Submit a written script from `cwd`; its job id, or one line saying why the scheduler refused it."""
        argv = self.submit_argv(script)
        done = self.run(argv, cwd, hint)
        if done.returncode != 0:
            reason = "; ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
            raise PipelineError(f"{' '.join(argv[:-1])} refused the {what}: {reason} (script: {script})")
        return self.job_id(done.stdout)

    def queued(self, job: str) -> bool:
        """Whether the job is still queued or running."""
        done = self.run(self.queued_argv(job))
        return done.returncode == 0 and bool(done.stdout.strip())


class Slurm(Scheduler):
    """SLURM: sbatch, squeue, scancel; #SBATCH directives."""

    name = "slurm"
    suffix = "sbatch"
    memory_directive_skip = ("--mem",)

    def submit_argv(self, script: Path) -> list[str]:
        return ["sbatch", "--parsable", str(script)]

    def cancel_argv(self, job: str) -> list[str]:
        return ["scancel", job]

    def queued_argv(self, job: str) -> list[str]:
        return ["squeue", "-h", "-j", job]

    def array_states(self, job: str) -> list[str] | None:
        argv = ["squeue", "-h", "-r", "-j", job, "-o", "%T"]  # squeue, not sacct: accounting may not be configured
        done = self.run(argv)
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:  # purged after MinJobAge
                return None
            raise PipelineError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout.split()

    def array_directives(self, indices: Sequence[int], max_concurrent: int | None, requeue: bool) -> list[str]:
        cap = f"%{max_concurrent}" if max_concurrent else ""
        return [f"--array={index_list(indices)}{cap}", "--requeue" if requeue else "--no-requeue"]

    def gpu_directive(self, gpus: int) -> str:
        return f"--gres=gpu:{gpus}"

    def jobqueue_cluster(self) -> Any:
        from dask_jobqueue import SLURMCluster

        return SLURMCluster


class Pbs(Scheduler):
    """PBS Pro / OpenPBS: qsub, qstat, qdel; #PBS directives."""

    name = "pbs"
    suffix = "pbs"

    def submit_argv(self, script: Path) -> list[str]:
        return ["qsub", str(script)]

    def cancel_argv(self, job: str) -> list[str]:
        return ["qdel", "-W", "force", job]

    def queued_argv(self, job: str) -> list[str]:
        return ["qstat", job]

    def array_states(self, job: str) -> list[str] | None:
        argv = ["qstat", "-t", "-f", "-F", "json", job]
        done = self.run(argv)
        if done.returncode != 0:
            if "Unknown Job" in done.stderr or "finished" in done.stderr:
                return None
            raise PipelineError(f"{' '.join(argv)}: {done.stderr.strip()}")
        jobs = json.loads(done.stdout or "{}").get("Jobs", {})  # the array ('123[].srv') and its subjobs
        states = [j.get("job_state", "") for k, j in jobs.items() if "[]" not in k]
        return [s for s in states if s not in ("X", "F")]  # X: a subjob that ended

    def array_directives(self, indices: Sequence[int], max_concurrent: int | None, requeue: bool) -> list[str]:
        cap = f"%{max_concurrent}" if max_concurrent else ""
        last = max(len(indices) - 1, 1)  # PBS Pro refuses a one-task array: task 1 then finds no line and exits
        return [f"-J 0-{last}{cap}", "-r y" if requeue else "-r n"]

    def gpu_directive(self, gpus: int) -> str:
        return f"-l ngpus={gpus}"

    def jobqueue_cluster(self) -> Any:
        from dask_jobqueue import PBSCluster

        return PBSCluster


SCHEDULERS: dict[str, Scheduler] = {s.name: s for s in (Slurm(), Pbs())}


def scheduler(name: str) -> Scheduler:
    """The scheduler of this name, or the one config error listing the known ones."""
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise ConfigError(f"scheduler {name!r}: expected one of {tuple(SCHEDULERS)}") from None
