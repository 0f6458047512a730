"""Run policy in one place: lock, new or resumed run directory, final status, `latest`, retention."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import PipelineError, UsageError
from pipelines.runs.lock import pipeline_lock
from pipelines.runs.resume import find_resumable
from pipelines.runs.retention import prune_runs
from pipelines.runs.run import MANIFEST, Run

log = logging.getLogger(__name__)


def resume_target(runs_root: str | Path, pipeline: str, resume: bool | str | Path) -> Path | None:
    """The run directory `--resume` means: the given one, else the newest unfinished run (None: start anew).

    Call it while holding the pipeline's lock, so a run that was still going is not picked.
    """
    if not resume:
        return None
    if isinstance(resume, bool):
        return find_resumable(runs_root, pipeline)
    path = Path(resume)
    if not (path / MANIFEST).is_file():
        raise UsageError(f"--resume {resume}: no such run directory (no {MANIFEST})")
    owner = json.loads((path / MANIFEST).read_text()).get("pipeline")
    if owner != pipeline:
        raise UsageError(f"--resume {resume}: a run of pipeline {owner!r}, not {pipeline!r}")
    return path


@contextlib.contextmanager
def run_session(
    pipeline: str,
    runs_root: str | Path,
    config_yaml: str,
    engine: dict[str, Any],
    resume: bool | str | Path = False,
    wait: bool = False,
    keep_runs: int | None = None,
) -> Iterator[Run]:
    """Hold the pipeline's lock around one run; mark it succeeded or failed, point `latest`, prune old runs.

    `resume`: False starts a new run; True continues the newest unfinished run (or starts anew if there is
    none, so a scheduled `--resume` always runs); a path continues that run directory.
    """
    root = Path(resume).resolve().parent.parent if isinstance(resume, str | Path) else Path(runs_root)
    with pipeline_lock(root, pipeline, wait=wait):
        target = resume_target(root, pipeline, resume)
        if target is not None:
            run = Run.reopen(target)
            log.info("resuming %s", run.dir)
        else:
            run = Run.create(pipeline, root, config_yaml, engine)
        try:
            yield run
        except BaseException as exc:
            try:
                run.finish("failed", f"{type(exc).__name__}: {exc}")
            except PipelineError as cannot:  # a full disk: the manifest stays `running`, never `succeeded`
                log.info("could not mark %s failed: %s", run.dir, cannot)
            raise
        run.finish("succeeded")
        run.point_latest()
        if keep_runs:
            prune_runs(root, pipeline, keep_runs)
