"""XGBoost training where the blocks live: xgboost.dask on Dask, xgboost's collective in a Spark barrier stage."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines.classical.data import Blocks
from pipelines.engines.base import Block

# (x, y) of one block, y already in XGBoost's coding (class index for classifiers)
Encode = Callable[[Block], np.ndarray]


def train_booster(
    params: dict[str, Any], train: Blocks, val: Blocks | None, rounds: int, early: int | None, encode: Encode
) -> tuple[Any, dict[str, Any]]:
    """A Booster trained on the train blocks (validation on val, early stopping when early): where the blocks live."""
    engine = train.engine
    if engine is None or (val is not None and val.engine is not engine):
        return _train_local(params, train, val, rounds, early, encode)
    if engine.kind == "dask":
        from pipelines.engines.dask_engine import DaskEngine

        assert isinstance(engine, DaskEngine)
        return _train_dask(engine.client, params, train, val, rounds, early, encode)
    if engine.kind == "spark":
        return _train_spark(engine, params, train, val, rounds, early, encode)
    raise ValueError(f"gradient-boosted trees: no XGBoost integration for the {engine.kind!r} engine")


def _train_local(
    params: dict[str, Any], train: Blocks, val: Blocks | None, rounds: int, early: int | None, encode: Encode
) -> tuple[Any, dict[str, Any]]:
    """Single process: the rows gathered into one QuantileDMatrix (in-process blocks, arrays)."""
    import xgboost as xgb

    def gathered(blocks: Blocks) -> tuple[np.ndarray, np.ndarray]:
        parts = blocks.map(lambda block: (block["x"], encode(block)))
        return np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x, y = gathered(train)
    dtrain = xgb.QuantileDMatrix(x, y, max_bin=params.get("max_bin", 256))
    evals = []
    if val is not None:
        xv, yv = gathered(val)
        evals = [(xgb.DMatrix(xv, yv), "val")]
    history: dict[str, Any] = {}
    booster = xgb.train(
        params, dtrain, rounds, evals=evals, early_stopping_rounds=early, evals_result=history, verbose_eval=False
    )
    return booster, history


def dask_arrays(blocks: Blocks, encode: Encode) -> tuple[Any, Any]:
    """The blocks (Dask futures on the workers) as Dask arrays x and y: chunks stay where the blocks are."""
    import dask
    import dask.array as da

    xs, ys = [], []
    p = blocks.n_features
    for future, rows in zip(blocks.handle, blocks.rows_per_block, strict=True):
        xs.append(da.from_delayed(dask.delayed(operator.getitem)(future, "x"), shape=(rows, p), dtype=np.float64))
        ys.append(da.from_delayed(dask.delayed(encode)(future), shape=(rows,), dtype=np.float64))
    return da.concatenate(xs), da.concatenate(ys)


def _train_dask(
    client: Any,
    params: dict[str, Any],
    train: Blocks,
    val: Blocks | None,
    rounds: int,
    early: int | None,
    encode: Encode,
) -> tuple[Any, dict[str, Any]]:
    """xgboost.dask.train on Dask arrays made from the persisted blocks."""
    from xgboost import dask as dxgb

    x, y = dask_arrays(train, encode)
    dtrain = dxgb.DaskQuantileDMatrix(client, x, y, max_bin=params.get("max_bin", 256))
    evals = []
    if val is not None:
        xv, yv = dask_arrays(val, encode)
        evals = [(dxgb.DaskDMatrix(client, xv, yv), "val")]
    out = dxgb.train(client, params, dtrain, rounds, evals=evals, early_stopping_rounds=early, verbose_eval=False)
    return out["booster"], out["history"]


def block_rdd(handle: Any) -> Any:
    """The RDD of blocks behind a Spark engine's block handle (resident blocks are loaded from their files)."""
    if hasattr(handle, "handles"):  # the engine's resident blocks on a local master: handles to .npy files
        from pipelines.engines.resident import load_block

        return handle.handles.map(load_block)
    return handle


def _train_spark(
    engine: Any,
    params: dict[str, Any],
    train: Blocks,
    val: Blocks | None,
    rounds: int,
    early: int | None,
    encode: Encode,
) -> tuple[Any, dict[str, Any]]:
    """xgboost's collective (the tracker and communicator xgboost.spark uses) in one Spark barrier stage.

    The cached blocks are shuffled (whole blocks, round robin) to at most as many tasks as the cluster has
    slots (a barrier stage needs them all at once); each task builds its DMatrix from its blocks, train and val,
    and rank 0 returns the model.
    """
    import xgboost as xgb
    from xgboost.collective import CommunicatorContext
    from xgboost.tracker import RabitTracker

    sc = engine.spark.sparkContext
    tagged = block_rdd(train.handle).map(lambda block: ("train", block))
    if val is not None:
        tagged = tagged.union(block_rdd(val.handle).map(lambda block: ("val", block)))
    workers = max(1, min(engine.parallelism, len(train.rows_per_block)))
    host = sc.getConf().get("spark.driver.host", "127.0.0.1")
    tracker = RabitTracker(n_workers=workers, host_ip=host, sortby="task")
    tracker.start()
    args = tracker.worker_args()
    has_val = val is not None
    p = train.n_features
    task_params = {**params, "nthread": int(sc.getConf().get("spark.task.cpus", "1"))}

    def train_part(items: Any) -> Any:
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
        for kind, block in items:
            parts[kind].append((np.asarray(block["x"]), encode(block)))

        def stacked(kind: str) -> tuple[np.ndarray, np.ndarray]:
            got = parts[kind]
            if not got:
                return np.empty((0, p)), np.empty(0)
            return np.vstack([g[0] for g in got]), np.concatenate([g[1] for g in got])

        history: dict[str, Any] = {}
        with CommunicatorContext(**args, dmlc_task_id=str(context.partitionId())):
            x, y = stacked("train")
            dtrain = xgb.QuantileDMatrix(x, y, max_bin=task_params.get("max_bin", 256))
            evals = [(xgb.DMatrix(*stacked("val")), "val")] if has_val else []
            booster = xgb.train(
                task_params,
                dtrain,
                rounds,
                evals=evals,
                early_stopping_rounds=early,
                evals_result=history,
                verbose_eval=False,
            )
        context.barrier()
        if context.partitionId() == 0:
            yield bytes(booster.save_raw("ubj")), json.dumps(history)

    try:
        keyed = tagged.mapPartitionsWithIndex(lambda i, items: ((i % workers, item) for item in items))
        spread = keyed.partitionBy(workers, lambda key: key).values()  # a shuffle: barrier stages allow no coalesce
        out = spread.barrier().mapPartitions(train_part).collect()
    finally:
        tracker.free()
    raw, history = out[0]
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster, json.loads(history)
