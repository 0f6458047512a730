"""Resident blocks: arrays written once to host files that workers map between passes (local Spark masters)."""

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
