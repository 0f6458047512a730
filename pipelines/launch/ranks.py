"""Horovod ranks as tasks of the engine's own workers: one Spark barrier stage, or pinned Dask worker tasks.

Each rank is a fresh Python process started by its task (TensorFlow never loads into a long-lived executor
or worker), rendezvousing through Horovod's own Gloo HTTP rendezvous server: on the Dask client, or inside
rank 0's Spark task (with barrier mode the placement of tasks is known only once they run). A rank's output
goes to `<log_dir>/<name>.rank<r>.log`; the driver relays rank 0's progress lines from that file. A rank
dies with its task: its parent's death is noticed by the rank (pipelines.deep.worker watches its parent pid).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError, PipelineError
from pipelines.launch.network import interface_address, local_address_towards, wait_until_reachable

log = logging.getLogger(__name__)

TAIL_LINES = 12


@dataclass(frozen=True)
class RankJob:
    """What every rank of one training runs, and how: the worker args, where logs go, limits and GPUs."""

    ranks: int
    worker: tuple[str, ...]  # arguments after the interpreter, e.g. ("-m", "pipelines.deep.worker", "spec.json")
    log_dir: Path
    name: str
    timeout_s: float
    is_progress: Callable[[str], bool]
    gpus_per_rank: int = 0
    wait_s: float = 60.0  # how long to wait for enough workers
    interface: str | None = None  # every rank's Gloo interface (a name or 'auto'); None: the route to the rendezvous
    rendezvous_timeout_s: float = 30.0  # a rank that cannot reach the rendezvous in this time stops, naming it

    def log(self, rank: int) -> Path:
        """Where one rank's output goes."""
        return self.log_dir / f"{self.name}.rank{rank}.log"


def slot_plan(hosts: Sequence[str]) -> list[dict[str, Any]]:
    """Horovod's slot facts (rank, local and cross ranks) for tasks on these hosts, in task order.

    The slots are Horovod's own host assignment for `h1:n1,h2:n2`; task i takes the slot of its host with the
    next unused local rank, so every task computes the same plan from the same gathered host list.
    """
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    slots = {
        (s.hostname, s.local_rank): vars(s) for s in get_host_assignments(parse_hosts(hosts_string(hosts)), len(hosts))
    }
    seen: dict[str, int] = {}
    plan = []
    for host in hosts:
        plan.append(dict(slots[(host, seen.get(host, 0))]))
        seen[host] = seen.get(host, 0) + 1
    return plan


def hosts_string(hosts: Sequence[str]) -> str:
    """`h1:n1,h2:n2` for the hosts of a plan (Horovod's host list syntax)."""
    return ",".join(f"{h}:{hosts.count(h)}" for h in dict.fromkeys(hosts))


def start_rendezvous(hosts: Sequence[str]) -> tuple[Any, int]:
    """Start Horovod's Gloo rendezvous server for ranks on these hosts; returns (server, port)."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer(verbose=0)
    port = server.start()
    server.init(get_host_assignments(parse_hosts(hosts_string(hosts)), len(hosts)))
    return server, port


def _interface(job: RankJob, who: str) -> tuple[str, str]:
    """(address, name) of the job's interface on this host; a failure naming `who` and the setting if it is down."""
    assert job.interface
    try:
        return interface_address(job.interface)
    except ConfigError as exc:
        raise RankFailed(f"{who}: {exc} (engine.network.interface)") from None


def rendezvous_address(job: RankJob, peer: str) -> str:
    """The address the ranks reach the rendezvous on this host by: the job's interface, else the route to peer."""
    return _interface(job, "the Horovod rendezvous")[0] if job.interface else local_address_towards(peer)[0]


def rank_interface(job: RankJob, rank: int, addr: str) -> str:
    """This rank's Gloo interface: the job's (checked up on this host), else the one routing to the rendezvous."""
    return _interface(job, f"rank {rank}")[1] if job.interface else local_address_towards(addr)[1]


def reach_rendezvous(job: RankJob, rank: int, addr: str, port: int) -> None:
    """Before a rank starts: the rendezvous answers within the job's timeout, else one line naming the address."""
    error = wait_until_reachable(addr, port, job.rendezvous_timeout_s)
    if error is not None:
        how = f"interface {job.interface!r}" if job.interface else "the route towards the first rank host"
        raise RankFailed(
            f"rank {rank} on {socket.gethostname()} could not reach the Horovod rendezvous at {addr}:{port} within "
            f"{job.rendezvous_timeout_s:g} s ({error}); that address came from {how}: set engine.network.interface "
            "to an interface every node shares (e.g. ib0), or raise engine.network.rendezvous_timeout_s"
        )


def rank_env(
    slot: dict[str, Any], job: RankJob, addr: str, port: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of one rank process: Gloo rendezvous, its slot, quiet TensorFlow, unbuffered output."""
    iface = rank_interface(job, slot["rank"], addr)
    env = {
        **os.environ,
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_GLOO_IFACE": iface,
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(max(1, round(job.rendezvous_timeout_s))),
        "NCCL_SOCKET_IFNAME": iface,
        "HOROVOD_HOSTNAME": slot["hostname"],
        "HOROVOD_RANK": str(slot["rank"]),
        "HOROVOD_SIZE": str(slot["size"]),
        "HOROVOD_LOCAL_RANK": str(slot["local_rank"]),
        "HOROVOD_LOCAL_SIZE": str(slot["local_size"]),
        "HOROVOD_CROSS_RANK": str(slot["cross_rank"]),
        "HOROVOD_CROSS_SIZE": str(slot["cross_size"]),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    env.update(extra or {})
    return env


def spark_gpu_conf(gpus_per_executor: int, gpus_per_task: int, discovery_script: str) -> dict[str, str]:
    """Spark conf that gives each executor GPUs and each rank's task its own (the task pins what it is given)."""
    return {
        "spark.executor.resource.gpu.amount": str(gpus_per_executor),
        "spark.task.resource.gpu.amount": str(gpus_per_task),
        "spark.executor.resource.gpu.discoveryScript": discovery_script,
    }


NOISE = ("WARNING: All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a rank's log ('' if it is missing), without TensorFlow's start-up notices."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join([line for line in text if not any(n in line for n in NOISE)][-lines:])


def spawn_rank(
    worker: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run one rank process (this interpreter + worker args) to the end; its output goes to log_path.

    The rank is killed at `timeout_s`, when `should_stop()` turns true (checked every second), or when this
    task is torn down.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(log_path, "a", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, *worker], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    why = "timeout_s" if time.monotonic() > deadline else None
                    why = why or ("the stage stopped" if should_stop is not None and should_stop() else None)
                    if why:
                        proc.kill()
                        rc = proc.wait()
                        out.write(f"\n[pipelines] rank stopped: {why}\n")
                        break
        except BaseException:  # the task is being torn down: take the rank with it
            proc.kill()
            proc.wait()
            raise
    return {"pid": proc.pid, "returncode": rc}


class RankFailed(RuntimeError):
    """A rank process exited non-zero (raised inside its task, so the engine fails the stage)."""


def _failure(rank: int, where: str, rc: int, log_path: Path) -> RankFailed:
    how = f"exited with code {rc}"
    if rc < 0:  # killed by a signal: say which (a segfault in a native library leaves nothing in the log)
        with contextlib.suppress(ValueError):
            how = f"was killed by signal {signal.Signals(-rc).name} (exit code {rc})"
    said = tail(log_path) or "(no output)"
    return RankFailed(f"rank {rank} on {where} {how}; log {log_path}, last lines:\n{said}")


HOST_SETTING = (
    "list every node's name with its cluster address in /etc/hosts or DNS (hostname -i must not print a "
    "loopback address), or start the workers with an explicit address (dask worker --host ADDR, SPARK_LOCAL_IP)"
)


def check_host_names(hosts: Sequence[str]) -> None:
    """Before a rank starts: this node's name and every rank host's name resolve, and not to loopback when the
    ranks span hosts (Gloo would connect peers to 127.0.0.1, or crash on a name it cannot resolve)."""
    me = socket.gethostname()
    spans = len(set(hosts)) > 1
    for name in dict.fromkeys([me, *hosts]):
        try:
            addr = socket.gethostbyname(name)
        except OSError as exc:
            raise RankFailed(
                f"host name {name!r} does not resolve on {me} ({exc}); Horovod's Gloo needs it: {HOST_SETTING}"
            ) from None
        if spans and ipaddress.ip_address(addr).is_loopback:
            raise RankFailed(
                f"host name {name!r} resolves to {addr} (loopback) on {me}, but the ranks span hosts "
                f"{', '.join(dict.fromkeys(hosts))}: peers cannot reach it; {HOST_SETTING}"
            )


@contextlib.contextmanager
def relay_progress(path: Path, is_progress: Callable[[str], bool]) -> Iterator[None]:
    """Tail rank 0's log file in a thread and log its progress lines, while the block runs."""
    stop = threading.Event()

    start = path.stat().st_size if path.exists() else 0  # a resumed stage appends: relay only the new lines

    def follow() -> None:
        offset = start
        while not stop.is_set():
            with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(offset)
                for line in fh:
                    if not line.endswith("\n"):
                        break
                    offset += len(line.encode("utf-8"))
                    if is_progress(line):
                        log.info("%s", line.strip(), extra={"progress": True})
            stop.wait(0.5)

    thread = threading.Thread(target=follow, daemon=True, name="rank-0-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _executor_facts() -> dict[str, Any]:
    """Pid and id of the Spark executor JVM this task runs in (found up the process tree)."""
    import psutil

    proc = psutil.Process()
    for parent in proc.parents():
        cmd = parent.cmdline()
        if parent.name().startswith("java") or (cmd and cmd[0].endswith("java")):
            executor = "driver"
            if "--executor-id" in cmd:
                executor = cmd[cmd.index("--executor-id") + 1]
            return {"executor_pid": parent.pid, "executor_id": executor, "executor_parent_pid": parent.ppid()}
    return {"executor_pid": None, "executor_id": None, "executor_parent_pid": None}


def _spark_task(job: RankJob) -> Callable[[Iterator[Any]], Iterator[str]]:
    """The function each barrier task runs: gather hosts, rendezvous, spawn its rank, report where it ran."""

    def task(_: Iterator[Any]) -> Iterator[str]:
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        part = ctx.partitionId()
        host = socket.gethostname()
        hosts = ctx.allGather(host)
        check_host_names(hosts)
        slot = slot_plan(hosts)[part]
        server = None
        message = ""
        if slot["rank"] == 0:
            peer = next((h for h in hosts if h != host), host)  # the address other nodes reach this one by
            addr = rendezvous_address(job, peer)
            server, port = start_rendezvous(hosts)
            message = json.dumps({"addr": addr, "port": port})
        found = [json.loads(m) for m in ctx.allGather(message) if m]
        extra = {"PIPELINES_RANK_THREADS": str(ctx.cpus())}
        gpus = ctx.resources().get("gpu")
        if gpus is not None:
            extra["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
        path = job.log(slot["rank"])
        try:
            env = rank_env(slot, job, found[0]["addr"], found[0]["port"], extra)
            reach_rendezvous(job, slot["rank"], found[0]["addr"], found[0]["port"])
            done = spawn_rank(job.worker, env, path, job.timeout_s)
        finally:
            if server is not None:
                server.stop()
        facts = {"rank": slot["rank"], "host": host, "task": part, "task_pid": os.getpid(), **done}
        facts["interface"] = env["HOROVOD_GLOO_IFACE"]
        facts.update(_executor_facts(), gpus=extra.get("CUDA_VISIBLE_DEVICES"))
        if done["returncode"] != 0:
            raise _failure(slot["rank"], f"{host} (Spark executor {facts['executor_id']})", done["returncode"], path)
        yield json.dumps(facts)

    return task


def run_spark_ranks(spark_context: Any, job: RankJob) -> list[dict[str, Any]]:
    """Run the ranks as one Spark barrier stage: one task per rank, all started together or none."""
    rdd = spark_context.parallelize(range(job.ranks), job.ranks).barrier().mapPartitions(_spark_task(job))
    spark_context.setJobDescription(f"horovod ranks: {job.name}")
    try:
        with relay_progress(job.log(0), job.is_progress):
            found = [json.loads(r) for r in rdd.collect()]
    except Exception as exc:
        raise PipelineError(_first_failure(exc, job)) from exc
    return sorted(found, key=lambda r: r["rank"])


def _first_failure(exc: BaseException, job: RankJob) -> str:
    """One clear message for a failed rank stage: the failing rank's own words, else Spark's reason for the
    failed barrier task (a lost executor) and each rank's last lines."""
    text = str(exc)
    if "RankFailed: " in text:
        said = text[text.index("RankFailed: ") + len("RankFailed: ") :]
        return said.split("\n\tat ")[0].split("\n\n")[0].strip()
    found = re.search(r"Job aborted due to stage failure: ([^\n]*)", text)
    reason = found.group(1) if found else (text.splitlines()[0] if text else type(exc).__name__)
    errors = re.findall(r"^\s*(\w+(?:Error|Exception): [^\n]*)$", text, flags=re.M)
    if errors:
        reason += f"; {errors[-1].strip()}"
    lost = re.search(r"ExecutorLostFailure \(([^)]*)\)", text)
    if lost:
        reason += f" ({lost.group(1)})"
    logs = [f"rank {r}: {tail(job.log(r), 3) or '(no output)'}" for r in range(job.ranks)]
    return f"training ranks failed: {reason}\n" + "\n".join(logs)


def _dask_rank(
    slot: dict[str, Any], addr: str, port: int, job: RankJob, stop: str, hosts: Sequence[str]
) -> dict[str, Any]:
    """One rank on a Dask worker (runs in one of the worker's task threads; Dask cannot interrupt it, so the
    client sets the `stop` event when the stage ends and the rank is killed within a second)."""
    from distributed import Event, get_worker

    me = get_worker()
    check_host_names(hosts)
    extra = {"PIPELINES_RANK_THREADS": str(me.state.nthreads)}
    path = job.log(slot["rank"])
    event = Event(stop)
    env = rank_env(slot, job, addr, port, extra)
    reach_rendezvous(job, slot["rank"], addr, port)
    done = spawn_rank(job.worker, env, path, job.timeout_s, event.is_set)
    host = socket.gethostname()
    facts = {"rank": slot["rank"], "host": host, "worker": me.address, "worker_pid": os.getpid(), **done}
    facts["interface"] = env["HOROVOD_GLOO_IFACE"]
    facts["gpus"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    facts["batch_job"] = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
    if done["returncode"] != 0:
        raise _failure(slot["rank"], f"{host} (Dask worker {me.address})", done["returncode"], path)
    return facts


def pick_dask_workers(client: Any, ranks: int, gpus_per_rank: int, wait_s: float) -> list[str]:
    """Distinct workers for the ranks (with a GPU resource when asked), grouped by host; waits up to wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        fit = [
            (info["host"], addr)
            for addr, info in workers.items()
            if not gpus_per_rank or info.get("resources", {}).get("GPU", 0) >= gpus_per_rank
        ]
        if len(fit) >= ranks or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if len(fit) < ranks:
        what = f" with resources GPU>={gpus_per_rank}" if gpus_per_rank else ""
        raise PipelineError(
            f"{ranks} Horovod ranks need {ranks} distinct Dask workers{what}; the cluster has {len(fit)} "
            f"after waiting {wait_s:.0f}s (start more workers, or lower `ranks`)"
        )
    return [addr for _, addr in sorted(fit)[:ranks]]


def run_dask_ranks(client: Any, job: RankJob) -> list[dict[str, Any]]:
    """Run the ranks as tasks pinned to distinct Dask workers, with the rendezvous server on this client."""

    from distributed import Event

    chosen = pick_dask_workers(client, job.ranks, job.gpus_per_rank, job.wait_s)
    info = client.scheduler_info(n_workers=-1)["workers"]
    hosts = [info[a]["host"] for a in chosen]
    try:
        addr = rendezvous_address(job, hosts[0])
    except RankFailed as exc:  # here, on the client: the stage's own failure, before any rank starts
        raise PipelineError(str(exc)) from None
    server, port = start_rendezvous(hosts)
    token = uuid.uuid4().hex[:8]
    stop = Event(f"horovod-{job.name}-stop-{token}", client=client)
    futures = [
        client.submit(
            _dask_rank,
            slot,
            addr,
            port,
            job,
            stop.name,
            hosts,
            key=f"horovod-{job.name}-rank{slot['rank']}-{token}",
            workers=[where],
            allow_other_workers=False,
            resources={"GPU": job.gpus_per_rank} if job.gpus_per_rank else None,
            pure=False,
            retries=0,
        )
        for slot, where in zip(slot_plan(hosts), chosen, strict=True)
    ]
    try:
        with relay_progress(job.log(0), job.is_progress):
            return _gather_ranks(client, futures, chosen, job)
    finally:
        stop.set()  # ranks still running (a peer failed, a worker left, the driver stops) are killed
        client.cancel(futures)
        server.stop()


def _gather_ranks(client: Any, futures: list[Any], chosen: list[str], job: RankJob) -> list[dict[str, Any]]:
    """Wait for every rank task; the first failure, or a rank's worker leaving the cluster, ends the wait."""
    from distributed import wait

    found: dict[int, dict[str, Any]] = {}
    while len(found) < len(futures):
        pending = [f for rank, f in enumerate(futures) if rank not in found]
        with contextlib.suppress(TimeoutError):
            wait(pending, timeout=2, return_when="FIRST_COMPLETED")
        alive = set(client.scheduler_info(n_workers=-1)["workers"])
        for rank, where in enumerate(chosen):
            if rank not in found and where not in alive:
                raise PipelineError(
                    f"rank {rank}: its Dask worker {where} left the cluster mid-training; last lines of "
                    f"{job.log(rank)}:\n{tail(job.log(rank))}"
                )
        for rank, future in enumerate(futures):
            if rank not in found and future.done():
                found[rank] = _result(future, rank, chosen[rank], job)  # raises for a failed rank
    return [found[rank] for rank in sorted(found)]


def _result(future: Any, rank: int, worker: str, job: RankJob) -> dict[str, Any]:
    """A rank task's facts, or one clear error naming the rank and its worker."""
    try:
        return future.result()
    except RankFailed as exc:
        raise PipelineError(str(exc)) from None
    except Exception as exc:  # the worker was lost mid-training, or the task was cancelled
        raise PipelineError(
            f"rank {rank} on Dask worker {worker} failed ({type(exc).__name__}: {exc}); "
            f"last lines of {job.log(rank)}:\n{tail(job.log(rank))}"
        ) from None
