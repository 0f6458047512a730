"""Sweeps as SLURM/PBS job arrays (launch/array.py): the cap, non-contiguous resumes, requeue and resubmission on a
real SLURM, a 27-trial sweep submitted with `pipelines submit --array` (driver killed mid-sweep and resumed), and
the PBS script with hostile values."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from pipelines.errors import ConfigError, PipelineError
from pipelines.launch.array import render_array, run_array
from pipelines.launch.config import ArraySettings
from pipelines.launch.schedulers import index_list

PY = sys.executable
HOSTILE = "$(touch /tmp/pipelines-pwned); echo 'single' \"double\" `id` ; exit 7"

# One array task: records each attempt (array job id, SLURM restart count), may cancel itself or wait to be
# preempted on its first attempt (plan.json), then sleeps and writes <index>.done with its start and end times.
TASK = """
import json, os, subprocess, sys, time
from pathlib import Path
out, index = Path(sys.argv[1]), int(sys.argv[2])
plan = json.loads((out / "plan.json").read_text())
attempts = out / f"{index}.attempts"
first = not attempts.exists()
with attempts.open("a") as f:
    f.write(f"{os.environ['SLURM_ARRAY_JOB_ID']} {os.environ.get('SLURM_RESTART_COUNT', '0')}\\n")
start = time.time()
if first and index in plan["cancel"]:  # as a walltime kill: SLURM does not requeue it, the driver resubmits
    subprocess.run(["scancel", f"{os.environ['SLURM_ARRAY_JOB_ID']}_{index}"], check=True)
    time.sleep(60)
if first and index in plan["preempt"]:  # the test requeues it while it runs, as a preemption would
    (out / f"{index}.waiting").touch()
    time.sleep(60)
time.sleep(plan["sleep"])
(out / f"{index}.done").write_text(json.dumps({"start": start, "end": time.time()}))
"""


# The 27-trial grid shape (3 x 3 x 3) on a small real data set; one fit takes well under a second.
SWEEP = {
    "name": "sweep-array",
    "engine": {"kind": "dask", "partitions": 2},
    "dataset": {
        "name": "breast-cancer",
        "format": "csv",
        "path": "bundled:breast-cancer",
        "formula": "target ~ mean_radius + mean_texture + mean_smoothness + mean_compactness + mean_symmetry",
        "types": {"target": "int"},
    },
    "stages": [
        {"stage": "ingest", "split": {"test_fraction": 0.25, "seed": 3}, "write": True},
        {
            "stage": "sweep",
            "target": {"stage": "model", "model": "logistic_regression"},
            "grid": {
                "params.C": [0.01, 1.0, 100.0],
                "params.tol": [1e-4, 1e-3, 1e-2],
                "params.max_iter": [50, 100, 400],
            },
            "metric": "test_accuracy",
            "plots": False,
            "array": {"max_concurrent": 4, "walltime": "00:10:00"},
        },
    ],
}


@pytest.fixture(scope="module")
def wide_slurm(tmp_path_factory):
    """A real single-node SLURM whose node offers 8 CPUs (more than the cap of 4 the tests set) on this machine."""
    from slurm import LocalSlurm, missing

    why = missing()
    if why:
        pytest.skip(f"real SLURM unavailable: {why}")

    class Wide(LocalSlurm):
        def write_conf(self) -> None:
            super().write_conf()  # let slurmd take the configured CPUs, not the 2 it detects
            self.conf.write_text(self.conf.read_text() + "SlurmdParameters=config_overrides\n")

    cluster = Wide(tmp_path_factory.mktemp("slurm"), cpus=8).start()
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    os.environ.pop("SLURM_CONF", None)


def _task(tmp_path: Path, cancel=(), preempt=(), sleep: float = 1.0) -> tuple[list[str], Path]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps({"cancel": list(cancel), "preempt": list(preempt), "sleep": sleep}))
    (tmp_path / "task.py").write_text(TASK)
    return [PY, str(tmp_path / "task.py"), str(out)], out


def _done(out: Path):
    return lambda i: (out / f"{i}.done").exists()


def _peak(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def _submissions(workdir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(workdir.glob("array-*/array.json"))]


# --- without a scheduler ---------------------------------------------------------------------------------


def test_index_lists_are_compact_and_pbs_arrays_are_ranges_over_an_indices_file():
    assert index_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert index_list([20, 3]) == "3,20"
    settings = ArraySettings(max_concurrent=3)
    script = render_array("pbs", [2, 5, 9], ["x"], Path("/tmp/j"), settings, cwd=Path("/tmp"))
    assert "#PBS -J 0-2%3\n" in script and "#PBS -r y\n" in script
    one = render_array("pbs", [7], ["x"], Path("/tmp/j"), ArraySettings(requeue=False), cwd=Path("/tmp"))
    assert "#PBS -J 0-1\n" in one and "#PBS -r n\n" in one  # PBS Pro refuses one-task arrays: task 1 has no line
    slurm = render_array("slurm", [3, 5, 7, 8, 9], ["x"], Path("/tmp/j"), settings, cwd=Path("/tmp"))
    assert "#SBATCH --array=3,5,7-9%3\n" in slurm and "#SBATCH --requeue\n" in slurm
    with pytest.raises(PipelineError, match="distinct"):
        render_array("slurm", [1, 1], ["x"], Path("/tmp/j"), settings, cwd=Path("/tmp"))


@pytest.mark.parametrize("scheduler", ["pbs", "slurm"])
def test_array_script_keeps_hostile_values_inert_and_runs_the_task_of_its_index(scheduler, tmp_path):
    settings = ArraySettings(max_concurrent=2, env={"X": HOSTILE}, modules=[], walltime="00:05:00", mem="1G")
    record = "import sys, os, pathlib; pathlib.Path(sys.argv[1]).write_text(repr(sys.argv[2:]) + os.environ['X'])"
    command = [PY, "-c", record, str(tmp_path / "got it"), HOSTILE]
    jobdir = tmp_path / "job"
    script = render_array(scheduler, [2, 5, 9], command, jobdir, settings, cwd=tmp_path)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    directives = [line for line in script.splitlines() if line.startswith("#PBS" if scheduler == "pbs" else "#SBATCH")]
    assert any(("-J 0-2%2" if scheduler == "pbs" else "--array=2,5,9%2") in d for d in directives), directives
    words = shlex.split(script.rstrip().splitlines()[-1])  # the task's command: each value one word
    assert words[: len(command)] == command and words[len(command)] == "$IDX"
    jobdir.mkdir()
    (jobdir / "indices.txt").write_text("2\n5\n9\n")
    env = {**os.environ, "PBS_ARRAY_INDEX": "1", "PBS_JOBID": "1[1].pbs", "SLURM_ARRAY_TASK_ID": "5"}
    env["SLURM_ARRAY_JOB_ID"] = "1"
    ran = subprocess.run(["bash"], input=script, text=True, capture_output=True, env=env)  # directives: comments
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "got it").read_text() == repr([HOSTILE, "5"]) + HOSTILE  # index 5: line 2 of indices.txt
    assert (jobdir / "logs" / "5.log").read_text().startswith("index 5, job ")
    assert not Path("/tmp/pipelines-pwned").exists()
    for bad in ({"partition": "debug; rm -rf /"}, {"walltime": "$(id)"}, {"extra_directives": ["-l x\n#PBS -W y"]}):
        with pytest.raises(ValueError, match="pattern"):
            ArraySettings(**bad)
    changed = ArraySettings()
    changed.account = "abc\nrm -rf ~"  # set after validation: render checks again
    with pytest.raises(ConfigError, match="array"):
        render_array(scheduler, [1], command, jobdir, changed, cwd=tmp_path)


def test_submit_array_writes_a_driver_job_that_makes_every_sweep_an_array(tmp_path, capsys):
    import yaml

    from pipelines.cli import main

    conf = tmp_path / "sweep.yaml"
    conf.write_text(yaml.safe_dump({**SWEEP, "runs_dir": str(tmp_path / "runs")}))
    for scheduler in ("slurm", "pbs"):
        argv = ["submit", str(conf), "--array", "--scheduler", scheduler, "--dry-run", "--resume"]
        assert main([*argv, "-s", "stages.1.retries=2"]) == 0
        script = capsys.readouterr().out
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
        words = shlex.split(script.rstrip().splitlines()[-1])
        assert words[:3] == ["$PY", "-m", "pipelines"] and words[3] == "run" and words[4].endswith("config.yaml")
        assert words[5:] == ["--resume", "-s", f"stages.1.executor={scheduler}"]
        assert ("#PBS -N " if scheduler == "pbs" else "#SBATCH --job-name=") + "pipelines-sweep-array" in script
    plain = {**SWEEP, "stages": SWEEP["stages"][:1], "runs_dir": str(tmp_path / "runs")}
    conf.write_text(yaml.safe_dump(plain))
    assert main(["submit", str(conf), "--array", "--dry-run"]) == 2
    assert "has no sweep stage" in capsys.readouterr().err
    assert main(["submit", str(conf), "--resume", "--dry-run"]) == 2


# --- on a real SLURM -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_27_array_tasks_all_run_and_never_more_than_the_cap_at_once(wide_slurm, tmp_path):
    command, out = _task(tmp_path, sleep=1.5)
    settings = ArraySettings(max_concurrent=4, walltime="00:05:00")
    t0 = time.time()
    left = run_array("slurm", range(27), command, tmp_path / "array", settings, done=_done(out), poll_s=0.5)
    seconds = time.time() - t0
    assert left == []
    assert sorted(int(p.stem) for p in out.glob("*.done")) == list(range(27))
    (submitted,) = _submissions(tmp_path / "array")
    assert submitted["indices"] == list(range(27))
    script = next((tmp_path / "array").glob("array-*/array.sbatch")).read_text()
    assert "#SBATCH --array=0-26%4\n" in script and "#SBATCH --requeue\n" in script
    spans = [tuple(json.loads((out / f"{i}.done").read_text()).values()) for i in range(27)]
    peak = _peak(spans)
    print(f"27 tasks of 1.5 s, cap 4 on an 8-CPU node: peak {peak} at once, {seconds:.1f} s")
    assert 2 <= peak <= 4  # the node had 8 CPUs free: only the cap kept it at 4
    assert all(len((out / f"{i}.attempts").read_text().splitlines()) == 1 for i in range(27))


@pytest.mark.slow
def test_a_resume_submits_only_the_missing_non_contiguous_indices(wide_slurm, tmp_path):
    command, out = _task(tmp_path, sleep=0.2)
    missing = [3, 5, 7, 8, 9, 20]
    for i in set(range(27)) - set(missing):
        (out / f"{i}.done").write_text("{}")  # done by an earlier driver
    settings = ArraySettings(max_concurrent=4, walltime="00:05:00")
    left = run_array("slurm", range(27), command, tmp_path / "array", settings, done=_done(out), poll_s=0.5)
    assert left == []
    assert sorted(int(p.name.split(".")[0]) for p in out.glob("*.attempts")) == missing  # nothing else ran
    (submitted,) = _submissions(tmp_path / "array")
    assert submitted["indices"] == missing
    script = next((tmp_path / "array").glob("array-*/array.sbatch")).read_text()
    assert "#SBATCH --array=3,5,7-9,20%4\n" in script


def _preempt_when_waiting(slurm, out: Path, workdir: Path, index: int, errors: list[str]) -> None:
    """Requeue task `index` of the first array once it runs (as a preemption does), and let it start again as soon
    as its first attempt's step is gone (SLURM holds a requeued job back 120 s for that otherwise)."""
    try:
        deadline = time.time() + 120
        while not (out / f"{index}.waiting").exists():
            if time.time() > deadline:
                raise TimeoutError("task never started")
            time.sleep(0.2)
        task = f"{_submissions(workdir)[0]['job_id']}_{index}"
        step = f"[{slurm.run('squeue', '-h', '-j', task, '-o', '%A').stdout.strip()}.batch]"  # slurmstepd's title
        slurm.run("scontrol", "requeue", task)
        while "PENDING" not in slurm.run("squeue", "-h", "-j", task, "-o", "%T").stdout:
            time.sleep(0.2)
        while any(step in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
            time.sleep(0.2)
        slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now")
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(repr(exc))


@pytest.mark.slow
def test_a_preempted_task_is_requeued_by_slurm_and_a_cancelled_one_is_resubmitted(wide_slurm, tmp_path):
    command, out = _task(tmp_path, cancel=[4], preempt=[6], sleep=0.5)
    workdir = tmp_path / "array"
    errors: list[str] = []
    thread = threading.Thread(target=_preempt_when_waiting, args=(wide_slurm, out, workdir, 6, errors))
    thread.start()
    settings = ArraySettings(max_concurrent=4, walltime="00:05:00")
    left = run_array("slurm", range(8), command, workdir, settings, done=_done(out), poll_s=0.5, settle_s=1)
    thread.join()
    assert errors == []
    assert left == []
    first, second = _submissions(workdir)
    assert first["indices"] == list(range(8)) and second["indices"] == [4]  # only the cancelled one resubmitted
    cancelled = [line.split() for line in (out / "4.attempts").read_text().splitlines()]
    assert [job for job, _ in cancelled] == [first["job_id"], second["job_id"]]
    preempted = [line.split() for line in (out / "6.attempts").read_text().splitlines()]
    assert preempted == [[first["job_id"], "0"], [first["job_id"], "1"]]  # requeued inside the same array
    assert sorted(int(p.stem) for p in out.glob("*.done")) == list(range(8))


@pytest.mark.slow
def test_a_refused_array_is_one_line_naming_sbatch_and_its_reason(wide_slurm, tmp_path):
    command, out = _task(tmp_path)
    with pytest.raises(PipelineError, match=r"^sbatch --parsable refused the array job: .*(?i:partition)") as err:
        run_array("slurm", [1, 2], command, tmp_path / "a", ArraySettings(partition="nope"), done=_done(out))
    assert "\n" not in str(err.value)
    print(err.value)


def _submit(slurm, conf: Path, *extra: str) -> str:
    done = subprocess.run(
        [PY, "-m", "pipelines", "submit", str(conf), "--array", "--scheduler", "slurm", *extra],
        capture_output=True, text=True, env=slurm.env, cwd=conf.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[0])["job_id"]


def _results(trials: Path) -> dict[int, dict]:
    return {int(p.parent.name): json.loads(p.read_text()) for p in trials.glob("*/result.json")}


@pytest.mark.slow
def test_a_27_trial_sweep_as_a_slurm_array_survives_its_driver_killed_and_resumes_only_missing_trials(
    wide_slurm, tmp_path
):
    import yaml

    from pipelines.sweep.trial import TrialSpec, classical_metrics

    conf = tmp_path / "sweep.yaml"
    conf.write_text(yaml.safe_dump({**SWEEP, "runs_dir": str(tmp_path / "runs")}))
    t0 = time.time()
    driver = _submit(wide_slurm, conf)  # the driver is itself a SLURM job and submits the array from inside it
    runs = tmp_path / "runs" / "sweep-array"
    deadline = time.time() + 300
    while len(_results(trials := next(iter(runs.glob("*/trials/sweep-logistic_regression")), runs))) < 6:
        assert time.time() < deadline, wide_slurm.run("squeue").stdout
        time.sleep(0.5)
    wide_slurm.run("scancel", driver)  # the driver's job ends mid-sweep: it cancels its array on the way out
    deadline = time.time() + 30
    while wide_slurm.run("squeue", "-h").stdout.strip():
        assert time.time() < deadline, wide_slurm.run("squeue").stdout
        time.sleep(0.5)
    before = _results(trials)
    (run_dir,) = [p for p in runs.iterdir() if (p / "manifest.json").exists()]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] in ("failed", "running")
    assert 6 <= len(before) < 27
    assert "cancelled with its driver" in (run_dir / "logs" / "run.log").read_text()
    first_part = time.time() - t0

    resumed = _submit(wide_slurm, conf, "--resume")
    assert wide_slurm.wait_job(resumed, timeout=600) == "COMPLETED"
    seconds = time.time() - t0
    assert [p for p in runs.iterdir() if not p.is_symlink() and (p / "manifest.json").exists()] == [run_dir]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "succeeded"
    after = _results(trials)
    assert sorted(after) == list(range(27))
    assert all(after[i] == before[i] for i in before)  # done trials were not run again (same pid, same result)
    arrays = _submissions(trials / "array")
    assert arrays[0]["indices"] == list(range(27))
    assert arrays[-1]["indices"] == sorted(set(range(27)) - set(before))  # the resume submitted only the rest
    scripts = [p.read_text() for p in sorted(trials.glob("array/array-*/array.sbatch"))]
    assert (
        "#SBATCH --array=0-26%4\n" in scripts[0]
        and f"#SBATCH --array={index_list(arrays[-1]['indices'])}%4\n" in scripts[-1]
    )

    table = pd.read_csv(run_dir / "sweeps" / "sweep-logistic_regression" / "results.csv")
    assert len(table) == 27 and set(table["status"]) == {"ok"}
    assert sorted(table.loc[table["reused"], "index"]) == sorted(before)
    for row in table.itertuples():  # the same fits one after another in this process
        spec = TrialSpec.model_validate_json((trials / f"{row.index:03d}" / "spec.json").read_text())
        assert row.metric == pytest.approx(classical_metrics(spec)["test_accuracy"], abs=1e-12), row
    print(
        f"27-trial array sweep: {len(before)} done before the driver was killed at {first_part:.0f} s, "
        f"{27 - len(before)} run after the resume, {seconds:.0f} s in all"
    )
