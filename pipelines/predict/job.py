"""`pipelines predict`: read and validate new data as the run's ingest did, score it on the workers, write it out.

Output folder (written atomically): predictions/ (Parquet: source_file, row, prediction, probability_<class>
per class, label when the data has one), quarantine.csv (rejected rows, ingest's reasons), summary.json.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.atomic import atomic_dir, atomic_write_json
from pipelines.engines import make_engine
from pipelines.engines.base import Engine
from pipelines.errors import DataError, UsageError
from pipelines.ingest.config import SplitConfig
from pipelines.ingest.stage import Plan, plan_ingest, read_part, rejected_rows, write_quarantine
from pipelines.ingest.transform import partition_stats
from pipelines.predict.data import new_dataset
from pipelines.predict.saved import SavedStage, load_saved
from pipelines.predict.score import Scorer
from pipelines.runs.run import stage_events

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
ALL_ROWS = SplitConfig(test_fraction=0.0, val_fraction=0.0)  # every accepted row lands in the TRAIN code


def predict(
    run_dir: str | Path,
    stage: str,
    data: str,
    out: str | Path,
    engine_kind: str | None = None,
    engine: Engine | None = None,
    labels: str | None = None,
    partitions: int | None = None,
) -> dict[str, Any]:
    """Score `data` with stage `stage` of the finished run at `run_dir`; write `out`; return the summary.

    `engine` (started) is used as it is; else one is started from the run's engine section (`engine_kind`
    replacing its kind) and stopped afterwards.
    """
    t0 = time.perf_counter()
    saved = load_saved(run_dir, stage)
    dataset = new_dataset(saved.config.dataset, data, labels)
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMMARY).is_file())):
        raise UsageError(f"--out {out}: exists and is not an earlier predict output; choose a new folder")
    settings = saved.config.engine.model_copy(update={"kind": engine_kind} if engine_kind else {})
    with stage_events(saved.config.name, f"predict {stage}"), contextlib.ExitStack() as stack:  # a progress row
        if engine is None:
            engine = stack.enter_context(make_engine(settings))
        summary = _score(engine, saved, dataset, partitions or settings.partitions, out)
        summary.update(data=str(data), seconds=round(time.perf_counter() - t0, 3))
        atomic_write_json(out / SUMMARY, summary)
    return summary


def _score(engine: Engine, saved: SavedStage, dataset: Any, partitions: int, out: Path) -> dict[str, Any]:
    block_mb = saved.ingest_stage.index_block_mb
    stage = saved.ingest_stage  # the run's filter and derive apply to new data as they did at ingest
    plan = plan_ingest(
        dataset,
        partitions,
        engine,
        block_mb,
        table=saved.ingest.new_data_schema(),
        labels_optional=True,
        filters=stage.filter,
        derive=stage.derive,
        input_types=saved.ingest.input_types,
        classes=saved.ingest.class_names,  # format images: each class folder keeps the run's code
    )
    if plan.image_problem:
        raise DataError(f"{dataset.path}: {plan.image_problem} (the run's images)")
    labelled = plan.has_labels
    scorer = make_scorer(saved, plan, labelled)
    log.info(
        "%s: %d records in %d file(s), %d partitions", dataset.path, plan.records, len(plan.files), len(plan.parts)
    )
    arrow = plan.arrow_schema()
    validated, stats = engine.persist_tasks(
        lambda part: read_part(plan, part, ALL_ROWS), plan.parts, arrow, lambda pdf: partition_stats(pdf, None)
    )
    try:
        read, rejected = sum(s["read"] for s in stats), sum(s["rejected"] for s in stats)
        filtered = sum(sum(s["filtered"].values()) for s in stats)
        dropped = sum(s["dropped"] for s in stats)  # a missing-value policy `drop`, as at ingest
        if read != plan.records:
            raise DataError(f"{dataset.path}: read {read} records but the files hold {plan.records}")
        with atomic_dir(out) as tmp:
            tmp.mkdir()
            quarantine = rejected_rows(engine, validated, rejected)
            write_quarantine(tmp / "quarantine.csv", quarantine)
            metrics = functools.partial(partition_metrics, scorer=scorer)
            parts = engine.write_mapped(validated, scorer, str(tmp / "predictions"), scorer.schema, metrics)
            summary = {
                "run": str(saved.run_dir),
                "stage": saved.name,
                "model": saved.stage.model,
                "task": saved.task,
                "engine": engine.kind,
                "read": read,
                "scored": sum(p["rows"] for p in parts),
                "filtered": filtered,
                "dropped": dropped,
                "rejected": rejected,
                "labelled": labelled,
                **combine_metrics(parts, saved.task),
                "outputs": {"predictions": "predictions", "quarantine": "quarantine.csv"},
            }
            if summary["scored"] + filtered + dropped + rejected != read or len(quarantine) != rejected:
                raise DataError(
                    f"counts do not reconcile: read {read}, scored {summary['scored']}, filtered {filtered}, "
                    f"dropped {dropped}, rejected {rejected}"
                )
            atomic_write_json(tmp / SUMMARY, summary)
    finally:
        engine.release(validated)
    return summary


def make_scorer(saved: SavedStage, plan: Plan, labelled: bool) -> Scorer:
    """The partition function and its output schema for a saved stage and the new data's plan."""
    ingest = saved.ingest
    levels = ingest.fitted.levels.get(saved.label or "", None)
    classes = tuple(saved.classes)
    transform, inputs = ingest.new_data_rows(plan, saved.ingest_stage.image_scale)
    named = inputs.names_of([int(c) for c in classes]) if saved.task == "classify" else None
    names = named or (tuple(levels[int(c)] for c in classes) if levels else classes)
    fields = [pa.field("source_file", pa.string()), pa.field("row", pa.int64())]
    if saved.task == "reconstruct":
        fields.append(pa.field("reconstruction_error", pa.float64()))
    else:
        value = _value_type(names) if saved.task == "classify" else pa.float64()
        fields.append(pa.field("prediction", pa.int64() if saved.task == "cluster" else value))
        if saved.task == "classify" and saved.probabilities:
            fields += [pa.field(f"probability_{n}", pa.float64()) for n in names]
        if labelled and saved.label is not None:
            fields.append(pa.field("label", value))
    return Scorer(
        model=saved.model,
        task=saved.task,
        schema=pa.schema(fields),
        transform=transform,
        inputs=inputs,
        features=tuple(saved.features),
        label=saved.label if labelled and saved.task in ("classify", "regress") else None,
        classes=classes,
        names=names,
        views=saved.views,
    )


def _value_type(values: tuple[Any, ...]) -> pa.DataType:
    if any(isinstance(v, str) for v in values):
        return pa.string()
    if all(isinstance(v, int | np.integer) for v in values):
        return pa.int64()
    return pa.float64()


def partition_metrics(pdf: pd.DataFrame, scorer: Scorer) -> dict[str, Any]:
    """Counts and metric sums of one partition of written predictions."""
    out: dict[str, Any] = {"rows": int(len(pdf))}
    if "prediction" in pdf and scorer.task in ("classify", "cluster"):
        counts = pdf["prediction"].astype(str).value_counts()
        out["predicted"] = {str(k): int(v) for k, v in counts.items()}
    if "reconstruction_error" in pdf:
        out["error_sum"] = float(pdf["reconstruction_error"].sum())
    if "label" not in pdf or not len(pdf):
        return out
    y, p = pdf["label"], pdf["prediction"]
    if scorer.task == "classify":
        out["correct"] = int((y == p).sum())
        proba = [f"probability_{n}" for n in scorer.names]
        if all(c in pdf for c in proba):
            chosen = np.zeros(len(pdf))
            for name, column in zip(scorer.names, proba, strict=True):
                chosen = np.where(y.to_numpy() == name, pdf[column].to_numpy(), chosen)
            out["log_loss_sum"] = float(-np.log(np.clip(chosen, 1e-15, 1.0)).sum())
    else:
        yv, pv = y.to_numpy(dtype="float64"), p.to_numpy(dtype="float64")
        out.update(sse=float(((yv - pv) ** 2).sum()), sae=float(np.abs(yv - pv).sum()))
        out.update(sum_y=float(yv.sum()), sum_y2=float((yv**2).sum()))
    return out


def combine_metrics(parts: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """Summary metrics from the partitions' sums (labelled data only), and predicted-class counts."""
    parts = [p for p in parts if p["rows"]]
    n = sum(p["rows"] for p in parts)
    out: dict[str, Any] = {}
    if task in ("classify", "cluster"):
        predicted: dict[str, int] = {}
        for p in parts:
            for k, v in p.get("predicted", {}).items():
                predicted[k] = predicted.get(k, 0) + v
        out["predicted"] = dict(sorted(predicted.items()))
    metrics: dict[str, float] = {}
    if n and all("correct" in p for p in parts):
        metrics["accuracy"] = sum(p["correct"] for p in parts) / n
        if all("log_loss_sum" in p for p in parts):
            metrics["log_loss"] = sum(p["log_loss_sum"] for p in parts) / n
    if n and all("sse" in p for p in parts):
        sse, sum_y, sum_y2 = (sum(p[k] for p in parts) for k in ("sse", "sum_y", "sum_y2"))
        total = sum_y2 - sum_y * sum_y / n
        metrics.update(rmse=math.sqrt(sse / n), mae=sum(p["sae"] for p in parts) / n)
        metrics["r2"] = 1.0 - sse / total if total > 0 else float("nan")
    if n and all("error_sum" in p for p in parts):
        metrics["reconstruction_error"] = sum(p["error_sum"] for p in parts) / n
    out["metrics"] = metrics
    return out
