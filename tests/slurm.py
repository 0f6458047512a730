"""A real single-node SLURM (munged, slurmctld, slurmd) started in a temporary directory, for tests and trials.

Needs root and Debian's `slurmctld slurmd slurm-client munge` (`make setup` installs them when run as
root). Every daemon is started in the foreground as a child process and stopped by PID.

    python tests/slurm.py /tmp/slurm    # start, print the SLURM_CONF to export, wait for Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> str | None:
    """Why a local SLURM cannot start here, or None."""
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    absent = [d for d in (*DAEMONS, "sbatch") if shutil.which(d) is None]
    if absent:
        return f"not installed: {absent} (apt-get install slurmctld slurmd slurm-client munge)"
    if not Path("/etc/munge/munge.key").exists():
        return "no /etc/munge/munge.key (reinstall munge)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """slurmctld + slurmd for this host (one node, partition 'debug'), with their own state directory."""

    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.host = socket.gethostname()
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _memory_mb(self) -> int:
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        real = int(next(t.split("=")[1] for t in out.split() if t.startswith("RealMemory=")))
        return int(real * 0.8)

    def write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=pipelines",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "DefMemPerCPU=1000",
                    "MpiDefault=none",
                    "MailProg=/bin/true",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "KillWait=5",
                    "ScronParameters=enable",
                    f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self._memory_mb()}",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 30) -> LocalSlurm:
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        self.write_conf()
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        logs = self.root / "log"
        if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:  # no munged running yet
            self._spawn("munged", ["runuser", "-u", "munge", "--", "munged", "--foreground"], logs)
            self._wait(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0, timeout, "munged")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], logs)
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)], logs)
        self._wait(self.idle, timeout, "the SLURM node to become idle")
        return self

    def _spawn(self, name: str, argv: list[str], logs: Path) -> None:
        out = open(logs / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():  # type: ignore[operator]
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited; see {self.root / 'log'}")
            time.sleep(0.2)
        raise TimeoutError(f"waited {timeout}s for {what}; see {self.root / 'log'}")

    def idle(self) -> bool:
        """Whether the node reports idle."""
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, squeue, scancel, ...) against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, check=check)

    def wait_job(self, job: str, timeout: float = 600) -> str:
        """Wait until a job leaves the queue; returns its final state from scontrol (COMPLETED, FAILED, ...)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run("scontrol", "show", "job", job, check=False).stdout
            state = next((t.split("=")[1] for t in out.split() if t.startswith("JobState=")), "")
            if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job} still queued after {timeout}s")

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by PID (munged last)."""
        self.run("scancel", "--full", "--user", "root", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pipelines-slurm")
    why = missing()
    if why:
        print(f"cannot start SLURM: {why}", file=sys.stderr)
        return 1
    slurm = LocalSlurm(root).start()
    print(f"export SLURM_CONF={slurm.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        slurm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
