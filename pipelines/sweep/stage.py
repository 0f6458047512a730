"""The sweep stage: a grid or random search over a model or deep stage, trials load-balanced on the workers.

Each trial is `python -m pipelines.sweep.trial <run>/trials/<sweep>/ INDEX` in its own folder (spec.json,
result.json, attempt logs), run by an engine task with a time limit (or as a SLURM/PBS array task). The
folders persist across driver kills like checkpoints/: a trial whose result.json was written for the same
spec is never run again. Deep trials may stop early (successive halving / Hyperband on epochs).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from pipelines.atomic import atomic_write_json
from pipelines.classical.stage import HEADLINE as MODEL_HEADLINE
from pipelines.classical.stage import ModelStage
from pipelines.deep.stage import DeepStage, hand_off, rank_class_names, transfer_model_path, user_code
from pipelines.engines.balance import Outcome, Task, run_balanced
from pipelines.errors import PipelineError
from pipelines.ingest.handoff import ImageInputs, TableInputs, training_data
from pipelines.launch.array import run_array
from pipelines.launch.config import ArraySettings
from pipelines.protocol import PipelineSettings, Problem, RecordedResult, Stage, StageContext
from pipelines.runs.layout import Folder
from pipelines.settings import StrictModel
from pipelines.sweep import plots
from pipelines.sweep.hyperband import Request, Schedule
from pipelines.sweep.space import RandomSearch, Values, grid_values, key_problem, random_values, with_values
from pipelines.sweep.trial import (
    SPEC,
    CrossValidation,
    TrialItem,
    TrialSpec,
    read_fold,
    read_result,
    run_trial_task,
    rung_of,
    trial_dir,
    write_result,
)

log = logging.getLogger(__name__)

DEEP_METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy", "train_loss")
MODEL_METRICS = (*MODEL_HEADLINE, "test_mae")
BEST_KEYS = ("metric", "mode", "best_index", "best_values", "best_metric", "cv", "best_test_metric")
Target = Annotated[ModelStage | DeepStage, Field(discriminator="stage")]


class EarlyStopping(StrictModel):
    """Stop poor deep trials early: successive halving (one bracket) or Hyperband (several), epochs as budget."""

    kind: Literal["hyperband", "halving"] = "hyperband"
    min_epochs: PositiveInt = 1
    max_epochs: PositiveInt
    eta: int = Field(default=3, ge=2, description="keep the best 1/eta of a rung for the next, eta times longer")

    @model_validator(mode="after")
    def _ordered(self) -> EarlyStopping:
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) exceeds max_epochs ({self.max_epochs})")
        return self


@dataclass
class SweepResult(RecordedResult):
    """A finished sweep's summary: counts, the best configuration and its metric, epochs spent vs the full grid's."""

    def facts(self) -> dict[str, Any]:
        """Headline facts: trials, done/failed/timeout/reused, the best metric."""
        keys: tuple[str, ...] = (
            "trials",
            "done",
            "failed",
            "timeout",
            "reused",
            "metric",
            "best_metric",
            "best_test_metric",
        )
        keys += ("epochs_spent",)
        facts = {k: self.values.get(k) for k in ("model", "train_rows")}
        facts["fit_seconds"] = self.values.get("seconds")
        return {**facts, **{k: self.values[k] for k in keys if self.values.get(k) is not None}}


class SweepStage(Stage):
    """Search the values of a model or deep stage (grid or random), trials load-balanced over the workers."""

    stage: Literal["sweep"] = "sweep"
    target: Target
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = None
    random: RandomSearch | None = None
    metric: str = "test_accuracy"
    mode: Literal["max", "min"] = "max"
    cv: CrossValidation | None = Field(default=None, description="score each trial by k-fold cv on train")
    early_stopping: EarlyStopping | None = None
    retries: int = Field(default=1, ge=0, description="attempts after a trial's first failure")
    trial_timeout_s: PositiveFloat = 3600
    ranks_per_trial: PositiveInt = Field(default=1, description="deep: Horovod ranks (task slots) of each trial")
    executor: Literal["engine", "slurm", "pbs"] = "engine"
    array: ArraySettings | None = None
    heatmap: tuple[str, str] | None = Field(default=None, description="two keys for the heatmap (default: first two)")
    plots: bool = True

    output_dir: ClassVar[str] = Folder.SWEEPS
    placement_fields: ClassVar[frozenset[str]] = frozenset({"retries", "trial_timeout_s", "executor", "array"})

    def default_name(self) -> str:
        """Outputs go under sweeps/sweep-<target> unless named."""
        return f"sweep-{self.target.output_name}"

    @property
    def space_name(self) -> str:
        return "grid" if self.grid is not None else "random.space"

    def trial_values(self) -> list[Values]:
        """Every trial's values, in trial order."""
        return grid_values(self.grid) if self.grid is not None else random_values(self.random)  # type: ignore[arg-type]

    def trial_target(self, values: Values) -> ModelStage | DeepStage:
        """The target stage with a trial's values (pydantic validates them, the stage checks its own values)."""
        return type(self.target).model_validate(with_values(self.target.model_dump(mode="json"), values))

    def check_values(self) -> list[Problem]:
        """One space; its keys are keys of the target; every trial's values validate; metric known; budgets."""
        if (self.grid is None) == (self.random is None):
            return [Problem("grid", "give exactly one of 'grid' and 'random'")]
        space = self.grid if self.grid is not None else self.random.space  # type: ignore[union-attr]
        deep = isinstance(self.target, DeepStage)
        problems = []
        for key in space:
            why = key_problem(type(self.target), key)
            if key.split(".")[0] in ("stage", "name"):
                why = "the target's kind and name are not searched"
            elif deep and key.split(".")[0] in ("classes", "transfer"):
                why = "the tensor hand-off and a transfer source are shared by every trial"
            elif key == "epochs" and self.early_stopping is not None:
                why = "with early_stopping the epochs are the budget, not a searched value"
            if why:
                problems.append(Problem(f"{self.space_name}.{key}", why))
        if self.cv is not None and (deep or self.executor != "engine"):
            problems.append(Problem("cv", "cross-validation runs classical (model) targets on the engine's workers"))
        if self.early_stopping is not None and not deep:
            problems.append(Problem("early_stopping", "needs a deep target (epochs are the budget)"))
        if self.ranks_per_trial > 1 and not deep:
            problems.append(Problem("ranks_per_trial", "only a deep target runs on several ranks"))
        known = DEEP_METRICS if deep else MODEL_METRICS
        if self.metric not in known:
            problems.append(Problem("metric", f"{self.metric!r} is not a metric of this target (one of {known})"))
        if self.heatmap is not None and not set(self.heatmap) <= set(space):
            problems.append(Problem("heatmap", f"{list(self.heatmap)} are not all keys of {self.space_name}"))
        if problems:
            return problems
        if self.grid is not None:  # each value alone first: the message names its key
            for key, choices in self.grid.items():
                found = next(((v, why) for v in choices if (why := self._refused({key: v}))), None)
                if found is not None:
                    problems.append(Problem(f"grid.{key}", f"{found[0]!r} refused: {found[1]}"))
        if problems:
            return problems
        for index, values in enumerate(self.trial_values()):
            why = self._refused(values)
            if why:
                return [Problem(self.space_name, f"trial {index:03d} {values} refused: {why}")]
        return []

    def _refused(self, values: Values) -> str | None:
        """Why the target refuses these values (None: it accepts them)."""
        try:
            self.trial_target(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            return f"{where}: {message}" if where else message
        return None

    def check(self, earlier: Sequence[Stage], config: PipelineSettings) -> list[Problem]:
        """The target's own pipeline checks (an ingest that writes, a label, classes), under `target.`."""
        return [Problem(f"target.{p.path}", p.message) for p in self.target.check(earlier, config)]

    def run(self, ctx: StageContext) -> SweepResult:
        """Run every trial not already done, write sweeps/<name>/ (results.csv, best.json, plots)."""
        return Sweep(self, ctx).run()

    def restore(self, ctx: StageContext) -> SweepResult:
        """The summary this run recorded (the table and plots are in sweeps/<name>/)."""
        self.recorded_facts(ctx)
        return SweepResult(dict(ctx.run.metrics.get(self.output_name, {})))


@dataclass
class Row:
    """One trial's line of results.csv."""

    index: int
    values: Values
    status: str = "pending"
    attempts: int = 0
    epochs: int | None = None
    metric: float | None = None
    seconds: float | None = None
    host: str | None = None
    worker: str | None = None
    reused: bool = False
    error: str | None = None
    cv_std: float | None = None


class Sweep:
    """One sweep's driver: the only writer of the trials' specs and of the results; trials write their results."""

    def __init__(self, stage: SweepStage, ctx: StageContext) -> None:
        self.stage, self.ctx = stage, ctx
        self.name = stage.output_name
        self.dir = ctx.run.dir / "trials" / self.name
        self.values = stage.trial_values()
        self.rows = [Row(i, v) for i, v in enumerate(self.values)]
        stop = stage.early_stopping
        budget = getattr(stage.target, "epochs", None)
        self.schedule = Schedule(
            len(self.values),
            stop.kind if stop is not None else "none",
            min_epochs=stop.min_epochs if stop else 1,
            max_epochs=stop.max_epochs if stop else budget,
            eta=stop.eta if stop else 3,
            mode=stage.mode,
        )
        self.inputs: TableInputs | ImageInputs | None = None  # what a classical trial's splits hold
        self.specs: dict[int, TrialSpec] = {}
        self.fold_seconds: list[float] = []  # cv: each fold task's wall seconds, and the folds' makespan and slots
        self.fold_wall: tuple[float, int] = (0.0, 1)

    # --- trial specs -----------------------------------------------------------------------------------

    def _common(self) -> dict[str, Any]:
        """What every trial shares: the written splits and their inputs (classical) or the tensor shards (deep)."""
        stage, ctx = self.stage, self.ctx
        data = training_data(ctx, self.name)
        common: dict[str, Any] = {"metric": stage.metric, "splits": data.fingerprint}
        if isinstance(stage.target, DeepStage):
            shards = hand_off(ctx.engine, stage.target, ctx.run, data)
            classes = stage.target.classes or list(range(shards.classes))
            return {
                **common,
                "tensors": str(shards.dir),
                "transfer_model": transfer_model_path(stage.target, ctx.run),
                "code": user_code(ctx.run, stage.target, self.name),  # trials import the run's copy
                "class_names": rank_class_names(data, classes),
                "ranks": stage.ranks_per_trial,
            }
        self.inputs = data.inputs
        return {**common, "data": dict(data.outputs), "inputs": data.inputs, "cv": stage.cv}

    def _prepare(self) -> None:
        """Write each trial's spec.json (only when it changed); drop a trial folder written for another spec."""
        common = self._common()
        for row in self.rows:
            target = self.stage.trial_target(row.values)
            columns: dict[str, Any] = {}
            if isinstance(target, ModelStage):
                assert self.inputs is not None
                features, label = self.inputs.columns(target.features, target.label, self.name)
                columns = {"features": features, "label": label}
            spec = TrialSpec(index=row.index, values=row.values, target=target, **common, **columns).with_digest()
            folder = trial_dir(self.dir, row.index)
            spec_path = folder / SPEC
            if spec_path.exists() and json.loads(spec_path.read_text()).get("digest") != spec.digest:
                log.info("sweep %s: trial %03d was run under another spec; starting it over", self.name, row.index)
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            self.specs[row.index] = spec

    def _result(self, index: int) -> dict[str, Any] | None:
        """The trial's result.json, when it was written under its current spec."""
        return read_result(trial_dir(self.dir, index), self.specs[index].digest)

    def _write_spec(self, index: int, epochs: int | None) -> None:
        spec = self.specs[index].model_copy(update={"epochs": epochs})
        path = trial_dir(self.dir, index) / SPEC
        if not path.exists() or json.loads(path.read_text()) != spec.model_dump(mode="json"):
            spec.write(path)

    # --- scheduling ------------------------------------------------------------------------------------

    def _record(self, index: int, epochs: int | None, result: dict[str, Any] | None, **facts: Any) -> list[Request]:
        """Note a trial's end at a budget in its row; feed the schedule; returns the promotions it releases."""
        row = self.rows[index]
        status = result.get("status", "ok") if result is not None else "failed"
        metric = result.get("metric") if result is not None and status == "ok" else None
        seconds = facts.pop("seconds", None) or (result or {}).get("seconds")
        row.status, row.epochs, row.metric = status, epochs, metric
        row.cv_std = (result or {}).get("metrics", {}).get("cv_std") if metric is not None else None
        row.seconds = round((row.seconds or 0.0) + (seconds or 0.0), 3)
        row.host = (result or {}).get("host") or row.host
        if result is not None and result.get("worker_pid") is not None:
            row.worker = f"{result['host']}:{result['worker_pid']}"
        for key, value in facts.items():
            setattr(row, key, value)
        return self.schedule.report(index, epochs, metric)

    def _resolve(self, requests: list[Request]) -> list[Request]:
        """Write the specs of requested (trial, budget) pairs; settle those already done; return those to run."""
        pending, todo = deque(requests), []
        while pending:
            index, epochs = pending.popleft()
            self._write_spec(index, epochs)
            found = rung_of(self._result(index), epochs)
            if found is None:
                todo.append((index, epochs))
                continue
            log.info(
                "sweep %s: trial %03d at epochs %s already done (%s); not run again",
                self.name,
                index,
                epochs,
                found["status"],
            )
            pending.extend(self._record(index, epochs, found, reused=True, seconds=0.0))
        return todo

    def _task(self, request: Request) -> Task:
        index, epochs = request
        item = TrialItem(str(self.dir), index, float(self.stage.trial_timeout_s))
        key = f"trial-{index:03d}" + (f"-e{epochs}" if self.stage.early_stopping is not None else "")
        return Task(key, item, cost=self.stage.ranks_per_trial)

    def _fold_tasks(self, request: Request) -> list[Task]:
        """A cv trial's folds not yet done, one task each (their results are kept across a driver's kill)."""
        index, _ = request
        folder, digest = trial_dir(self.dir, index), self.specs[index].digest
        timeout = float(self.stage.trial_timeout_s)
        cv = self.stage.cv
        assert cv is not None
        return [
            Task(f"trial-{index:03d}-fold{fold:02d}", TrialItem(str(self.dir), index, timeout, fold))
            for fold in range(cv.tasks)
            if read_fold(folder, digest, fold) is None
        ]

    def _cv_result(self, index: int) -> dict[str, Any]:
        """A cv trial's result.json from its folds: the metric's mean, its standard deviation, each metric's mean."""
        folder, spec = trial_dir(self.dir, index), self.specs[index]
        folds = [read_fold(folder, spec.digest, f) for f in range(self.stage.cv.tasks)]  # type: ignore[union-attr]
        scores = np.array([f["metric"] for f in folds])  # type: ignore[index]
        keys = set.intersection(*(set(f["metrics"]) for f in folds))  # type: ignore[index]
        metrics = {k: float(np.mean([f["metrics"][k] for f in folds])) for k in sorted(keys)}  # type: ignore[index]
        metrics.update(cv_mean=float(scores.mean()), cv_std=float(scores.std(ddof=0)), cv_folds=len(scores))
        metrics["cv_scores"] = scores.tolist()
        seconds = sum(f["seconds"] for f in folds)  # type: ignore[index]
        return write_result(folder, spec, "ok", seconds, float(scores.mean()), metrics)

    def _on_engine_cv(self, first: list[Request]) -> None:
        """Every fold of every trial a task, load-balanced; a trial is scored when its last fold ends."""
        pending: dict[int, set[str]] = {}
        failed: dict[int, str] = {}
        tasks: list[Task] = []
        for request in first:
            todo = self._fold_tasks(request)
            if todo:
                pending[request[0]] = {t.key for t in todo}
                tasks += todo
            else:  # every fold was done before the driver stopped
                self._record(request[0], None, self._cv_result(request[0]), reused=True, seconds=0.0)

        def ended(outcome: Outcome) -> list[Task]:
            index = outcome.item.index
            self.fold_seconds.append(outcome.seconds)
            pending[index].discard(outcome.key)
            self.rows[index].attempts = max(self.rows[index].attempts, outcome.attempts)
            if not outcome.ok:
                failed.setdefault(index, f"fold {outcome.item.fold}: {outcome.error}")
            if not pending[index]:
                if index in failed:
                    self._record(index, None, None, reused=False, error=failed[index], seconds=outcome.seconds)
                else:
                    self._record(index, None, self._cv_result(index), reused=False)
            return []

        t0 = time.perf_counter()
        slots = self.ctx.engine.parallelism
        run_balanced(
            self.ctx.engine,
            run_trial_task,
            tasks,
            slots=slots,
            retries=self.stage.retries,
            on_outcome=ended,
            label=f"sweep {self.name} (cv)",
        )
        self.fold_wall = (time.perf_counter() - t0, slots)

    def _final(self, index: int) -> dict[str, Any]:
        """The best cv configuration refitted on the whole train split and scored once on test (final.json)."""
        folder, digest = trial_dir(self.dir, index), self.specs[index].digest
        found = read_fold(folder, digest, "final")
        if found is None:
            item = TrialItem(str(self.dir), index, float(self.stage.trial_timeout_s), "final")
            outcome = run_balanced(
                self.ctx.engine, run_trial_task, [Task(f"trial-{index:03d}-final", item)], retries=self.stage.retries
            )[0]
            if not outcome.ok:
                raise PipelineError(f"sweep {self.name!r}: the refit of trial {index:03d} failed: {outcome.error}")
            found = outcome.value
        return found

    def _on_engine(self, first: list[Request]) -> None:
        if self.stage.cv is not None:
            return self._on_engine_cv(first)
        budget = {index: epochs for index, epochs in first}

        def ended(outcome: Outcome) -> list[Task]:
            index = outcome.item.index
            result = outcome.value if outcome.ok else None
            extra: dict[str, Any] = {"attempts": outcome.attempts, "seconds": outcome.seconds}
            if not outcome.ok:
                extra["error"] = outcome.error
                log.warning(
                    "sweep %s: trial %03d failed after %d attempt(s): %s",
                    self.name,
                    index,
                    outcome.attempts,
                    outcome.error,
                )
            more = self._resolve(self._record(index, budget[index], result, reused=False, **extra))
            budget.update(dict(more))
            return [self._task(r) for r in more]

        slots = max(1, self.ctx.engine.parallelism // self.stage.ranks_per_trial)
        tasks = [self._task(r) for r in first]
        run_balanced(
            self.ctx.engine,
            run_trial_task,
            tasks,
            slots=slots,
            retries=self.stage.retries,
            on_outcome=ended,
            label=f"sweep {self.name}",
        )

    def _on_array(self, wave: list[Request]) -> None:
        """Each wave of requests (a rung, with early stopping) is one array job; undone tasks are resubmitted."""
        command = [sys.executable, "-m", "pipelines.sweep.trial", str(self.dir)]
        limit = int(self.stage.trial_timeout_s)  # no array section: each task's walltime is the trial's limit
        walltime = f"{limit // 3600:02d}:{limit // 60 % 60:02d}:{limit % 60:02d}"
        settings = self.stage.array or ArraySettings(walltime=walltime)
        while wave:
            budget = dict(wave)

            def done(index: int) -> bool:
                return rung_of(self._result(index), budget[index]) is not None

            workdir = self.dir / "array"
            workdir.mkdir(parents=True, exist_ok=True)
            before = set(workdir.glob("array-*/logs/*.log"))
            run_array(
                self.stage.executor, sorted(budget), command, workdir, settings, done=done, resubmits=self.stage.retries
            )
            requests = []
            tries = Counter(int(p.stem) for p in set(workdir.glob("array-*/logs/*.log")) - before)
            for index, epochs in sorted(budget.items()):
                found = rung_of(self._result(index), epochs)
                error = None if found else "not done after the array job and its resubmissions"
                attempts = tries[index]
                requests += self._record(index, epochs, found, attempts=attempts, error=error)
            wave = self._resolve(requests)

    # --- the run ---------------------------------------------------------------------------------------

    def run(self) -> SweepResult:
        t0 = time.perf_counter()
        self._prepare()
        first = self._resolve(self.schedule.start())
        reused = sum(r.reused for r in self.rows)
        log.info(
            "sweep %s: %d trials (%d already done), %d to run on %s",
            self.name,
            len(self.rows),
            reused,
            len(first),
            self.stage.executor,
        )
        if first:
            self._on_engine(first) if self.stage.executor == "engine" else self._on_array(first)
        return self._write(time.perf_counter() - t0)

    def table(self) -> pd.DataFrame:
        """results.csv: one row per trial (index, values, status, attempts, epochs, metric, seconds, host)."""
        records = []
        for row in self.rows:
            record: dict[str, Any] = {"index": row.index, **row.values}
            record.update(
                status=row.status,
                attempts=row.attempts,
                epochs=row.epochs,
                metric=row.metric,
                seconds=row.seconds,
                host=row.host,
                worker=row.worker,
                reused=row.reused,
                error=row.error,
            )
            if self.stage.cv is not None:
                record["cv_std"] = row.cv_std
            records.append(record)
        columns = list(records[0]) if records else []  # object columns: 2 stays 2 beside a None, not 2.0
        return pd.DataFrame({c: pd.Series([r[c] for r in records], dtype=object) for c in columns})

    def _write(self, seconds: float) -> SweepResult:
        table = self.table()
        stage = self.stage
        scored = [r for r in self.rows if r.metric is not None]
        sign = 1.0 if stage.mode == "max" else -1.0
        # the best among trials that reached the largest budget (with early stopping, earlier rungs are short)
        top = max((r.epochs or 0) for r in scored) if scored else 0
        finalists = [r for r in scored if (r.epochs or 0) == top]
        best = max(finalists, key=lambda r: (sign * r.metric, -r.index)) if finalists else None  # type: ignore[operator]
        counts = {s: sum(r.status == s for r in self.rows) for s in ("ok", "failed", "timeout")}
        values: dict[str, Any] = {
            "model": f"sweep of {stage.target.model}",
            "train_rows": training_data(self.ctx, self.name).rows.get("train", 0),
            "trials": len(self.rows),
            "done": counts["ok"],
            "failed": counts["failed"],
            "timeout": counts["timeout"],
            "reused": sum(r.reused for r in self.rows),
            "metric": stage.metric,
            "mode": stage.mode,
            "executor": stage.executor,
            "best_index": best.index if best else None,
            "best_values": best.values if best else None,
            "best_metric": best.metric if best else None,
            "seconds": round(seconds, 3),
        }
        if stage.cv is not None and best is not None:
            final = self._final(best.index)
            values["cv"] = {**stage.cv.model_dump(), "best_std": best.cv_std}
            if self.fold_seconds:  # the folds' makespan beside its lower bound max(longest fold, work / slots)
                wall, slots = self.fold_wall
                bound = max(max(self.fold_seconds), sum(self.fold_seconds) / slots)
                values["cv"].update(folds_run=len(self.fold_seconds), slots=slots, makespan_s=round(wall, 3))
                values["cv"].update(lower_bound_s=round(bound, 3), longest_fold_s=max(self.fold_seconds))
            values["best_test_metric"] = final["metric"]
            values["best_test_metrics"] = final["metrics"]
        if isinstance(stage.target, DeepStage):
            values.update(epochs_spent=self.schedule.epochs_spent, epochs_full_grid=self.schedule.epochs_full)
            if stage.early_stopping is not None:
                values["early_stopping"] = stage.early_stopping.model_dump()
        if best is None:
            errors = [f"trial {r.index:03d}: {r.error}" for r in self.rows if r.error][:1]
            raise PipelineError(
                f"sweep {self.name!r}: no trial succeeded ({counts['failed']} failed, {counts['timeout']} over their "
                f"time limit); {'; '.join(errors) or 'no error recorded'} (attempt logs in {self.dir})"
            )
        keys = list(self.values[0]) if self.values else []
        with self.ctx.run.output(Folder.SWEEPS.of(self.name)) as tmp:
            tmp.mkdir()
            table.to_csv(tmp / "results.csv", index=False)
            atomic_write_json(
                tmp / "best.json",
                {k: values[k] for k in BEST_KEYS if k in values},
            )
            if stage.plots and scored:
                axes = list(stage.heatmap or keys[:2])
                values["plots"] = plots.sweep_plots(tmp, table, keys, axes, stage.metric, stage.mode)
        values["results"] = f"{Folder.SWEEPS.of(self.name)}/results.csv"
        return SweepResult(values)
