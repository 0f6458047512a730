"""Ingest throughput: CSV and Parquet to validated, split, partitioned frames on Spark and Dask.

Each measurement runs beside baselines in the same process run: pyarrow reading the same file(s)
(multi-threaded), pandas.read_csv, and the engine's own reader (spark.read / dd.read_*) twice: counting only,
and doing the checks our ingest does (typed parse, bad rows counted, a seeded split, the training split's
column moments). Prints rows/s, the ratio to pyarrow and to the engine's checked reader, and the peak RSS
of the whole process tree (driver, JVM, workers). `--write` adds our ingest writing its three splits.

    python -m benchmarks.ingest.bench_ingest --rows 1000000 [--write]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from benchmarks.common import measure
from pipelines.data.synthetic import generate
from pipelines.engines.config import DaskSettings, SparkSettings
from pipelines.engines.dask_engine import DaskEngine
from pipelines.engines.spark_engine import SparkEngine
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.stage import IngestStage, run_ingest
from pipelines.runs.run import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--engines", default="dask,spark")
    parser.add_argument("--dir", default=None, help="where to write the input files (default: a temp dir)")
    parser.add_argument("--write", action="store_true", help="also time our ingest writing its splits in a run")
    args = parser.parse_args()

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-ingest-"))
    pq_dir = root / "parquet"
    csv_file = root / "data.csv"
    if not pq_dir.exists():
        generate(pq_dir, kind="classification", rows=args.rows, features=args.features, parts=args.partitions, seed=1)
    if not csv_file.exists():
        table = pq.read_table(pq_dir).to_pandas().round(6)
        table.to_csv(csv_file, index=False)
    print(
        f"input: {args.rows:,} rows x {args.features} features; CSV {csv_file.stat().st_size / 1e6:.0f} MB, "
        f"Parquet {sum(f.stat().st_size for f in pq_dir.iterdir()) / 1e6:.0f} MB ({root})"
    )
    features = [f"x{i}" for i in range(args.features)]
    datasets = {
        "csv": DatasetConfig(
            name="bench", format="csv", path=str(csv_file), features=features, label="y", types={"y": "int"}
        ),
        "parquet": DatasetConfig(
            name="bench", format="parquet", path=str(pq_dir), features=features, label="y", types={"y": "int"}
        ),
    }
    stage = IngestStage(write=False, max_rejected_fraction=0.0)
    baselines = {
        "csv": {
            "pyarrow.csv.read_csv": lambda: pacsv.read_csv(csv_file).num_rows,
            "pandas.read_csv": lambda: len(pd.read_csv(csv_file, engine="c")),
        },
        "parquet": {"pyarrow.parquet.read_table": lambda: pq.read_table(pq_dir).num_rows},
    }
    for path in [csv_file, *pq_dir.iterdir()]:  # warm the page cache so the first reader is not penalized
        path.read_bytes()
    rows_out = []
    for fmt in ("csv", "parquet"):
        for name, fn in baselines[fmt].items():
            s, n, peak = measure(fn)
            rows_out.append((fmt, name, s, n, peak))
    for kind in args.engines.split(","):
        engine = (
            DaskEngine(DaskSettings(n_workers=2, threads_per_worker=1))
            if kind == "dask"
            else SparkEngine(SparkSettings(master="local[2]"), partitions=args.partitions)
        )
        with engine:  # untimed warm-up of both sides: worker processes, imports, the JVM's first queries
            run_ingest(engine, datasets["parquet"], stage, args.partitions)
            (spark_checked if kind == "spark" else dask_checked)(engine, "parquet", pq_dir, features)
            for fmt in ("csv", "parquet"):
                if kind == "dask":
                    import dask.dataframe as dd

                    native = (
                        (lambda: len(dd.read_csv(csv_file, blocksize="32MB")))
                        if fmt == "csv"
                        else (lambda: len(dd.read_parquet(pq_dir)))
                    )
                else:
                    sp = engine.spark
                    native = (
                        (lambda: sp.read.csv(str(csv_file), header=True, inferSchema=False).count())
                        if fmt == "csv"
                        else (lambda: sp.read.parquet(str(pq_dir)).count())
                    )
                s, n, peak = measure(native)
                rows_out.append((fmt, f"{kind} native reader (count only, no checks)", s, n, peak))
                checked = spark_checked if kind == "spark" else dask_checked
                s, n, peak = measure(lambda: checked(engine, fmt, csv_file if fmt == "csv" else pq_dir, features))
                rows_out.append((fmt, f"{kind} native reader with our checks", s, n, peak))
                result = {}
                s, n, peak = measure(
                    lambda: result.setdefault("r", run_ingest(engine, datasets[fmt], stage, args.partitions)).read
                )
                assert result["r"].accepted == args.rows, result["r"].summary()
                rows_out.append((fmt, f"{kind} pipelines ingest (validate+split+fit)", s, n, peak))
                if args.write:
                    run = Run.create("bench", root / "runs", "name: bench\n", {"kind": kind})
                    writing = IngestStage(write=True, max_rejected_fraction=0.0)
                    s, n, peak = measure(lambda: run_ingest(engine, datasets[fmt], writing, args.partitions, run).read)
                    rows_out.append((fmt, f"{kind} pipelines ingest + write 3 splits", s, n, peak))
    head = f"{'seconds':>8} {'rows/s':>12} {'vs pyarrow':>10} {'vs checked':>10} {'peak RSS':>10}"
    print(f"\n{'format':8} {'what':50} {head}")
    for fmt, name, s, n, peak in rows_out:
        base = next(r for r in rows_out if r[0] == fmt and r[1].startswith("pyarrow"))
        own = f"{name.split()[0]} native reader with our checks"
        checked = next((r for r in rows_out if r[0] == fmt and r[1] == own), None)
        versus = f"{(n / s) / (checked[3] / checked[2]):10.2f}" if checked else f"{'':10}"
        ratio = (n / s) / (base[3] / base[2])
        print(f"{fmt:8} {name:50} {s:8.2f} {n / s:12,.0f} {ratio:10.2f} {versus} {peak / 2**20:8.0f} MB")
    print(
        f"\nmachine: {os.cpu_count()} cores; ratio = rows/s of the line / rows/s of pyarrow (or of the engine's own "
        "reader doing our checks) on the same input"
    )


def spark_checked(engine: SparkEngine, fmt: str, path: Path, features: list[str]) -> int:
    """Spark's own reader doing our checks in one job: typed parse, bad rows, a seeded split, training moments."""
    from pyspark.sql import functions as F  # noqa: N812 (pyspark's idiom)
    from pyspark.sql import types as T  # noqa: N812

    if fmt == "csv":
        fields = [T.StructField(f, T.DoubleType()) for f in features] + [T.StructField("y", T.LongType())]
        schema = T.StructType([*fields, T.StructField("_corrupt", T.StringType())])
        reader = engine.spark.read.options(header=True, mode="PERMISSIVE", columnNameOfCorruptRecord="_corrupt")
        frame = reader.schema(schema).csv(str(path))
        bad = F.col("_corrupt").isNotNull()
    else:
        frame, bad = engine.spark.read.parquet(str(path)), F.lit(False)
    for column in features:
        bad = bad | F.col(column).isNull() | F.isnan(column)
    bad = bad | F.col("y").isNull()
    u = F.rand(42)
    split = F.when(u < 0.2, 2).when(u < 0.3, 1).otherwise(0)
    frame = frame.select(*features, bad.alias("bad"), split.alias("split"))
    good, train = ~F.col("bad"), ~F.col("bad") & (F.col("split") == 0)
    aggs = [F.count(F.lit(1)), F.sum(F.col("bad").cast("long"))]
    aggs += [F.sum((good & (F.col("split") == k)).cast("long")) for k in (0, 1, 2)]
    for column in features:
        aggs += [F.sum(F.when(train, F.col(column))), F.sum(F.when(train, F.col(column) * F.col(column)))]
    return int(frame.agg(*aggs).first()[0])


def dask_checked(engine: DaskEngine, fmt: str, path: Path, features: list[str]) -> int:
    """Dask's own reader doing our checks: typed parse, bad rows, a seeded split, training moments."""
    import dask.dataframe as dd
    import numpy as np

    dtypes = {**dict.fromkeys(features, "float64"), "y": "Int64"}
    frame = dd.read_csv(path, blocksize="32MB", dtype=dtypes) if fmt == "csv" else dd.read_parquet(path)

    def stats(pdf: pd.DataFrame, partition_info: dict | None = None) -> pd.DataFrame:
        bad = pdf[[*features, "y"]].isna().any(axis=1).to_numpy()
        u = np.random.default_rng((partition_info or {}).get("number", 0)).random(len(pdf))
        split = np.where(u < 0.2, 2, np.where(u < 0.3, 1, 0))
        train = pdf.loc[~bad & (split == 0), features]
        row = {"rows": len(pdf), "bad": int(bad.sum())}
        row.update({f"n{k}": int((~bad & (split == k)).sum()) for k in (0, 1, 2)})
        row.update({f"s_{c}": train[c].sum() for c in features} | {f"q_{c}": (train[c] ** 2).sum() for c in features})
        return pd.DataFrame([row])

    return int(frame.map_partitions(stats).compute()["rows"].sum())


if __name__ == "__main__":
    main()
