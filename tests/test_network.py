"""One network setting for every engine and rank (`engine.network`): validated, bound where it says, and a rank
that cannot reach the rendezvous stops within the stated timeout naming the address it tried."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.config import parse_config
from pipelines.engines.config import NetworkSettings
from pipelines.errors import ConfigError
from pipelines.launch.horovod import launch_command
from pipelines.launch.network import interfaces, wait_until_reachable
from pipelines.launch.ranks import RankFailed, RankJob, rank_env, reach_rendezvous

ROOT = Path(__file__).resolve().parent.parent
SLOT = {"rank": 1, "size": 2, "local_rank": 0, "local_size": 1, "cross_rank": 1, "cross_size": 2, "hostname": "b"}


def _job(**kw) -> RankJob:
    return RankJob(2, ("-m", "x"), Path("/tmp"), "t", 60.0, lambda _: False, **kw)


def _outside() -> tuple[str, str] | None:
    """A non-loopback interface of this machine (name, address), if it has one."""
    return next(((n, a) for n, a in interfaces().items() if not a.startswith("127.")), None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_the_network_section_is_validated_with_its_key_path():
    dataset = {"name": "d", "format": "csv", "path": "x.csv", "features": ["a"]}
    base = {"name": "n", "dataset": dataset, "stages": [{"stage": "ingest"}]}
    ok = parse_config({**base, "engine": {"network": {"interface": "ib0", "rendezvous_timeout_s": 12}}})
    assert ok.engine.network == NetworkSettings(interface="ib0", rendezvous_timeout_s=12.0)
    assert parse_config(base).engine.network == NetworkSettings()  # default: engines' own, Gloo's 30 s
    for bad, key in (({"interface": "ib0; rm -rf ~"}, "interface"), ({"rendezvous_timeout_s": 0}, "rendezvous")):
        with pytest.raises(ConfigError) as err:
            parse_config({**base, "engine": {"network": bad}})
        said = str(err.value)
        assert said.count("\n  - ") == 1 and f"\n  - engine.network.{key}" in said  # one problem, its key path


def test_a_closed_port_is_reported_after_the_timeout_and_an_open_one_at_once():
    start = time.monotonic()
    error = wait_until_reachable("127.0.0.1", _closed_port(), 1.5)
    waited = time.monotonic() - start
    assert error is not None and "refused" in error.lower() and 1.0 <= waited <= 3.0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        start = time.monotonic()
        assert wait_until_reachable("127.0.0.1", server.getsockname()[1], 5.0) is None
        assert time.monotonic() - start < 1.0


def test_a_rank_that_cannot_reach_the_rendezvous_stops_within_the_timeout_naming_the_address():
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(RankFailed) as err:
        reach_rendezvous(_job(rendezvous_timeout_s=2.0), 1, "127.0.0.1", port)
    assert time.monotonic() - start <= 2.0 + 2.5  # one connect attempt may run up to 2 s past the last check
    said = str(err.value)
    assert f"rank 1 on {socket.gethostname()} could not reach the Horovod rendezvous at 127.0.0.1:{port}" in said
    assert "within 2 s" in said and "engine.network.interface" in said and "\n" not in said


def test_a_named_interface_missing_on_a_rank_host_fails_that_rank_naming_it():
    with pytest.raises(RankFailed) as err:
        rank_env(SLOT, _job(interface="nosuch7"), "127.0.0.1", 1234)
    said = str(err.value)
    assert said.startswith("rank 1: network interface 'nosuch7' is not up on " + socket.gethostname())
    assert "'lo'" in said and "engine.network.interface" in said


def test_rank_environment_carries_the_interface_and_the_gloo_timeout():
    env = rank_env(SLOT, _job(interface="lo", rendezvous_timeout_s=12.4), "127.0.0.1", 1234)
    assert env["HOROVOD_GLOO_IFACE"] == env["NCCL_SOCKET_IFNAME"] == "lo"
    assert env["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "12" and env["HOROVOD_GLOO_RENDEZVOUS_ADDR"] == "127.0.0.1"
    routed = rank_env(SLOT, _job(), "127.0.0.1", 1234)  # no interface: the one routing to the rendezvous
    assert routed["HOROVOD_GLOO_IFACE"] == "lo" and routed["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "30"


def test_launcher_commands_carry_the_interface_and_the_timeout():
    worker = ["python", "-m", "w", "spec.json"]
    hvd = launch_command("horovodrun", 2, None, worker, "lo", 12.0)
    assert hvd[-len(worker) - 4 : -len(worker)] == ["--network-interfaces", "lo", "--gloo-timeout-seconds", "12"]
    mpi = launch_command("mpirun", 2, None, worker, "lo")
    assert mpi[-len(worker) - 5 : -len(worker)] == ["-mca", "btl_tcp_if_include", "lo", "-x", "NCCL_SOCKET_IFNAME=lo"]
    srun = launch_command("srun", 2, None, worker, "lo")
    assert "--export=ALL,NCCL_SOCKET_IFNAME=lo,HOROVOD_GLOO_IFACE=lo" in srun
    assert "--network-interfaces" not in launch_command("horovodrun", 2, None, worker)
    with pytest.raises(ConfigError, match="'nosuch7' is not up"):
        launch_command("horovodrun", 2, None, worker, "nosuch7")


def test_a_local_dask_cluster_binds_to_the_configured_interface():
    from pipelines.engines.config import DaskSettings
    from pipelines.engines.dask_engine import DaskEngine

    outside = _outside()
    if outside is None:
        pytest.skip("this machine has no non-loopback interface to bind to")
    name, addr = outside
    with DaskEngine(DaskSettings(n_workers=1), network=NetworkSettings(interface=name)) as engine:
        assert engine.client.scheduler.address.startswith(f"tcp://{addr}:")
        assert all(w.startswith(f"tcp://{addr}:") for w in engine.client.nthreads())
        assert engine.describe()["interface"] == name
    with DaskEngine(DaskSettings(n_workers=1)) as engine:  # the default stays Dask's own (loopback here)
        assert engine.client.scheduler.address.startswith("tcp://127.0.0.1:")


@pytest.mark.slow
@pytest.mark.spark
def test_the_spark_driver_listens_on_the_configured_interface():
    outside = _outside()
    if outside is None:
        pytest.skip("this machine has no non-loopback interface to bind to")
    name, addr = outside
    script = textwrap.dedent(f"""
        import json
        from pipelines.engines.config import NetworkSettings, SparkSettings
        from pipelines.engines.spark_engine import SparkEngine
        with SparkEngine(SparkSettings(master="local[1]"), network=NetworkSettings(interface={name!r})) as e:
            conf = e.spark.sparkContext.getConf()
            print(json.dumps({{"host": conf.get("spark.driver.host"), "bind": conf.get("spark.driver.bindAddress"),
                              "described": e.describe()["interface"], "n": e.spark.range(10).count()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said == {"host": addr, "bind": addr, "described": name, "n": 10}
