"""Load balancing of independent tasks over an engine's workers: a free slot takes the next task.

The queue lives on the driver and at most `slots` task slots are busy at once, so tasks of uneven length
finish in about (total work / slots) rather than in the longest static share; `on_outcome` sees each task as
it ends (write its result, promote it, add new tasks), which is what sweeps with early stopping need.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipelines.engines.base import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One independent task: its unique key, the item given to the task function, the slots it occupies."""

    key: str
    item: Any
    cost: int = 1


@dataclass
class Outcome:
    """How a task ended after its last attempt: its value, or its error in one line."""

    key: str
    ok: bool
    value: Any
    error: str | None
    attempts: int
    seconds: float
    item: Any


@dataclass
class _Running:
    task: Task
    attempt: int
    started: float


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_balanced(
    engine: Engine,
    fn: Callable[[Any], Any],
    tasks: Iterable[Task],
    *,
    slots: int | None = None,
    retries: int = 1,
    on_outcome: Callable[[Outcome], Iterable[Task] | None] | None = None,
    label: str = "tasks",
) -> list[Outcome]:
    """Run every task with at most `slots` busy slots; a task that raises is tried `retries` more times.

    Tasks start in the order given, each as soon as its cost fits in the free slots (a task costing more than
    all slots runs alone). A failure after the last attempt is an `Outcome` with `ok=False`; the others go on.
    `on_outcome` runs on the driver as each task ends and may return new tasks for the queue. Returns the
    outcomes in the order the tasks ended.
    """
    capacity = max(1, slots if slots is not None else engine.parallelism)
    queue: deque[tuple[Task, int]] = deque((task, 1) for task in tasks)
    running: dict[cf.Future[Any], _Running] = {}
    outcomes: list[Outcome] = []
    busy = failed = 0
    try:
        while queue or running:
            while queue and (busy + queue[0][0].cost <= capacity or not running):
                task, attempt = queue.popleft()
                running[engine.submit(fn, task.item, task.key)] = _Running(task, attempt, time.perf_counter())
                busy += task.cost
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for future in done:
                state = running.pop(future)
                busy -= state.task.cost
                seconds = time.perf_counter() - state.started
                error = future.exception()
                if error is not None and state.attempt <= retries:
                    what = (label, state.task.key, state.attempt, one_line(error))
                    log.warning("%s: %s failed (attempt %d): %s; retrying", *what)
                    queue.appendleft((state.task, state.attempt + 1))
                    continue
                outcome = Outcome(
                    key=state.task.key,
                    ok=error is None,
                    value=future.result() if error is None else None,
                    error=None if error is None else one_line(error),
                    attempts=state.attempt,
                    seconds=round(seconds, 3),
                    item=state.task.item,
                )
                failed += not outcome.ok
                outcomes.append(outcome)
                total = len(outcomes) + len(running) + len(queue)
                counts = (label, len(outcomes), total, failed, outcome.key, seconds)
                log.info("%s: %d/%d done (%d failed); %s in %.1f s", *counts)
                if on_outcome is not None:
                    queue.extend((task, 1) for task in on_outcome(outcome) or ())
    except BaseException:
        for future in running:
            future.cancel()
            engine_task = getattr(future, "engine_task", None)
            if engine_task is not None:
                engine_task.cancel()
        raise
    return outcomes
