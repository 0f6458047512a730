"""Gradient-boosted trees at scale: ours (GBTClassifier on row blocks) beside XGBoost's own calls, same run.

On synthetic binary rows (default 1 M x 20; --rows 10000000 for 10 M), each line trains the same boosting
(n_estimators rounds of depth-6 hist trees, no early stopping) and reports seconds, test AUC on 200,000 rows no
file has, and the peak RSS of the whole process tree:
  xgboost (1 process)   xgboost.train on the driver's NumPy copy (the single-process reference)
  dask: xgboost.dask    xgboost.dask.train on the engine's Dask DataFrame (XGBoost's own Dask integration)
  dask: ours            Blocks.from_frame + GBTClassifier.fit (which calls xgboost.dask on the blocks)
  spark: xgboost.spark  SparkXGBClassifier on the Spark DataFrame (XGBoost's own Spark integration)
  spark: ours           Blocks.from_frame + GBTClassifier.fit (xgboost's collective in a barrier stage)

    python -m benchmarks.classical.bench_gbt --rows 1000000 [--engines dask,spark] [--rounds 50]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from benchmarks.common import measure
from pipelines.classical import Blocks, GBTClassifier
from pipelines.data.synthetic import generate, generate_part
from pipelines.engines.config import DaskSettings, SparkSettings
from pipelines.engines.dask_engine import DaskEngine
from pipelines.engines.spark_engine import SparkEngine

DEPTH = 6


def _params(rounds: int) -> dict[str, Any]:
    return {"n_estimators": rounds, "max_depth": DEPTH, "learning_rate": 0.3, "early_stopping_rounds": None}


def _booster_params() -> dict[str, Any]:
    return {"objective": "binary:logistic", "tree_method": "hist", "max_depth": DEPTH, "eta": 0.3, "seed": 0}


def _line(who: str, seconds: float, auc: float, peak: int, base: float | None) -> None:
    ratio = f"{seconds / base:.2f}" if base else ""
    print(f"{who:24} {seconds:9.1f} {ratio:>7} {auc:10.4f} {peak / 2**20:10.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--engines", default="dask,spark")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    import xgboost as xgb

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-gbt-"))
    path = root / f"classification-{args.rows}"
    if not path.exists():
        generate(path, rows=args.rows, features=args.features, parts=args.partitions, seed=2)
    features = [f"x{i}" for i in range(args.features)]
    table = generate_part("classification", 200_000, args.features, seed=2, part=10**6)  # a part no file has
    xt, yt = np.column_stack([table[f].to_numpy() for f in features]), table["y"].to_numpy()
    named = pd.DataFrame(xt, columns=features)
    print(f"{args.rows:,} rows x {args.features} features, {args.partitions} partitions, {os.cpu_count()} cores,")
    print(f"{args.rounds} rounds of depth-{DEPTH} hist trees\n")
    print(f"{'who':24} {'seconds':>9} {'ratio':>7} {'test AUC':>10} {'peak RSS':>14}")

    def single() -> Any:
        frame = pq.read_table(path).to_pandas()
        dtrain = xgb.QuantileDMatrix(frame[features].to_numpy(), frame["y"].to_numpy())
        return xgb.train(_booster_params(), dtrain, args.rounds)

    seconds, booster, peak = measure(single)
    _line("xgboost (1 process)", seconds, roc_auc_score(yt, booster.inplace_predict(xt)), peak, None)

    def ours(engine: Any, frame: Any) -> Any:
        with Blocks.from_frame(engine, frame, features, "y") as blocks:
            return GBTClassifier(**_params(args.rounds)).fit(blocks)

    for kind in args.engines.split(","):
        if kind == "spark":
            engine: Any = SparkEngine(SparkSettings(master=f"local[{os.cpu_count()}]"), partitions=args.partitions)
        else:
            engine = DaskEngine(DaskSettings(n_workers=os.cpu_count() or 2, threads_per_worker=1))
        with engine:
            frame = engine.persist(engine.read_parquet(str(path)))
            if kind == "dask":
                from xgboost import dask as dxgb

                raw = engine.read_parquet(str(path))

                def native() -> Any:
                    data = engine.client.persist(raw[[*features, "y"]])  # one partitioning for X and label
                    dtrain = dxgb.DaskQuantileDMatrix(engine.client, data[features], data["y"])
                    return dxgb.train(engine.client, _booster_params(), dtrain, args.rounds)["booster"]

                predict = booster_auc
            else:
                from xgboost.spark import SparkXGBClassifier

                raw = engine.read_parquet(str(path))

                def native() -> Any:
                    model = SparkXGBClassifier(
                        features_col=features, label_col="y", num_workers=engine.parallelism, max_depth=DEPTH,
                        learning_rate=0.3, n_estimators=args.rounds, tree_method="hist", random_state=0,
                    )  # fmt: skip
                    return model.fit(raw).get_booster()

                predict = booster_auc
            seconds, booster, peak = measure(native)
            base = seconds
            _line(f"{kind}: xgboost.{kind}", seconds, predict(booster, xt, yt), peak, None)
            seconds, model, peak = measure(lambda: ours(engine, frame))
            _line(f"{kind}: ours", seconds, roc_auc_score(yt, model.predict_proba(named)[:, 1]), peak, base)
    print("\nratio = ours seconds / XGBoost's own integration on the same engine (ours includes building blocks)")


def booster_auc(booster: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Test AUC of a binary:logistic booster."""
    return float(roc_auc_score(y, booster.inplace_predict(x)))


if __name__ == "__main__":
    main()
