"""Run a configured pipeline: one run directory, its stages in order on one engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.engines import make_engine
from pipelines.engines.base import Engine
from pipelines.resume import corrupt_outputs, restore_ingest
from pipelines.runs import Run
from pipelines.schedule import prune_runs
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

    With `run` (a reopened earlier run), stages the manifest records as succeeded are skipped when every
    recorded output still matches its checksum (else all stages run again, replacing outputs atomically);
    a skipped ingest is restored from its manifest facts and written splits.
    """
    todo = list(config.stages)
    if run is not None:
        bad = corrupt_outputs(run.dir, run.manifest)
        if bad:
            log.warning("resume: outputs %s changed since they were written; running every stage again", bad)
        else:
            todo = [s for s in config.stages if not run.stage_succeeded(s.output_name)]
    run = run or Run(config, runs_root)
    state: dict[str, Any] = {}
    owned = engine is None
    try:
        if owned:
            engine = make_engine(config.engine)
            engine.start()
        run.manifest["engine"].update(engine.describe())
        run.save()
        skipped = [s for s in config.stages if s not in todo]
        for stage in skipped:
            if stage.stage == "ingest" and todo:
                state["ingest"] = restore_ingest(engine, config, stage, run)
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
    if config.keep_runs:
        prune_runs(run.dir.parent.parent, config.name, config.keep_runs)
    return run, state
