"""Several hosts for real: Dask and Spark clusters across three network-namespace hosts (tests/multihost.py).

The driver runs in hostA, workers in hostB and hostC; the run folder is the shared folder, each host's TMPDIR
its own. Outputs are compared with a single-host run of the same config.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from multihost import Hosts, three_hosts, wait_for_text

from pipelines.config import parse_config
from pipelines.pipeline import run_pipeline

PY = sys.executable
LENET = {"stage": "deep", "model": "lenet5", "epochs": 1, "batch_size": 32, "ranks": 2}
PORT = 8786


def pipeline_config(runs: Path, engine: dict, launcher: str, *, sweep: bool = True) -> dict:
    """Digits: ingest, a classical fit, LeNet-5 trained by 2 ranks (1 epoch), a 2-trial sweep."""
    stages: list[dict] = [
        {"stage": "ingest", "split": {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 42}, "image_scale": "unit"},
        {"stage": "model", "name": "softmax", "model": "logistic_regression", "params": {"C": 1.0}},
        {**LENET, "launcher": launcher},
    ]
    if sweep:
        stages.append(
            {
                "stage": "sweep",
                "name": "c-grid",
                "target": {"stage": "model", "model": "logistic_regression"},
                "grid": {"params.C": [0.1, 1.0]},
                "metric": "test_accuracy",
                "mode": "max",
            }
        )
    return {
        "name": "digits-hosts",
        "runs_dir": str(runs),
        "engine": {"partitions": 3, "in_process_mb": 0, **engine},  # the classical fit across the hosts
        "dataset": {
            "name": "digits",
            "format": "idx",
            "path": "bundled:digits/images",
            "labels_path": "bundled:digits/labels",
            "image": {"shape": [8, 8], "classes": 10},
        },
        "stages": stages,
    }


@contextlib.contextmanager
def dask_cluster(hosts: Hosts, workers: tuple[str, ...] = ("hostB", "hostC")) -> Iterator[str]:
    """A scheduler on hostA and one worker on each worker host, started with dask-jobqueue's worker command line."""
    a = hosts["hostA"].addr
    logs = hosts.shared / "cluster-logs"
    logs.mkdir(exist_ok=True)
    scheduler = logs / "scheduler.log"
    hosts.start(
        "hostA",
        [PY, "-m", "distributed.cli.dask_scheduler", "--host", a, "--port", str(PORT), "--no-dashboard"],
        scheduler,
    )
    wait_for_text(scheduler, "Scheduler at:", timeout=60)
    for name in workers:
        argv = [PY, "-m", "distributed.cli.dask_worker", f"tcp://{a}:{PORT}", "--name", name, "--nthreads", "1"]
        argv += ["--memory-limit", "3GB", "--nanny", "--death-timeout", "60", "--host", hosts[name].addr]
        hosts.start(name, argv, logs / f"worker-{name}.log")
    wait_for_text(scheduler, "Register worker", count=len(workers), timeout=90)
    yield f"tcp://{a}:{PORT}"


def _latest(runs: Path, name: str = "digits-hosts") -> Path:
    return (runs / name / "latest").resolve()


def _weights(run_dir: Path, stage: str) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(run_dir / "deep" / stage / "model.keras").get_weights()


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def assert_same_outputs(multi: Path, single: Path, sweep: bool = True) -> None:
    """Split digests, classical coefficients, final network weights and sweep scores equal the single-host run's."""
    a, b = _manifest(multi), _manifest(single)
    assert a["stages"][0]["splits_digest"] == b["stages"][0]["splits_digest"]
    with np.load(multi / "models" / "softmax" / "arrays.npz") as x, np.load(single / "models/softmax/arrays.npz") as y:
        assert sorted(x.files) == sorted(y.files) and "coef_" in x.files
        for key in x.files:
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(x[key], y[key], rtol=1e-6, atol=1e-8, err_msg=key)
    for x, y in zip(_weights(multi, "lenet5"), _weights(single, "lenet5"), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)  # same global batches and seed, one thread per rank
    if sweep:
        import pandas as pd

        ours, theirs = (pd.read_csv(d / "sweeps" / "c-grid" / "results.csv") for d in (multi, single))
        np.testing.assert_allclose(ours["metric"], theirs["metric"], rtol=1e-9)
        assert set(ours["host"]) <= {"hostB", "hostC"}


@pytest.fixture
def hosts(tmp_path) -> Iterator[Hosts]:
    with three_hosts(tmp_path) as made:
        yield made


def predict_summary(hosts: Hosts | None, run_dir: Path, out: Path) -> dict:
    """`pipelines predict` of the classical stage on the bundled digits (on hostA, or here), its summary."""
    argv = ["-m", "pipelines", "predict", str(run_dir), "--stage", "softmax", "--data", "bundled:digits/images"]
    argv += ["--labels", "bundled:digits/labels", "--out", str(out)]
    done = hosts.python("hostA", *argv) if hosts else subprocess.run([PY, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_dask_across_three_hosts_equals_a_single_host_run(hosts, dask_engine, tmp_path):
    # one interface setting for the whole run: the rendezvous address and every rank's Gloo sockets use eth0
    engine = {"kind": "dask", "dask": {"scheduler": "tcp://{hostA}:8786"}, "network": {"interface": "eth0"}}
    with dask_cluster(hosts) as address:
        engine["dask"]["scheduler"] = address
        conf = hosts.shared / "digits.json"
        conf.write_text(json.dumps(pipeline_config(hosts.shared / "runs", engine, "dask")))
        done = hosts.python("hostA", "-m", "pipelines", "run", str(conf), timeout=400)
        assert done.returncode == 0, done.stderr[-4000:]
        run_dir = _latest(hosts.shared / "runs")
        scored = predict_summary(hosts, run_dir, hosts.shared / "scored")
    manifest = _manifest(run_dir)
    assert manifest["engine"]["scheduler"] == address and manifest["engine"]["workers"] == 2
    res = json.loads((run_dir / "deep" / "lenet5" / "results.json").read_text())
    assert res["launcher"] == "dask" and res["rank_weight_max_abs_diff"] == 0.0
    assert sorted(p["host"] for p in res["placement"]) == ["hostB", "hostC"]  # the ranks ran on the worker hosts
    assert [p["interface"] for p in res["placement"]] == ["eth0", "eth0"] and manifest["engine"]["interface"] == "eth0"
    assert {p["worker"].split("//")[1].split(":")[0] for p in res["placement"]} == {
        hosts["hostB"].addr,
        hosts["hostC"].addr,
    }
    single = parse_config(pipeline_config(tmp_path / "single", {"kind": "dask"}, "dask"))
    run, _ = run_pipeline(single, engine=dask_engine)
    assert_same_outputs(run_dir, run.dir)
    theirs = predict_summary(None, run.dir, tmp_path / "scored-single")
    assert scored["read"] == scored["scored"] == 1797 and scored["predicted"] == theirs["predicted"]
    assert scored["metrics"]["accuracy"] == pytest.approx(theirs["metrics"]["accuracy"], abs=1e-12)


@contextlib.contextmanager
def spark_cluster(hosts: Hosts, workers: tuple[str, ...] = ("hostB", "hostC")) -> Iterator[str]:
    """A standalone master on hostA and one one-core worker on each worker host (SPARK_LOCAL_IP per host)."""
    from spark_standalone import spark_home

    cls = str(spark_home() / "bin" / "spark-class")
    a = hosts["hostA"].addr
    logs = hosts.shared / "cluster-logs"
    logs.mkdir(exist_ok=True)
    master = logs / "spark-master.log"
    env = hosts.env("hostA", SPARK_HOME=str(spark_home()))
    argv = [cls, "org.apache.spark.deploy.master.Master", "--host", a, "--port", "7077", "--webui-port", "0"]
    hosts.start("hostA", argv, master, env)
    url = f"spark://{a}:7077"
    for name in workers:
        argv = [cls, "org.apache.spark.deploy.worker.Worker", "--host", hosts[name].addr, "--cores", "1"]
        argv += ["--memory", "2g", "--webui-port", "0", url]
        hosts.start(name, argv, logs / f"spark-worker-{name}.log", hosts.env(name, SPARK_HOME=str(spark_home())))
    wait_for_text(master, "Registering worker", count=len(workers), timeout=120)
    yield url


def spark_submit(hosts: Hosts, url: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """spark-submit the pipelines entry point from hostA to the standalone master (two one-core executors)."""
    from spark_standalone import spark_home

    import pipelines.__main__ as entry

    argv = [str(spark_home() / "bin" / "spark-submit"), "--master", url, "--total-executor-cores", "2"]
    argv += ["--executor-cores", "1", "--conf", "spark.executor.memory=1g", entry.__file__, *args]
    return hosts.run("hostA", argv, timeout, hosts.env("hostA", SPARK_HOME=str(spark_home())))


@pytest.mark.slow
@pytest.mark.spark
def test_spark_across_three_hosts_equals_a_single_host_run(hosts, spark_engine, tmp_path):
    with spark_cluster(hosts) as url:
        conf = hosts.shared / "digits.json"
        engine = {"kind": "spark", "network": {"interface": "eth0"}}  # the driver and the ranks' Gloo on eth0
        conf.write_text(json.dumps(pipeline_config(hosts.shared / "runs", engine, "spark", sweep=False)))
        done = spark_submit(hosts, url, "run", str(conf))
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_dir = _latest(hosts.shared / "runs")
    manifest = _manifest(run_dir)
    assert manifest["engine"]["master"] == url and manifest["engine"]["spark_submit"]
    res = json.loads((run_dir / "deep" / "lenet5" / "results.json").read_text())
    assert res["launcher"] == "spark" and res["rank_weight_max_abs_diff"] == 0.0
    assert sorted(p["host"] for p in res["placement"]) == ["hostB", "hostC"]
    assert [p["interface"] for p in res["placement"]] == ["eth0", "eth0"] and manifest["engine"]["interface"] == "eth0"
    # The executors ran on hostB and hostC only, each with its own TMPDIR: the resident fast path (part files in a
    # temp dir every worker reads) would have failed here, so the run took the cluster path.
    assert all(list((hosts[h].scratch / "spark-work").glob("app-*/*")) for h in ("hostB", "hostC"))
    assert not (hosts["hostA"].scratch / "spark-work").exists()
    single = parse_config(pipeline_config(tmp_path / "single", {"kind": "spark"}, "spark", sweep=False))
    run, _ = run_pipeline(single, engine=spark_engine)
    assert_same_outputs(run_dir, run.dir, sweep=False)


@pytest.mark.slow
def test_a_rank_host_whose_name_does_not_resolve_fails_before_training_naming_it(tmp_path):
    with three_hosts(tmp_path, resolvable=("hostA", "hostB")) as hosts, dask_cluster(hosts) as address:
        config = pipeline_config(hosts.shared / "runs", {"kind": "dask", "dask": {"scheduler": address}}, "dask")
        config["stages"] = [config["stages"][0], config["stages"][2]]
        conf = hosts.shared / "digits.json"
        conf.write_text(json.dumps(config))
        done = hosts.python("hostA", "-m", "pipelines", "run", str(conf), timeout=300)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if "does not resolve" in line]
    assert said and "host name 'hostC' does not resolve on hostC" in said[0], done.stderr[-3000:]
    assert "/etc/hosts" in said[0] and "--host ADDR" in said[0]
    checkpoints = _latest(hosts.shared / "runs") / "checkpoints" / "lenet5"
    assert not list(checkpoints.glob("epoch-*"))  # nothing trained


def test_loopback_names_across_hosts_and_unresolvable_names_are_refused_before_ranks_start():
    from pipelines.launch.ranks import RankFailed, check_host_names

    check_host_names(["127.0.0.1", "127.0.0.1"])  # one host: loopback is fine
    with pytest.raises(
        RankFailed,
        match=r"host name '\S+' resolves to 127.0.0.1 \(loopback\) on \S+, but the ranks span hosts 127.0.0.1, 10",
    ):
        check_host_names(["127.0.0.1", "10.231.0.9"])
    with pytest.raises(RankFailed, match=r"host name 'no-such-host.invalid' does not resolve on"):
        check_host_names(["no-such-host.invalid"])


def test_a_rank_killed_by_a_signal_says_which_and_where_its_log_is(tmp_path):
    from pipelines.launch.ranks import _failure, spawn_rank

    log = tmp_path / "r.rank1.log"
    done = spawn_rank(["-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], dict(os.environ), log, 30)
    said = str(_failure(1, "hostC (Dask worker tcp://x:1)", done["returncode"], log))
    assert said.startswith("rank 1 on hostC (Dask worker tcp://x:1) was killed by signal SIGSEGV (exit code -11)")
    assert f"log {log}" in said


@pytest.mark.slow
def test_a_run_folder_the_workers_cannot_see_is_refused_before_any_stage(tmp_path):
    with three_hosts(tmp_path) as hosts, dask_cluster(hosts) as address:
        runs = hosts.scratch / "runs"  # hostA's own TMPDIR: hostB and hostC each see their own folder there
        config = pipeline_config(runs, {"kind": "dask", "dask": {"scheduler": address}}, "dask", sweep=False)
        conf = hosts.shared / "digits.json"
        conf.write_text(json.dumps(config))
        done = hosts.python("hostA", "-m", "pipelines", "run", str(conf), timeout=300)
    assert done.returncode == 4, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "is not visible from worker host(s) hostB, hostC" in line]
    assert said and "runs_dir must be on a file system shared" in said[0], done.stderr[-3000:]
    run_dir = next((hosts["hostA"].scratch / "runs" / "digits-hosts").glob("2*"))
    assert not (run_dir / "data").exists()  # no stage ran
    for host in ("hostB", "hostC"):  # and nothing was written into the workers' own folders of that name
        assert not (hosts[host].scratch / "runs").exists()


@pytest.mark.slow
def test_a_worker_host_lost_mid_training_stops_naming_it_and_resume_completes(tmp_path):
    import threading
    import time

    stage = {**LENET, "model": "mlp", "epochs": 4, "batch_size": 16, "launcher": "dask"}
    with three_hosts(tmp_path) as hosts, dask_cluster(hosts) as address:
        runs = hosts.shared / "runs"
        config = pipeline_config(runs, {"kind": "dask", "dask": {"scheduler": address}}, "dask", sweep=False)
        config["stages"] = [config["stages"][0], stage]
        conf = hosts.shared / "digits.json"
        conf.write_text(json.dumps(config))
        lost = []

        def lose_host_c_after_a_checkpoint() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                if list(runs.glob("digits-hosts/*/checkpoints/mlp/epoch-*")):
                    hosts.lose("hostC")
                    lost.append(time.monotonic())
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=lose_host_c_after_a_checkpoint)
        killer.start()
        done = hosts.python("hostA", "-m", "pipelines", "run", str(conf), timeout=300)
        killer.join()
        failed_at = time.monotonic()
        assert lost, "hostC was never lost"
        assert failed_at - lost[0] < 60  # the run stops within a minute of the loss
        assert done.returncode == 5, done.stderr[-3000:]
        error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert error and "rank" in error[0], done.stderr[-3000:]
        assert hosts["hostC"].addr in error[0] or "hostC" in error[0], error[0]
        run_dir = next(p for p in (runs / "digits-hosts").iterdir() if p.name[:1].isdigit())
        assert not list(run_dir.rglob("*.tmp*"))  # nothing half-written in the shared run folder
        # a second worker on hostB stands in for the lost host; --resume continues from the checkpoint
        argv = [PY, "-m", "distributed.cli.dask_worker", address, "--name", "hostB-2", "--nthreads", "1"]
        argv += ["--memory-limit", "3GB", "--nanny", "--host", hosts["hostB"].addr]
        hosts.start("hostB", argv, hosts.shared / "cluster-logs" / "worker-hostB-2.log")
        wait_for_text(hosts.shared / "cluster-logs" / "scheduler.log", "Register worker", count=3, timeout=90)
        done = hosts.python("hostA", "-m", "pipelines", "run", "--resume", str(run_dir), str(conf), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((run_dir / "deep" / "mlp" / "results.json").read_text())
    assert res["resumed_from"] is not None and res["resumed_from"] >= 1
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4]  # every epoch once
    assert {p["host"] for p in res["placement"]} == {"hostB"}
