"""The model stage: fit a classical model on the ingested train split, evaluate on test, write its outputs."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.classical import ESTIMATORS, evaluate
from pipelines.classical.data import Blocks
from pipelines.classical.persist import save_model
from pipelines.config import ModelStage
from pipelines.engines.base import Engine
from pipelines.errors import ConfigError
from pipelines.ingest.stage import IngestResult

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "roc_auc", "roc_auc_ovr", "log_loss", "r2", "rmse", "inertia", "silhouette_sample")


@dataclass
class ModelResult:
    """A fitted model and its metrics (all of them go to metrics.json; headline ones to the manifest)."""

    model: Any
    metrics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline facts for the manifest and the console."""
        facts = {k: self.metrics[k] for k in ("model", "train_rows", "fit_seconds") if k in self.metrics}
        facts.update({k: self.metrics[k] for k in HEADLINE if k in self.metrics})
        for key in ("r_squared", "adj_r_squared"):
            if key in self.metrics.get("summary", {}):
                facts[key] = self.metrics["summary"][key]
        if "components_for_variance" in self.metrics:
            facts["components_for_variance"] = self.metrics["components_for_variance"]
        return facts


def model_blocks(engine: Engine, ingest: IngestResult, split: str, stage: ModelStage) -> Blocks:
    """The split's rows as blocks: pixels for images, the configured (or all numeric) columns for tables."""
    frame = ingest.frames[split]
    what = f"{ingest.dataset} {split} split"
    if ingest.schema is None:
        assert ingest.image_dtype is not None and ingest.image_shape is not None
        return Blocks.from_images(engine, frame, ingest.image_dtype, ingest.image_shape, what)
    available, label = ingest.model_columns()
    features = stage.features or available
    missing = [f for f in features if f not in available]
    if missing:
        raise ConfigError(f"model stage {stage.output_name!r}: unknown feature column(s) {missing}; have {available}")
    label = stage.label or label
    return Blocks.from_frame(engine, frame, features, label, what)


def _evaluate(stage: ModelStage, model: Any, train: Blocks, test: Blocks | None, plot_dir: Path | None) -> dict:
    kind = stage.model
    out: dict[str, Any] = {}
    if hasattr(model, "summary_"):
        out["summary"] = model.summary_.to_dict()
    if kind == "kmeans":
        out.update(evaluate.clustering(model, train, plot_dir, stage.sample, stage.elbow))
    elif kind in ("pca", "truncated_svd"):
        out.update(evaluate.decomposition(model, train, plot_dir, stage.sample, stage.variance_targets))
    elif test is not None and kind in ("logistic_regression", "random_forest_classifier"):
        out.update(evaluate.classification(model, test, plot_dir))
    elif test is not None:
        out.update(evaluate.regression(model, test, plot_dir))
    if hasattr(model, "feature_importances_"):
        names = list(model.feature_names_in_)
        out["feature_importances"] = dict(zip(names, model.feature_importances_.tolist(), strict=True))
        if plot_dir is not None:
            name = evaluate.plots.importances(plot_dir / "importances.png", names, model.feature_importances_)
            out.setdefault("plots", []).append(name)
    return out


def run_model(engine: Engine, stage: ModelStage, run: Any, state: dict[str, Any]) -> ModelResult:
    """Fit, evaluate, and write models/<name>/ and plots/<name>/ into the run."""
    ingest: IngestResult | None = state.get("ingest")
    if ingest is None or "train" not in ingest.frames:
        raise ConfigError(f"model stage {stage.output_name!r} needs an ingest stage with write: true before it")
    with ExitStack() as stack:
        train = stack.enter_context(model_blocks(engine, ingest, "train", stage))
        test = stack.enter_context(model_blocks(engine, ingest, "test", stage)) if "test" in ingest.frames else None
        model = ESTIMATORS[stage.model](**stage.params)
        log.info("fitting %s on %d rows x %d features (%s)", stage.model, train.n_rows, train.n_features, engine.kind)
        t0 = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - t0
        with ExitStack() as outputs:
            plot_dir = outputs.enter_context(run.output(f"plots/{stage.output_name}")) if stage.plots else None
            if plot_dir is not None:
                plot_dir.mkdir()
            metrics = {"model": stage.model, "train_rows": train.n_rows, "fit_seconds": round(seconds, 3)}
            metrics.update(_evaluate(stage, model, train, test, plot_dir))
        if stage.save:
            with run.output(f"models/{stage.output_name}") as tmp:
                tmp.mkdir()
                save_model(model, tmp)
    return ModelResult(model, _plain(metrics))


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
