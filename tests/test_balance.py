"""Load-balanced tasks on both real engines: free slots take the next task, retries, failures, tasks added late."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipelines.engines.balance import Task, run_balanced
from pipelines.engines.base import TaskError


def _task_functions():
    """Task functions, nested so they ship by value to Spark's Python workers (tests/ is not on their path)."""

    def sleep(item: tuple[str, float]) -> dict:
        """Sleep, then say where and when the task ran."""
        name, seconds = item
        start = time.time()
        time.sleep(seconds)
        return {"name": name, "pid": os.getpid(), "start": start, "end": time.time()}

    def flaky(item: tuple[str, str]) -> str:
        """Fail the first attempt of a task (a marker file remembers it); fail every attempt of 'bad'."""
        name, folder = item
        marker = Path(folder) / name
        if name == "bad":
            raise ValueError(f"task {name} always fails")
        if not marker.exists():
            marker.write_text("tried")
            raise RuntimeError(f"task {name} fails once")
        return name

    return sleep, flaky


_sleep, _flaky = _task_functions()


def test_submit_returns_result_and_task_error(engine):
    assert engine.submit(_sleep, ("a", 0.0), "one").result(timeout=120)["name"] == "a"
    with pytest.raises(TaskError, match="ValueError: task bad always fails"):
        engine.submit(_flaky, ("bad", "/nonexistent"), "two").result(timeout=120)


def test_uneven_tasks_are_balanced_over_two_slots(engine):
    # one long task and six short ones: a static even split puts the long one and 3 short ones on one slot; a
    # free slot taking the next task runs all six short ones on the other slot while the long one runs (4 s is
    # well above six of Spark's one-task jobs, about 0.3-0.5 s each here)
    tasks = [Task("long", ("long", 4.0))] + [Task(f"s{i}", (f"s{i}", 0.2)) for i in range(6)]
    outcomes = run_balanced(engine, _sleep, tasks, slots=2)
    assert sorted(o.key for o in outcomes) == sorted(t.key for t in tasks) and all(o.ok for o in outcomes)
    values = [o.value for o in outcomes]
    long = next(v for v in values if v["name"] == "long")
    during = [v for v in values if v["name"] != "long" and v["start"] < long["end"]]
    assert len(during) == 6  # every short task started while the long one ran: the other slot took them in turn
    # never more than two tasks at once
    edges = sorted([(v["start"], 1) for v in values] + [(v["end"], -1) for v in values])
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    assert peak <= 2


def test_failed_task_is_retried_once_then_recorded(engine, tmp_path):
    tasks = [Task(name, (name, str(tmp_path))) for name in ("a", "bad", "c")]
    outcomes = {o.key: o for o in run_balanced(engine, _flaky, tasks, slots=2, retries=1)}
    assert outcomes["a"].ok and outcomes["a"].attempts == 2 and outcomes["a"].value == "a"
    assert outcomes["c"].ok and outcomes["c"].attempts == 2
    assert not outcomes["bad"].ok and outcomes["bad"].attempts == 2
    assert outcomes["bad"].error == "ValueError: task bad always fails"


def test_on_outcome_adds_tasks_and_cost_limits_concurrency(dask_engine):
    seen: list[str] = []

    def promote(outcome):
        seen.append(outcome.key)
        if outcome.key.startswith("rung0"):
            return [Task("rung1-" + outcome.key[-1], ("x", 0.05), cost=2)]
        return None

    tasks = [Task(f"rung0-{i}", ("x", 0.05)) for i in range(3)]
    outcomes = run_balanced(dask_engine, _sleep, tasks, slots=2, on_outcome=promote)
    assert len(outcomes) == 6 and sorted(seen) == sorted(o.key for o in outcomes)
    promoted = sorted((o.value["start"], o.value["end"]) for o in outcomes if o.key.startswith("rung1"))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(promoted, promoted[1:], strict=False))
