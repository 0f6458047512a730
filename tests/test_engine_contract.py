"""The engine seam's contract: every operation gives the same answer on Spark and on Dask (real engines)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

SCHEMA = pa.schema([("part", pa.int64()), ("i", pa.int64()), ("x", pa.float64()), ("s", pa.string())])
SIZES = [5, 0, 7, 3]  # an empty partition on purpose

pytestmark = pytest.mark.spark


def _frame(n: int, part: int) -> pd.DataFrame:
    i = np.arange(n, dtype=np.int64)
    return pd.DataFrame({"part": part, "i": i, "x": i * 0.5 + part, "s": [f"p{part}r{k}" for k in i]})


def _ops(engine, tmp_path) -> dict:
    """Apply every seam operation once and collect plain results."""
    out: dict = {}

    def _make(n_and_part: tuple[int, int]) -> pd.DataFrame:  # nested: shipped by value to Spark's workers
        n, part = n_and_part
        i = np.arange(n, dtype=np.int64)
        return pd.DataFrame({"part": part, "i": i, "x": i * 0.5 + part, "s": [f"p{part}r{k}" for k in i]})

    out["run_tasks"] = engine.run_tasks(lambda v: v * v, [3, 1, 2, 9])
    frame = engine.persist(engine.from_tasks(_make, [(n, p) for p, n in enumerate(SIZES)], SCHEMA))
    try:
        out["num_partitions"] = engine.num_partitions(frame)
        out["partition_sizes"] = engine.partition_sizes(frame)
        out["count"] = engine.count(frame)
        out["reduce"] = engine.reduce_partitions(frame, lambda pdf: {"sum": float(pdf["x"].sum()), "rows": len(pdf)})
        doubled = engine.map_partitions(frame, lambda pdf: pdf.assign(x=pdf["x"] * 2), SCHEMA)
        out["map_to_pandas"] = engine.to_pandas(doubled).sort_values(["part", "i"], ignore_index=True)
        target = tmp_path / f"parquet-{engine.kind}"
        engine.write_parquet(frame, str(target), SCHEMA)
        back = engine.to_pandas(engine.read_parquet(str(target)))
        out["parquet"] = back[SCHEMA.names].sort_values(["part", "i"], ignore_index=True)
        blocks = engine.to_blocks(frame, lambda pdf: {"x": pdf["x"].to_numpy(), "n": np.array(len(pdf))})
        try:
            found = engine.map_blocks(blocks, lambda b: (int(b["part"]), float(b["x"].sum()), int(b["n"])))
        finally:
            engine.release_blocks(blocks)
        out["blocks"] = sorted(b for b in found if b[2])  # the seam allows an empty partition's block to be left out
        assert all(b[2] == 0 and b[1] == 0 for b in found if not b[2])
    finally:
        engine.release(frame)
    return out


@pytest.fixture(scope="module")
def both(dask_engine, spark_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    return {e.kind: _ops(e, tmp) for e in (dask_engine, spark_engine)}


def test_tasks_come_back_in_item_order(both):
    assert both["dask"]["run_tasks"] == both["spark"]["run_tasks"] == [9, 1, 4, 81]


def test_partition_i_is_task_i(both):
    for kind in ("dask", "spark"):
        assert both[kind]["num_partitions"] == len(SIZES), kind
        assert both[kind]["partition_sizes"] == SIZES, kind
        assert both[kind]["count"] == sum(SIZES), kind
        sums = [sum(k * 0.5 + p for k in range(n)) for p, n in enumerate(SIZES)]
        assert both[kind]["reduce"] == [{"sum": s, "rows": n} for s, n in zip(sums, SIZES, strict=True)], kind


def test_map_partitions_and_collect_agree(both):
    dask, spark = both["dask"]["map_to_pandas"], both["spark"]["map_to_pandas"]
    pd.testing.assert_frame_equal(dask, spark)
    assert len(dask) == sum(SIZES) and dask["x"].sum() == pytest.approx(
        2 * sum(r["sum"] for r in both["dask"]["reduce"])
    )


def test_parquet_round_trip_keeps_rows_and_types(both):
    expected = pd.concat([_frame(n, p) for p, n in enumerate(SIZES)], ignore_index=True)
    for kind in ("dask", "spark"):
        got = both[kind]["parquet"]
        assert list(got.dtypes.astype(str)) == list(both["dask"]["parquet"].dtypes.astype(str)), kind
        pd.testing.assert_frame_equal(got.astype(expected.dtypes.to_dict()), expected, check_dtype=False)


def test_blocks_keep_their_partition_index(both):
    assert both["dask"]["blocks"] == both["spark"]["blocks"]
    parts = [p for p, _, _ in both["dask"]["blocks"]]
    assert parts == [p for p, n in enumerate(SIZES) if n]
    for part, total, rows in both["dask"]["blocks"]:
        assert rows == SIZES[part] and total == pytest.approx(sum(k * 0.5 + part for k in range(rows)))


@pytest.mark.parametrize("large", ["false", "true"])
def test_spark_blocks_come_from_arrow_batches_with_strings_intact(spark_engine, large):
    """Blocks are built from Spark's Arrow batches (no Row conversion), strings intact with either offset width."""

    def _make(n_and_part: tuple[int, int]) -> pd.DataFrame:  # nested: shipped by value to Spark's workers
        n, part = n_and_part
        i = np.arange(n, dtype=np.int64)
        return pd.DataFrame({"part": part, "i": i, "x": i * 0.5 + part, "s": [f"p{part}r{k}" for k in i]})

    conf = spark_engine.spark.conf
    before = conf.get("spark.sql.execution.arrow.useLargeVarTypes")
    conf.set("spark.sql.execution.arrow.useLargeVarTypes", large)
    try:
        frame = spark_engine.from_tasks(_make, [(n, p) for p, n in enumerate(SIZES)], SCHEMA)
        batches = spark_engine._arrow_batch_rdd(frame)
        assert batches is not None and pa.types.is_large_string(batches[1].field("s").type) == (large == "true")
        blocks = spark_engine.to_blocks(
            frame, lambda pdf: {"s": pdf["s"].to_numpy(dtype=str), "x": pdf["x"].to_numpy()}
        )
        try:
            found = spark_engine.map_blocks(blocks, lambda b: (int(b["part"]), b["s"].tolist(), float(b["x"].sum())))
        finally:
            spark_engine.release_blocks(blocks)
    finally:
        conf.set("spark.sql.execution.arrow.useLargeVarTypes", before)
    want = [(p, [f"p{p}r{k}" for k in range(n)], sum(k * 0.5 + p for k in range(n))) for p, n in enumerate(SIZES) if n]
    assert sorted(found) == want
