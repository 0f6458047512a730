"""Run-level faults with real processes (docs/FAULTS.md, "Run-level failures"): the driver SIGKILLed mid-run
and resumed, a disk that fills, a Dask worker retired by `--lifetime` on a real SLURM, runs started at once."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import PIPELINES, cli, group, reaped, run_dirs, start

from pipelines.config import load_config
from pipelines.runs import corrupt_outputs
from pipelines.runs.run import LEFTOVER

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LOCK_BUSY = 5  # pipelines.errors: a run that failed for another reported reason (a held lock)
ENVIRONMENT = 4


# --- helpers ------------------------------------------------------------------------------------------------


def softmax_config(runs: Path) -> dict:
    """Digits ingest and a multinomial logistic regression by L-BFGS (256 passes over blocks held on the workers)."""
    data = load_config(ROOT / "conf" / "digits_classical.yaml").model_dump(mode="json")
    data["stages"] = data["stages"][:2]
    data["stages"][1]["params"].update(solver="lbfgs", max_iter=400, tol=0.0)
    data["stages"][1]["plots"] = False
    data["engine"]["in_process_mb"] = 0  # the fit's passes on the workers, however small the data
    return {**data, "runs_dir": str(runs)}


def bundled(name: str, runs: Path) -> dict:
    """A bundled config (conf/<name>.yaml) writing under `runs`."""
    return {**load_config(ROOT / "conf" / f"{name}.yaml").model_dump(mode="json"), "runs_dir": str(runs)}


def write_conf(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def kill_driver_when(proc: subprocess.Popen, ready: Callable[[], Path | None], timeout: float = 240) -> Path:
    """SIGKILL the driver (only it, not its Dask workers) once `ready()` returns a path; return that path."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = ready()
        if found is not None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return found
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed"
        time.sleep(0.01)
    raise AssertionError(f"not ready to kill after {timeout}s")


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def stages(run_dir: Path) -> list[tuple[str, str]]:
    return [(s["name"], s["status"]) for s in manifest(run_dir)["stages"]]


def intact(run_dir: Path) -> None:
    """A succeeded run whose every recorded output still matches its checksums."""
    recorded = manifest(run_dir)
    assert recorded["status"] == "succeeded", run_dir
    assert recorded["outputs"] and corrupt_outputs(run_dir, recorded) == [], run_dir


def split(run_dir: Path, name: str) -> pd.DataFrame:
    """A written split by content: rows sorted by source and row, whatever the part files."""
    frame = pd.read_parquet(run_dir / "data" / name)
    return frame.sort_values(["_source", "_row"], kind="stable").reset_index(drop=True)


def untimed(metrics: Any, skip: tuple[str, ...] = ()) -> Any:
    """Metrics without wall times (they differ between any two runs) and the `skip` keys."""
    if isinstance(metrics, dict):
        return {k: untimed(v, skip) for k, v in metrics.items() if not k.endswith("seconds") and k not in skip}
    return metrics


def assert_same_outputs(run_dir: Path, reference: Path, model: str = "softmax", skip: tuple[str, ...] = ()) -> None:
    """The same splits (by content), model coefficients within 1e-10 and metrics as the reference run."""
    intact(run_dir)
    for name in ("train", "test"):
        pd.testing.assert_frame_equal(split(run_dir, name), split(reference, name))
    with (
        np.load(run_dir / "models" / model / "arrays.npz") as ours,
        np.load(reference / "models" / model / "arrays.npz") as ref,
    ):
        assert sorted(ours.files) == sorted(ref.files)
        for key in ref.files:
            if np.issubdtype(ref[key].dtype, np.number):
                np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=1e-10, err_msg=key)
            else:
                np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
    ours_m, ref_m = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert untimed(ours_m, skip) == untimed(ref_m, skip)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An undisturbed run of the softmax pipeline."""
    tmp = tmp_path_factory.mktemp("reference")
    done = cli(write_conf(tmp / "conf.json", softmax_config(tmp / "runs")))
    assert done.returncode == 0, done.stderr[-3000:]
    return (tmp / "runs" / "digits-classical" / "latest").resolve()


# --- 1. the driver SIGKILLed mid-run ------------------------------------------------------------------------


def _killed_then_resumed(tmp_path: Path, ready: Callable[[Path], Path | None]) -> tuple[Path, dict]:
    runs = tmp_path / "runs"
    conf = write_conf(tmp_path / "conf.json", softmax_config(runs))

    def found() -> Path | None:
        dirs = run_dirs(runs, "digits-classical")
        return ready(dirs[0]) if dirs else None

    with reaped(start(conf)) as proc:
        run_dir = kill_driver_when(proc, found)
        at_kill = manifest(run_dir)
        deadline = time.time() + 30  # the Dask workers notice their driver is gone and leave by themselves
        while time.time() < deadline and group(proc.pid):
            time.sleep(0.2)
        assert group(proc.pid) == [], "Dask worker processes outlived their killed driver"
    assert at_kill["status"] == "running" and not (runs / "digits-classical" / "latest").exists()
    done = cli(conf, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_dirs(runs, "digits-classical") == [run_dir]  # the killed run was continued, no new one
    assert [p for p in run_dir.rglob(".*") if LEFTOVER.match(p.name)] == []  # temp folders of cut writes removed
    assert (runs / "digits-classical" / "latest").resolve() == run_dir
    return run_dir, at_kill


def test_driver_killed_during_ingest_resumes_to_the_outputs_of_an_undisturbed_run(tmp_path, reference):
    def writing_splits(run_dir: Path) -> Path | None:
        return run_dir if (run_dir / "data").exists() else None  # made when the first split starts to be written

    run_dir, at_kill = _killed_then_resumed(tmp_path, writing_splits)
    assert [(s["name"], s["status"]) for s in at_kill["stages"]] == [("ingest", "running")]
    assert stages(run_dir) == [("ingest", "interrupted"), ("ingest", "succeeded"), ("softmax", "succeeded")]
    assert_same_outputs(run_dir, reference)


def test_driver_killed_during_a_model_fit_resumes_without_ingesting_again(tmp_path, reference):
    def fitting(run_dir: Path) -> Path | None:
        log = run_dir / "logs" / "run.log"
        return run_dir if log.exists() and "fitting logistic_regression" in log.read_text() else None

    run_dir, at_kill = _killed_then_resumed(tmp_path, fitting)
    assert [(s["name"], s["status"]) for s in at_kill["stages"]] == [("ingest", "succeeded"), ("softmax", "running")]
    assert "models/softmax" not in at_kill["outputs"]
    assert stages(run_dir) == [("ingest", "succeeded"), ("softmax", "interrupted"), ("softmax", "succeeded")]
    assert "resume: ingest restored" in (run_dir / "logs" / "run.log").read_text()  # ingest ran once
    assert_same_outputs(run_dir, reference)


# --- 2. a disk that fills -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real 3 MiB tmpfs (root only; skipped where mounting is not permitted), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    argv = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file taking all but `leave` bytes of the disk."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    ballast = disk / f"ballast-{len(list(disk.glob('ballast-*')))}"
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return ballast


def the_error(stderr: str) -> str:
    """The one line a failed command ends with (before it only progress lines: no traceback, no logging noise)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
    assert [line for line in lines if "error" in line] == lines[-1:], stderr[-3000:]
    return lines[-1]


def test_a_full_disk_ends_the_run_in_one_line_and_leaves_the_earlier_run_intact(small_disk, tmp_path):
    runs = small_disk / "runs"
    conf = write_conf(tmp_path / "fair.json", bundled("fair", runs))
    assert cli(conf).returncode == 0
    first = (runs / "fair" / "latest").resolve()
    before = (first / "manifest.json").read_text()
    intact(first)

    # room for the run's config and manifest, not for its data: the ingest stage fails, the run is marked failed
    ballasts = [fill(small_disk, leave=96 * 1024)]
    out = cli(conf)
    line = the_error(out.stderr)
    assert out.returncode == ENVIRONMENT, line
    where = re.escape(str(runs / "fair"))
    assert re.fullmatch(rf"environment error: no space left on device writing {where}/[^/\s]+/data/\w+", line), line
    failed = next(p for p in run_dirs(runs, "fair") if p != first)
    recorded = manifest(failed)
    assert recorded["status"] == "failed" and "no space left on device writing" in recorded["error"]
    assert [(s["name"], s["status"]) for s in recorded["stages"]] == [("ingest", "failed")]
    assert corrupt_outputs(failed, recorded) == []  # whatever it recorded is whole; the rest was removed
    assert (runs / "fair" / "latest").resolve() == first
    assert (first / "manifest.json").read_text() == before
    intact(first)

    # no room at all, not even for a manifest: the run never looks succeeded, nothing earlier is touched
    ballasts.append(fill(small_disk, leave=0))
    out = cli(conf)
    line = the_error(out.stderr)
    assert out.returncode == ENVIRONMENT and line.startswith("environment error: no space left on device writing "), (
        line
    )
    newest = [p for p in run_dirs(runs, "fair") if p not in (first, failed)]
    assert all(manifest(p)["status"] != "succeeded" for p in newest)  # (a run that could not start left nothing)
    assert (runs / "fair" / "latest").resolve() == first
    assert (first / "manifest.json").read_text() == before
    intact(first)

    # room again: --resume finishes the failed run
    for ballast in ballasts:
        ballast.unlink()
    out = cli(conf, "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    latest = (runs / "fair" / "latest").resolve()
    assert latest != first
    intact(latest)
    intact(first)


# --- 3. a Dask worker retired by --lifetime on a real SLURM -------------------------------------------------


RETIRED = re.compile(
    r"^(\S+ \S+) - distributed\.worker - INFO - Closing worker gracefully: .*worker-lifetime-reached", re.M
)


def test_a_worker_retired_by_its_lifetime_mid_stage_hands_its_work_on(slurm, tmp_path, reference):
    logs = tmp_path / "worker-logs"
    # half the time the undisturbed run's stages took here: workers retire mid-run on a fast machine or a slow one,
    # yet live longer than any one task (a task cut short on 4 workers in a row fails the run: Dask's KilledWorker)
    life = max(6, round(sum(s["seconds"] for s in manifest(reference)["stages"]) / 2))
    jobqueue = {
        "cores": 1,
        "memory": "1GB",
        "walltime": "00:10:00",
        "queue": "debug",
        "interface": "auto",
        "log_directory": str(logs),
        "jobs": 2,
        "lifetime": f"{life // 60}:{life % 60:02d}",
        "lifetime_stagger": f"0:{max(1, life // 5):02d}",
    }
    data = softmax_config(tmp_path / "runs")
    data["engine"]["dask"] = {"jobqueue": jobqueue}
    conf = write_conf(tmp_path / "conf.json", data)
    env = {**os.environ, "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "1s"}  # Dask forgets a gone worker soon
    done = subprocess.run([PIPELINES, "run", str(conf)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = (tmp_path / "runs" / "digits-classical" / "latest").resolve()
    assert manifest(run_dir)["engine"]["jobqueue"] == "slurm"
    retired = [
        dt.datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f")
        for f in logs.glob("*.err")
        for m in RETIRED.findall(f.read_text())
    ]
    entries = manifest(run_dir)["stages"]
    spans = [(dt.datetime.fromisoformat(s["started"]), dt.datetime.fromisoformat(s["finished"])) for s in entries]
    mid = [t for t in retired for a, b in spans if a <= t.replace(tzinfo=dt.UTC) <= b]
    assert mid, (retired, spans)
    assert len(list(logs.glob("*.err"))) > 2  # retired workers' jobs were replaced by new ones
    assert_same_outputs(run_dir, reference)


# --- 4. runs started at the same moment ---------------------------------------------------------------------


def test_two_runs_of_one_pipeline_at_once_one_runs_and_the_other_stops_with_the_lock_message(tmp_path):
    runs = tmp_path / "runs"
    conf = write_conf(tmp_path / "fair.json", bundled("fair", runs))
    errs = [tmp_path / f"err-{i}" for i in range(2)]
    procs = [start(conf, err=err) for err in errs]
    with reaped(procs[0]), reaped(procs[1]):
        codes = [p.wait(300) for p in procs]
    assert sorted(codes) == [0, LOCK_BUSY], [e.read_text()[-2000:] for e in errs]
    loser = errs[codes.index(LOCK_BUSY)].read_text()
    assert re.fullmatch(
        r"error: another run of pipeline 'fair' is in progress \(pid \d+ on \S+ since \S+\); "
        r"it was not started again \(use --wait to queue behind it\)",
        the_error(loser),
    ), loser
    (only,) = run_dirs(runs, "fair")  # the stopped run left no run directory
    assert (runs / "fair" / "latest").resolve() == only
    intact(only)


def test_runs_queued_with_wait_and_another_pipeline_beside_them_do_not_interfere(tmp_path):
    runs = tmp_path / "runs"
    fair = write_conf(tmp_path / "fair.json", bundled("fair", runs))
    other = write_conf(tmp_path / "breast.json", bundled("breast_cancer", runs))
    errs = [tmp_path / f"err-{i}" for i in range(3)]
    procs = [start(fair, "--wait", err=errs[0]), start(fair, "--wait", err=errs[1]), start(other, err=errs[2])]
    with reaped(procs[0]), reaped(procs[1]), reaped(procs[2]):
        codes = [p.wait(400) for p in procs]
    assert codes == [0, 0, 0], [e.read_text()[-2000:] for e in errs]
    a, b = sorted(run_dirs(runs, "fair"), key=lambda d: manifest(d)["started"])
    assert manifest(a)["finished"] <= manifest(b)["started"]  # the second waited for the first to end
    assert (runs / "fair" / "latest").resolve() == b
    (cancer,) = run_dirs(runs, "breast-cancer")
    assert (runs / "breast-cancer" / "latest").resolve() == cancer
    for run_dir in (a, b, cancer):
        intact(run_dir)
    assert_same_outputs(b, a, model="lm")


def test_a_file_size_limit_is_named_like_a_full_disk(tmp_path):
    """RLIMIT_FSIZE (`ulimit -f`: EFBIG), the check that runs where a tmpfs cannot be mounted: the same error kind."""
    target = tmp_path / "out" / "big.bin"
    script = f"""
import resource
from pipelines.atomic import atomic_write_bytes
from pipelines.errors import EnvironmentProblem
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    atomic_write_bytes({str(target)!r}, b"x" * 100_000)
except EnvironmentProblem as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == f"file too large writing {target}", out.stderr[-2000:]
    assert list(target.parent.iterdir()) == []  # the temp file went with the failed write
