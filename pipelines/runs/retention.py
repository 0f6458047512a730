"""Retention: keep the newest N finished runs of a pipeline (never `latest`, never a running one)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from pipelines.runs.run import LATEST, MANIFEST

log = logging.getLogger(__name__)


def prune_runs(runs_dir: Path, pipeline: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` finished runs (never the `latest` target or a running one)."""
    folder = Path(runs_dir) / pipeline
    latest = (folder / LATEST).resolve() if (folder / LATEST).exists() else None
    finished = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).exists()):
        status = json.loads((run / MANIFEST).read_text()).get("status")
        if status in ("succeeded", "failed") and run.resolve() != latest:
            finished.append(run)
    keep_latest = 1 if latest is not None else 0
    removed = finished[: max(0, len(finished) - max(0, keep - keep_latest))]
    for run in removed:
        shutil.rmtree(run)
        log.info("retention: removed %s", run)
    return removed
