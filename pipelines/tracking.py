"""Opt-in MLflow tracking: the `tracking:` config section, and logging a finished run from its directory.

The driver logs after the run ends (succeeded or failed), reading only the run directory: one MLflow run per
pipeline run (run name = run id; tags pipeline, run_id, engine, status; params = the flattened config;
config.yaml, manifest.json, metrics.json, report.html as artifacts) with one nested run per stage (params = the
stage's config, metrics = its metrics.json section, a deep stage's history per epoch with step = epoch,
its models/, deep/, plots/ and tensorboard/ folders as artifacts). A tracking failure is a warning only.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from pipelines.runs.history import RunRecord
from pipelines.runs.layout import STAGE_ARTIFACTS
from pipelines.runs.run import CONFIG, MANIFEST, METRICS, Run
from pipelines.settings import StrictModel

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'pipelines[tracking]'"
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
RUN_ARTIFACTS = (CONFIG, MANIFEST, METRICS, "report.html")
STATUS = {"succeeded": "FINISHED", "failed": "FAILED"}


class TrackingConfig(StrictModel):
    """Where runs are logged: an MLflow tracking URI and experiment (the section absent: no tracking)."""

    uri: str = Field(description="sqlite:///mlruns.db, another SQLAlchemy database URL, or http(s)://server:port")
    experiment: str | None = Field(default=None, min_length=1, description="default: the pipeline's name")
    artifact_location: str | None = Field(
        default=None, description="artifacts of a new experiment (default with sqlite: mlartifacts/ beside the file)"
    )

    @field_validator("uri")
    @classmethod
    def _not_a_file_store(cls, uri: str) -> str:
        if uri.startswith("file:") or "://" not in uri:
            raise ValueError(
                "MLflow 3 refuses its file store ('file:' or a folder): use a database such as "
                "sqlite:///mlruns.db or a tracking server http(s)://host:port"
            )
        return uri

    @model_validator(mode="after")
    def _installed(self) -> TrackingConfig:
        needed = ["mlflow"] + (
            ["sqlalchemy", "alembic"] if self.uri.split(":")[0].split("+")[0] in DATABASE_SCHEMES else []
        )
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} not installed: {INSTALL_HINT}")
        return self

    def default_artifact_location(self) -> str | None:
        """The given artifact location, or for a sqlite file the folder mlartifacts/ beside it (not the cwd)."""
        if self.artifact_location is not None:
            return self.artifact_location
        if self.uri.startswith("sqlite:///"):
            return str(Path(self.uri[len("sqlite:///") :]).resolve().parent / "mlartifacts")
        return None  # a server or another database decides


# --- flattening ------------------------------------------------------------------------------------------


def key(name: str) -> str:
    """A param or metric name MLflow accepts (alphanumerics, _ - . / : and spaces; others become _)."""
    return re.sub(r"[^/\w.\- :]", "_", name)


def flat_params(data: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys to text: mappings and lists of mappings by key and index, other lists as JSON."""
    if isinstance(data, dict):
        items: Iterable[tuple[Any, Any]] = data.items()
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        items = enumerate(data)
    else:
        return {prefix: data if isinstance(data, str) else json.dumps(data)}
    out: dict[str, str] = {}
    for k, v in items:
        out.update(flat_params(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def flat_metrics(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Dotted keys to every number of a metrics.json section (lists, text and flags left out)."""
    out: dict[str, float] = {}
    for k, v in data.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flat_metrics(v, name))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def epoch_metrics(section: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, epoch) of a deep stage's recorded history."""
    rows = []
    for entry in section.get("history") or []:
        for k, v in entry.items():
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool):
                rows.append((k, float(v), int(entry["epoch"])))
    return rows


# --- logging ---------------------------------------------------------------------------------------------


def _ms(stamp: str | None) -> int | None:
    return int(dt.datetime.fromisoformat(stamp).timestamp() * 1000) if stamp else None


def _experiment(client: Any, settings: TrackingConfig, pipeline: str) -> str:
    name = settings.experiment or pipeline
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=settings.default_artifact_location())


def _log_values(
    client: Any, run_id: str, params: dict[str, str], metrics: list[tuple[str, float, int]], stamp: int
) -> None:
    """Params and metrics in batches within MLflow's limits (100 params, 1,000 metrics a call)."""
    from mlflow.entities import Metric, Param
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    plist = [Param(key(k), v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
    for i in range(0, len(plist), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=plist[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    mlist = [Metric(key(k), v if math.isfinite(v) else float("nan"), stamp, step) for k, v, step in metrics]
    for i in range(0, len(mlist), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=mlist[i : i + MAX_METRICS_PER_BATCH])


def log_run(run_dir: str | Path, settings: TrackingConfig, stage_names: list[str]) -> str:
    """Log one run directory to MLflow (replacing an earlier logging of the same run id); the parent run's id.

    `stage_names`: the output name of each configured stage, in config order.
    """
    from mlflow.tracking import MlflowClient

    record = RunRecord.read(run_dir)
    run_dir, manifest, metrics = record.dir, record.manifest, record.metrics
    config = yaml.safe_load((run_dir / CONFIG).read_text())
    run_id, status = manifest["run_id"], manifest["status"]
    client = MlflowClient(tracking_uri=settings.uri)
    experiment = _experiment(client, settings, manifest["pipeline"])
    for old in client.search_runs([experiment], filter_string=f"tags.run_id = '{run_id}'"):
        client.delete_run(old.info.run_id)  # a resumed run is logged again, whole
    common = {"pipeline": manifest["pipeline"], "run_id": run_id, "engine": manifest["engine"].get("kind", "")}
    parent = client.create_run(
        experiment, start_time=_ms(manifest["started"]), run_name=run_id, tags={**common, "status": status}
    ).info.run_id
    _log_values(client, parent, flat_params(config), [], _ms(manifest["finished"]) or 0)
    for name in RUN_ARTIFACTS:
        if (run_dir / name).is_file():
            client.log_artifact(parent, str(run_dir / name))
    entries = {entry["name"]: entry for entry in manifest["stages"]}  # the newest entry of each name
    for stage_config, name in zip(config["stages"], stage_names, strict=True):
        entry = entries.get(name)
        if entry is None:
            continue  # never started
        tags = {**common, "mlflow.parentRunId": parent, "stage": stage_config["stage"], "status": entry["status"]}
        child = client.create_run(experiment, start_time=_ms(entry["started"]), run_name=name, tags=tags).info.run_id
        section = metrics.get(name, {})
        values = [(k, v, 0) for k, v in flat_metrics(section).items()] + epoch_metrics(section)
        _log_values(client, child, flat_params(stage_config), values, _ms(entry.get("finished")) or 0)
        for folder in STAGE_ARTIFACTS:  # <folder>/<stage name> goes to the stage's run
            if folder.under(run_dir, name).is_dir():
                client.log_artifacts(child, str(folder.under(run_dir, name)), artifact_path=folder.of(name))
        client.set_terminated(child, STATUS.get(entry["status"], "FAILED"), end_time=_ms(entry.get("finished")))
    client.set_terminated(parent, STATUS.get(status, "FAILED"), end_time=_ms(manifest["finished"]))
    return parent


def track_run(run: Run, settings: TrackingConfig, stage_names: list[str]) -> None:
    """Log a run that ended, succeeded or failed, to MLflow; a failure to log warns and never fails the run."""
    try:
        parent = log_run(run.dir, settings, stage_names)
        log.info("tracking: %s logged to %s as MLflow run %s", run.id, settings.uri, parent)
    except Exception as exc:  # tracking never fails the run
        log.warning("tracking: could not log %s to %s: %s: %s", run.dir, settings.uri, type(exc).__name__, exc)
