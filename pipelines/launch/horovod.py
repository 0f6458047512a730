"""Start Horovod ranks: horovodrun with Gloo here, mpirun or srun on clusters; relay rank 0's progress.

Plain arguments only (launcher, ranks, hosts, the command every rank runs): the deep stage builds them.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from pipelines.errors import ConfigError, PipelineError
from pipelines.launch.network import pick_interface

log = logging.getLogger(__name__)

RANK_LINE = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:(.*)$")
LAUNCHERS = ("horovodrun", "mpirun", "srun")


def launch_command(
    launcher: str,
    ranks: int,
    hosts: str | None,
    worker: list[str],
    interface: str | None = None,
    timeout_s: float | None = None,
) -> list[str]:
    """argv (never a shell string) that starts `ranks` copies of the `worker` argv with the given launcher.

    horovodrun (Gloo) runs on `hosts` (`node1:4,node2:4`; default all on this host); mpirun needs a
    Horovod built with MPI (docs/INSTALL.md); srun starts the ranks inside the current allocation.
    `interface` (a name, or 'auto' resolved on this node) is the ranks' network interface; `timeout_s`
    Gloo's rendezvous and connect timeout (horovodrun).
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher {launcher!r}: expected one of {LAUNCHERS}")
    n = str(ranks)
    nic = pick_interface(interface)
    if launcher == "horovodrun":
        exe = str(Path(sys.executable).parent / "horovodrun")
        extra = ["--network-interfaces", nic] if nic else []
        extra += ["--gloo-timeout-seconds", str(max(1, round(timeout_s)))] if timeout_s else []
        return [exe, "-np", n, "-H", hosts or f"localhost:{n}", "--gloo", *extra, *worker]
    if launcher == "mpirun":
        where = ["-H", hosts] if hosts else []
        extra = ["-mca", "btl_tcp_if_include", nic, "-x", f"NCCL_SOCKET_IFNAME={nic}"] if nic else []
        return ["mpirun", "-np", n, *where, "-bind-to", "none", "-map-by", "slot", *extra, *worker]
    extra = [f"--export=ALL,NCCL_SOCKET_IFNAME={nic},HOROVOD_GLOO_IFACE={nic}"] if nic else []
    return ["srun", f"--ntasks={n}", "--kill-on-bad-exit=1", *extra, *worker]


def run_ranks(command: list[str], log_path: Path, timeout_s: int) -> None:
    """Run the ranks, relay rank 0's lines to the log as they come, keep every line in log_path."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), "PYTHONUNBUFFERED": "1"}
    log.info("launching: %s", " ".join(command))
    tail: list[str] = []
    with open(log_path, "a", encoding="utf-8") as out:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                match = RANK_LINE.match(line.rstrip("\n"))
                text = match.group(3) if match else line.rstrip("\n")
                tail = (tail + [line.rstrip("\n")])[-20:]
                if (match is None or match.group(1) == "0") and is_progress(text):
                    log.info("%s", text.strip(), extra={"progress": True})
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
    if rc != 0:
        if rc < 0 and not timer.is_alive():
            log.error("training ranks stopped after timeout_s=%d", timeout_s)
        shown = "\n".join(tail[-12:])
        raise PipelineError(f"training ranks exited with code {rc} (full output: {log_path}); last lines:\n{shown}")


def is_progress(text: str) -> bool:
    return text.lstrip().startswith(("epoch ", "early stop")) or ": starting;" in text or ": resuming" in text
