"""The tasks a pack runs on a worker: each reads only its own rows from the written splits, fits, and scores.

Items are small frozen dataclasses (paths, column names, a group value, a replicate range) and results are
JSON-able dicts, so nothing large travels between the driver and the workers in either direction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import linalg
from sklearn.base import is_classifier, is_clusterer, is_regressor

from pipelines.classical.data import ModelInputError
from pipelines.classical.external import build

ORDER = ["_source", "_row"]  # every read is sorted by these, so rows come in one order on either engine


@dataclass(frozen=True)
class Source:
    """Where a task reads its rows: the written train (and test) split folders and the model's columns."""

    train: str
    test: str | None
    features: tuple[str, ...]
    label: str | None


@dataclass(frozen=True)
class FitTask:
    """One model fitted and scored: a param set (`configs`) or one group of rows (`group_by`: column, value)."""

    model: str
    params: dict[str, Any]
    source: Source
    group: tuple[str, Any] | None = None
    code: str | None = None  # the user's file or folder, for a model given by import path


@dataclass(frozen=True)
class FullFit:
    """The analytic fit a bootstrap is compared with: all train rows, once."""

    model: str
    params: dict[str, Any]
    source: Source


@dataclass(frozen=True)
class BootstrapTask:
    """Bootstrap replicates start..stop-1 of one model; replicate i resamples with the seed [seed, i]."""

    model: str
    params: dict[str, Any]
    source: Source
    seed: int
    start: int
    stop: int


def read_rows(path: str, source: Source, group: tuple[str, Any] | None = None) -> tuple[pd.DataFrame, Any]:
    """Features (a frame with their names) and label of a split folder; a group is a filter pushed to Parquet."""
    columns = [*ORDER, *source.features, *([source.label] if source.label else [])]
    filters = [(group[0], "==", group[1])] if group is not None else None
    frame = pq.read_table(path, columns=columns, filters=filters).to_pandas()
    frame = frame.sort_values(ORDER, kind="stable").reset_index(drop=True)
    x = frame[list(source.features)].astype("float64")
    y = frame[source.label].to_numpy() if source.label else None
    return x, y


def fit(model: str, params: dict[str, Any], x: pd.DataFrame, y: Any, code: str | None = None) -> Any:
    """A new estimator (a built-in family, or an import path's class), fitted in this process on arrays."""
    est = build(model, params, code)
    supervised = is_classifier(est) or is_regressor(est)
    return est.fit(x, y) if supervised else est.fit(x)


def coefficients(est: Any) -> dict[str, float]:
    """Estimates by term from the R-style summary (linear/logistic), else importances; empty otherwise."""
    if hasattr(est, "summary_"):
        table = est.summary_.coefficients
        return {name: float(b) for name, b in zip(table.names, table.estimate, strict=True)}
    if hasattr(est, "feature_importances_"):
        names = [str(n) for n in est.feature_names_in_]
        return {name: float(v) for name, v in zip(names, est.feature_importances_, strict=True)}
    return {}


def scores(est: Any, x: pd.DataFrame, y: Any, test: tuple[pd.DataFrame, Any] | None) -> dict[str, float]:
    """The fit's headline figures: R² or accuracy on train (and test), inertia, explained variance."""
    out: dict[str, float] = {}
    if is_regressor(est) or is_classifier(est):
        name = "r2" if is_regressor(est) else "accuracy"
        out[f"train_{name}"] = float(est.score(x, y))
        if test is not None and len(test[0]):
            out[f"test_{name}"] = float(est.score(*test))
    elif is_clusterer(est):
        out["train_inertia"] = float(est.inertia_)
    elif hasattr(est, "explained_variance_ratio_"):
        out["train_explained_variance"] = float(np.sum(est.explained_variance_ratio_))
    return out


def run_fit(task: FitTask) -> dict[str, Any]:
    """Read this task's rows (its group only, when grouped), fit, score on train and test (runs on a worker)."""
    x, y = read_rows(task.source.train, task.source, task.group)
    if len(x) == 0:
        raise ModelInputError(f"no train rows where {task.group[0]} == {task.group[1]!r}" if task.group else "no rows")
    test = read_rows(task.source.test, task.source, task.group) if task.source.test else None
    t0 = time.perf_counter()
    est = fit(task.model, task.params, x, y, task.code)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"train_rows": len(x), "test_rows": len(test[0]) if test else 0}
    out["fit_seconds"] = round(seconds, 4)
    out.update(scores(est, x, y, test))
    out["coef"] = coefficients(est)
    return out


def logistic_hc1(est: Any, x: pd.DataFrame, y: Any) -> np.ndarray:
    """HC1 sandwich standard errors of a binomial logistic fit: inverse information around the scores' outer product."""
    a = x.to_numpy()
    a = np.column_stack([np.ones(len(a)), a]) if est.fit_intercept else a
    p = est.predict_proba(x)[:, 1]
    target = (np.asarray(y) == est.classes_[1]).astype(float)
    bread = linalg.inv((a * (p * (1 - p))[:, None]).T @ a)
    meat = (a * ((target - p) ** 2)[:, None]).T @ a
    n, k = a.shape
    return np.sqrt(np.diag(bread @ meat @ bread) * n / (n - k))


def run_full_fit(task: FullFit) -> dict[str, Any]:
    """The analytic fit on all train rows: estimates, classical and HC1 standard errors (runs on a worker)."""
    x, y = read_rows(task.source.train, task.source)
    est = fit(task.model, task.params, x, y)
    table = est.summary_.coefficients
    if est.summary_.robust is not None:
        hc1 = est.summary_.robust.std_error
    else:
        if len(est.classes_) != 2:
            raise ModelInputError(f"bootstrap of logistic regression needs a binary label, not {len(est.classes_)}")
        hc1 = logistic_hc1(est, x, y)
    return {
        "rows": len(x),
        "term": list(table.names),
        "estimate": [float(v) for v in table.estimate],
        "std_error": [float(v) for v in table.std_error],
        "hc1_std_error": [float(v) for v in hc1],
    }


def run_bootstrap(task: BootstrapTask) -> dict[str, Any]:
    """Replicates start..stop-1: rows drawn with replacement (seed [seed, i]), refitted (runs on a worker)."""
    x, y = read_rows(task.source.train, task.source)
    n = len(x)
    rows = []
    for i in range(task.start, task.stop):
        idx = np.random.default_rng([task.seed, i]).integers(0, n, n)
        est = fit(task.model, task.params, x.iloc[idx].reset_index(drop=True), None if y is None else y[idx])
        rows.append({"replicate": i, "coef": coefficients(est)})
    return {"rows": n, "replicates": rows}


def run_task(task: FitTask | FullFit | BootstrapTask) -> dict[str, Any]:
    """The one function a pack hands to the engine: the runner of the task's kind (runs on a worker)."""
    if isinstance(task, FitTask):
        return run_fit(task)
    if isinstance(task, FullFit):
        return run_full_fit(task)
    return run_bootstrap(task)


def group_counts(pdf: pd.DataFrame, column: str) -> dict[str, Any]:
    """Distinct non-null values of a column in one partition with their row counts, JSON-able (a reduction)."""
    counts = pdf[column].dropna().value_counts(sort=False)
    return {"counts": [[v.item() if hasattr(v, "item") else v, int(n)] for v, n in counts.items()]}
