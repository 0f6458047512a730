"""Earlier runs as records: list a runs folder (newest first), find a run by id, compare two runs."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import UsageError
from pipelines.runs.resume import config_diff
from pipelines.runs.run import CONFIG, MANIFEST, METRICS


@dataclass
class RunRecord:
    """What a run directory records: its manifest, metrics and config."""

    dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> RunRecord:
        """Read a run directory (its manifest must be there; metrics may not be yet)."""
        path = Path(directory)
        if not (path / MANIFEST).is_file():
            raise UsageError(f"{path}: not a run directory (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text())
        metrics = json.loads((path / METRICS).read_text()) if (path / METRICS).is_file() else {}
        return cls(path, manifest, metrics)

    @property
    def id(self) -> str:
        """The run id (its folder name)."""
        run_id: str = self.manifest.get("run_id", self.dir.name)
        return run_id

    @property
    def engine(self) -> str:
        """The engine kind the run used."""
        return str(self.manifest.get("engine", {}).get("kind", ""))

    @property
    def seconds(self) -> float | None:
        """Wall time from start to finish (None while it runs or when it was killed)."""
        start, end = self.manifest.get("started"), self.manifest.get("finished")
        if not start or not end:
            return None
        return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()

    def config(self) -> dict[str, Any]:
        """The resolved config the run recorded."""
        path = self.dir / CONFIG
        return yaml.safe_load(path.read_text()) if path.is_file() else {}

    def headline(self) -> dict[str, Any]:
        """Train and test metrics of the run's latest succeeded stages, as `stage.key`."""
        out: dict[str, Any] = {}
        for entry in self.manifest.get("stages", []):
            if entry.get("status") != "succeeded":
                continue
            for key, value in entry.items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if number and key.startswith(("train_", "test_", "val_")) and key not in ("train_rows", "test_rows"):
                    out[f"{entry['name']}.{key}"] = value
        return out


def list_runs(runs_dir: str | os.PathLike[str], pipeline: str | None = None) -> list[RunRecord]:
    """Every run under `runs_dir` (of one pipeline, if named), newest first."""
    root = Path(runs_dir)
    if pipeline:
        folders = [root / pipeline]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    records = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for run in folder.iterdir():
            if run.is_dir() and not run.is_symlink() and (run / MANIFEST).is_file():
                records.append(RunRecord.read(run))
    return sorted(records, key=lambda r: (r.manifest.get("started") or "", r.id), reverse=True)


def find_run(runs_dir: str | os.PathLike[str], name: str) -> RunRecord:
    """A run given as its directory, or as its id (or a unique prefix of one) under `runs_dir`."""
    path = Path(name)
    if (path / MANIFEST).is_file():
        return RunRecord.read(path)
    matches = [r for r in list_runs(runs_dir) if r.id.startswith(name)] if Path(runs_dir).is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"{name}: no such run directory or run id under {runs_dir}")
    some = ", ".join(r.id for r in matches[:4])
    raise UsageError(f"{name}: matches {len(matches)} runs ({some}); give more of the id")


def flat_values(data: Any, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of nested dicts as dotted keys (lists such as confusion matrices are left out)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat_values(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list):
        return {}
    return {prefix: data}


def metric_diff(a: RunRecord, b: RunRecord) -> list[tuple[str, Any, Any]]:
    """Metric keys whose values differ between two runs, with (a, b) values (None where one lacks the key)."""
    left, right = flat_values(a.metrics), flat_values(b.metrics)
    keys = list(left) + [k for k in right if k not in left]
    return [(k, left.get(k), right.get(k)) for k in keys if left.get(k) != right.get(k)]


def same_splits(a: RunRecord, b: RunRecord) -> list[str]:
    """Stages (metrics sections) whose recorded split digests are equal in both runs: they wrote the same rows."""
    return [
        name
        for name, section in a.metrics.items()
        if isinstance(section, dict)
        and section.get("splits_digest")
        and section["splits_digest"] == (b.metrics.get(name) or {}).get("splits_digest")
    ]


def compare_runs(a: RunRecord, b: RunRecord) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(config differences, metric differences) between two runs, each as (key, a, b)."""
    return config_diff(a.config(), b.config()), metric_diff(a, b)
