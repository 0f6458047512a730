"""Network facts every launcher shares: this host's interfaces, the one to bind, the route to a peer, and
whether a peer's port answers in time."""

from __future__ import annotations

import contextlib
import socket
import time

import psutil

from pipelines.errors import ConfigError

FABRICS = ("ib0", "ib1", "hsn0", "ipogif0", "bond0", "eno1", "eth0")


def interfaces() -> dict[str, str]:
    """Up interfaces with an IPv4 address: name -> address."""
    stats = psutil.net_if_stats()
    out = {}
    for name, addrs in psutil.net_if_addrs().items():
        ipv4 = [a.address for a in addrs if a.family == socket.AF_INET]
        if ipv4 and stats.get(name) is not None and stats[name].isup:
            out[name] = ipv4[0]
    return out


def pick_interface(wanted: str | None) -> str | None:
    """The interface to bind: a named one (checked), `auto` (fabric, then the host's own), or None (Dask's)."""
    if wanted is None:
        return None
    found = interfaces()
    if wanted != "auto":
        if wanted not in found:
            raise ConfigError(f"network interface {wanted!r} is not up on {socket.gethostname()}; have {sorted(found)}")
        return wanted
    for name in FABRICS:
        if name in found:
            return name
    try:
        own = socket.gethostbyname(socket.gethostname())
    except OSError:
        own = ""
    for name, addr in found.items():
        if addr == own and not addr.startswith("127."):
            return name
    outside = [n for n, a in found.items() if not a.startswith("127.")]
    return outside[0] if outside else next(iter(found), None)


def interface_address(wanted: str) -> tuple[str, str]:
    """(address, name) of the interface `wanted` names (or `auto` picks) on this host."""
    name = pick_interface(wanted)
    if name is None:
        raise ConfigError(f"no network interface with an IPv4 address is up on {socket.gethostname()}")
    return interfaces()[name], name


def local_address_towards(addr: str) -> tuple[str, str]:
    """(this machine's IP, interface name) used to reach addr: what Gloo should bind to."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as probe:
        probe.connect((addr, 9))  # UDP connect sends nothing; it only picks the route
        ip = probe.getsockname()[0]
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == ip for a in addresses):
            return ip, name
    return ip, "lo" if ip.startswith("127.") else "eth0"


def wait_until_reachable(addr: str, port: int, timeout_s: float) -> str | None:
    """Connect to addr:port until it answers or timeout_s passes; None when it answered, else the last error."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((addr, port), timeout=max(0.1, min(2.0, left))):
                return None
        except OSError as exc:
            error = str(exc) or type(exc).__name__
        if time.monotonic() + 0.5 > deadline:
            return error
        time.sleep(0.5)
