"""Run a configured pipeline: one run directory, its stages in order on one engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.engines import make_engine
from pipelines.engines.base import Engine
from pipelines.errors import PipelineError
from pipelines.runs import Run
from pipelines.stages import STAGES

log = logging.getLogger(__name__)


def _point_latest(run: Run) -> None:
    """Atomically repoint runs/<pipeline>/latest at this run."""
    link = run.dir.parent / "latest"
    tmp = run.dir.parent / f".latest-{run.id}"
    os.symlink(run.dir.name, tmp)
    os.replace(tmp, link)


def run_pipeline(
    config: PipelineConfig, engine: Engine | None = None, runs_root: str | Path | None = None, run: Run | None = None
) -> tuple[Run, dict[str, Any]]:
    """Run every stage of config; uses the given started engine or starts (and stops) its own.

    With `run` (a reopened earlier run), stages the manifest records as succeeded are skipped; this is
    allowed only when every stage left to run is a deep stage (they read the tensors already written).
    """
    todo = [s for s in config.stages if run is None or not run.stage_succeeded(s.output_name)]
    if run is not None:
        blocked = [s.output_name for s in todo if s.stage != "deep"]
        if blocked:
            raise PipelineError(
                f"{run.dir}: stages {blocked} did not finish; only deep stages resume, rerun the pipeline"
            )
    run = run or Run(config, runs_root)
    state: dict[str, Any] = {}
    owned = engine is None
    try:
        if owned:
            engine = make_engine(config.engine)
            engine.start()
        run.manifest["engine"].update(engine.describe())
        run.save()
        for stage in todo:
            with run.stage(stage.output_name) as entry:
                result = STAGES[stage.stage](engine, config, stage, run, state)
                entry.update(result.summary())
                run.add_metrics(stage.output_name, result.metrics)
    except BaseException as exc:
        run.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if owned and engine is not None:
            engine.stop()
    run.finish("succeeded")
    _point_latest(run)
    return run, state
