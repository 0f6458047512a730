"""Stage registry: config stage name -> function run with (engine, config, stage config, run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.config import DeepStage, IngestStage, ModelStage, PipelineConfig
from pipelines.engines.base import Engine
from pipelines.runs import Run


def _ingest(engine: Engine, config: PipelineConfig, stage: IngestStage, run: Run, state: dict[str, Any]) -> Any:
    from pipelines.ingest.stage import run_ingest

    result = run_ingest(engine, config.dataset, stage, config.engine.partitions, run)
    state["ingest"] = result
    return result


def _model(engine: Engine, config: PipelineConfig, stage: ModelStage, run: Run, state: dict[str, Any]) -> Any:
    from pipelines.classical.stage import run_model

    result = run_model(engine, stage, run, state)
    state.setdefault("models", {})[stage.output_name] = result
    return result


def _deep(engine: Engine, config: PipelineConfig, stage: DeepStage, run: Run, state: dict[str, Any]) -> Any:
    from pipelines.deep.stage import run_deep

    result = run_deep(engine, config, stage, run, state)
    state.setdefault("deep", {})[stage.output_name] = result
    return result


STAGES: dict[str, Callable[..., Any]] = {"ingest": _ingest, "model": _model, "deep": _deep}
