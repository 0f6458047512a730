"""Packing many independent fits onto an engine's workers: load balancing, and each task reading its own data.

(1) Makespan. 48 real model fits of very uneven length (a regression forest per group of rows; group sizes
    drawn from a Pareto law, so a few groups hold most rows), run by the pack's own task function:
      balanced      run_balanced: a free slot takes the next task (tasks in random order),
      balanced LPT  the same with the largest groups first (what `group_by` packs do),
      static        the tasks dealt to the slots beforehand (round-robin, and in contiguous chunks), each slot
                    running its share as one task: GNU parallel's --jobs without a queue, doParallel's chunks.
    Prints each makespan and its ratio to the balanced one (>1: the static split is slower), and the bound
    max(total work / slots, longest task) from the balanced run's measured task times.
    With --sleep the tasks only wait (length proportional to the group size), which isolates the scheduling
    from CPU contention on a busy machine (and allows more slots than cores with --threads).
(2) Peak memory. One OLS per group over a synthetic table (default 1.5 M rows x 20 features, 16 groups):
      own split     each task reads only its group from Parquet (a filter pushed to the row groups),
      broadcast     the driver loads the whole table and ships a copy with every task (doParallel's export),
      scatter       Dask only: the table scattered once to every worker (client.scatter(broadcast=True)).
    Peak RSS (sampled every 20 ms) of the driver and of the worker processes, above their idle level.

    python -m benchmarks.packing.bench_packing [--engine dask|spark] [--rows 1500000] [--skip-memory]
    python -m benchmarks.packing.bench_packing --sleep 0.5 --threads 4 --skip-memory   # lengths as sleeps
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.engines.balance import Task, run_balanced
from pipelines.engines.config import DaskSettings, SparkSettings
from pipelines.engines.dask_engine import DaskEngine
from pipelines.engines.spark_engine import SparkEngine
from pipelines.pack.tasks import FitTask, Source, fit, run_task

FEATURES = [f"x{i}" for i in range(10)]
FOREST = {"n_estimators": 10, "max_depth": 8, "random_state": 0}


def write_groups(path: Path, sizes: list[int], features: list[str], seed: int, row_group: int = 65_536) -> Path:
    """A Parquet folder of rows sorted by group `g` (so a filter on `g` skips other groups' row groups)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=len(features))
    for g, n in enumerate(sizes):
        x = rng.normal(size=(n, len(features)))
        columns: dict[str, Any] = {
            "_source": np.full(n, "synthetic"),
            "_row": np.arange(n) + g * 10**8,
            "g": np.full(n, g),
        }
        columns.update({name: x[:, j] for j, name in enumerate(features)})
        columns["y"] = x @ beta + np.sin(3 * x[:, 0]) + rng.normal(size=n)
        pq.write_table(pa.table(columns), path / f"part-{g:05d}.parquet", row_group_size=row_group)
    return path


@dataclass(frozen=True)
class Sleep:
    """A task that only waits (the --sleep variant: task lengths without CPU contention)."""

    seconds: float


def run_one(item: FitTask | Sleep) -> Any:
    """One task: a pack fit, or a sleep (runs on a worker)."""
    if hasattr(item, "seconds"):
        time.sleep(item.seconds)
        return {"slept": item.seconds}
    return run_task(item)


def run_share(items: list[FitTask | Sleep]) -> list[Any]:
    """A statically assigned share: its tasks one after another, in one slot (runs on a worker)."""
    return [run_one(item) for item in items]


def makespan(engine: Any, tasks: list[Task], slots: int, static: str | None) -> tuple[float, list[Any]]:
    """Wall seconds of all tasks: load-balanced (static None), or dealt beforehand to the slots."""
    if static is None:
        t0 = time.perf_counter()
        outcomes = run_balanced(engine, run_one, tasks, slots=slots, retries=0, label="balanced")
        return time.perf_counter() - t0, outcomes
    items = [t.item for t in tasks]
    if static == "round-robin":
        shares = [items[w::slots] for w in range(slots)]
    else:
        cut = np.array_split(np.arange(len(items)), slots)
        shares = [[items[i] for i in chunk] for chunk in cut]
    share_tasks = [Task(f"share-{w}", share) for w, share in enumerate(shares)]
    t0 = time.perf_counter()
    outcomes = run_balanced(engine, run_share, share_tasks, slots=slots, retries=0, label=static)
    return time.perf_counter() - t0, outcomes


def bench_makespan(engine: Any, root: Path, tasks_n: int, seed: int, sleep: float) -> None:
    rng = np.random.default_rng(seed)
    sizes = np.clip((rng.pareto(1.1, tasks_n) + 1) * 600, 300, 40_000).astype(int).tolist()
    order = rng.permutation(tasks_n)
    if sleep:
        mean = float(np.mean(sizes))
        tasks = [Task(f"g={g}", Sleep(round(sleep * sizes[g] / mean, 3))) for g in order]
        what = f"sleeps of {sleep:g} s x size / mean size"
    else:
        data = write_groups(root / f"uneven-{tasks_n}-{seed}", sizes, FEATURES, seed)
        source = Source(str(data), None, tuple(FEATURES), "y")
        tasks = [Task(f"g={g}", FitTask("random_forest_regressor", FOREST, source, ("g", int(g)))) for g in order]
        what = "forest fits"
    size_of = {t.key: sizes[int(t.key[2:])] for t in tasks}
    lpt = sorted(tasks, key=lambda t: -size_of[t.key])
    slots = engine.parallelism
    print(
        f"\n(1) makespan: {tasks_n} {what}, group sizes {min(sizes)}..{max(sizes)} rows "
        f"(total {sum(sizes):,}, largest {max(sizes) / sum(sizes):.0%}), {slots} slots on {engine.kind}"
    )
    makespan(engine, tasks[:slots], slots, None)  # warm-up: imports on every worker
    balanced, outcomes = makespan(engine, tasks, slots, None)
    work = [o.seconds for o in outcomes]
    print(
        f"    bound max(work/slots, longest) = {max(sum(work) / slots, max(work)):.2f} s "
        f"(work {sum(work):.2f} s, longest {max(work):.2f} s)"
    )
    print(f"    {'variant':24} {'makespan s':>10} {'ratio':>7}")
    print(f"    {'balanced':24} {balanced:10.2f} {1.0:7.2f}")
    for name, run in (
        ("balanced, largest first", lambda: makespan(engine, lpt, slots, None)),
        ("static round-robin", lambda: makespan(engine, tasks, slots, "round-robin")),
        ("static contiguous", lambda: makespan(engine, tasks, slots, "contiguous")),
    ):
        seconds, _ = run()
        print(f"    {name:24} {seconds:10.2f} {seconds / balanced:7.2f}", flush=True)


@dataclass(frozen=True)
class Broadcast:
    """A task carrying the whole table (the broadcast variant): it filters its own group out of it."""

    frame: Any
    group: int
    source: Source


def fit_broadcast(item: Broadcast | list) -> dict[str, Any]:
    """OLS on one group cut from a table that was shipped whole (runs on a worker)."""
    frame, group, source = (item.frame, item.group, item.source) if hasattr(item, "frame") else item
    rows = frame[frame["g"] == group].sort_values(["_source", "_row"])
    est = fit("linear_regression", {}, rows[list(source.features)], rows[source.label].to_numpy())
    return {"rows": len(rows), "coef": est.summary_.coefficients.estimate.tolist()}


class TreePeak:
    """Peak RSS of this process (the driver) and, separately, of all its descendants (the workers)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self._stop = interval, threading.Event()
        self.driver = self.workers = 0

    @staticmethod
    def sample() -> tuple[int, int]:
        me = psutil.Process()
        workers = 0
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                workers += child.memory_info().rss
        return me.memory_info().rss, workers

    def __enter__(self) -> TreePeak:
        self.base = self.sample()
        self.driver, self.workers = self.base
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            driver, workers = self.sample()
            self.driver, self.workers = max(self.driver, driver), max(self.workers, workers)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_memory(make_engine: Any, root: Path, rows: int, groups: int, features: int) -> None:
    names = [f"x{i}" for i in range(features)]
    data = write_groups(root / f"memory-{rows}-{groups}-{features}", [rows // groups] * groups, names, 1)
    source = Source(str(data), None, tuple(names), "y")
    size = sum(f.stat().st_size for f in data.iterdir())
    kind = make_engine().kind
    print(
        f"\n(2) peak memory: OLS per group, {rows:,} rows x {features} features in {groups} groups "
        f"({size / 2**20:.0f} MB Parquet, {rows * (features + 3) * 8 / 2**20:.0f} MB in memory), {kind}, "
        "each variant on a freshly started engine"
    )
    print(f"    {'variant':12} {'seconds':>8} {'driver +MB':>11} {'workers +MB':>12}")
    own = [Task(f"g={g}", FitTask("linear_regression", {}, source, ("g", g))) for g in range(groups)]

    def variant(name: str, go: Any) -> list[Any]:
        with make_engine() as engine:
            run_balanced(engine, run_task, own[: engine.parallelism], retries=0)  # warm-up: imports on the workers
            time.sleep(1.0)
            with TreePeak() as peak:
                t0 = time.perf_counter()
                outcomes = go(engine)
                seconds = time.perf_counter() - t0
        driver, workers = (peak.driver - peak.base[0]) / 2**20, (peak.workers - peak.base[1]) / 2**20
        print(f"    {name:12} {seconds:8.2f} {driver:11.0f} {workers:12.0f}", flush=True)
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
        return outcomes

    mine = variant("own split", lambda engine: run_balanced(engine, run_task, own, retries=0))

    def broadcast(engine: Any) -> list[Any]:
        frame = pq.read_table(data).to_pandas()
        tasks = [Task(f"g={g}", Broadcast(frame, g, source)) for g in range(groups)]
        return run_balanced(engine, fit_broadcast, tasks, retries=0)

    theirs = variant("broadcast", broadcast)
    assert [o.value["rows"] for o in theirs] == [o.value["train_rows"] for o in mine]
    if kind == "dask":

        def scatter(engine: Any) -> list[Any]:
            frame = engine.client.scatter(pq.read_table(data).to_pandas(), broadcast=True)
            tasks = [Task(f"g={g}", [frame, g, source]) for g in range(groups)]
            return run_balanced(engine, fit_broadcast, tasks, retries=0)

        variant("scatter", scatter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="dask", choices=["dask", "spark"])
    parser.add_argument("--tasks", type=int, default=48)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.0, help="tasks sleep (mean seconds) instead of fitting")
    parser.add_argument("--threads", type=int, default=1, help="slots per Dask worker / Spark core multiplier")
    parser.add_argument("--skip-makespan", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-packing-"))
    cores = os.cpu_count() or 2

    def make_engine() -> Any:
        if args.engine == "spark":
            return SparkEngine(SparkSettings(master=f"local[{cores * args.threads}]"), partitions=cores)
        return DaskEngine(DaskSettings(n_workers=cores, threads_per_worker=args.threads, memory_limit="6GB"))

    print(f"{cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GB memory, data in {root}")
    if not args.skip_makespan:
        with make_engine() as engine:
            bench_makespan(engine, root, args.tasks, args.seed, args.sleep)
    if not args.skip_memory:
        bench_memory(make_engine, root, args.rows, args.groups, args.features)


if __name__ == "__main__":
    main()
