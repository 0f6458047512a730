"""Classical models at scale: ours on Spark and Dask beside the engine's own library and scikit-learn.

For each engine, each model is fitted on the same synthetic rows (default 1 M x 20, 10 M with --big) by
  ours      pipelines.classical (row blocks persisted on the workers, then the fit), and
  native    the engine's own estimator: pyspark.ml on Spark; dask-ml / dask.array on Dask (dask-ml has
            no random forest: there the native line is scikit-learn's forest with n_jobs = all cores);
both timed from the same engine frame (ours includes building its blocks, native its assembler/array).
scikit-learn on the driver's NumPy copy runs once as the single-node reference. Prints seconds, the
ratio ours/native (goal <= 1.10), a quality figure for each, and the peak RSS of the whole process tree.

    python -m benchmarks.classical.bench_classical --rows 1000000 [--big] [--engines dask,spark] [--skip-reference]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn import cluster as skcluster
from sklearn import decomposition as skdecomp
from sklearn import ensemble as skens
from sklearn import linear_model as sklin

from benchmarks.common import measure
from pipelines.classical import PCA, Blocks, KMeans, LinearRegression, LogisticRegression, RandomForestClassifier
from pipelines.data.synthetic import generate, generate_part
from pipelines.engines.config import DaskSettings, SparkSettings
from pipelines.engines.dask_engine import DaskEngine
from pipelines.engines.spark_engine import SparkEngine

K = 8
TREES, DEPTH = 10, 8
Fit = Callable[[], Any]
Holdout = tuple[np.ndarray, np.ndarray]  # rows of the same classification model the forests never saw


def _accuracy(model: Any, holdout: Holdout) -> str:
    return f"acc={model.score(*holdout):.4f}"


def _ours(engine: Any, frame: Any, features: list[str], label: str | None, make: Callable[[], Any]) -> Fit:
    def fit() -> Any:
        with Blocks.from_frame(engine, frame, features, label) as blocks:
            return make().fit(blocks)

    return fit


def ours_models(
    engine: Any, frames: dict[str, Any], features: list[str], holdout: Holdout
) -> dict[str, tuple[Fit, Callable]]:
    """Our estimators, each with a quality function of the fitted model."""
    reg, cls = frames["regression"], frames["classification"]
    return {
        "linear regression (OLS)": (
            _ours(engine, reg, features, "y", LinearRegression),
            lambda m: f"R2={m.summary_.statistics['r_squared']:.4f}",
        ),
        "logistic regression (L2)": (
            _ours(engine, cls, features, "y", lambda: LogisticRegression(C=1.0)),
            lambda m: f"|w|={np.linalg.norm(m.coef_):.4f}",
        ),
        f"k-means k={K}": (
            _ours(engine, cls, features, None, lambda: KMeans(K, n_init=1, max_iter=20, tol=0.0)),
            lambda m: f"inertia={m.inertia_:.5g}",
        ),
        "PCA k=5": (
            _ours(engine, cls, features, None, lambda: PCA(5)),
            lambda m: f"var5={m.explained_variance_ratio_.sum():.4f}",
        ),
        f"random forest {TREES} trees": (
            _ours(engine, cls, features, "y", lambda: RandomForestClassifier(TREES, max_depth=DEPTH)),
            lambda m: f"{_accuracy(m, holdout)} ({m.learner_})",
        ),
        f"random forest {TREES} trees, local": (
            _ours(engine, cls, features, "y", lambda: RandomForestClassifier(TREES, max_depth=DEPTH, sampling="local")),
            lambda m: f"{_accuracy(m, holdout)} ({m.sampling_})",
        ),
    }


def spark_native(
    engine: SparkEngine, frames: dict[str, Any], features: list[str], holdout: Holdout
) -> dict[str, tuple[Fit, Callable]]:
    """pyspark.ml estimators on the same DataFrames (VectorAssembler + cache included in the time)."""
    from pyspark.ml import classification, clustering, feature, regression

    def assembled(frame: Any, label: bool = True) -> Any:
        cols = [*features, "y"] if label else features
        out = feature.VectorAssembler(inputCols=features, outputCol="features").transform(frame.select(*cols))
        return out.cache()

    def run(frame: Any, make: Callable[[], Any], label: bool = True) -> Fit:
        def fit() -> Any:
            data = assembled(frame, label)
            try:
                return make().fit(data)
            finally:
                data.unpersist()

        return fit

    def spark_accuracy(model: Any) -> str:
        x, y = holdout
        test = engine.spark.createDataFrame(pd.DataFrame(x, columns=features).assign(y=y))
        pred = model.transform(assembled(test)).select("prediction", "y").toPandas()
        return f"acc={float((pred['prediction'] == pred['y']).mean()):.4f}"

    reg, cls = frames["regression"], frames["classification"]
    return {
        "linear regression (OLS)": (
            run(reg, lambda: regression.LinearRegression(labelCol="y", solver="normal", regParam=0.0)),
            lambda m: f"R2={m.summary.r2:.4f}",
        ),
        "logistic regression (L2)": (
            run(cls, lambda: classification.LogisticRegression(labelCol="y", regParam=1e-6, maxIter=100, tol=1e-8)),
            lambda m: f"|w|={float(np.linalg.norm(m.coefficients.toArray())):.4f}",
        ),
        f"k-means k={K}": (
            run(cls, lambda: clustering.KMeans(k=K, maxIter=20, tol=0.0, seed=0), label=False),
            lambda m: f"inertia={m.summary.trainingCost:.5g}",
        ),
        "PCA k=5": (
            run(cls, lambda: feature.PCA(k=5, inputCol="features", outputCol="pca"), label=False),
            lambda m: f"var5={float(m.explainedVariance.toArray().sum()):.4f}",
        ),
        f"random forest {TREES} trees": (
            run(cls, lambda: classification.RandomForestClassifier(labelCol="y", numTrees=TREES, maxDepth=DEPTH)),
            spark_accuracy,
        ),
    }


def dask_native(
    engine: DaskEngine, frames: dict[str, Any], features: list[str], holdout: Holdout
) -> dict[str, tuple[Fit, Callable]]:
    """dask-ml / dask.array on the same frames (array conversion and persist included in the time)."""
    import dask.array as da
    from dask_ml import cluster, decomposition, linear_model

    def arrays(frame: Any, label: bool = True) -> tuple[Any, Any]:
        x = frame[features].to_dask_array(lengths=True).astype("float64")
        y = frame["y"].to_dask_array(lengths=True).astype("float64") if label else None
        return engine.client.persist(x), engine.client.persist(y) if label else None

    def ols() -> Any:
        x, y = arrays(frames["regression"])
        x1 = da.concatenate([da.ones((x.shape[0], 1), chunks=(x.chunks[0], 1)), x], axis=1).rechunk({1: -1})
        beta, _, _, _ = da.linalg.lstsq(x1, y)
        beta = beta.compute()
        resid = ((y - x1 @ beta) ** 2).sum().compute()
        return beta, 1 - resid / float(((y - y.mean()) ** 2).sum().compute())

    def logistic() -> Any:
        x, y = arrays(frames["classification"])
        return linear_model.LogisticRegression(C=1.0, solver="lbfgs", max_iter=100).fit(x, y)

    def kmeans() -> Any:
        x, _ = arrays(frames["classification"], label=False)
        return cluster.KMeans(n_clusters=K, max_iter=20, tol=0.0, random_state=0).fit(x)

    def pca() -> Any:
        x, _ = arrays(frames["classification"], label=False)
        return decomposition.PCA(n_components=5, svd_solver="tsqr").fit(x.rechunk({1: -1}))

    def forest() -> Any:
        x, y = arrays(frames["classification"])
        x_np, y_np = da.compute(x, y)
        return skens.RandomForestClassifier(TREES, max_depth=DEPTH, n_jobs=engine.parallelism).fit(x_np, y_np)

    return {
        "linear regression (OLS)": (ols, lambda r: f"R2={r[1]:.4f}"),
        "logistic regression (L2)": (logistic, lambda m: f"|w|={np.linalg.norm(m.coef_):.4f}"),
        f"k-means k={K}": (kmeans, lambda m: f"inertia={float(m.inertia_):.5g}"),
        "PCA k=5": (pca, lambda m: f"var5={float(m.explained_variance_ratio_.sum()):.4f}"),
        f"random forest {TREES} trees": (forest, lambda m: f"{_accuracy(m, holdout)} (sklearn)"),
    }


def sklearn_reference(paths: dict[str, Path], features: list[str], holdout: Holdout) -> dict[str, tuple[Fit, Callable]]:
    """Single-node scikit-learn on the driver (data loaded once, outside the timing)."""
    reg = pq.read_table(paths["regression"]).to_pandas()
    cls = pq.read_table(paths["classification"]).to_pandas()
    xr, yr = reg[features].to_numpy(), reg["y"].to_numpy()
    xc, yc = cls[features].to_numpy(), cls["y"].to_numpy()
    return {
        "linear regression (OLS)": (
            lambda: sklin.LinearRegression().fit(xr, yr),
            lambda m: f"R2={m.score(xr, yr):.4f}",
        ),
        "logistic regression (L2)": (
            lambda: sklin.LogisticRegression(C=1.0, max_iter=200).fit(xc, yc),
            lambda m: f"|w|={np.linalg.norm(m.coef_):.4f}",
        ),
        f"k-means k={K}": (
            lambda: skcluster.KMeans(K, n_init=1, max_iter=20, tol=0.0, random_state=0).fit(xc),
            lambda m: f"inertia={m.inertia_:.5g}",
        ),
        "PCA k=5": (
            lambda: skdecomp.PCA(5).fit(xc),
            lambda m: f"var5={m.explained_variance_ratio_.sum():.4f}",
        ),
        f"random forest {TREES} trees": (
            lambda: skens.RandomForestClassifier(TREES, max_depth=DEPTH, n_jobs=os.cpu_count()).fit(xc, yc),
            lambda m: _accuracy(m, holdout),
        ),
    }


def _line(model: str, who: str, seconds: float, ratio: str, quality: str, peak: int) -> None:
    print(f"{model:26} {who:22} {seconds:9.2f} {ratio:>9} {quality:>22} {peak / 2**20:9.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big", action="store_true", help="10 M rows")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--engines", default="dask,spark")
    parser.add_argument("--models", default="", help="comma-separated substrings of model names to run")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--skip-reference", action="store_true", help="leave out single-node scikit-learn")
    args = parser.parse_args()
    rows = 10_000_000 if args.big else args.rows
    warnings.filterwarnings("ignore", category=FutureWarning)
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-classical-"))
    paths = {}
    for kind in ("regression", "classification"):
        paths[kind] = root / f"{kind}-{rows}"
        if not paths[kind].exists():
            generate(paths[kind], kind=kind, rows=rows, features=args.features, parts=args.partitions, seed=2)
    features = [f"x{i}" for i in range(args.features)]
    table = generate_part("classification", 200_000, args.features, seed=2, part=10**6)  # a part no file has
    holdout = (np.column_stack([table[f].to_numpy() for f in features]), table["y"].to_numpy())
    wanted = [w for w in args.models.split(",") if w]

    def chosen(models: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in models.items() if not wanted or any(w in k for w in wanted)}

    print(f"{rows:,} rows x {args.features} features, {args.partitions} partitions, {os.cpu_count()} cores")
    print(f"\n{'model':26} {'who':22} {'seconds':>9} {'ratio':>9} {'quality':>22} {'peak RSS':>12}")
    reference = {} if args.skip_reference else sklearn_reference(paths, features, holdout)
    for name, (fit, quality) in chosen(reference).items():
        seconds, model, peak = measure(fit)
        _line(name, "scikit-learn (1 node)", seconds, "", quality(model), peak)
    for kind in args.engines.split(","):
        if kind == "spark":
            engine: Any = SparkEngine(SparkSettings(master=f"local[{os.cpu_count()}]"), partitions=args.partitions)
            native_fn, label = spark_native, "pyspark.ml"
        else:
            engine = DaskEngine(DaskSettings(n_workers=os.cpu_count() or 2, threads_per_worker=1))
            native_fn, label = dask_native, "dask-ml / dask.array"
        with engine:
            frames = {k: engine.persist(engine.read_parquet(str(p))) for k, p in paths.items()}
            native = chosen(native_fn(engine, frames, features, holdout))
            # Untimed warm-up: start the engine's Python workers and import the stack there once, so the
            # first model measured does not pay for it. Then time building the blocks alone.
            Blocks.from_frame(engine, frames["classification"], features, "y").release()
            if native:  # and the engine's own library once (JVM code paths compiled before the first timing)
                next(iter(native.values()))[0]()
            seconds, blocks, peak = measure(lambda: Blocks.from_frame(engine, frames["classification"], features, "y"))
            blocks.release()
            _line("(building blocks only)", f"{kind}: ours", seconds, "", f"{blocks.n_rows:,} rows", peak)
            for name, (fit, quality) in chosen(ours_models(engine, frames, features, holdout)).items():
                base = name.removesuffix(", local")
                if base == name or base not in native:
                    n_seconds, n_model, n_peak = measure(native[base][0])
                    _line(name, f"{kind}: {label}", n_seconds, "1.00", native[base][1](n_model), n_peak)
                o_seconds, o_model, o_peak = measure(fit)
                _line(name, f"{kind}: ours", o_seconds, f"{o_seconds / n_seconds:.2f}", quality(o_model), o_peak)
    print("\nratio = ours seconds / native seconds on the same engine and frame (goal <= 1.10)")
    print("forest 'global': trees grown by tasks on bootstrap samples of all rows (scikit-learn's work);")
    print("forest 'local': each partition grows its share of trees on its own rows (1/partitions of the work)")


if __name__ == "__main__":
    main()
