"""Readers against pandas/NumPy references: CSV across many index checkpoints, Parquet row groups, IDX, NPZ."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.data.bundled import idx_bytes
from pipelines.data.synthetic import generate
from pipelines.ingest import sources
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.stage import IngestStage, plan_ingest, read_part


def _all_rows(engine, ds: DatasetConfig, partitions: int, block_mb: int = 1) -> pd.DataFrame:
    plan = plan_ingest(ds, partitions, engine, block_mb)
    parts = [read_part(plan, p, IngestStage().split) for p in plan.parts]
    return pd.concat(parts, ignore_index=True), plan


def test_csv_segments_match_pandas_across_checkpoints(dask_engine, tmp_path):
    rng = np.random.default_rng(1)
    ref = pd.DataFrame(
        {"a": rng.normal(size=150_000), "b": rng.integers(-5, 5, 150_000), "y": rng.integers(0, 2, 150_000)}
    )
    path = tmp_path / "big.csv"
    ref.to_csv(path, index=False)
    assert path.stat().st_size > 2 << 20  # several 1 MB index blocks
    ds = DatasetConfig(
        name="b", format="csv", path=str(path), features=["a", "b"], label="y", types={"b": "int", "y": "int"}
    )
    got, plan = _all_rows(dask_engine, ds, partitions=7, block_mb=1)
    assert len(plan.files[0].checkpoints) > 2
    sizes = [sum(s.stop - s.start for s in p) for p in plan.parts]
    assert max(sizes) - min(sizes) <= 1
    assert got["_reason"].isna().all()
    np.testing.assert_allclose(got["a"].to_numpy(), ref["a"].to_numpy(), rtol=1e-15)
    np.testing.assert_array_equal(got["b"].to_numpy(dtype=np.int64), ref["b"].to_numpy())
    np.testing.assert_array_equal(got["_row"].to_numpy(), np.arange(2, 150_002))


def test_csv_without_trailing_newline_and_crlf(dask_engine, tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"a,y\r\n1.5,0\r\n2.5,1")
    ds = DatasetConfig(name="c", format="csv", path=str(path), features=["a"], label="y", types={"y": "int"})
    got, _ = _all_rows(dask_engine, ds, partitions=2)
    assert got["a"].tolist() == [1.5, 2.5]
    assert got["y"].tolist() == [0, 1]


def test_parquet_multi_file_row_groups(dask_engine, tmp_path):
    generate(tmp_path / "syn", kind="regression", rows=10_001, features=3, parts=3, seed=5)
    ref = pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted((tmp_path / "syn").glob("*.parquet"))], ignore_index=True
    )
    ds = DatasetConfig(name="s", format="parquet", path=str(tmp_path / "syn"), formula="y ~ .")
    got, plan = _all_rows(dask_engine, ds, partitions=4)
    assert len(plan.files) == 3 and len(got) == 10_001
    np.testing.assert_array_equal(got[["x0", "x1", "x2", "y"]].to_numpy(), ref[["x0", "x1", "x2", "y"]].to_numpy())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_matches_numpy(dask_engine, tmp_path, gz):
    images = np.random.default_rng(2).integers(0, 256, (101, 5, 3)).astype(np.uint8)
    labels = (np.arange(101) % 7).astype(np.uint8)
    pack = (lambda b: gzip.compress(b)) if gz else (lambda b: b)
    (tmp_path / "i").write_bytes(pack(idx_bytes(images)))
    (tmp_path / "l").write_bytes(pack(idx_bytes(labels)))
    ds = DatasetConfig(
        name="i",
        format="idx",
        path=str(tmp_path / "i"),
        labels_path=str(tmp_path / "l"),
        image={"shape": [5, 3], "classes": 7},
    )
    got, _ = _all_rows(dask_engine, ds, partitions=3)
    back = np.stack([np.frombuffer(b, np.uint8).reshape(5, 3) for b in got["image"]])
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(got["label"].to_numpy(dtype=np.int64), labels)


def test_npz_reader_float_images(dask_engine, tmp_path):
    x = np.random.default_rng(3).random((20, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    ds = DatasetConfig(name="n", format="npz", path=str(tmp_path / "d.npz"), image={"shape": [4], "classes": 2})
    got, _ = _all_rows(dask_engine, ds, partitions=3)
    back = np.stack([np.frombuffer(b, np.float32) for b in got["image"]])
    np.testing.assert_array_equal(back, x)


def test_fashion_mnist_header_and_first_records():
    from pipelines.data.bundled import fashion_mnist_available, resolve_path

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    f = sources.index_idx_file(resolve_path("bundled:fashion-mnist/train-images"))
    assert (f.records, f.shape, f.dtype) == (60_000, (28, 28), "|u1")
    lbl = sources.index_idx_file(resolve_path("bundled:fashion-mnist/test-labels"))
    assert lbl.records == 10_000


def test_balanced_segments_cross_files():
    files = [sources.SourceFile(path=str(i), name=str(i), records=n) for i, n in enumerate([5, 0, 12, 3])]
    parts = sources.balanced_segments(files, 6)
    sizes = [sum(s.stop - s.start for s in p) for p in parts]
    assert sum(sizes) == 20 and max(sizes) - min(sizes) <= 1
    spans = [(int(s.file.path), s.start, s.stop) for p in parts for s in p]
    # in file order, each file's ranges are consecutive and cover all its records exactly once
    assert [f for f, _, _ in spans] == sorted(f for f, _, _ in spans)
    for index, records in enumerate([5, 0, 12, 3]):
        mine = [(a, b) for f, a, b in spans if f == index]
        assert all(a < b for a, b in mine) and [a for a, _ in mine] == [0, *(b for _, b in mine)][: len(mine)]
        assert (mine[-1][1] if mine else 0) == records
