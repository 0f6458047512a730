"""Horovod ranks on the engine's own workers: Dask worker tasks and Spark barrier tasks (real engines, real ranks)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import digits_config
from spark_standalone import standalone, submit

from pipelines.config import parse_config
from pipelines.engines.config import DaskSettings
from pipelines.errors import PipelineError
from pipelines.launch.ranks import RankJob, hosts_string, pick_dask_workers, slot_plan
from pipelines.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SOFTMAX = {"stage": "deep", "model": "softmax", "epochs": 2, "batch_size": 32, "ranks": 2, "optimizer": "sgd"}


def _weights(run, name: str) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(run.dir / "deep" / name / "model.keras").get_weights()


def _results(run, name: str) -> dict:
    return json.loads((run.dir / "deep" / name / "results.json").read_text())


@pytest.mark.parametrize("hosts", [["a", "b", "a", "b"], ["x", "x"], ["a", "b", "b"], ["n1"], ["c", "a", "c", "b"]])
def test_slot_plan_is_horovods_host_assignment(hosts):
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    theirs = sorted(get_host_assignments(parse_hosts(hosts_string(hosts)), len(hosts)), key=lambda s: s.rank)
    ours = sorted(slot_plan(hosts), key=lambda s: s["rank"])
    assert [vars(s) | {"hostname": s.hostname} for s in theirs] == ours
    assert sorted(s["rank"] for s in slot_plan(hosts)) == list(range(len(hosts)))


def test_fewer_dask_workers_than_ranks_is_a_clear_error_before_anything_starts(dask_engine):
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match="3 Horovod ranks need 3 distinct Dask workers; the cluster has 2"):
        pick_dask_workers(dask_engine.client, 3, 0, wait_s=1)
    with pytest.raises(PipelineError, match="with resources GPU>=1; the cluster has 0"):
        pick_dask_workers(dask_engine.client, 1, 1, wait_s=0)
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_dask_launcher_trains_on_the_workers_and_matches_horovodrun(dask_engine, tmp_path):
    worker_pids = set(dask_engine.client.run(os.getpid).values())
    addresses = set(dask_engine.client.scheduler_info(n_workers=-1)["workers"])
    out = {}
    for launcher in ("dask", "horovodrun"):
        config = parse_config(digits_config(tmp_path / launcher, {**SOFTMAX, "launcher": launcher}))
        run, _ = run_pipeline(config, engine=dask_engine)
        out[launcher] = run
    res = _results(out["dask"], "softmax")
    assert res["launcher"] == "dask" and res["rank_weight_max_abs_diff"] == 0.0
    placement = res["placement"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert {p["worker"] for p in placement} <= addresses and len({p["worker"] for p in placement}) == 2
    for p in placement:  # each rank is a fresh process whose parent is its Dask worker
        assert p["worker_pid"] in worker_pids and p["ppid"] == p["worker_pid"] and p["pid"] != p["worker_pid"]
        assert p["returncode"] == 0 and p["device"].startswith("CPU")
    manifest = json.loads((out["dask"].dir / "manifest.json").read_text())
    assert manifest["stages"][1]["placement"] == placement
    for a, b in zip(_weights(out["dask"], "softmax"), _weights(out["horovodrun"], "softmax"), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # same global batches, same seed, 1 thread per rank


@pytest.mark.slow
def test_killed_dask_worker_fails_the_stage_naming_the_rank_and_resume_finishes(tmp_path):
    from pipelines.engines.dask_engine import DaskEngine

    stage = {**SOFTMAX, "model": "mlp", "epochs": 6, "launcher": "dask", "batch_size": 16}
    config = parse_config(digits_config(tmp_path, stage))
    engine = DaskEngine(DaskSettings(n_workers=2, threads_per_worker=1, memory_limit="3GB"))
    engine.start()
    try:
        pids = engine.client.run(os.getpid)
        victim = max(pids.values())
        checkpoints = tmp_path / "runs" / "digits-deep"

        def kill_after_first_checkpoint() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if list(checkpoints.glob("*/checkpoints/mlp/epoch-*")):
                    os.kill(victim, signal.SIGKILL)
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_after_first_checkpoint)
        killer.start()
        with pytest.raises(
            PipelineError, match=r"rank \d(: its Dask worker \S+ left the cluster| on \S+ \(Dask worker)"
        ):
            run_pipeline(config, engine=engine)
        killer.join()
        assert not psutil.pid_exists(victim)
    finally:
        engine.stop()
    failed = next(p for p in checkpoints.iterdir() if p.is_dir() and p.name != "jobs")
    leftover = [p for p in psutil.process_iter(["cmdline"]) if str(failed) in " ".join(p.info["cmdline"] or [])]
    deadline = time.monotonic() + 30
    while leftover and time.monotonic() < deadline:  # ranks notice their parent is gone within a second or two
        time.sleep(0.5)
        leftover = [p for p in leftover if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftover, "a rank outlived its task"
    engine = DaskEngine(DaskSettings(n_workers=2, threads_per_worker=1, memory_limit="3GB"))
    with engine:
        run, _ = run_pipeline(config, engine=engine, resume=failed)
    res = _results(run, "mlp")
    assert run.dir == failed and res["resumed_from"] >= 1
    assert [h["epoch"] for h in res["history"]] == list(range(1, 7))  # every epoch once


# --- Spark: a real standalone master with two one-core workers, spark-submit ------------------------------


@pytest.mark.slow
@pytest.mark.spark
def test_spark_submit_trains_in_the_executors_and_matches_horovodrun(tmp_path, dask_engine):
    with standalone(tmp_path, 7277) as (url, env, worker_jvms):
        conf = tmp_path / "deep.json"
        conf.write_text(json.dumps(digits_config(tmp_path / "spark", SOFTMAX, engine="spark")))
        done = submit(url, env, "run", str(conf))
        assert done.returncode == 0, done.stderr[-3000:]
    run_dir = (tmp_path / "spark" / "runs" / "digits-deep" / "latest").resolve()
    res = json.loads((run_dir / "deep" / "softmax" / "results.json").read_text())
    assert res["launcher"] == "spark" and res["rank_weight_max_abs_diff"] == 0.0
    placement = res["placement"]
    assert sorted(p["executor_id"] for p in placement) == ["0", "1"]  # one rank in each one-core executor
    for p in placement:  # rank <- task's Python worker <- ... <- executor JVM <- the standalone Worker JVM
        assert p["ppid"] == p["task_pid"] and p["returncode"] == 0 and p["device"].startswith("CPU")
        assert p["executor_parent_pid"] in worker_jvms and p["executor_pid"] not in (p["task_pid"], p["pid"])
    assert len({p["executor_pid"] for p in placement}) == 2
    horovodrun = parse_config(digits_config(tmp_path / "hvd", {**SOFTMAX, "launcher": "horovodrun"}))
    run, _ = run_pipeline(horovodrun, engine=dask_engine)
    import keras

    ours = keras.saving.load_model(run_dir / "deep" / "softmax" / "model.keras").get_weights()
    for a, b in zip(ours, _weights(run, "softmax"), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.spark
def test_killed_spark_executor_mid_training_is_survived_from_the_checkpoint(tmp_path):
    """Spark reruns a failed barrier stage as a whole; the new ranks resume from rank 0's newest checkpoint."""
    stage = {**SOFTMAX, "model": "mlp", "epochs": 6, "batch_size": 16, "launcher": "spark"}
    with standalone(tmp_path, 7377) as (url, env, _):
        conf = tmp_path / "deep.json"
        conf.write_text(json.dumps(digits_config(tmp_path, stage, engine="spark")))
        runs = tmp_path / "runs" / "digits-deep"
        killed = []

        def kill_one_executor_after_a_checkpoint() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                if list(runs.glob("*/checkpoints/mlp/epoch-*")):
                    for p in psutil.process_iter(["cmdline"]):
                        if "--executor-id" in (p.info["cmdline"] or []):
                            p.kill()
                            killed.append(p.pid)
                            return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_one_executor_after_a_checkpoint)
        killer.start()
        done = submit(url, env, "train", str(conf))
        killer.join()
    assert killed, "no executor was killed"
    run_dir = next(p for p in runs.iterdir() if p.is_dir() and p.name not in ("jobs", "latest"))
    if done.returncode != 0:  # the stage failed: one error line naming the lost executor's task, then each rank
        said = done.stdout + done.stderr  # spark-submit passes the driver's stderr on its stdout
        assert done.returncode == 5 and "error: training ranks failed:" in said, said[-2000:]
        assert "barrier task" in said and "rank 0:" in said and "rank 1:" in said
        with standalone(tmp_path, 7378) as (url, env, _):
            done = submit(url, env, "train", "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((run_dir / "deep" / "mlp" / "results.json").read_text())
    assert res["resumed_from"] is not None and res["resumed_from"] >= 1
    assert [h["epoch"] for h in res["history"]] == list(range(1, 7))  # every epoch once


def test_gpu_settings_render_into_spark_conf_worker_arguments_and_job_scripts():
    from pipelines.launch.config import JobqueueSettings
    from pipelines.launch.jobqueue import cluster_kwargs
    from pipelines.launch.ranks import spark_gpu_conf

    conf = spark_gpu_conf(gpus_per_executor=4, gpus_per_task=1, discovery_script="/opt/spark/getGpus.sh")
    assert conf == {
        "spark.executor.resource.gpu.amount": "4",
        "spark.task.resource.gpu.amount": "1",
        "spark.executor.resource.gpu.discoveryScript": "/opt/spark/getGpus.sh",
    }
    kw = cluster_kwargs(JobqueueSettings(cores=8, memory="64GB", gpus=2, walltime="02:00:00"))
    assert "--resources GPU=2" in " ".join(kw["worker_extra_args"])
    assert "--gres=gpu:2" in kw["job_extra_directives"]


_ = RankJob  # the job type the engines take (imported so a rename breaks this module's collection)
