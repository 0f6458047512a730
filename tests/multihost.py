"""Three hosts on one machine for tests: network + UTS + mount namespaces on a private veth bridge.

Each host is held by one `sleep` process started in its own network namespace (`ip netns add`), UTS namespace
(its own hostname) and mount namespace (its own scratch folder at a path every host shares, like a node-local
/tmp); commands run inside it through `nsenter`. Names resolve through /etc/netns/<ns>/hosts, which `ip netns
exec` binds over /etc/hosts for that namespace only (ip-netns(8)); the machine's /etc/hosts is never touched.
The only link between the hosts is a bridge of this test's own: no route leads anywhere else. Teardown kills
every process in the namespaces (all started here), then removes the namespaces, the bridge and /etc/netns
entries, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("hostA", "hostB", "hostC")


def why_no_namespaces() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "unshare", "nsenter", "mount") if shutil.which(tool) is None]
    if missing:
        return f"no {', '.join(missing)} on PATH"
    probe = f"mhprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    """One namespace host: its hostname, netns, bridge address and the sleep process holding its namespaces."""

    name: str
    ns: str
    addr: str
    veth: str
    scratch: Path  # what this host sees at Hosts.scratch (the others see their own folder there)
    holder: subprocess.Popen | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    lost: bool = False


@dataclass
class Hosts:
    """The started hosts, the shared folder (the cluster file system) and the per-host scratch path."""

    hosts: dict[str, Host]
    shared: Path
    scratch: Path

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """The environment of a process on host `name`: its scratch as TMPDIR, its address as Spark's local IP."""
        host = self.hosts[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_", "DASK_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            TMPDIR=str(self.scratch),
            PIPELINES_LOG_DIR=str(self.scratch / "logs"),
            SPARK_LOCAL_IP=host.addr,
            SPARK_LOCAL_DIRS=str(self.scratch / "spark"),
            SPARK_WORKER_DIR=str(self.scratch / "spark-work"),
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv run inside host `name` (its network, hostname and mounts)."""
        holder = self.hosts[name].holder
        assert holder is not None
        return ["nsenter", "-t", str(holder.pid), "-n", "-u", "-m", "--", *argv]

    def start(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a long-running process on host `name` (stopped, by pid, at teardown); output to `log`."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(name, argv),
                env=env or self.env(name),
                cwd=str(self.shared),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.hosts[name].procs.append(proc)
        return proc

    def run(
        self, name: str, argv: Sequence[str], timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a command on host `name` to its end (killed at `timeout`)."""
        proc = subprocess.Popen(
            self.argv(name, argv),
            env=env or self.env(name),
            cwd=str(self.shared),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.hosts[name].procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            err += f"\n[multihost] killed after {timeout}s"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def python(self, name: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """Run this interpreter with args on host `name`."""
        return self.run(name, [sys.executable, *args], timeout, self.env(name, **env))

    def lose(self, name: str) -> None:
        """The host dies: every process in its namespace is killed and its link is deleted."""
        host = self.hosts[name]
        _kill_namespace(host.ns)
        subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
        host.lost = True


def wait_for_text(path: Path, text: str, count: int = 1, timeout: float = 120) -> None:
    """Wait until `text` appears `count` times in the file at path (a server's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if path.read_text(errors="replace").count(text) >= count:
                return
        time.sleep(0.3)
    seen = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise TimeoutError(f"{text!r} x{count} not in {path} after {timeout}s:\n{seen}")


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _ns_pids(ns: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    return [int(p) for p in listed if p.isdigit()]


def _kill_namespace(ns: str) -> None:
    """Kill every process in netns `ns` (all of them were started by this harness), by pid."""
    for _ in range(20):
        pids = _ns_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def three_hosts(base: Path, names: Sequence[str] = NAMES, resolvable: Sequence[str] | None = None) -> Iterator[Hosts]:
    """hostA, hostB, hostC on a bridge of their own; `resolvable` lists the hosts whose hosts file names them all
    (default: every host); a host left out resolves only localhost."""
    reason = why_no_namespaces()
    if reason:
        import pytest

        pytest.skip(f"multi-host harness: {reason}")
    tag = f"{os.getpid() % 100000}{int(time.time() * 10) % 100}"
    subnet = f"10.231.{os.getpid() % 200 + 20}"
    bridge = f"mhbr{tag}"
    shared = base / "shared"
    scratch = base / "scratch"
    shared.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(exist_ok=True)
    hosts = {
        name: Host(name, f"mh{tag}{name[-1].lower()}", f"{subnet}.{i + 1}", f"mh{tag}{name[-1].lower()}", base / name)
        for i, name in enumerate(names)
    }
    everyone = "".join(f"{h.addr} {h.name}\n" for h in hosts.values())
    resolvable = list(names) if resolvable is None else list(resolvable)
    made: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append("bridge")
        _ip("link", "set", bridge, "up")
        for host in hosts.values():
            host.scratch.mkdir(exist_ok=True)
            etc = Path("/etc/netns") / host.ns
            etc.mkdir(parents=True, exist_ok=True)
            own = everyone if host.name in resolvable else ""
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{own}")
            (etc / "resolv.conf").write_text("options timeout:1 attempts:1\n")  # no DNS: fail fast on lo
            _ip("netns", "add", host.ns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", f"{host.veth}p")
            _ip("link", "set", f"{host.veth}p", "netns", host.ns)
            _ip("link", "set", host.veth, "master", bridge)
            _ip("link", "set", host.veth, "up")
            for cmd in (
                ("link", "set", f"{host.veth}p", "name", "eth0"),
                ("addr", "add", f"{host.addr}/24", "dev", "eth0"),
                ("link", "set", "eth0", "up"),
                ("link", "set", "lo", "up"),
            ):
                _ip("netns", "exec", host.ns, "ip", *cmd)
            hold = f"hostname {host.name} && mount --bind {host.scratch} {scratch} && exec sleep 86400"
            host.holder = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, "unshare", "--uts", "--mount", "--propagation", "private"]
                + ["sh", "-c", hold],
                start_new_session=True,
            )
        for host in hosts.values():  # ready when the holder's hostname is set and its scratch is mounted
            deadline = time.monotonic() + 20
            while True:
                seen = subprocess.run(
                    ["nsenter", "-t", str(host.holder.pid), "-u", "-m", "sh", "-c", f"hostname; ls -di {scratch}"],
                    capture_output=True,
                    text=True,
                ).stdout.split()
                if seen[:1] == [host.name] and len(seen) > 1 and int(seen[1]) == host.scratch.stat().st_ino:
                    break
                if time.monotonic() > deadline or host.holder.poll() is not None:
                    raise RuntimeError(f"host {host.name} did not come up: {seen}")
                time.sleep(0.1)
        yield Hosts(hosts, shared, scratch)
    finally:
        for host in hosts.values():
            for proc in host.procs:
                _kill_group(proc)
            _kill_namespace(host.ns)
            if host.holder is not None:
                with contextlib.suppress(ProcessLookupError):
                    host.holder.kill()
                host.holder.wait(10)
            for proc in host.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / host.ns, ignore_errors=True)
        if "bridge" in made:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
