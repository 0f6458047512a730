"""The pack stage: many independent fits of one classical model, load-balanced over the engine's workers.

Three kinds of pack, one per config key: `bootstrap` (replicates of the fit on resampled rows, compared with
the analytic HC1 standard errors), `group_by` (one model per group of rows) and `configs` (one model per param
set). Every task reads only its own rows from the written splits on its worker; the driver ships paths.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from pydantic import Field, NonNegativeInt, PositiveInt
from scipy import stats
from sklearn.base import is_classifier, is_regressor

from pipelines.atomic import atomic_write_json
from pipelines.classical.external import build
from pipelines.classical.stage import ModelName, ModelStage
from pipelines.engines.balance import Outcome, Task, run_balanced
from pipelines.errors import ConfigError, DataError
from pipelines.ingest.handoff import TrainingData, training_data
from pipelines.ingest.stage import written_splits_problems
from pipelines.pack import plots
from pipelines.pack.tasks import BootstrapTask, FitTask, FullFit, Source, group_counts, run_task
from pipelines.protocol import PipelineSettings, Problem, RecordedResult, Stage, StageContext
from pipelines.runs.layout import Folder
from pipelines.settings import StrictModel

log = logging.getLogger(__name__)
KINDS = ("bootstrap", "group_by", "configs")
BOOTSTRAP_MODELS = ("linear_regression", "logistic_regression")
SCORES = ("test_r2", "test_accuracy", "train_r2", "train_accuracy", "train_explained_variance", "train_inertia")


class BootstrapConfig(StrictModel):
    """Replicates of the fit on rows drawn with replacement; replicate i is seeded by [seed, i]."""

    replicates: PositiveInt = 200
    seed: int = 0
    per_task: PositiveInt = Field(default=10, description="replicates one task fits (the result does not depend on it)")
    level: float = Field(default=0.95, gt=0, lt=1)


@dataclass
class PackResult(RecordedResult):
    """Counts of a pack's tasks and its tables (all in metrics.json; counts and the headline in the manifest)."""

    outcomes: list[Outcome] = field(default_factory=list)  # each task's outcome (empty when restored)

    def facts(self) -> dict[str, Any]:
        """Kind, model, task counts and the headline (worst SE ratio, best config, groups fitted)."""
        keys: tuple[str, ...] = (
            "model",
            "train_rows",
            "fit_seconds",
            "kind",
            "tasks",
            "failed",
            "replicates",
            "worst_se_ratio",
        )
        keys += ("groups", "best")
        return {k: self.values[k] for k in keys if k in self.values}


class PackStage(Stage):
    """Independent fits of one classical model (bootstrap, per group, or per config), load-balanced."""

    stage: Literal["pack"] = "pack"
    output_dir: ClassVar[str] = Folder.PACKS
    placement_fields: ClassVar[frozenset[str]] = frozenset({"slots"})
    model: ModelName
    params: dict[str, Any] = Field(default_factory=dict)
    code: str | None = Field(default=None, description="the user's .py file or folder an import path needs")
    features: list[str] | None = None
    label: str | None = None
    bootstrap: BootstrapConfig | None = None
    group_by: str | None = Field(default=None, min_length=1)
    configs: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    retries: NonNegativeInt = 1
    slots: PositiveInt | None = None
    plots: bool = True

    @property
    def kind(self) -> str:
        """Which of bootstrap, group_by, configs this pack is."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    def check_values(self) -> list[Problem]:
        """Exactly one kind; the model accepts the params (each config merged over them); bootstrap's models."""
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            return [Problem("pack", f"give exactly one of bootstrap, group_by, configs (got {given or 'none'})")]
        problems = [Problem(p.path, p.message) for p in _param_problems(self.model, self.params, self.code)]
        for i, extra in enumerate(self.configs or []):
            for p in _param_problems(self.model, {**self.params, **extra}, self.code):
                key = p.path.removeprefix("params.")
                problems.append(Problem(f"configs.{i}.{key}" if key in extra else p.path, p.message))
        if self.bootstrap is not None and self.model not in BOOTSTRAP_MODELS:
            problems.append(Problem("model", f"bootstrap compares standard errors: one of {list(BOOTSTRAP_MODELS)}"))
        elif self.bootstrap is not None and self.model == "logistic_regression" and self.params.get("penalty", "l2"):
            problems.append(Problem("params.penalty", "bootstrap of logistic regression needs penalty: null"))
        return problems

    def default_name(self) -> str:
        """Outputs go under packs/<model>-<kind> unless named."""
        return f"{self.model.rpartition(':')[2]}-{self.kind}"

    def check(self, earlier: Sequence[Stage], config: PipelineSettings) -> list[Problem]:
        """An ingest that writes comes first; a supervised model has a label."""
        problems = written_splits_problems(earlier)
        est = build(self.model, self.params, self.code)
        dataset = config.dataset
        has_label = self.label or dataset.label or dataset.formula
        if (is_classifier(est) or is_regressor(est)) and not has_label:
            problems.append(Problem("model", f"{self.model} needs a label, and the dataset declares none"))
        if dataset.image is not None:
            problems.append(Problem("stage", "pack fits models on tabular splits; this dataset holds images"))
        return problems

    def run(self, ctx: StageContext) -> PackResult:
        """Build the tasks, run them load-balanced, write packs/<name>/ and return the counts and tables."""
        data = training_data(ctx, self.output_name)
        source = self._source(data)
        tasks = self._tasks(ctx, data, source)
        log.info(
            "pack %s: %d %s task(s) of %s on %s", self.output_name, len(tasks), self.kind, self.model, ctx.engine.kind
        )
        t0 = time.perf_counter()
        outcomes = run_balanced(
            ctx.engine, run_task, tasks, slots=self.slots, retries=self.retries, label=f"pack {self.output_name}"
        )
        seconds = time.perf_counter() - t0
        order = {t.key: i for i, t in enumerate(tasks)}
        outcomes.sort(key=lambda o: order[o.key])
        values: dict[str, Any] = {
            "kind": self.kind,
            "model": self.model,
            "tasks": len(outcomes),
            "failed": sum(not o.ok for o in outcomes),
            "train_rows": data.rows["train"],
            "fit_seconds": round(seconds, 3),
        }
        with ctx.run.output(Folder.PACKS.of(self.output_name)) as tmp:
            tmp.mkdir()
            task_log(outcomes).to_csv(tmp / "tasks.csv", index=False)
            if self.bootstrap is not None:
                values.update(self._bootstrap_outputs(outcomes, tmp))
            else:
                values.update(self._fit_outputs(outcomes, tmp))
            atomic_write_json(tmp / "summary.json", values)
        return PackResult(values, outcomes)

    def restore(self, ctx: StageContext) -> PackResult:
        """The counts and tables this run recorded."""
        self.recorded_facts(ctx)
        return PackResult(dict(ctx.run.metrics.get(self.output_name, {})))

    def _source(self, data: TrainingData) -> Source:
        """The split folders and columns every task reads (the group column is not a feature)."""
        table = data.inputs.table(self.output_name)
        columns = ds.dataset(data.outputs["train"], format="parquet").schema.names
        if self.group_by is not None and self.group_by not in columns:
            have = [c for c in columns if not c.startswith("_")]
            raise ConfigError(
                f"pack stage {self.output_name!r}: group_by column {self.group_by!r} is not in the "
                f"written train split; it has {have} (a category encoded as onehot/dummy is split "
                "into columns: declare it str, or use encode: index)"
            )
        features, label = table.columns(self.features, self.label, self.output_name)
        features = [f for f in features if f != self.group_by]
        est = build(self.model, self.params, self.code)
        supervised = is_classifier(est) or is_regressor(est)
        return Source(data.outputs["train"], data.outputs.get("test"), tuple(features), label if supervised else None)

    def _tasks(self, ctx: StageContext, data: TrainingData, source: Source) -> list[Task]:
        if self.configs is not None:
            return [
                Task(f"config-{i:03d}", FitTask(self.model, {**self.params, **c}, source, code=self.code))
                for i, c in enumerate(self.configs)
            ]
        if self.group_by is not None:
            counts = discover_groups(ctx.engine, data.frames["train"], self.group_by)
            if not counts:
                raise ConfigError(f"pack stage {self.output_name!r}: no values in column {self.group_by!r}")
            # largest groups first: the long tasks start early, so the tail of the pack is short
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
            return [
                Task(f"{self.group_by}={v}", FitTask(self.model, self.params, source, (self.group_by, v), self.code))
                for v, _ in ordered
            ]
        boot = self.bootstrap
        assert boot is not None
        tasks = [Task("full-fit", FullFit(self.model, self.params, source))]
        for start in range(0, boot.replicates, boot.per_task):
            stop = min(start + boot.per_task, boot.replicates)
            key = f"replicates-{start:04d}-{stop - 1:04d}"
            tasks.append(Task(key, BootstrapTask(self.model, self.params, source, boot.seed, start, stop)))
        return tasks

    def _fit_outputs(self, outcomes: list[Outcome], tmp: Path) -> dict[str, Any]:
        """results.csv (one row per config or group), a score plot; the best config or the group count."""
        table = fit_table(outcomes, self.group_by)
        table.to_csv(tmp / "results.csv", index=False)
        out: dict[str, Any] = {"results": json.loads(table.to_json(orient="records"))}
        done = table[table["ok"]]
        score = next((s for s in SCORES if s in done and done[s].notna().any()), None)
        if self.group_by is not None:
            out["groups"] = len(done)
        elif score is not None:
            best = done.sort_values(score, ascending=score == "train_inertia", kind="stable").iloc[0]
            out["best"] = {"key": best["key"], "params": json.loads(best["params"]), score: float(best[score])}
        if self.plots and score is not None:
            plots.task_scores(tmp / "scores.png", list(done["key"]), list(done[score]), score)
        return out

    def _bootstrap_outputs(self, outcomes: list[Outcome], tmp: Path) -> dict[str, Any]:
        """replicates.csv, coefficients.csv (estimate, HC1 SE, bootstrap SE, ratio, CIs), the distribution plot."""
        boot = self.bootstrap
        assert boot is not None
        full = next(o for o in outcomes if o.key == "full-fit")
        if not full.ok:
            raise DataError(f"pack stage {self.output_name!r}: the fit on all train rows failed: {full.error}")
        draws = replicate_table(outcomes, full.value["term"])
        draws.to_csv(tmp / "replicates.csv", index=False)
        table = coefficient_table(full.value, draws, boot.level)
        table.to_csv(tmp / "results.csv", index=False)
        if self.plots and len(draws) > 1:
            plots.bootstrap(tmp / "bootstrap.png", draws, table)
        ratios = table["se_ratio"].to_numpy()
        return {
            "replicates": len(draws),
            "level": boot.level,
            "worst_se_ratio": float(ratios[np.argmax(np.abs(np.log(ratios)))]) if len(draws) > 1 else None,
            "coefficients": json.loads(table.to_json(orient="records")),
        }


def _param_problems(model: str, params: dict[str, Any], code: str | None = None) -> list[Problem]:
    """The model stage's own check of a model's params (scikit-learn's validation), reused as is."""
    return ModelStage.model_construct(model=model, params=params, code=code).check_values()


def discover_groups(engine: Any, frame: Any, column: str) -> dict[Any, int]:
    """Distinct values of a column and their row counts, reduced per partition on the workers (no rows gathered)."""
    total: Counter = Counter()
    for part in engine.reduce_partitions(frame, functools.partial(group_counts, column=column)):
        total.update({value: n for value, n in part["counts"]})
    return dict(total)


def task_log(outcomes: list[Outcome]) -> pd.DataFrame:
    """One row per task: key, ok, attempts, seconds, error."""
    return pd.DataFrame(
        [{"key": o.key, "ok": o.ok, "attempts": o.attempts, "seconds": o.seconds, "error": o.error} for o in outcomes],
        columns=["key", "ok", "attempts", "seconds", "error"],
    )


def fit_table(outcomes: list[Outcome], group_by: str | None) -> pd.DataFrame:
    """One row per config or group: its params (JSON) or group value, scores, coefficients (coef_<term>)."""
    rows = []
    for o in outcomes:
        row: dict[str, Any] = {"key": o.key, "ok": o.ok, "attempts": o.attempts, "error": o.error}
        if group_by is not None:
            row[group_by] = o.item.group[1]
        row["params"] = json.dumps(o.item.params, sort_keys=True)
        if o.ok:
            row.update({k: v for k, v in o.value.items() if k != "coef"})
            row.update({f"coef_{term}": v for term, v in o.value["coef"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def replicate_table(outcomes: list[Outcome], terms: list[str]) -> pd.DataFrame:
    """One row per finished replicate (in replicate order), one column per coefficient."""
    rows = [
        {"replicate": r["replicate"], **r["coef"]}
        for o in outcomes
        if o.ok and isinstance(o.item, BootstrapTask)
        for r in o.value["replicates"]
    ]
    return pd.DataFrame(rows, columns=["replicate", *terms]).sort_values("replicate", kind="stable")


def coefficient_table(full: dict[str, Any], draws: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per term: estimate, classical and HC1 SE, bootstrap SE and its ratio to HC1, percentile and HC1 CIs."""
    values = draws[full["term"]].to_numpy(dtype=float)
    boot_se = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(values.shape[1], np.nan)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail], axis=0) if len(values) else (np.nan, np.nan)
    z = stats.norm.ppf(1 - tail)
    est, hc1 = np.asarray(full["estimate"]), np.asarray(full["hc1_std_error"])
    return pd.DataFrame(
        {
            "term": full["term"],
            "estimate": est,
            "std_error": full["std_error"],
            "hc1_std_error": hc1,
            "bootstrap_std_error": boot_se,
            "se_ratio": boot_se / hc1,
            "ci_low": low,
            "ci_high": high,
            "hc1_ci_low": est - z * hc1,
            "hc1_ci_high": est + z * hc1,
        }
    )
