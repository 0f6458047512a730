"""The deep stage: hand the ingested splits to Horovod ranks as tensor shards, train, collect the results."""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.atomic import atomic_write_json
from pipelines.config import DeepStage, PipelineConfig
from pipelines.deep.shards import MANIFEST, TensorShards, write_shards
from pipelines.engines.base import Engine
from pipelines.errors import ConfigError, DataError
from pipelines.launch.horovod import launch_command, run_ranks

log = logging.getLogger(__name__)

HEADLINE = ("model", "train_rows", "ranks", "epochs_run", "resumed_from")


@dataclass
class DeepResult:
    """A finished training run's results (results.json of rank 0) for the manifest and metrics.json."""

    metrics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline facts: model, ranks, epochs, time, test accuracy or loss."""
        facts = {k: self.metrics[k] for k in HEADLINE if self.metrics.get(k) is not None}
        facts["fit_seconds"] = self.metrics.get("train_seconds", 0.0)
        for split in ("test", "val"):
            if split in self.metrics:
                facts.update(
                    {f"{split}_{k}": self.metrics[split][k] for k in ("accuracy", "loss") if k in self.metrics[split]}
                )
                break
        return facts


def tensors_key(stage: DeepStage) -> str:
    """Folder name of the tensors a stage trains on (shared by stages with the same class filter)."""
    return "all" if stage.classes is None else "classes-" + "-".join(str(c) for c in stage.classes)


def hand_off(engine: Engine, config: PipelineConfig, stage: DeepStage, run: Any, state: dict[str, Any]) -> TensorShards:
    """Write (once per run and class filter) the ingested splits as tensor shards.

    Shards written earlier (an earlier stage, or a resumed run) are verified against their checksums here,
    once, before any rank starts; fresh shards were hashed as they were written.
    """
    key = tensors_key(stage)
    target = run.dir / "tensors" / key
    if (target / MANIFEST).exists():
        return TensorShards(target, verify=True)
    ingest = state.get("ingest")
    if ingest is None or "train" not in ingest.outputs:
        raise ConfigError(f"deep stage {stage.output_name!r} needs an ingest stage with write: true before it")
    if ingest.schema is None:
        image = (ingest.image_dtype, tuple(ingest.image_shape))
        features: list[str] = []
        label = "label"
        total = config.dataset.image.classes if config.dataset.image else None
    else:
        image = None
        features, label = ingest.model_columns()
        if label is None:
            raise ConfigError(f"deep stage {stage.output_name!r}: the dataset has no label column")
        total = None
    if stage.classes and total is not None and max(stage.classes) >= total:
        raise ConfigError(f"deep stage {stage.output_name!r}: classes {stage.classes} outside 0..{total - 1}")
    with run.output(f"tensors/{key}") as tmp:
        tmp.mkdir()
        manifest = write_shards(
            engine,
            ingest.outputs,
            tmp,
            image=image,
            features=features,
            label=label,
            classes=stage.classes,
            n_classes=len(stage.classes) if stage.classes else total,
            source={"engine": engine.kind, "dataset": ingest.dataset, "run": run.id},
        )
        if manifest["splits"].get("train", {}).get("rows", 0) == 0:
            raise DataError(f"deep stage {stage.output_name!r}: no training rows left after the class filter")
    log.info(
        "tensors/%s: %s",
        key,
        ", ".join(f"{s} {v['rows']:,} rows in {len(v['shards'])} shards" for s, v in manifest["splits"].items()),
    )
    return TensorShards(target, verify=False)


def _transfer_model(stage: DeepStage, run: Any) -> str | None:
    if stage.transfer is None:
        return None
    source = stage.transfer.source
    match = re.fullmatch(r"stage:(.+)", source)
    path = run.dir / "deep" / match.group(1) / "model.keras" if match else Path(source)
    if not path.exists():
        raise ConfigError(f"deep stage {stage.output_name!r}: transfer source {source!r} not found ({path})")
    return str(path)


def run_deep(
    engine: Engine, config: PipelineConfig, stage: DeepStage, run: Any, state: dict[str, Any], ranks: int | None = None
) -> DeepResult:
    """Hand off the data, train with Horovod ranks, write deep/<name>/ (model, history, plots, results)."""
    shards = hand_off(engine, config, stage, run, state)
    name = stage.output_name
    checkpoints = run.dir / "checkpoints" / name
    checkpoints.mkdir(parents=True, exist_ok=True)
    classes = stage.classes or list(range(shards.classes))
    spec = {
        "stage": stage.model_dump(mode="json"),
        "tensors": str(shards.dir),
        "checkpoints": str(checkpoints),
        "transfer_model": _transfer_model(stage, run),
        "class_names": [str(c) for c in classes],
    }
    with run.output(f"deep/{name}") as tmp:
        spec["out"] = str(tmp)
        spec_path = checkpoints / "spec.json"
        atomic_write_json(spec_path, spec)
        worker = [sys.executable, "-m", "pipelines.deep.worker", str(spec_path)]
        command = launch_command(stage.launcher, ranks or stage.ranks, stage.hosts, worker)
        run_ranks(command, run.dir / "logs" / f"{name}.ranks.log", stage.timeout_s)
        results = json.loads((tmp / "results.json").read_text())
    return DeepResult(results)
