"""The new data to score, as a dataset section: the run's schema with the new files (a path, or a YAML's section)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pipelines.config import load_yaml
from pipelines.errors import ConfigError, UsageError
from pipelines.ingest.config import DatasetConfig

# What the data must look like comes from the run; where the files are and how they are stored, from the new data.
SCHEMA_KEYS = ("features", "label", "types", "categories", "formula", "missing", "image")
FILE_KEYS = ("format", "path", "labels_path", "npz_keys", "delimiter")
TABLES = ("csv", "parquet")
DECLARED_KEYS = ("test_path", "test_labels_path", "val_path", "val_labels_path")  # the run's splits, not new data


def new_dataset(run_dataset: DatasetConfig, data: str, labels: str | None = None) -> DatasetConfig:
    """The run's dataset pointed at new files: `data` is a path/glob in the run's format, or a YAML config
    whose `dataset` section names the files (its schema keys, if any, must equal the run's)."""
    if str(data).endswith((".yaml", ".yml")):
        if labels:
            raise UsageError("--labels goes with a data path; in a YAML config give dataset.labels_path")
        return _from_yaml(run_dataset, data)
    if labels and run_dataset.format != "idx":
        raise UsageError(f"--labels is for IDX image files; the run's data is {run_dataset.format}")
    update: dict[str, Any] = {"path": str(data), **dict.fromkeys(DECLARED_KEYS)}
    if run_dataset.format == "idx":
        update["labels_path"] = labels  # new images come with their own labels file, or none
    return run_dataset.model_copy(update=update)


def _from_yaml(run_dataset: DatasetConfig, path: str) -> DatasetConfig:
    section = load_yaml(path).get("dataset")
    if not isinstance(section, dict) or "path" not in section:
        raise ConfigError(f"{path}: needs a 'dataset' section with at least 'path' (the files to score)")
    unknown = sorted(set(section) - set(SCHEMA_KEYS) - set(FILE_KEYS) - {"name"})
    if unknown:
        raise ConfigError(f"{path}: dataset: unknown key(s) {unknown}")
    recorded = run_dataset.model_dump(mode="json")
    differ = [k for k in SCHEMA_KEYS if k in section and section[k] != recorded[k]]
    if differ:
        raise ConfigError(
            f"{path}: dataset.{differ[0]} differs from the run's ({recorded[differ[0]]!r}); new data is read "
            "with the schema the model was trained on: leave the schema keys out"
        )
    merged = {k: v for k, v in recorded.items() if k not in FILE_KEYS and k not in DECLARED_KEYS} | section
    merged.setdefault("format", run_dataset.format)
    if (merged["format"] in TABLES) != (run_dataset.format in TABLES):
        raise ConfigError(f"{path}: dataset.format {merged['format']!r} does not fit the run's {run_dataset.format!r}")
    labels_path = merged.get("labels_path")
    if merged["format"] == "idx" and not labels_path:
        merged["labels_path"] = "-"  # the section is valid without labels here: new data may have none
    try:
        dataset = DatasetConfig.model_validate(merged)
    except ValidationError as exc:
        lines = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: dataset: {lines}") from None
    return dataset.model_copy(update={"labels_path": labels_path})  # relative paths: from the working directory
