"""What a finished run saved for one model stage: its config, the ingest fit it was trained on, the model files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sklearn.base import is_classifier, is_clusterer, is_regressor

from pipelines.atomic import checksum_tree
from pipelines.classical.persist import load_model
from pipelines.classical.stage import ModelStage
from pipelines.config import PipelineConfig, load_config
from pipelines.deep import usercode
from pipelines.deep.augment import EvalViews
from pipelines.deep.models import network
from pipelines.deep.stage import DeepStage, tensors_key
from pipelines.errors import DataError, UsageError
from pipelines.ingest.stage import IngestResult, IngestStage
from pipelines.runs import Run
from pipelines.runs.history import RunRecord
from pipelines.runs.layout import Folder
from pipelines.runs.run import CONFIG, MANIFEST

Task = Literal["classify", "regress", "cluster", "reconstruct"]


@dataclass(frozen=True)
class ModelRef:
    """Where a saved model lives and a digest of its recorded checksums (the workers' cache key)."""

    kind: Literal["classical", "keras"]
    path: str
    digest: str
    network: str | None = None  # a user network's "module:function", imported before the model loads
    code: usercode.UserCode | None = None  # where that module is imported from: the run's copy of `code:`


@dataclass
class SavedStage:
    """One model stage of a finished run, with what scoring needs: ingest fit, model, task, classes, columns."""

    run_dir: Path
    config: PipelineConfig
    stage: ModelStage | DeepStage
    ingest_stage: IngestStage
    ingest: IngestResult
    model: ModelRef
    task: Task
    classes: list[Any]  # the model's class values in output order (label codes for a category label)
    features: list[str]  # model input columns of the transformed table (px0, px1, ... for images)
    label: str | None  # label column of the transformed data ("label" for images)
    probabilities: bool = False  # the model gives class probabilities (predict_proba, softmax)

    @property
    def name(self) -> str:
        return self.stage.output_name

    @property
    def views(self) -> EvalViews | None:
        """A network's test-time views (its scores are their mean), else None."""
        return self.stage.test_time_augment if isinstance(self.stage, DeepStage) else None


def _verified(run_dir: Path, manifest: dict[str, Any], output: str) -> str:
    """SHA-256 digest of an output's recorded checksums, after checking its files still match them."""
    recorded = manifest.get("outputs", {}).get(output)
    folder = run_dir / output
    if recorded is None or not folder.is_dir():
        raise UsageError(f"{run_dir}: the run saved no {output}/ (was the stage run with its model saved?)")
    if checksum_tree(folder) != recorded:
        raise DataError(f"{folder}: the model files changed since the run wrote them (checksums differ)")
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()


def load_saved(run_dir: str | Path, name: str) -> SavedStage:
    """The named model stage of a finished run, checked: it succeeded and its saved files are intact."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / MANIFEST).is_file() or not (run_dir / CONFIG).is_file():
        raise UsageError(f"{run_dir}: not a run directory (needs {CONFIG} and {MANIFEST})")
    manifest = RunRecord.read(run_dir).manifest
    for output in manifest.get("outputs", {}):
        if output.startswith(Folder.CODE.of("")):
            _verified(run_dir, manifest, output)  # user code is imported only from intact copies
    usercode.pin_run(run_dir)  # user networks' code: the run's copies
    config = load_config(run_dir / CONFIG)
    names = [s.output_name for s in config.stages]
    if name not in names:
        raise UsageError(f"{run_dir}: no stage {name!r}; the run has {names}")
    index = names.index(name)
    stage = config.stages[index]
    if not isinstance(stage, ModelStage | DeepStage):
        models = [s.output_name for s in config.stages if isinstance(s, ModelStage | DeepStage)]
        raise UsageError(f"stage {name!r} is a {stage.stage} stage, not a model; the run's models: {models}")
    run = Run(run_dir, manifest, {})
    if run.stage_facts(name) is None:
        raise UsageError(f"stage {name!r} has not succeeded in {run_dir}")
    ingests = [s for s in config.stages[:index] if isinstance(s, IngestStage)]
    facts = run.stage_facts(ingests[-1].output_name) if ingests else None
    if facts is None:
        raise UsageError(f"{run_dir}: no succeeded ingest stage before {name!r}")
    ingest = IngestResult.from_facts(facts, config.dataset, ingests[-1].encode, config.engine.kind)
    if isinstance(stage, ModelStage):
        return _classical(run_dir, manifest, config, stage, ingests[-1], ingest)
    return _deep(run_dir, manifest, config, stage, ingests[-1], ingest)


def _label_of(ingest: IngestResult, stage_label: str | None = None) -> str | None:
    return stage_label or ingest.inputs.label


def _classical(
    run_dir: Path, manifest: dict, config: PipelineConfig, stage: ModelStage, ingest_stage: IngestStage, ingest: Any
) -> SavedStage:
    output = Folder.MODELS.of(stage.output_name)
    digest = _verified(run_dir, manifest, output)
    model = load_model(run_dir / output)  # small; the driver reads its classes and feature names
    if is_classifier(model):
        task: Task = "classify"
    elif is_regressor(model):
        task = "regress"
    elif is_clusterer(model) or hasattr(getattr(model, "estimator_", None), "predict"):  # imported: a mixture too
        task = "cluster"
    else:
        raise UsageError(f"stage {stage.output_name!r} ({stage.model}) transforms data but predicts nothing")
    features, _ = ingest.inputs.columns(stage.features, stage.label, stage.output_name)
    if hasattr(model, "feature_names_in_"):
        fitted = list(model.feature_names_in_)
        if fitted != features:
            raise DataError(f"{run_dir / output}: the model was fitted on {fitted}, the run's config gives {features}")
    classes = model.classes_.tolist() if task == "classify" else []
    label = _label_of(ingest, stage.label) if task in ("classify", "regress") else None
    ref = ModelRef("classical", str(run_dir / output), digest)
    proba = task == "classify" and hasattr(model, "predict_proba")
    return SavedStage(run_dir, config, stage, ingest_stage, ingest, ref, task, classes, features, label, proba)


def _deep(
    run_dir: Path, manifest: dict, config: PipelineConfig, stage: DeepStage, ingest_stage: IngestStage, ingest: Any
) -> SavedStage:
    output = Folder.DEEP.of(stage.output_name)
    digest = _verified(run_dir, manifest, output)
    task: Task = network(stage.model).task
    tensors = Folder.TENSORS.under(run_dir, tensors_key(stage)) / "manifest.json"
    classes: list[Any] = []
    if task == "classify":
        if stage.classes:
            classes = list(stage.classes)
        elif tensors.is_file():
            classes = list(range(int(json.loads(tensors.read_text())["classes"])))
        else:
            raise DataError(f"{tensors}: missing; it records the classes the network was trained on")
    features = list(ingest.inputs.features)
    label = _label_of(ingest) if task == "classify" else None
    user, code = usercode.is_user_model(stage.model), None
    if user and stage.code is not None:
        copy = Folder.CODE.of(stage.output_name)
        _verified(run_dir, manifest, copy)  # its network's code was copied into the run and is intact
        code = usercode.UserCode(stage=stage.output_name, dir=str(run_dir / copy), checksums=manifest["outputs"][copy])
    ref = ModelRef("keras", str(run_dir / output / "model.keras"), digest, stage.model if user else None, code)
    proba = task == "classify"  # the softmax output
    return SavedStage(run_dir, config, stage, ingest_stage, ingest, ref, task, classes, features, label, proba)
