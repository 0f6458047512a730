"""One run directory: resolved config, manifest (stages, status, timings, counts, checksums), logs, metrics."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipelines import __version__
from pipelines.atomic import atomic_dir, atomic_write_json, atomic_write_text, checksum_tree, full_disk_named
from pipelines.errors import UsageError

log = logging.getLogger("pipelines")

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
LATEST = "latest"
# Temp files and folders of atomic writes (pipelines.atomic): `.name.tmp-1a2b3c4d`, `.name.old-1a2b3c4d`.
LEFTOVER = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{8}$")


@contextlib.contextmanager
def stage_events(pipeline: str, name: str) -> Iterator[None]:
    """Log a stage's start, then its outcome and seconds, as `stage_event` records (the progress displays')."""
    log.info("stage %s started", name, extra={"stage_event": (pipeline, name, "started", None)})
    t0 = time.perf_counter()
    status = "failed"
    try:
        yield
        status = "succeeded"
    finally:
        seconds = round(time.perf_counter() - t0, 3)
        event = (pipeline, name, status, seconds)
        log.info("stage %s %s in %.2fs", name, status, seconds, extra={"stage_event": event})


class RunLog(logging.FileHandler):
    """A run's logs/run.log; a record it cannot write (a full disk) is dropped, not printed to stderr."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete the temp files and folders that writes killed mid-way left in a run directory."""
    found = [p for p in directory.rglob(".*") if LEFTOVER.match(p.name)]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def new_run_id() -> str:
    """Sortable, unique run id: UTC timestamp plus random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def now() -> str:
    """UTC time stamp as the manifest records it."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Run:
    """One execution of a pipeline, owning <runs_dir>/<pipeline>/<run id>/."""

    def __init__(self, directory: Path, manifest: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.dir = directory
        self.id = directory.name
        self.manifest = manifest
        self.metrics = metrics
        self._handler: logging.Handler | None = None

    @classmethod
    def create(cls, pipeline: str, runs_root: str | os.PathLike[str], config_yaml: str, engine: dict[str, Any]) -> Run:
        """Make a new run directory with its config, an empty manifest (status `running`) and a log file.

        A directory that cannot be completed (a full disk) is removed again: a run that never started leaves nothing.
        """
        run_id = new_run_id()
        directory = Path(runs_root) / pipeline / run_id
        with full_disk_named(directory):
            directory.mkdir(parents=True, exist_ok=False)
            (directory / "logs").mkdir()
        manifest: dict[str, Any] = {
            "pipeline": pipeline,
            "run_id": run_id,
            "status": "running",
            "started": now(),
            "finished": None,
            "pipelines_version": __version__,
            "python": platform.python_version(),
            "host": platform.node(),
            "engine": dict(engine),
            "stages": [],
            "outputs": {},
        }
        run = cls(directory, manifest, {})
        try:
            atomic_write_text(directory / CONFIG, config_yaml)
            run._attach_log()
            run.save()
        except BaseException:
            run._detach_log()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return run

    @classmethod
    def reopen(cls, directory: str | os.PathLike[str]) -> Run:
        """Continue an earlier run in its own directory (manifest and metrics as it recorded them)."""
        path = Path(directory).resolve()
        if not (path / MANIFEST).is_file():
            raise UsageError(f"{path}: not a run directory (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text())
        metrics = json.loads((path / METRICS).read_text()) if (path / METRICS).exists() else {}
        run = cls(path, manifest, metrics)
        manifest.update(status="running", finished=None)
        manifest.pop("error", None)
        for entry in manifest["stages"]:
            if entry["status"] == "running":  # the process running it was killed
                entry["status"] = "interrupted"
        removed = remove_leftovers(path)
        manifest.setdefault("resumed", []).append(now())
        run._attach_log()
        if removed:
            log.info("resume: removed %d temp file(s) of writes cut short: %s", len(removed), removed)
        run.save()
        return run

    @property
    def pipeline(self) -> str:
        """Name of the pipeline this run belongs to."""
        name: str = self.manifest["pipeline"]
        return name

    def recorded_config(self) -> dict[str, Any]:
        """The resolved config this run recorded, as plain data."""
        config: dict[str, Any] = yaml.safe_load((self.dir / CONFIG).read_text())
        return config

    def replace_config(self, config_yaml: str) -> None:
        """Record a changed config (a forced resume)."""
        atomic_write_text(self.dir / CONFIG, config_yaml)

    def _attach_log(self) -> None:
        self._handler = RunLog(self.dir / "logs" / "run.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(self._handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)

    def stage_facts(self, name: str) -> dict[str, Any] | None:
        """The newest manifest entry of a succeeded stage of this name, if any."""
        found = [s for s in self.manifest["stages"] if s["name"] == name and s["status"] == "succeeded"]
        return found[-1] if found else None

    def stage_succeeded(self, name: str) -> bool:
        """Whether the manifest records a succeeded stage of this name."""
        return self.stage_facts(name) is not None

    def save(self) -> None:
        """Write the manifest atomically."""
        atomic_write_json(self.dir / MANIFEST, self.manifest)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Record a stage's status and timing; the yielded dict collects its facts (counts, sizes)."""
        entry: dict[str, Any] = {"name": name, "status": "running", "started": now()}
        self.manifest["stages"].append(entry)
        self.save()
        with stage_events(self.pipeline, name):
            t0 = time.perf_counter()
            try:
                yield entry
            except BaseException as exc:
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                raise
            else:
                entry["status"] = "succeeded"
            finally:
                entry["seconds"] = round(time.perf_counter() - t0, 3)
                entry["finished"] = now()
                self.save()

    @contextlib.contextmanager
    def output(self, name: str) -> Iterator[Path]:
        """A temp directory that appears as <run>/<name> only when complete.

        Its checksums are in the manifest before it becomes visible: a run killed between the two has a
        recorded output that is missing, which resume treats as corrupt (never an output without checksums).
        """

        def record(tmp: Path) -> None:
            self.manifest["outputs"][name] = checksum_tree(tmp)
            self.save()

        with atomic_dir(self.dir / name, before_publish=record) as tmp:
            yield tmp

    def add_metrics(self, section: str, values: dict[str, Any]) -> None:
        """Merge values into metrics.json under a section and rewrite it atomically."""
        self.metrics.setdefault(section, {}).update(values)
        atomic_write_json(self.dir / METRICS, self.metrics)

    def finish(self, status: str, error: str | None = None) -> None:
        """Close the run: final status, finish time, detach the log file."""
        self.manifest["status"] = status
        self.manifest["finished"] = now()
        if error:
            self.manifest["error"] = error
        try:
            self.save()
        finally:
            self._detach_log()

    def _detach_log(self) -> None:
        if self._handler is not None:
            log.removeHandler(self._handler)
            with contextlib.suppress(OSError):  # its last lines may not fit on a full disk
                self._handler.close()
            self._handler = None

    def point_latest(self) -> None:
        """Atomically repoint <pipeline>/latest at this run."""
        link = self.dir.parent / LATEST
        tmp = self.dir.parent / f".latest-{self.id}"
        os.symlink(self.dir.name, tmp)
        os.replace(tmp, link)
