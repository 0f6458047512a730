"""Launch: spark-submit to a real standalone master, dask-jobqueue and sbatch jobs on a real SLURM, locks, resume."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from spark_standalone import standalone, submit

from pipelines.config import load_config, parse_config
from pipelines.errors import ConfigError
from pipelines.launch import batch
from pipelines.launch.batch import render
from pipelines.launch.config import BatchSettings
from pipelines.launch.cron import cron_line, merge
from pipelines.pipeline import run_pipeline
from pipelines.runs import LockBusy, pipeline_lock, prune_runs

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PIPELINES = str(Path(PY).parent / "pipelines")

HOSTILE = "$(touch /tmp/pipelines-pwned); echo 'single' \"double\" `id` ; exit 7"


def fair(tmp_path: Path, **top) -> dict:
    data = load_config(ROOT / "conf" / "fair.yaml").model_dump(mode="json")
    return {**data, "runs_dir": str(tmp_path / "runs"), **top}


def _no_processes_mention(text: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if text in cmd:
            found.append(f"{proc.pid}: {cmd[:160]}")
    return found


# --- without a scheduler ---------------------------------------------------------------------------------


def test_batch_script_keeps_hostile_config_values_inert(tmp_path):
    data = fair(tmp_path, batch={"mode": "spark", "env": {"X": HOSTILE}, "modules": [HOSTILE]})
    config = parse_config(data)
    for scheduler in ("slurm", "pbs"):
        for mode in ("spark", "dask", "horovod", "local"):
            config.batch.mode = mode
            script = render(
                config.batch, config.name, tmp_path / "conf; rm -rf ~.yaml", tmp_path / "job", scheduler, tmp_path
            )
            assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0, (scheduler, mode)
    prologue = script.split("\n\n")[1]  # set -e, module loads, exports, PATH, cd ...
    stub = f'module() {{ printf "%s\\n" "$@" > {tmp_path}/module.txt; }}'  # no Lmod here: record the arguments
    probe = f'{stub}\n{prologue}\nprintf "%s" "$X" > {tmp_path}/x.txt\n'
    done = subprocess.run(["bash"], input=probe, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.txt").read_text() == HOSTILE  # arrived as text
    assert (tmp_path / "module.txt").read_text().splitlines() == ["load", HOSTILE]
    assert not Path("/tmp/pipelines-pwned").exists()
    for bad in ({"partition": "debug; rm -rf /"}, {"walltime": "$(id)"}, {"extra_directives": ["--qos=a\n#SBATCH x"]}):
        with pytest.raises(ConfigError, match="batch"):
            parse_config(fair(tmp_path, batch=bad))


FULL_BATCH = {
    "nodes": 2,
    "tasks_per_node": 2,
    "cpus_per_task": 4,
    "gpus_per_node": 2,
    "memory": "8G",
    "partition": "gpu",
    "account": "abc123",
    "extra_directives": ["--qos=normal", "-l place=scatter"],
    "modules": ["cuda/12.2", "python3/3.11"],
    "env": {"OMP_NUM_THREADS": "1"},
}


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
@pytest.mark.parametrize("mode", ["spark", "dask", "horovod", "local"])
def test_every_template_renders_a_valid_script(scheduler, mode, tmp_path):
    prefix = "#SBATCH " if scheduler == "slurm" else "#PBS "
    for extra in ({}, FULL_BATCH, {**FULL_BATCH, "pbs_resources": "nodes"}):
        settings = BatchSettings(mode=mode, **extra)
        overrides = ["engine.partitions=8", HOSTILE]
        script = render(
            settings, "fair", tmp_path / "it's conf.yaml", tmp_path / "job", scheduler, tmp_path, PY, overrides
        )
        checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert checked.returncode == 0, (extra, checked.stderr, script)
        header, prologue, body = script.split("\n\n")
        assert header.startswith("#!/bin/bash\n") and all(d.startswith(prefix) for d in header.splitlines()[1:])
        assert (f"{prefix}-N " if scheduler == "pbs" else f"{prefix}--job-name=") + "pipelines-fair\n" in header
        assert prologue.startswith("set -euo pipefail\n") and "trap cleanup EXIT" in prologue
        assert body.endswith("\n") and "\n\n" not in body and "{{" not in script and "{%" not in script
        words = shlex.split(body.splitlines()[-1])  # the pipelines command: config and overrides arrive as words
        assert str(tmp_path / "it's conf.yaml") in words and words[-4:] == ["-s", overrides[0], "-s", HOSTILE]
        if mode in ("spark", "dask"):  # a daemon on every node of the job
            assert ("srun --overlap" if scheduler == "slurm" else "pbsdsh -h") in body
    assert "select=2:ncpus=8:mpiprocs=2:mem=8gb:ngpus=2" in render(
        BatchSettings(**FULL_BATCH), "fair", tmp_path / "c.yaml", tmp_path / "job", "pbs", tmp_path
    )
    changed = BatchSettings()
    changed.partition = "debug\nrm -rf ~"  # set after validation: render checks again
    with pytest.raises(ConfigError, match="batch"):
        render(changed, "fair", tmp_path / "c.yaml", tmp_path / "job", scheduler, tmp_path)


def _template_lines(text: str) -> list[tuple[str, int]]:
    """(line, number) of a template with its {% ... %} and {# ... #} tags taken out."""
    import re

    text = re.sub(r"\{#.*?#\}", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    return [(re.sub(r"\{%.*?%\}", "", line), n) for n, line in enumerate(text.splitlines(), 1)]


def test_every_value_in_a_script_body_goes_through_the_quoting_filter():
    import re

    from jinja2 import nodes

    env = batch.environment()
    folder = Path(batch.__file__).parent / "templates"
    headers = {"slurm_header.j2", "pbs_header.j2"}  # directives: values restricted by the config types instead
    names = set(env.list_templates())
    assert names == {p.name for p in folder.glob("*.j2")} and headers < names
    assert {f"{m}.sh.j2" for m in batch.MODES} | {"job.sh.j2", "shell.j2"} <= names
    macros = {m.name for m in env.parse((folder / "shell.j2").read_text()).find_all(nodes.Macro)}
    checked = 0
    for name in sorted(names - headers):
        source = (folder / name).read_text()
        for output in env.parse(source).find_all(nodes.Output):
            for node in output.nodes:
                if isinstance(node, nodes.TemplateData):
                    continue
                quoted = isinstance(node, nodes.Filter) and node.name == "q"
                # a macro's text (and a call block's, `caller()`) is template text, checked here like the rest
                call = isinstance(node, nodes.Call) and (
                    (isinstance(node.node, nodes.Name) and node.node.name == "caller")
                    or (isinstance(node.node, nodes.Getattr) and node.node.attr in macros)
                )
                assert quoted or call, f"{name}:{node.lineno}: an expression without `| q`"
                checked += quoted
        for line, number in _template_lines(source):  # a quoted word must not sit inside shell quotes
            for expr in re.finditer(r"\{\{.*?\}\}", line):
                before = re.sub(r"\{\{.*?\}\}", "", line[: expr.start()]).replace('\\"', "")
                assert before.count('"') % 2 == 0 and before.count("'") % 2 == 0, f"{name}:{number}: {line}"
    assert checked >= 20
    for name in headers:  # every line a directive line
        for line, number in _template_lines((folder / name).read_text()):
            assert not line.strip() or line.lstrip().startswith(("#SBATCH ", "#PBS ", ":")), f"{name}:{number}"


def test_a_second_run_of_the_same_pipeline_waits_or_stops_with_a_clear_message(tmp_path):
    with pipeline_lock(tmp_path, "p"):
        busy = pytest.raises(LockBusy, match=f"pipeline 'p' is in progress \\(pid {os.getpid()}")
        with busy, pipeline_lock(tmp_path, "p"):
            pass
        released = threading.Event()

        def later() -> None:
            time.sleep(1.5)
            released.set()

        threading.Thread(target=later).start()
        got = []

        def waiter() -> None:
            with pipeline_lock(tmp_path, "p", wait=True, timeout=30):
                got.append(released.is_set())

        t = threading.Thread(target=waiter)
        t.start()
        released.wait()
    t.join(30)
    assert got == [True]  # the waiting run started only after the first released the lock


@pytest.mark.slow
def test_cli_run_refuses_to_overlap_and_retention_keeps_the_newest(tmp_path):
    conf = tmp_path / "fair.json"
    conf.write_text(json.dumps(fair(tmp_path, keep_runs=2)))
    with pipeline_lock(tmp_path / "runs", "fair"):
        busy = subprocess.run([PIPELINES, "run", str(conf)], capture_output=True, text=True, cwd=ROOT)
    assert busy.returncode == 5 and "another run of pipeline 'fair' is in progress" in busy.stderr
    for _ in range(3):
        assert subprocess.run([PIPELINES, "run", str(conf)], capture_output=True, cwd=ROOT).returncode == 0
    runs = sorted(p for p in (tmp_path / "runs" / "fair").iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 2 and (tmp_path / "runs" / "fair" / "latest").resolve() == runs[-1]
    assert prune_runs(tmp_path / "runs", "fair", 1) == [runs[0]]


def test_cron_line_is_quoted_and_validated(tmp_path):
    odd = tmp_path / "it's a conf.yaml"
    line = cron_line("0 2 * * 1-5", odd, tmp_path, tmp_path / "cron.log", PY)
    command = line.split(" ", 5)[5].rsplit(" # pipelines:", 1)[0]
    words = shlex.split(command)
    assert line.startswith("0 2 * * 1-5 cd ") and str(odd) in words and words[-5:-3] == ["--wait", "--resume"]
    assert "\\%" in cron_line("0 2 * * *", tmp_path / "100%.yaml", tmp_path, tmp_path / "log")  # cron's newline
    with pytest.raises(ConfigError, match="five cron fields"):
        cron_line("0 2 * * ; rm -rf /", odd, tmp_path, tmp_path / "cron.log")


def test_resume_skips_finished_stages_and_reruns_the_failed_one(dask_engine, tmp_path, monkeypatch):
    from pipelines.classical.stage import ModelStage

    config = parse_config(fair(tmp_path))

    def broken(self, ctx):
        raise RuntimeError("node lost")

    with monkeypatch.context() as patch:
        patch.setattr(ModelStage, "run", broken)
        with pytest.raises(RuntimeError, match="node lost"):
            run_pipeline(config, engine=dask_engine)
    failed = next((tmp_path / "runs" / "fair").glob("2*"))
    run, state = run_pipeline(config, engine=dask_engine, resume=failed)
    assert run.dir == failed and run.manifest["status"] == "succeeded"
    assert [s["name"] for s in run.manifest["stages"]] == ["ingest", "lm", "lm"]  # ingest ran once
    fresh, _ = run_pipeline(config, engine=dask_engine)
    ours = json.loads((failed / "metrics.json").read_text())["lm"]["summary"]
    again = json.loads((fresh.dir / "metrics.json").read_text())["lm"]["summary"]
    assert ours == again


def test_jobqueue_settings_pick_interfaces_and_retire_workers_before_walltime():
    from pipelines.launch.config import JobqueueSettings
    from pipelines.launch.jobqueue import lifetime, make_cluster
    from pipelines.launch.network import interfaces, pick_interface

    settings = JobqueueSettings(
        walltime="01:00:00", interface="auto", account="abc123", job_extra_directives=["--qos=x"]
    )
    assert lifetime(settings) == (3240, 180)  # 90 % of walltime, staggered by 5 %
    assert lifetime(settings.model_copy(update={"lifetime": "50:00", "lifetime_stagger": "2:00"})) == (3000, 120)
    with pytest.raises(ConfigError, match="must end before walltime"):
        lifetime(settings.model_copy(update={"lifetime": "59:00", "lifetime_stagger": "2:00"}))
    assert pick_interface("auto") in interfaces()
    with pytest.raises(ConfigError, match="'ib7' is not up .* have \\["):
        pick_interface("ib7")
    cluster = make_cluster(settings)  # no jobs are submitted until it is scaled
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -A abc123" in script and "#SBATCH --qos=x" in script
    assert "--lifetime 3240s --lifetime-stagger 180s" in script and f"--interface {pick_interface('auto')}" in script


# --- spark-submit to a real standalone master -------------------------------------------------------------


@pytest.mark.slow
def test_spark_submit_to_a_standalone_master_runs_the_pipeline_with_its_master(tmp_path):
    with standalone(tmp_path, 7177) as (url, env, _):
        conf = tmp_path / "fair.json"
        conf.write_text(json.dumps(fair(tmp_path)))
        done = submit(url, env, "run", str(conf), "--engine", "spark")
        assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "runs" / "fair" / "latest" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["engine"]["master"] == url


# --- a real SLURM -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dask_jobqueue_workers_are_slurm_jobs_and_leave_with_the_run(slurm, tmp_path):
    jobqueue = {"jobs": 2, "cores": 1, "memory": "1GB", "walltime": "00:10:00", "queue": "debug", "interface": "auto"}
    jobqueue["log_directory"] = str(tmp_path / "worker-logs")  # else slurm-%j.out lands in the cwd
    data = fair(tmp_path)
    data["engine"] = {"kind": "dask", "partitions": 2, "dask": {"jobqueue": jobqueue}}
    run, _ = run_pipeline(parse_config(data))
    assert run.manifest["status"] == "succeeded"
    assert run.manifest["engine"]["workers"] == 2 and run.manifest["engine"]["jobqueue"] == "slurm"
    deadline = time.time() + 30
    while time.time() < deadline and slurm.run("squeue", "-h").stdout.strip():
        time.sleep(0.5)
    assert slurm.run("squeue", "-h").stdout.strip() == ""  # the worker jobs ended with the run


@pytest.mark.slow
def test_dask_jobqueue_workers_train_the_deep_stage_inside_their_slurm_jobs(slurm, tmp_path):
    from helpers import digits_config

    jobqueue = {"jobs": 2, "cores": 1, "memory": "2GB", "walltime": "00:10:00", "queue": "debug", "interface": "auto"}
    jobqueue["log_directory"] = str(tmp_path / "worker-logs")
    stage = {"stage": "deep", "model": "softmax", "epochs": 2, "batch_size": 32, "ranks": 2}  # launcher: auto
    data = digits_config(tmp_path, stage)
    data["engine"]["dask"] = {"jobqueue": jobqueue}
    run, results = run_pipeline(parse_config(data))
    res = results["softmax"].metrics
    assert res["launcher"] == "dask" and res["rank_weight_max_abs_diff"] == 0.0  # auto: not a LocalCluster
    jobs = {p["batch_job"] for p in res["placement"]}
    assert len(jobs) == 2 and None not in jobs  # one rank inside each worker's SLURM job
    assert all(p["ppid"] == p["worker_pid"] and p["returncode"] == 0 for p in res["placement"])
    assert res["test"]["accuracy"] > 0.2  # 10 classes: chance is 0.1 (2 epochs of softmax regression)


def _submit(tmp_path: Path, data: dict) -> tuple[str, Path]:
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(data))
    out = subprocess.run(
        [PIPELINES, "submit", str(conf), "--scheduler", "slurm"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)["job_id"]
    return job, Path(json.loads(out.stdout)["job_dir"])


@pytest.mark.slow
def test_sbatch_spark_standalone_job_runs_the_default_pipeline(slurm, tmp_path):
    data = fair(tmp_path, batch={"mode": "spark", "cpus_per_task": 2, "memory": "6G", "env": {"X": HOSTILE}})
    data["batch"]["spark"] = {"master_port": 7277, "webui_port": 0, "worker_memory": "2g", "executor_memory": "1g"}
    job, jobdir = _submit(tmp_path, data)
    state = slurm.wait_job(job, 600)
    log = next(jobdir.glob("slurm-*.out")).read_text()
    assert state == "COMPLETED", log[-3000:]
    manifest = json.loads((tmp_path / "runs" / "fair" / "latest" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["engine"]["master"].startswith("spark://")
    assert manifest["job"] == {"scheduler": "slurm", "job_id": job, "nodes": slurm.host}
    assert _no_processes_mention(str(jobdir)) == []  # master and worker were stopped with the job


@pytest.mark.slow
def test_sbatch_dask_job_runs_the_pipeline_on_its_own_scheduler_and_workers(slurm, tmp_path):
    job, jobdir = _submit(tmp_path, fair(tmp_path, batch={"mode": "dask", "cpus_per_task": 2, "memory": "4G"}))
    state = slurm.wait_job(job, 600)
    assert state == "COMPLETED", next(jobdir.glob("slurm-*.out")).read_text()[-3000:]
    manifest = json.loads((tmp_path / "runs" / "fair" / "latest" / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["engine"]["workers"] == 2
    assert manifest["engine"]["scheduler"] in (jobdir / "dask-scheduler.log").read_text()  # the job's own scheduler
    assert _no_processes_mention(str(jobdir)) == []


def _digits_deep(tmp_path: Path, epochs: int) -> dict:
    data = load_config(ROOT / "conf" / "digits_deep.yaml").model_dump(mode="json")
    deep = {"stage": "deep", "model": "mlp", "epochs": epochs, "batch_size": 16}
    return {**data, "stages": [data["stages"][0], deep], "runs_dir": str(tmp_path / "runs")}


@pytest.mark.slow
def test_sbatch_horovod_job_trains_with_two_ranks(slurm, tmp_path):
    job, jobdir = _submit(tmp_path, {**_digits_deep(tmp_path, 3), "batch": {"mode": "horovod", "tasks_per_node": 2}})
    state = slurm.wait_job(job, 600)
    assert state == "COMPLETED", next(jobdir.glob("slurm-*.out")).read_text()[-3000:]
    res = json.loads((tmp_path / "runs" / "digits-deep" / "latest" / "deep" / "mlp" / "results.json").read_text())
    assert res["ranks"] == 2 and res["epochs_run"] == 3 and res["rank_weight_max_abs_diff"] == 0.0


@pytest.mark.slow
def test_scancel_mid_training_leaves_no_orphans_and_resume_completes_the_run(slurm, tmp_path):
    data = {**_digits_deep(tmp_path, 40), "batch": {"mode": "horovod", "tasks_per_node": 2}}
    job, jobdir = _submit(tmp_path, data)
    runs = tmp_path / "runs" / "digits-deep"
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpt = list(runs.glob("2*/checkpoints/mlp/epoch-*"))
        if len(ckpt) >= 2:
            break
        time.sleep(0.2)
    assert slurm.run("squeue", "-h", "-j", job).stdout.strip(), "the job ended before it could be cancelled"
    slurm.run("scancel", job)
    assert slurm.wait_job(job, 120) == "CANCELLED"
    time.sleep(2)
    run_dir = next(runs.glob("2*"))
    assert _no_processes_mention(str(run_dir)) == []  # ranks and horovodrun (their argv names the run)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] in ("running", "failed")
    conf = jobdir / "config.yaml"
    done = subprocess.run([PIPELINES, "run", str(conf), "--resume"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    res = json.loads((run_dir / "deep" / "mlp" / "results.json").read_text())
    assert manifest["status"] == "succeeded" and res["resumed_from"] >= 2 and res["epochs_run"] == 40
    assert [h["epoch"] for h in res["history"]] == list(range(1, 41))


def test_schedule_keeps_one_line_per_pipeline_in_a_crontab_file(tmp_path):
    table = tmp_path / "crontab"  # a file: the test never touches the user's crontab
    other = "0 * * * * /bin/true # pipelines:other.yaml"
    table.write_text(f"MAILTO=ops\n{other}\n")
    conf = tmp_path / "100% fair.json"  # a space for the shell, a % for cron
    conf.write_text(json.dumps(fair(tmp_path)))
    argv = [PIPELINES, "schedule", str(conf), "--cron", "30 3 * * 1-5", "--crontab-file", str(table)]
    for _ in range(2):  # installing again replaces the pipeline's line
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
    lines = table.read_text().splitlines()
    assert lines[:2] == ["MAILTO=ops", other] and len(lines) == 3  # the other entries are kept
    fields, command = lines[2].split(" ", 5)[:5], lines[2].split(" ", 5)[5]
    assert fields == ["30", "3", "*", "*", "1-5"]
    assert "%" not in command.replace("\\%", "")  # cron would cut the command at a bare %
    shell = command.replace("\\%", "%")  # what cron hands to /bin/sh
    assert subprocess.run(["sh", "-n", "-c", shell]).returncode == 0
    cd, run = shell.split(" && ", 1)
    words = shlex.split(run, comments=True)
    assert shlex.split(cd) == ["cd", str(ROOT)] and words[:4] == [PY, "-m", "pipelines", "run"]
    log = str(tmp_path / "runs" / "fair" / "scheduled.log")
    assert words[4:] == [str(conf), "--wait", "--resume", ">>", log, "2>&1"]
    usage = subprocess.run(["crontab", "-h"], capture_output=True, text=True) if shutil.which("crontab") else None
    if usage is not None and "dry run" in usage.stderr + usage.stdout:  # Debian's -n: check only, install nothing
        checked = subprocess.run(["crontab", "-n", str(table)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    line = lines[2]
    scron = merge(merge(f"{other}\n", line, ["--time=01:00:00"]), line, ["--time=02:00:00"])
    assert scron.splitlines() == [other, "#SCRON --time=02:00:00", line]  # the earlier #SCRON lines went too
