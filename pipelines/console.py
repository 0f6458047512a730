"""What the terminal shows: the ingest and model summary tables of finished runs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.config import PipelineConfig
from pipelines.ingest.stage import IngestResult
from pipelines.pipeline import PipelineResult

console = Console(stderr=True)

INGEST_COLUMNS = ("pipeline", "engine", "read", "accepted", "rejected", "partitions", "rows/partition")
INGEST_COLUMNS += ("train", "val", "test", "seconds", "run")
MODEL_COLUMNS = ("pipeline", "engine", "stage", "model", "train rows", "fit s", "train fit / test metrics", "files")


def ingest_table(rows: Sequence[tuple[PipelineConfig, PipelineResult]]) -> Table:
    """One line per (pipeline, engine) ingest: counts, partitions, split sizes, time, run directory."""
    table = Table(title="ingest summary", header_style="bold")
    for name in INGEST_COLUMNS:
        table.add_column(name, justify="left" if name in ("pipeline", "engine", "run") else "right")
    for config, out in rows:
        for stage in config.stages:
            result = out.results.get(stage.output_name)
            if not isinstance(result, IngestResult):
                continue
            entry = out.run.stage_facts(stage.output_name) or {}
            sizes = result.partition_rows or [0]
            table.add_row(
                config.name,
                result.engine,
                f"{result.read:,}",
                f"{result.accepted:,}",
                f"{result.rejected:,}",
                str(len(result.partition_rows)),
                f"{min(sizes):,}-{max(sizes):,}",
                *(f"{result.splits[s]:,}" for s in ("train", "val", "test")),
                f"{entry.get('seconds', 0.0):.1f}",
                os.path.relpath(out.run.dir),
            )
    return table


def _metric_text(facts: dict[str, Any]) -> str:
    shown = {k: v for k, v in facts.items() if k not in ("model", "train_rows", "fit_seconds", "placement")}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def model_table(rows: Sequence[tuple[PipelineConfig, PipelineResult]]) -> Table:
    """One line per fitted model or network: rows, fit time, headline metrics, where its files are."""
    table = Table(title="model summary", header_style="bold")
    for name in MODEL_COLUMNS:
        table.add_column(name, justify="right" if name in ("train rows", "fit s") else "left")
    for config, out in rows:
        for stage in config.stages:
            result = out.results.get(stage.output_name)
            if result is None or isinstance(result, IngestResult):
                continue
            facts = result.facts()
            folder = out.run.dir / stage.output_dir / stage.output_name
            table.add_row(
                config.name,
                out.run.manifest["engine"]["kind"],
                stage.output_name,
                str(facts.get("model", "")),
                f"{facts.get('train_rows', 0):,}",
                f"{facts.get('fit_seconds', 0):.2f}",
                _metric_text(facts),
                os.path.relpath(folder),
            )
    return table


def print_summaries(rows: Sequence[tuple[PipelineConfig, PipelineResult]]) -> None:
    """Print the ingest and model tables of finished runs (wide enough not to wrap)."""
    wide = Console(width=max(Console().width, 150))
    if any(isinstance(r, IngestResult) for _, out in rows for r in out.results.values()):
        wide.print(ingest_table(rows))
    if any(not isinstance(r, IngestResult) for _, out in rows for r in out.results.values()):
        wide.print(model_table(rows))
