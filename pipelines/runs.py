"""Run directories: resolved config, manifest (stages, status, timings, counts, checksums), logs, metrics."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines import __version__
from pipelines.atomic import atomic_dir, atomic_write_json, atomic_write_text, checksum_tree
from pipelines.config import PipelineConfig, dump_config

log = logging.getLogger("pipelines")


def new_run_id() -> str:
    """Sortable, unique run id: UTC timestamp plus random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class Run:
    """One execution of a pipeline, owning runs/<pipeline>/<run id>/."""

    def __init__(
        self, config: PipelineConfig, runs_root: str | os.PathLike[str] | None = None, run_id: str | None = None
    ):
        self.config = config
        self.id = run_id or new_run_id()
        self.dir = Path(runs_root or config.runs_dir) / config.name / self.id
        self.dir.mkdir(parents=True, exist_ok=False)
        (self.dir / "logs").mkdir()
        self.metrics: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {
            "pipeline": config.name,
            "run_id": self.id,
            "status": "running",
            "started": _now(),
            "finished": None,
            "pipelines_version": __version__,
            "python": platform.python_version(),
            "host": platform.node(),
            "engine": {"kind": config.engine.kind, "partitions": config.engine.partitions},
            "stages": [],
            "outputs": {},
        }
        from pipelines.launch.batch import job_facts

        job = job_facts()
        if job is not None:
            self.manifest["job"] = job
        atomic_write_text(self.dir / "config.yaml", dump_config(config))
        self._attach_log()
        self.save()

    def _attach_log(self) -> None:
        self._handler = logging.FileHandler(self.dir / "logs" / "run.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(self._handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)

    @classmethod
    def reopen(cls, directory: str | os.PathLike[str]) -> Run:
        """Continue an earlier run in its own directory (config and manifest as it recorded them)."""
        import json

        from pipelines.config import load_config

        path = Path(directory).resolve()
        if not (path / "manifest.json").exists():
            raise FileNotFoundError(f"{path}: not a run directory (no manifest.json)")
        run = cls.__new__(cls)
        run.config = load_config(path / "config.yaml")
        run.dir = path
        run.id = path.name
        run.manifest = json.loads((path / "manifest.json").read_text())
        metrics = path / "metrics.json"
        run.metrics = json.loads(metrics.read_text()) if metrics.exists() else {}
        run.manifest.update(status="running", finished=None)
        run.manifest.pop("error", None)
        run.manifest.setdefault("resumed", []).append(_now())
        run._attach_log()
        run.save()
        return run

    def stage_succeeded(self, name: str) -> bool:
        """Whether the manifest records a succeeded stage of this name."""
        return any(s["name"] == name and s["status"] == "succeeded" for s in self.manifest["stages"])

    def save(self) -> None:
        """Write the manifest atomically."""
        atomic_write_json(self.dir / "manifest.json", self.manifest)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Record a stage's status and timing; the yielded dict collects its facts (counts, sizes)."""
        entry: dict[str, Any] = {"name": name, "status": "running", "started": _now()}
        self.manifest["stages"].append(entry)
        self.save()
        t0 = time.perf_counter()
        log.info("stage %s started", name)
        try:
            yield entry
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        else:
            entry["status"] = "succeeded"
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            entry["finished"] = _now()
            self.save()
            log.info("stage %s %s in %.2fs", name, entry["status"], entry["seconds"])

    @contextlib.contextmanager
    def output(self, name: str) -> Iterator[Path]:
        """A temp directory that appears as <run>/<name> only when complete; its checksums go in the manifest."""
        with atomic_dir(self.dir / name) as tmp:
            yield tmp
            sums = checksum_tree(tmp)
        self.manifest["outputs"][name] = sums
        self.save()

    def add_metrics(self, section: str, values: dict[str, Any]) -> None:
        """Merge values into metrics.json under a section and rewrite it atomically."""
        self.metrics.setdefault(section, {}).update(values)
        atomic_write_json(self.dir / "metrics.json", self.metrics)

    def finish(self, status: str, error: str | None = None) -> None:
        """Close the run: final status, finish time, detach the log file."""
        self.manifest["status"] = status
        self.manifest["finished"] = _now()
        if error:
            self.manifest["error"] = error
        self.save()
        log.removeHandler(self._handler)
        self._handler.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
