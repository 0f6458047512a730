"""Sweeps (docs/SWEEP.md): search spaces and Hyperband bookkeeping, then real sweeps from configs on a real Dask
LocalCluster and a real local[2] Spark: 27 load-balanced trials equal to fits in this process, a driver killed
mid-sweep and resumed without rerunning done trials, a failing trial retried once, a slow one stopped, and a
Hyperband sweep of a small network that spends fewer epochs than the full grid."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT
from helpers import cli, group, reaped, run_dirs, start
from pydantic import ValidationError

from pipelines.classical import RandomForestClassifier
from pipelines.config import load_config
from pipelines.deep.stage import DeepStage
from pipelines.errors import ConfigError
from pipelines.pipeline import run_pipeline
from pipelines.sweep.hyperband import Schedule, bracket_count, bracket_shares, budgets
from pipelines.sweep.space import RandomSearch, grid_values, key_problem, random_values, with_values
from pipelines.sweep.stage import SweepStage

FOREST = ROOT / "conf" / "sweep_forest.yaml"


def sweep_conf(path: Path, base: Path, runs: Path, **sweep: object) -> Path:
    """A bundled sweep config with some keys of its sweep stage replaced, writing under `runs`."""
    data = yaml.safe_load(base.read_text())
    data["stages"][1].update(sweep)
    data["runs_dir"] = str(runs)
    path.write_text(yaml.safe_dump(data))
    return path


def run_sweep(conf: Path, engine) -> tuple[Path, dict, pd.DataFrame]:
    """Run a sweep config on an engine; (run dir, the sweep's metrics, results.csv)."""
    cfg = load_config(conf)
    run, _ = run_pipeline(cfg, engine=engine)
    name = cfg.stages[1].output_name
    metrics = json.loads((run.dir / "metrics.json").read_text())[name]
    return run.dir, metrics, pd.read_csv(run.dir / "sweeps" / name / "results.csv")


def split_arrays(run_dir: Path, split: str, features: list[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pq.read_table(run_dir / "data" / split).to_pandas().sort_values(["_source", "_row"])
    return frame[features].to_numpy(float), frame[label].to_numpy()


# --- spaces and the schedule (no engine) -------------------------------------------------------------------


def test_grid_random_and_dotted_keys():
    grid = grid_values({"params.a": [1, 2, 3], "b": ["x", "y", "z"], "params.c": [None, 1, 2]})
    assert len(grid) == 27 and len({json.dumps(v, sort_keys=True) for v in grid}) == 27
    assert grid[1] == {"params.a": 1, "b": "x", "params.c": 1}  # the last key varies fastest
    space = {
        "lr": {"low": 1e-4, "high": 1e-1, "log": True},
        "units": [64, 128],
        "depth": {"low": 1, "high": 5, "integer": True},
    }
    draws = random_values(RandomSearch(trials=200, seed=7, space=space))
    assert draws == random_values(RandomSearch(trials=200, seed=7, space=space))  # seeded
    lrs = np.array([d["lr"] for d in draws])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1 and np.mean(lrs < 1e-2) > 0.5  # log-uniform: 2/3 below 1e-2
    assert {d["units"] for d in draws} == {64, 128} and {d["depth"] for d in draws} == {1, 2, 3, 4, 5}
    assert with_values({"params": {"a": 1}, "b": 2}, {"params.c": 3, "b": 4}) == {"params": {"a": 1, "c": 3}, "b": 4}


def test_sweep_config_problems_carry_their_key_path():
    base = {"stage": "sweep", "target": {"stage": "model", "model": "random_forest_classifier"}}
    cases = {
        "grid.batch_size: 'batch_size' is not a key of ModelStage": {"grid": {"batch_size": [1]}},
        "grid.params.max_depth: 0 refused: params.max_depth: The 'max_depth' parameter": {
            "grid": {"params.max_depth": [2, 0]}
        },
        "grid.params.max_dept: 1 refused: params: ": {"grid": {"params.max_dept": [1]}},
        "early_stopping: needs a deep target": {
            "grid": {"params.max_depth": [2]},
            "early_stopping": {"max_epochs": 9},
        },
        "metric: 'val_loss' is not a metric of this target": {"grid": {"params.max_depth": [2]}, "metric": "val_loss"},
        "give exactly one of 'grid' and 'random'": {},
    }
    for expected, extra in cases.items():
        with pytest.raises(ValidationError, match=expected.replace("(", r"\(").replace(".", r"\.")):
            SweepStage.model_validate({**base, **extra})
    deep = {"stage": "sweep", "target": {"stage": "deep", "model": "softmax"}, "metric": "val_accuracy"}
    with pytest.raises(ValidationError, match="grid.epochs: with early_stopping the epochs are the budget"):
        SweepStage.model_validate({**deep, "grid": {"epochs": [1, 2]}, "early_stopping": {"max_epochs": 9}})
    with pytest.raises(ValidationError, match="grid.transfer.mode: the tensor hand-off and a transfer source are"):
        SweepStage.model_validate({**deep, "grid": {"transfer.mode": ["features"]}})
    have = "['head', 'mode', 'source', 'trainable_layers', 'weights']"
    assert key_problem(DeepStage, "transfer.modes") == f"'modes' is not a key of transfer (have {have})"
    assert key_problem(DeepStage, "batch_size.x") == "'batch_size' holds a single value, not keys"
    assert key_problem(DeepStage, "params.anything") is None
    mlp = {**deep, "target": {"stage": "deep", "model": "mlp"}}
    stage = SweepStage.model_validate({**mlp, "grid": {"batch_size": [16, 32], "params.units": [[8], [16, 8]]}})
    targets = [stage.trial_target(v) for v in stage.trial_values()]
    assert [(t.batch_size, t.params) for t in targets][:2] == [(16, {"units": [8]}), (16, {"units": [16, 8]})]
    with pytest.raises(ConfigError, match=r"stages\[1\]: grid\.params\.n_estimators: 'x' refused"):
        load_config(FOREST, ['stages.1.grid={"params.n_estimators": ["x"]}'])


def test_successive_halving_keeps_the_best_third_of_each_rung():
    assert budgets(1, 9, 3, 2) == [1, 3, 9] and budgets(1, 9, 3, 0) == [9] and bracket_count(1, 9, 3) == 3
    schedule = Schedule(9, "halving", min_epochs=1, max_epochs=9, eta=3, mode="max")
    requests = schedule.start()
    assert requests == [(i, 1) for i in range(9)]
    score = {i: float(i) for i in range(9)}
    score[8] = None  # trial 8 failed: never promoted though it would score best
    runs = []
    while requests:
        index, epochs = requests.pop(0)
        runs.append((index, epochs))
        requests += schedule.report(index, epochs, score[index])
    assert runs[9:] == [(7, 3), (6, 3), (5, 3), (7, 9)]
    assert schedule.epochs_spent == 6 * 1 + 2 * 3 + 9 == 21 and schedule.epochs_full == 81


def test_hyperband_brackets_cover_every_trial_and_spend_less_than_the_full_grid():
    assert bracket_shares(27, 3, 3) == [14, 8, 5] and bracket_shares(9, 3, 3) == [5, 3, 1]
    schedule = Schedule(27, "hyperband", min_epochs=1, max_epochs=9, eta=3, mode="min", seed=1)
    requests = schedule.start()
    assert sorted(i for i, _ in requests) == list(range(27))  # every trial starts, in one bracket
    assert sorted({e for _, e in requests}) == [1, 3, 9]  # the brackets start at 1, 3 and 9 epochs
    finished = set()
    while requests:
        index, epochs = requests.pop(0)
        requests += schedule.report(index, epochs, float(index % 7))  # mode min: low is good
        finished |= {index} if epochs == 9 else set()
    first, second, third = schedule.brackets
    assert [b.rungs for b in schedule.brackets] == [[1, 3, 9], [3, 9], [9]]
    assert finished == {min(first.trials, key=lambda i: (i % 7, i))} | set(second.active) | set(third.trials)
    assert len(second.active) == 2 and max(i % 7 for i in second.active) <= min(
        i % 7 for i in set(second.trials) - set(second.active)
    )
    assert schedule.epochs_spent == (14 - 4) * 1 + (4 - 1) * 3 + 9 + (8 - 2) * 3 + 2 * 9 + 5 * 9 == 109
    assert schedule.epochs_full == 243


# --- real sweeps ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forest_grid(dask_engine, tmp_path_factory):
    """The 27-trial forest grid of conf/sweep_forest.yaml run once on the Dask LocalCluster."""
    tmp = tmp_path_factory.mktemp("forest")
    return run_sweep(sweep_conf(tmp / "conf.yaml", FOREST, tmp / "runs"), dask_engine)


@pytest.mark.slow
def test_27_trial_grid_runs_load_balanced_and_equals_fits_in_this_process(forest_grid):
    run_dir, metrics, table = forest_grid
    assert len(table) == 27 and (table["status"] == "ok").all() and (table["attempts"] == 1).all()
    assert metrics["trials"] == metrics["done"] == 27 and metrics["failed"] == metrics["reused"] == 0
    assert table["worker"].nunique() == 2  # both Dask workers took trials
    best = table.loc[table["metric"].idxmax()]
    assert metrics["best_metric"] == best["metric"] and metrics["best_index"] == best["index"]
    assert json.loads((run_dir / "sweeps" / "forest-grid" / "best.json").read_text())["best_index"] == best["index"]
    # three trials refitted here, one after another, on the rows the sweep read: the same accuracy (exactly)
    spec = json.loads((run_dir / "trials" / "forest-grid" / "000" / "spec.json").read_text())
    x, y = split_arrays(run_dir, "train", spec["features"], spec["label"])
    xt, yt = split_arrays(run_dir, "test", spec["features"], spec["label"])
    for index in (0, 13, int(best["index"])):
        params = json.loads((run_dir / "trials" / "forest-grid" / f"{index:03d}" / "spec.json").read_text())["target"]
        model = RandomForestClassifier(**params["params"]).fit(pd.DataFrame(x, columns=spec["features"]), y)
        accuracy = float(np.mean(model.predict(pd.DataFrame(xt, columns=spec["features"])) == yt))
        assert table.loc[index, "metric"] == pytest.approx(accuracy, abs=1e-12)
    plots = run_dir / "sweeps" / "forest-grid"
    assert (plots / "heatmap.png").stat().st_size > 5000 and (plots / "parallel.png").stat().st_size > 5000
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "sweeps/forest-grid" in manifest["outputs"] and manifest["stages"][-1]["status"] == "succeeded"


@pytest.mark.slow
def test_the_same_sweep_on_spark_gives_the_same_results(spark_engine, forest_grid, tmp_path):
    keys = ["params.n_estimators", "params.max_depth", "params.min_samples_leaf"]
    grid = dict(zip(keys, ([10, 60], [2, None], [5]), strict=True))
    conf = sweep_conf(tmp_path / "conf.yaml", FOREST, tmp_path / "runs", grid=grid)
    data = yaml.safe_load(conf.read_text())
    data["engine"] = {"kind": "spark", "partitions": 2}
    conf.write_text(yaml.safe_dump(data))
    _, metrics, table = run_sweep(conf, spark_engine)
    assert metrics["done"] == 4 and (table["status"] == "ok").all()

    def by_values(frame: pd.DataFrame) -> dict:
        return dict(zip(map(tuple, frame[keys].astype(str).to_numpy()), frame["metric"], strict=True))

    dask = by_values(forest_grid[2])
    for values, metric in by_values(table).items():  # the same rows read back, the same seeded forests
        assert metric == pytest.approx(dask[values], abs=1e-12)


@pytest.mark.slow
def test_driver_killed_mid_sweep_resumes_without_rerunning_done_trials(tmp_path):
    runs = tmp_path / "runs"
    conf = sweep_conf(tmp_path / "conf.yaml", FOREST, runs)

    def results() -> list[Path]:
        dirs = run_dirs(runs, "sweep-forest")
        return sorted(dirs[0].glob("trials/forest-grid/*/result.json")) if dirs else []

    with reaped(start(conf)) as proc:
        deadline = time.time() + 300
        while len(results()) < 4:
            assert proc.poll() is None and time.time() < deadline, "the sweep ended or stalled before 4 trials"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Dask workers
        proc.wait(30)
        deadline = time.time() + 30
        while time.time() < deadline and (group(proc.pid) or trial_processes(runs)):
            time.sleep(0.2)
    assert trial_processes(runs) == []  # running trials died with their workers
    done = {p.parent.name: (p.stat().st_mtime_ns, attempt_logs(p.parent)) for p in results()}
    assert 4 <= len(done) < 27
    finished = cli(conf, "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    run_dir = run_dirs(runs, "sweep-forest")[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())["forest-grid"]
    assert metrics["reused"] == len(done) and metrics["done"] == 27
    for name, (mtime, attempts) in done.items():  # never run again: result and attempt logs untouched
        folder = run_dir / "trials" / "forest-grid" / name
        assert (folder / "result.json").stat().st_mtime_ns == mtime
        assert attempt_logs(folder) == attempts
    table = pd.read_csv(run_dir / "sweeps" / "forest-grid" / "results.csv")
    assert set(table.loc[table["reused"], "index"]) == {int(n) for n in done} and (table["status"] == "ok").all()


def attempt_logs(folder: Path) -> dict[str, int]:
    """A trial's attempt logs and their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("attempt-*.log")}


def trial_processes(runs: Path) -> list[psutil.Process]:
    """Live trial processes of sweeps under `runs`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "pipelines.sweep.trial" in line and str(runs) in line:
            found.append(proc)
    return found


TRIAL_LIMIT_S = 20  # the fine trial takes a few seconds; 200,000 trees take minutes


@pytest.fixture(scope="module")
def faulty_sweep(dask_engine, tmp_path_factory):
    """Four trials: 000 fine, 001 far too slow, 002 and 003 refused at fit (a continuous label for a classifier)."""
    tmp = tmp_path_factory.mktemp("faulty")
    grid = {"label": ["target", "mean_radius"], "params.n_estimators": [10, 200000]}
    conf = sweep_conf(tmp / "conf.yaml", FOREST, tmp / "runs", grid=grid, trial_timeout_s=TRIAL_LIMIT_S)
    t0 = time.perf_counter()
    found = run_sweep(conf, dask_engine)
    return (*found, time.perf_counter() - t0, tmp / "runs")


@pytest.mark.slow
def test_a_trial_that_raises_is_retried_once_then_failed_and_the_sweep_goes_on(faulty_sweep):
    run_dir, metrics, table = faulty_sweep[:3]
    assert table["status"].tolist() == ["ok", "timeout", "failed", "failed"]
    for index in (2, 3):
        assert table.loc[index, "attempts"] == 2 and "Unknown label type" in table.loc[index, "error"]
        folder = run_dir / "trials" / "forest-grid" / f"{index:03d}"
        assert sorted(p.name for p in folder.glob("attempt-*.log")) == ["attempt-1.log", "attempt-2.log"]
        assert "Unknown label type" in (folder / "attempt-2.log").read_text()
        assert not (folder / "result.json").exists()  # not done: a resume tries it again
    assert metrics["failed"] == 2 and metrics["done"] == 1 and metrics["best_index"] == 0


@pytest.mark.slow
def test_a_trial_over_its_time_limit_is_stopped(faulty_sweep):
    run_dir, metrics, table, seconds, runs = faulty_sweep
    assert table.loc[1, "status"] == "timeout" and table.loc[1, "attempts"] == 1  # not retried
    assert metrics["timeout"] == 1 and TRIAL_LIMIT_S <= table.loc[1, "seconds"] < TRIAL_LIMIT_S + 20
    result = json.loads((run_dir / "trials" / "forest-grid" / "001" / "result.json").read_text())
    assert result["status"] == "timeout" and f"{TRIAL_LIMIT_S} s" in result["error"]
    assert trial_processes(runs) == []  # its process group was killed
    assert seconds < 200  # 200,000 trees take many minutes


@pytest.mark.slow
def test_hyperband_stops_poor_trials_early(dask_engine, tmp_path):
    """9 softmax trials on digits, Hyperband over 1-9 epochs (eta 3): 37 epochs instead of the grid's 81."""
    grid = {"learning_rate": [0.0003, 0.003, 0.03], "batch_size": [16, 64, 256]}
    conf = sweep_conf(
        tmp_path / "conf.yaml",
        ROOT / "conf" / "sweep_cnn.yaml",
        tmp_path / "runs",
        name="hb",
        target={"stage": "deep", "model": "softmax", "threads_per_rank": 1},
        grid=grid,
        heatmap=["learning_rate", "batch_size"],
        early_stopping={"kind": "hyperband", "min_epochs": 1, "max_epochs": 9, "eta": 3},
    )
    run_dir, metrics, table = run_sweep(conf, dask_engine)
    assert metrics["done"] == 9 and metrics["epochs_full_grid"] == 81
    assert metrics["epochs_spent"] == table["epochs"].sum() == 37  # brackets of 5, 3 and 1 trials
    assert sorted(table["epochs"].tolist()) == [1, 1, 1, 1, 3, 3, 9, 9, 9]
    finalists = table[table["epochs"] == 9]
    assert metrics["best_metric"] == finalists["metric"].max()
    for index in table.loc[table["epochs"] == 9, "index"]:  # a promoted trial continued from its checkpoint
        folder = run_dir / "trials" / "hb" / f"{index:03d}"
        rungs = json.loads((folder / "result.json").read_text())["rungs"]
        trained = json.loads((folder / "out" / "results.json").read_text())
        assert len(trained["history"]) == 9 and trained["epochs_run"] == 9
        if len(rungs) > 1:
            assert trained["resumed_from"] == 3
