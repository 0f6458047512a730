"""Resident blocks and frames: data written once to host files that workers map between passes (local Spark
masters), and the cached path Spark takes with workers on other hosts."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.engines.resident import MIN_FILE_BYTES, load_block, new_store, remove_store, write_block


def test_a_block_round_trips_with_large_arrays_mapped_and_small_values_inline(tmp_path):
    store = new_store(str(tmp_path))
    x = np.arange(40_000, dtype=np.float64).reshape(-1, 4)
    block = {"x": x, "y": np.ones(10_000), "source": "a.csv", "y_int": np.array(True), "part": 3}
    handle = write_block(store, 3, block)
    assert sorted(handle["files"]) == ["x", "y"] and x.nbytes >= MIN_FILE_BYTES
    assert set(handle["inline"]) == {"source", "y_int", "part"}  # the handle stays small
    got = load_block(handle)
    np.testing.assert_array_equal(got["x"], x)
    assert got["source"] == "a.csv" and got["part"] == 3 and bool(got["y_int"])
    assert not got["x"].flags.writeable and type(got["x"]) is np.ndarray  # a read-only view of the map
    assert load_block(handle)["x"] is got["x"]  # mapped once per worker process
    remove_store(store)
    assert not os.path.exists(store)
    with pytest.raises(RuntimeError, match="block files under .* are missing"):
        load_block({**handle, "resident": handle["resident"] + "-other"})


@pytest.mark.spark
def test_spark_local_blocks_are_resident_files_removed_on_release(spark_engine):
    from pipelines.engines.spark_engine import _ResidentBlocks

    schema = pa.schema([("x", pa.float64())])

    def _make(n: int) -> pd.DataFrame:  # nested: shipped by value to Spark's workers
        return pd.DataFrame({"x": np.arange(n, dtype=np.float64)})

    frame = spark_engine.from_tasks(_make, [20_000, 30_000], schema)
    blocks = spark_engine.to_blocks(frame, lambda pdf: {"x": pdf["x"].to_numpy()})
    assert isinstance(blocks, _ResidentBlocks)
    sums = spark_engine.map_blocks(blocks, lambda b: (int(b["part"]), float(b["x"].sum()), len(b["x"])))
    assert sums == [(0, 20_000 * 19_999 / 2, 20_000), (1, 30_000 * 29_999 / 2, 30_000)]
    assert sorted(os.listdir(blocks.store)) == ["part-00000", "part-00001"]
    again = spark_engine.map_blocks(blocks, lambda b: float(b["x"][-1]))
    assert again == [19_999.0, 29_999.0]
    spark_engine.release_blocks(blocks)
    assert not os.path.exists(blocks.store) and blocks.store not in spark_engine._stores


PARTS_SCHEMA = pa.schema([("x", pa.float64()), ("note", pa.string())])


def _frame_functions() -> tuple:
    """A part maker (n rows: x = 0..n-1, a note on every third row) and a reduction; made in a function so
    Spark's workers get them by value (they cannot import this test module)."""

    def make(n: int) -> pd.DataFrame:
        note = np.where(np.arange(n) % 3 == 0, "third", None)
        return pd.DataFrame({"x": np.arange(n, dtype=np.float64), "note": pd.array(note, dtype=object)})

    def sums(pdf: pd.DataFrame) -> dict:
        return {"rows": len(pdf), "sum": float(pdf["x"].sum())}

    return make, sums


@pytest.mark.spark
def test_spark_local_frames_are_resident_arrow_files_read_by_the_workers(spark_engine, tmp_path):
    from pipelines.engines.spark_engine import _ResidentFrame

    make, _sums = _frame_functions()
    frame, made = spark_engine.persist_tasks(make, [7, 0, 5], PARTS_SCHEMA, _sums)
    assert isinstance(frame, _ResidentFrame) and frame.store in spark_engine._stores
    assert made == [{"rows": 7, "sum": 21.0}, {"rows": 0, "sum": 0.0}, {"rows": 5, "sum": 10.0}]
    assert sorted(os.listdir(frame.store)) == ["part-00000.arrow", "part-00001.arrow", "part-00002.arrow"]
    doubled = spark_engine.map_partitions(frame, lambda pdf: pdf.assign(x=pdf["x"] * 2), PARTS_SCHEMA)
    assert spark_engine.reduce_partitions(doubled, _sums) == [
        {"rows": n, "sum": 2.0 * s} for n, s in ((7, 21), (0, 0), (5, 10))
    ]
    noted = spark_engine.to_pandas(spark_engine.where_set(doubled, "note", ["x", "note"]))
    assert sorted(noted["x"]) == [0.0, 0.0, 6.0, 6.0, 12.0] and set(noted["note"]) == {"third"}
    assert spark_engine.count(frame) == 12 and spark_engine.num_partitions(frame) == 3
    parts = spark_engine.write_mapped(
        doubled, lambda pdf: pdf[pdf["x"] > 2], str(tmp_path / "out"), PARTS_SCHEMA, _sums
    )
    assert [p["rows"] for p in parts] == [5, 0, 3]
    written = spark_engine.to_pandas(spark_engine.read_parquet(str(tmp_path / "out")))
    assert sorted(written["x"]) == [4.0, 4.0, 6.0, 6.0, 8.0, 8.0, 10.0, 12.0]
    blocks = spark_engine.to_blocks(frame, lambda pdf: {"x": pdf["x"].to_numpy()})
    assert sorted(spark_engine.map_blocks(blocks, lambda b: float(b["x"].sum()))) == [10.0, 21.0]
    spark_engine.release_blocks(blocks)
    spark_engine.release(frame)
    assert not os.path.exists(frame.store) and frame.store not in spark_engine._stores


@pytest.mark.spark
def test_spark_cached_frames_on_cluster_masters_reduce_through_accumulators(spark_engine, tmp_path, monkeypatch):
    from pipelines.engines.spark_engine import SparkEngine, _ResidentFrame

    monkeypatch.setattr(SparkEngine, "_local", property(lambda self: False))  # as with workers on other hosts

    make, _sums = _frame_functions()
    frame, made = spark_engine.persist_tasks(make, [7, 0, 5], PARTS_SCHEMA, _sums)
    try:
        assert not isinstance(frame, _ResidentFrame) and frame.is_cached
        assert made == [{"rows": 7, "sum": 21.0}, {"rows": 0, "sum": 0.0}, {"rows": 5, "sum": 10.0}]
        parts = spark_engine.write_mapped(
            frame, lambda pdf: pdf[pdf["x"] > 1], str(tmp_path / "out"), PARTS_SCHEMA, _sums
        )
        assert [(p["rows"], p["sum"]) for p in parts] == [(5, 20.0), (0, 0.0), (3, 9.0)]
        noted = spark_engine.to_pandas(spark_engine.where_set(frame, "note", ["x"]))
        assert sorted(noted["x"]) == [0.0, 0.0, 3.0, 3.0, 6.0] and list(noted.columns) == ["x"]
    finally:
        spark_engine.release(frame)
