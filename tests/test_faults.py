"""Engine faults survived, with real processes: a Dask worker, a Spark Python worker and a Spark executor JVM
killed (SIGKILL) inside the ingest stage and inside a model fit.

Each faulted run is compared with an undisturbed run of the same config: the same rows in data/{train,val,test}
(by content, sorted by source and row) and model coefficients within 1e-10. Where the engine's retries run out,
the command ends with one line and exit code 5, nothing partial is left looking complete, and
`pipelines run --resume` finishes the run with the same outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from spark_standalone import standalone, submit

from pipelines.atomic import checksum_tree
from pipelines.data.synthetic import generate

pytestmark = pytest.mark.slow

PIPELINES = str(Path(sys.executable).parent / "pipelines")
NAME = "faults"
MODEL = "logit"
ROWS, FEATURES, PARTS = 240_000, 12, 4
SPLITS = ("train", "val", "test")
RETRIES = 4  # attempts per task: Spark's local[*,4] and spark.task.maxFailures, Dask's allowed-failures + 1
KILL_ALL = 1000  # kills allowed when each new worker is to die until the engine gives up


# --- the pipeline and its runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """Generated classification data: several seconds of ingest on either engine."""
    return generate(tmp_path_factory.mktemp("synth") / "data", rows=ROWS, features=FEATURES, parts=PARTS, seed=5)


def write_config(folder: Path, data: Path, engine: str) -> Path:
    """One pipeline: ingest (train/val/test splits) and a logistic regression."""
    folder = folder.resolve()
    dataset = {"name": "synth", "format": "parquet", "path": str(Path(data).resolve()), "formula": "y ~ ."}
    config = {
        "name": NAME,
        "runs_dir": str(folder / "runs"),
        "engine": {"kind": engine, "partitions": PARTS, "in_process_mb": 0},  # the fit on the workers
        "dataset": {**dataset, "types": {"y": "int"}},
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 1}},
            {
                "stage": "model",
                "name": MODEL,
                "model": "logistic_regression",
                "plots": False,
            },
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "conf.json"
    path.write_text(json.dumps(config))
    return path


def environment(folder: Path) -> dict[str, str]:
    """The command's environment: engine logs in the test's folder."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PIPELINES_LOG_DIR": str(folder / "logs")}


@dataclass
class Command:
    """`pipelines run CONF ARGS` started as a child process, its output in a file beside the config."""

    conf: Path
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.output = self.conf.parent / f"out-{time.monotonic_ns()}.txt"
        with open(self.output, "w") as out:
            argv = [PIPELINES, "run", str(self.conf), *self.args]
            self.proc = subprocess.Popen(
                argv, cwd=self.conf.parent, env=environment(self.conf.parent), stdout=out, stderr=out
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self, timeout: float = 420) -> tuple[int, str]:
        """Wait for it: (exit code, its output). A command that outlives the timeout is killed with its children."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for proc in _descendants(self.pid):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            self.proc.kill()
            self.proc.wait()
            raise
        return code, self.output.read_text()


def only_run(folder: Path) -> Path:
    """The one run directory of the pipeline under folder/runs."""
    runs = [p for p in (folder / "runs" / NAME).iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, runs
    return runs[0]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def stage_status(run: Path, stage: str) -> str | None:
    """The newest manifest entry's status for a stage (None before it started)."""
    try:
        entries = [s for s in manifest(run)["stages"] if s["name"] == stage]
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return entries[-1]["status"] if entries else None


def splits(run: Path) -> dict[str, pd.DataFrame]:
    """The written splits by content, sorted by (source, row)."""
    out = {}
    for name in SPLITS:
        folder = run / "data" / name
        if folder.exists():
            frame = pq.read_table(folder).to_pandas()
            out[name] = frame.sort_values(["_source", "_row"], kind="stable").reset_index(drop=True)
    return out


def coefficients(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "models" / MODEL / "arrays.npz", allow_pickle=False) as arrays:
        return {key: arrays[key] for key in ("coef_", "intercept_")}


def assert_same_outputs(run: Path, reference: Path) -> None:
    """Same rows in every split and coefficients within 1e-10 of the undisturbed run."""
    got, want = splits(run), splits(reference)
    assert sorted(got) == sorted(want) == sorted(SPLITS)
    for name in SPLITS:
        assert len(got[name]) == len(want[name]), name
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
    assert sum(len(f) for f in got.values()) == ROWS
    ours, theirs = coefficients(run), coefficients(reference)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-10)


def assert_nothing_partial(run: Path) -> None:
    """Every output folder that exists has recorded checksums that match it; no unrecorded output folder."""
    recorded = manifest(run)["outputs"]
    present = [f"{top}/{d.name}" for top in ("data", "models") if (run / top).exists() for d in (run / top).iterdir()]
    for name in present:
        assert name in recorded, f"{name} exists without recorded checksums"
        assert checksum_tree(run / name) == recorded[name], name
    assert not list(run.rglob(".*.tmp-*"))  # no temp folder left behind


@pytest.fixture(scope="module")
def baseline(synth, tmp_path_factory) -> Callable[[str], Path]:
    """The undisturbed run of an engine kind's config (made on first use)."""
    made: dict[str, Path] = {}

    def run(engine: str) -> Path:
        if engine not in made:
            conf = write_config(tmp_path_factory.mktemp(f"base-{engine}"), synth, engine)
            code, text = Command(conf).finish()
            assert code == 0, text[-3000:]
            made[engine] = only_run(conf.parent)
        return made[engine]

    return run


# --- processes to kill ------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


class DaskWorkers:
    """Worker processes of the LocalCluster a command started, found through its scheduler (the address in the
    manifest; `client.run(os.getpid)` gives their pids): those running tasks first, then those holding data."""

    def __init__(self, folder: Path, holding: bool = False) -> None:
        self.folder, self.holding = folder, holding
        self.client = None

    def __call__(self, command: Command | None = None) -> list[psutil.Process]:
        from distributed import Client

        try:
            if self.client is None:
                run = next((self.folder / "runs" / NAME).glob("*/manifest.json")).parent
                self.client = Client(manifest(run)["engine"]["scheduler"], timeout=30, set_as_default=False)
            busy = {worker for worker, keys in self.client.processing().items() if keys}
            held = {worker: len(keys) for worker, keys in self.client.has_what().items()}
            pids = self.client.run(os.getpid, on_error="ignore")
        except Exception:  # a worker leaving while we ask, or the cluster gone: none now
            return []
        chosen = [w for w in pids if w in busy or (self.holding and held.get(w))]
        chosen.sort(key=lambda w: (w in busy, held.get(w, 0)), reverse=True)
        return [psutil.Process(pids[w]) for w in chosen]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def spark_python_workers(command: Command) -> list[psutil.Process]:
    """Python workers under the command's JVM: the processes pyspark.daemon forked."""
    procs = _descendants(command.pid)
    daemons = {p.pid for p in procs if "pyspark.daemon" in _cmdline(p)}
    return [p for p in procs if p.pid in daemons and p.ppid() in daemons]


def executor_jvms(worker_jvms: list[int]) -> list[psutil.Process]:
    """The executor JVMs the standalone workers launched."""
    return [p for w in worker_jvms for p in _descendants(w) if "CoarseGrainedExecutorBackend" in _cmdline(p)]


def _busiest(procs: list[psutil.Process], window: float = 0.25) -> psutil.Process | None:
    """The process that used the most CPU over a short window (None when none is working)."""

    def cpu(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return -1.0

    before = {p: cpu(p) for p in procs}
    time.sleep(window)
    used = {p: cpu(p) - t for p, t in before.items() if t >= 0}
    best = max(used, key=used.get, default=None)
    return best if best is not None and used[best] > 0.1 * window else None


# The run-log line each stage writes just before its engine work starts: the moment to kill.
STARTED = {"ingest": "records in", MODEL: "fitting logistic_regression"}


@dataclass
class Killer:
    """A thread that SIGKILLs processes inside stages: in each of `stages` in turn, once it is running and has
    logged its STARTED line, the busiest victim (the first when not `busy`), `times` times or until stopped."""

    folder: Path
    stages: tuple[str, ...]
    victims: Callable[[], list[psutil.Process]]
    times: int = 1
    busy: bool = True
    timeout: float = 300
    kills: list[tuple[str, int, str | None]] = field(default_factory=list)  # (stage, pid, its status just after)
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _started(self, stage: str) -> Path | None:
        """The run directory once the stage is running and has logged its STARTED line."""
        found = list((self.folder / "runs" / NAME).glob("*/manifest.json"))
        if not found or stage_status(found[0].parent, stage) != "running":
            return None
        log = found[0].parent / "logs" / "run.log"
        text = log.read_text() if log.exists() else ""
        return found[0].parent if STARTED[stage] in text.split(f"stage {stage} started")[-1] else None

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        for stage in self.stages:
            killed = 0
            while time.monotonic() < deadline and not self.done.is_set() and killed < self.times:
                run = self._started(stage)
                try:
                    victims = self.victims() if run is not None else []
                except psutil.Error:  # a process ended while we looked
                    victims = []
                victim = _busiest(victims, 0.1) if self.busy else (victims[0] if victims else None)
                if victim is None:
                    time.sleep(0.02)
                    continue
                try:
                    victim.kill()
                except psutil.NoSuchProcess:
                    continue
                killed += 1
                self.kills.append((stage, victim.pid, stage_status(run, stage)))

    def stop(self) -> list[tuple[str, int, str | None]]:
        self.done.set()
        self.thread.join(30)
        return self.kills


BOTH = ("ingest", MODEL)


def survived(conf: Path, victims: Callable[[Command], list[psutil.Process]], busy: bool = True) -> Path:
    """Run the config, kill one process inside ingest and one inside the fit; the run succeeds. Its directory."""
    command = Command(conf)
    killer = Killer(conf.parent, BOTH, lambda: victims(command), busy=busy)
    code, text = command.finish()
    kills = killer.stop()
    assert [(stage, status) for stage, _, status in kills] == [(s, "running") for s in BOTH], (kills, text[-2000:])
    assert code == 0, text[-3000:]
    run = only_run(conf.parent)
    assert manifest(run)["status"] == "succeeded"
    return run


# --- Dask: a LocalCluster worker killed ---------------------------------------------------------------------


def test_dask_workers_killed_inside_ingest_and_the_fit_are_replaced_and_the_outputs_are_the_same(
    synth, baseline, tmp_path
):
    # In the fit a pass takes milliseconds: the worker holding the most model blocks is the one to kill.
    victims = DaskWorkers(tmp_path, holding=True)
    try:
        run = survived(write_config(tmp_path, synth, "dask"), victims, busy=False)
    finally:
        victims.close()
    assert (run / "logs" / "run.log").read_text().count("Restarting worker") == 2  # their nannies started new ones
    assert_same_outputs(run, baseline("dask"))


# --- Spark local mode: a Python worker killed ---------------------------------------------------------------


def test_spark_python_workers_killed_inside_ingest_and_the_fit_are_retried_and_the_outputs_are_the_same(
    synth, baseline, tmp_path
):
    run = survived(write_config(tmp_path, synth, "spark"), spark_python_workers)
    assert manifest(run)["engine"]["master"] == "local[*,4]"
    spark_log = Path(manifest(run)["engine"]["log"]).read_text()
    assert spark_log.count("Python worker exited unexpectedly") >= 2  # tasks failed and were run again
    assert_same_outputs(run, baseline("spark"))


# --- retries run out: one line, nothing partial, --resume completes ------------------------------------------


@pytest.mark.parametrize(
    ("engine", "said"),
    [
        ("spark", f"spark gave up on a task after {RETRIES} attempts: "),  # the last: crashed, not started, ...
        ("dask", f": {RETRIES} workers died running it"),
    ],
    ids=["spark", "dask"],
)
def test_workers_killed_beyond_the_retries_end_the_run_in_one_line_and_resume_completes_it(
    engine, said, synth, baseline, tmp_path
):
    conf = write_config(tmp_path, synth, engine)
    victims = spark_python_workers if engine == "spark" else DaskWorkers(tmp_path)
    command = Command(conf)
    # Every Python worker or running worker is killed as soon as it is seen, until the engine gives up.
    killer = Killer(conf.parent, ("ingest",), lambda: victims(command), times=KILL_ALL, busy=False)
    try:
        code, text = command.finish()
    finally:
        kills = killer.stop()
        if isinstance(victims, DaskWorkers):
            victims.close()
    assert kills and code == 5, (kills, text[-3000:])
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1].startswith("engine error: ") and said in lines[-1], text[-3000:]
    assert not [line for line in lines if "Traceback" in line or "distributed." in line or "org.apache" in line]
    run = only_run(tmp_path)
    assert manifest(run)["status"] == "failed" and stage_status(run, "ingest") == "failed"
    assert_nothing_partial(run)
    code, text = Command(conf, ("--resume",)).finish()
    assert code == 0, text[-3000:]
    assert only_run(tmp_path) == run and manifest(run)["status"] == "succeeded"
    assert_same_outputs(run, baseline(engine))


# --- a Spark standalone cluster: an executor JVM killed -------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone master and two one-core workers (the runs get one executor on each): (url, environment, worker
    JVM pids, its folder)."""
    folder = tmp_path_factory.mktemp("standalone")
    with standalone(folder, 7291) as started:
        yield (*started, folder)


def submitted(cluster, conf: Path) -> subprocess.CompletedProcess:
    """spark-submit `pipelines run CONF` to the cluster."""
    url, env, _, _ = cluster
    return submit(url, {**env, "PIPELINES_LOG_DIR": str(conf.parent / "logs")}, "run", str(conf))


@pytest.fixture(scope="module")
def standalone_baseline(cluster, synth, tmp_path_factory) -> Path:
    conf = write_config(tmp_path_factory.mktemp("base-standalone"), synth, "spark")
    done = submitted(cluster, conf)
    assert done.returncode == 0, done.stderr[-3000:]
    return only_run(conf.parent)


def test_standalone_executors_killed_inside_ingest_and_the_fit_are_replaced_and_the_outputs_are_the_same(
    cluster, synth, standalone_baseline, tmp_path
):
    conf = write_config(tmp_path, synth, "spark")
    killer = Killer(tmp_path, BOTH, lambda: executor_jvms(cluster[2]))
    done = submitted(cluster, conf)
    kills = killer.stop()
    assert [(stage, status) for stage, _, status in kills] == [(s, "running") for s in BOTH], kills
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(tmp_path)
    assert manifest(run)["status"] == "succeeded" and manifest(run)["engine"]["master"] == cluster[0]
    app = manifest(run)["engine"]["app_id"]
    master_log = (cluster[3] / "spark-master.log").read_text()
    assert master_log.count(f"Removing executor {app}/") == 2  # each killed executor left, and was replaced:
    assert master_log.count(f"Launching executor {app}/") == 4
    assert_same_outputs(run, standalone_baseline)
