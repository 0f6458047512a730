"""The model stage: fit a classical model on the ingested train split, evaluate on test, write its outputs."""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt
from sklearn.base import is_classifier, is_clusterer, is_regressor

from pipelines.classical import ESTIMATORS, evaluate
from pipelines.classical.data import Blocks
from pipelines.classical.external import IMPORT_PATH, MAX_GATHER_MB, build, inner, is_import_path
from pipelines.classical.persist import load_model, save_model
from pipelines.engines.base import Engine
from pipelines.errors import ConfigError
from pipelines.ingest.handoff import TrainingData, training_data
from pipelines.ingest.stage import written_splits_problems
from pipelines.protocol import PipelineSettings, Problem, RecordedResult, Stage, StageContext
from pipelines.runs.layout import Folder

log = logging.getLogger(__name__)

# Headline facts: `train_` facts describe the fit on the train split, `test_` ones the held-out test split.
HEADLINE: tuple[str, ...] = (
    "test_accuracy",
    "test_roc_auc",
    "test_roc_auc_ovr",
    "test_log_loss",
    "test_r2",
    "test_rmse",
)
HEADLINE += ("train_r_squared", "train_adj_r_squared", "train_inertia", "train_silhouette_sample")
FIT_SUMMARY = {"r_squared": "train_r_squared", "adj_r_squared": "train_adj_r_squared"}
if TYPE_CHECKING:
    ModelKind = str  # the names are known only at run time (the registry); pydantic checks the Literal below
else:
    ModelKind = Literal[tuple(ESTIMATORS)]  # the one list of names: the registry
ImportPath = Annotated[str, Field(pattern=IMPORT_PATH)]  # any scikit-learn estimator: "sklearn.svm:LinearSVC"
ModelName = ModelKind | ImportPath


@dataclass
class ModelResult(RecordedResult):
    """A fitted model and its metrics (all of them go to metrics.json; headline ones to the manifest)."""

    model: Any = None

    def facts(self) -> dict[str, Any]:
        """Headline facts for the manifest and the console: train-split fit facts, test-split metrics."""
        facts: dict[str, Any] = {k: self.values[k] for k in ("model", "train_rows", "fit_seconds") if k in self.values}
        facts.update({k: self.values[k] for k in HEADLINE if k in self.values})
        if "components_for_variance" in self.values:
            facts["components_for_variance"] = self.values["components_for_variance"]
        return facts


def _param_problem(exc: Exception) -> Problem:
    """Key path and message of a rejected estimator parameter (scikit-learn's wording)."""
    found = re.search(r"The '(\w+)' parameter", str(exc))
    return Problem(f"params.{found.group(1)}" if found else "params", str(exc).splitlines()[0])


class ModelStage(Stage):
    """Fit a classical model on the ingested train split; evaluate on test; metrics, plots and model files."""

    stage: Literal["model"] = "model"
    output_dir: ClassVar[str] = Folder.MODELS
    model: ModelName
    params: dict[str, Any] = Field(default_factory=dict)
    code: str | None = Field(default=None, description="the user's .py file or folder an import path needs")
    max_gather_mb: PositiveFloat = Field(default=MAX_GATHER_MB, description="import paths: cap on rows gathered")
    fit_sample: PositiveInt | None = Field(default=None, description="import paths: fit on this many seeded rows")
    features: list[str] | None = None
    label: str | None = None
    elbow: list[PositiveInt] | None = None
    variance_targets: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=lambda: [0.8, 0.9, 0.95])
    sample: PositiveInt = 5000
    plots: bool = True
    save: bool = True

    def default_name(self) -> str:
        """Outputs go under models/<model kind> (an import path: its class name) unless named."""
        return self.model.rpartition(":")[2]

    def estimator(self) -> Any:
        """A new, unfitted estimator with this stage's params (an import path's class wrapped in External)."""
        return build(self.model, self.params, self.code, self.max_gather_mb, self.fit_sample)

    def check_values(self) -> list[Problem]:
        """The class imports (import paths), accepts the params, as its fit checks them (scikit-learn's validation)."""
        if self.code is not None and not is_import_path(self.model):
            return [Problem("code", "only a model given by import path (module:Class) loads code")]
        try:
            est = inner(self.estimator())
        except ConfigError as exc:
            return [Problem("model", str(exc))]
        except TypeError as exc:
            return [Problem("params", str(exc))]
        try:
            if hasattr(est, "_parameter_constraints"):  # scikit-learn's own validation, where the class has it
                est._validate_params()
        except ValueError as exc:
            return [_param_problem(exc)]
        return []

    def check(self, earlier: Sequence[Stage], config: PipelineSettings) -> list[Problem]:
        """An ingest that writes its splits comes first; a supervised model has a label; features exist."""
        problems = written_splits_problems(earlier)
        est = self.estimator()
        dataset = config.dataset
        has_label = self.label or dataset.label or dataset.formula or dataset.image is not None
        if (is_classifier(est) or is_regressor(est)) and not has_label:
            problems.append(Problem("model", f"{self.model} needs a label, and the dataset declares none"))
        declared = set(dataset.features or []) if dataset.formula is None and dataset.image is None else None
        unknown = sorted(set(self.features or []) - declared) if declared else []
        if unknown:
            have = sorted(declared or [])
            problems.append(Problem("features", f"unknown column(s) {unknown}; the dataset declares {have}"))
        return problems

    def run(self, ctx: StageContext) -> ModelResult:
        """Fit on the latest ingest's train split, evaluate, write models/<name>/ and plots/<name>/."""
        data = training_data(ctx, self.output_name)
        return run_model(ctx.engine, self, ctx.run, data, in_process_mb=ctx.config.engine.in_process_mb)

    def restore(self, ctx: StageContext) -> ModelResult:
        """The saved model (when `save`) and the metrics this run recorded."""
        self.recorded_facts(ctx)
        folder = Folder.MODELS.under(ctx.run.dir, self.output_name)
        model = load_model(folder) if self.save and folder.exists() else None
        return ModelResult(dict(ctx.run.metrics.get(self.output_name, {})), model)


def model_blocks(engine: Engine, data: TrainingData, split: str, stage: ModelStage) -> Blocks:
    """The split's rows as blocks: the stage's features (default: all the inputs offer) and label."""
    features, label = data.inputs.columns(stage.features, stage.label, stage.output_name)
    what = f"{data.dataset} {split} split"
    return Blocks.from_inputs(engine, data.frames[split], data.inputs, features, label, what)


def evaluate_fit(stage: ModelStage, model: Any, train: Blocks, test: Blocks | None, plot_dir: Path | None) -> dict:
    """Fit summary and metrics of a fitted model: the model stage's evaluation, also used by sweep trials."""
    out: dict[str, Any] = {}
    if hasattr(model, "summary_"):
        out["summary"] = model.summary_.to_dict()
        out.update({named: out["summary"][key] for key, named in FIT_SUMMARY.items() if key in out["summary"]})
    if is_classifier(model):
        if test is not None:
            out.update(evaluate.classification(model, test, plot_dir))
    elif is_regressor(model):
        if test is not None:
            out.update(evaluate.regression(model, test, plot_dir))
    elif hasattr(model, "inertia_"):
        out.update(evaluate.clustering(model, train, plot_dir, stage.sample, stage.elbow))
    elif hasattr(model, "all_explained_variance_ratio_"):
        out.update(evaluate.decomposition(model, train, plot_dir, stage.sample, stage.variance_targets))
    elif is_clusterer(model) or hasattr(model, "predict"):  # an imported clusterer or mixture: labels per row
        out.update(evaluate.partition(model, train, plot_dir, stage.sample))
    if hasattr(model, "feature_importances_"):
        names = list(model.feature_names_in_)
        out["feature_importances"] = dict(zip(names, model.feature_importances_.tolist(), strict=True))
        if plot_dir is not None:
            name = evaluate.plots.importances(plot_dir / "importances.png", names, model.feature_importances_)
            out.setdefault("plots", []).append(name)
    return out


def run_model(
    engine: Engine, stage: ModelStage, run: Any, data: TrainingData, in_process_mb: float = 0.0
) -> ModelResult:
    """Fit, evaluate, and write models/<name>/ and plots/<name>/ into the run; a train split of at most
    in_process_mb MiB is fitted and evaluated in this process (every split alike), as one engine job gathers it."""
    with ExitStack() as stack:
        train = stack.enter_context(model_blocks(engine, data, "train", stage))
        here = train.nbytes <= in_process_mb * 2**20

        def blocks(split: str) -> Blocks:
            found = model_blocks(engine, data, split, stage)
            return stack.enter_context(found.in_process() if here else found)

        if here:
            train = train.in_process()
        test = blocks("test") if "test" in data.frames else None
        model = stage.estimator()
        extra: dict[str, Any] = {}
        if "val" in data.frames and "eval_set" in inspect.signature(model.fit).parameters:  # early stopping
            extra["eval_set"] = blocks("val")
        where = "in process" if here else engine.kind
        log.info("fitting %s on %d rows x %d features (%s)", stage.model, train.n_rows, train.n_features, where)
        t0 = time.perf_counter()
        model.fit(train, **extra)
        seconds = time.perf_counter() - t0
        with ExitStack() as outputs:
            plot_dir = outputs.enter_context(run.output(Folder.PLOTS.of(stage.output_name))) if stage.plots else None
            if plot_dir is not None:
                plot_dir.mkdir()
            metrics = {
                "model": stage.model,
                "train_rows": train.n_rows,
                "fit_seconds": round(seconds, 3),
                "fitted": "in_process" if here else "engine",
            }
            metrics.update(evaluate_fit(stage, model, train, test, plot_dir))
        if stage.save:
            with run.output(Folder.MODELS.of(stage.output_name)) as tmp:
                tmp.mkdir()
                save_model(model, tmp)
    return ModelResult(_plain(metrics), model)


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
