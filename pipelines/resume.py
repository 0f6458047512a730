"""Resuming a run: which earlier run to continue, which stages to skip, and the ingest facts they need."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipelines.atomic import checksum_tree
from pipelines.config import IngestStage, PipelineConfig
from pipelines.engines.base import Engine

log = logging.getLogger(__name__)


def find_resumable(runs_dir: str | Path, pipeline: str) -> Path | None:
    """The newest run of a pipeline that did not succeed (failed, or killed while `running`), if it is the newest."""
    folder = Path(runs_dir) / pipeline
    if not folder.exists():
        return None
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and (p / "manifest.json").exists())
    if not runs:
        return None
    newest = runs[-1]
    status = json.loads((newest / "manifest.json").read_text()).get("status")
    return newest if status in ("failed", "running") else None


def corrupt_outputs(run_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Recorded outputs that are missing or whose files no longer match their SHA-256."""
    bad = []
    for name, sums in manifest.get("outputs", {}).items():
        path = run_dir / name
        if not path.exists() or checksum_tree(path) != sums:
            bad.append(name)
    return bad


def restore_ingest(engine: Engine, config: PipelineConfig, stage: IngestStage, run: Any) -> Any:
    """Rebuild a finished ingest's result from its manifest facts and written splits (nothing is re-read)."""
    from pipelines.ingest.split import SPLIT_NAMES
    from pipelines.ingest.stage import IngestResult, plan_ingest
    from pipelines.ingest.transform import Fitted, stored_image_dtype

    facts = next(s for s in run.manifest["stages"] if s["name"] == stage.output_name and s["status"] == "succeeded")
    plan = plan_ingest(config.dataset, config.engine.partitions, engine, stage.index_block_mb)
    fitted = Fitted(
        scale={k: (v["mean"], v["std"]) for k, v in facts["scaler"].items()},
        levels=facts["levels"],
        constant=facts["constant_columns"],
    )
    result = IngestResult(
        dataset=facts["dataset"],
        engine=engine.kind,
        read=facts["read"],
        accepted=facts["accepted"],
        rejected=facts["rejected"],
        splits=facts["splits"],
        partition_rows=facts["partition_rows"],
        split_partition_rows=facts["split_partition_rows"],
        fitted=fitted,
        schema=plan.table,
        encode=stage.encode,
    )
    if plan.table is None:
        result.image_dtype = stored_image_dtype(plan.files[0].dtype, stage.image_scale)
        result.image_shape = tuple(config.dataset.image.shape)
    for name in SPLIT_NAMES.values():
        path = run.dir / "data" / name
        if f"data/{name}" in run.manifest["outputs"] and path.exists():
            result.outputs[name] = str(path)
            result.frames[name] = engine.read_parquet(str(path))
    log.info("resume: ingest restored from %s (%d rows accepted)", run.dir, result.accepted)
    return result
