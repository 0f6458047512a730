"""Declared test/validation files (all their rows go to that split) and the per-split content digest, both engines."""

from __future__ import annotations

import gzip
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from pipelines.config import PipelineConfig, dump_config, load_config
from pipelines.data.bundled import fashion_mnist_available, idx_bytes
from pipelines.errors import ConfigError, DataError
from pipelines.ingest.config import DatasetConfig, SplitConfig
from pipelines.ingest.digest import combine_digests, partition_digest
from pipelines.ingest.stage import IngestStage, run_ingest
from pipelines.plan import check_plan
from pipelines.predict.data import new_dataset
from pipelines.runs import Run
from pipelines.runs.history import RunRecord, compare_runs, same_splits

# b is declared: some tests put text in it to be rejected (undeclared, that text would make it a category)
TABLE = {"features": ["a", "b"], "label": "y", "types": {"b": "float", "y": "int"}}


def _csv(path, rows: int, seed: int, bad: dict[int, str] | None = None) -> pd.DataFrame:
    """A CSV of `rows` records; `bad` puts raw text in column b of some records (0-based). Returns the good frame."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(5, 2, rows), "b": rng.normal(-1, 3, rows), "y": rng.integers(0, 3, rows)})
    text = frame.astype(object)
    for i, raw in (bad or {}).items():
        text.loc[i, "b"] = raw
    text.to_csv(path, index=False)
    frame["_row"] = np.arange(2, rows + 2)  # record numbers, the header being 1
    return frame.drop(index=list(bad or {}))


def _ingest(engine, tmp_path, dataset: dict, split: dict, partitions: int = 3, **stage):
    name = "declared"
    cfg = PipelineConfig(
        name=name,
        dataset=DatasetConfig(name=name, **dataset),
        stages=[IngestStage(split=SplitConfig(**split), max_rejected_fraction=1.0, **stage)],
        runs_dir=str(tmp_path / "runs"),
    )
    run = Run.create(cfg.name, cfg.runs_dir, dump_config(cfg), {"kind": engine.kind})
    result = run_ingest(engine, cfg.dataset, cfg.stages[0], partitions, run)
    run.manifest["stages"] = [{"name": "ingest", "status": "succeeded", **result.facts()}]
    run.add_metrics("ingest", result.metrics)
    run.save()
    written = {s: pq.read_table(p).to_pandas().sort_values(["_source", "_row"]) for s, p in result.outputs.items()}
    return result, pd.read_csv(run.dir / "quarantine.csv"), written, run


def test_declared_csv_test_file(engine, tmp_path):
    main = _csv(tmp_path / "main.csv", 60, seed=1, bad={4: "x"})
    test = _csv(tmp_path / "holdout.csv", 25, seed=2, bad={0: "nope", 7: ""})
    dataset = {"format": "csv", "path": str(tmp_path / "main.csv"), "test_path": str(tmp_path / "holdout.csv"), **TABLE}
    result, quarantine, written, _ = _ingest(engine, tmp_path, dataset, {"test_fraction": 0.0, "val_fraction": 0.25})

    assert result.read == 85 and result.rejected == 3 and result.read == result.accepted + result.rejected
    assert result.splits["test"] == 23 and result.splits["train"] + result.splits["val"] == 59
    assert result.splits["val"] > 0  # the seeded split divides the main file between train and val
    # counts reconcile per split: the declared file's records are its test rows plus its rejects
    assert result.splits["test"] + result.split_rejected["test"] == 25
    assert sum(result.splits.values()) + sum(result.split_rejected.values()) == result.read
    assert result.declared_files == {"test": ["holdout.csv"]}
    # rejected rows of both files in one quarantine, each under its own file name and record number
    got = sorted((r.source, int(r.row), r.column) for r in quarantine.itertuples())
    assert got == [("holdout.csv", 2, "b"), ("holdout.csv", 9, "b"), ("main.csv", 6, "b")]
    assert set(written["test"]["_source"]) == {"holdout.csv"}
    assert written["test"]["_row"].tolist() == test["_row"].tolist()
    assert set(written["train"]["_source"]) == set(written["val"]["_source"]) == {"main.csv"}
    # the scaler is fitted on the train rows only: compare with pandas on exactly those raw rows
    train_raw = main.set_index("_row").loc[written["train"]["_row"]]
    for col in ("a", "b"):
        mean, std = result.fitted.scale[col]
        assert mean == pytest.approx(train_raw[col].mean(), rel=1e-12)
        assert std == pytest.approx(train_raw[col].std(ddof=0), rel=1e-12)
        test_raw = test.set_index("_row").loc[written["test"]["_row"], col]
        np.testing.assert_allclose(written["test"][col], (test_raw - mean) / std, rtol=1e-12)


def test_declared_idx_test_and_val_files(engine, tmp_path):
    rng = np.random.default_rng(3)
    files = {
        "train-img.gz": rng.integers(0, 255, (30, 4, 4)).astype(np.uint8),
        "train-lbl.gz": (np.arange(30) % 10).astype(np.uint8),
        "test-img.gz": rng.integers(0, 255, (8, 4, 4)).astype(np.uint8),
        "test-lbl.gz": np.array([0, 1, 2, 12, 4, 5, 6, 7], dtype=np.uint8),  # label 12 is out of range
        "val-img.gz": rng.integers(0, 255, (5, 4, 4)).astype(np.uint8),
        "val-lbl.gz": np.arange(5, dtype=np.uint8),
    }
    for name, array in files.items():
        (tmp_path / name).write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    at = {k: str(tmp_path / v) for k, v in {
        "path": "train-img.gz", "labels_path": "train-lbl.gz", "test_path": "test-img.gz",
        "test_labels_path": "test-lbl.gz", "val_path": "val-img.gz", "val_labels_path": "val-lbl.gz",
    }.items()}  # fmt: skip
    dataset = {"format": "idx", "image": {"shape": [4, 4], "classes": 10}, **at}
    result, quarantine, written, _ = _ingest(engine, tmp_path, dataset, {"test_fraction": 0.0, "val_fraction": 0.0})

    assert result.read == 43 and result.splits == {"train": 30, "val": 5, "test": 7}
    assert result.split_rejected == {"train": 0, "val": 0, "test": 1}
    assert [(r.source, int(r.row), r.column) for r in quarantine.itertuples()] == [("test-img.gz", 3, "label")]
    assert written["test"]["_row"].tolist() == [0, 1, 2, 4, 5, 6, 7]
    pixels = np.frombuffer(b"".join(written["test"]["image"]), dtype=np.float32).reshape(7, 4, 4)
    np.testing.assert_allclose(pixels, files["test-img.gz"][[0, 1, 2, 4, 5, 6, 7]] / 255.0, rtol=1e-6)
    assert written["val"]["label"].tolist() == [0, 1, 2, 3, 4]


def test_declared_file_needs_its_fraction_at_zero(dask_engine, tmp_path):
    _csv(tmp_path / "m.csv", 10, seed=1)
    _csv(tmp_path / "t.csv", 5, seed=2)
    dataset = DatasetConfig(
        name="d", format="csv", path=str(tmp_path / "m.csv"), test_path=str(tmp_path / "t.csv"), **TABLE
    )
    stage = IngestStage(split=SplitConfig(test_fraction=0.2))
    cfg = PipelineConfig(name="d", dataset=dataset, stages=[stage], runs_dir=str(tmp_path / "runs"))
    problems = check_plan(cfg)
    assert [p.path for p in problems] == ["stages[0].split.test_fraction"]
    assert "dataset.test_path" in problems[0].message
    with pytest.raises(ConfigError, match="test_fraction"):
        run_ingest(dask_engine, dataset, stage, 2)
    with pytest.raises(ValueError, match="test_labels_path"):
        DatasetConfig(name="d", format="csv", path="m.csv", test_labels_path="l.idx", **TABLE)
    with pytest.raises(ValueError, match="test_labels_path"):
        DatasetConfig(name="d", format="idx", path="i", labels_path="l", test_path="t", image={"shape": [2]})


def test_files_sharing_a_name_are_known_by_their_paths(dask_engine, tmp_path):
    """train/d.csv and test/d.csv: rows are known by the paths below the common folder; one file twice is refused."""
    for folder, n, seed in (("train", 10, 1), ("test", 5, 2)):
        (tmp_path / folder).mkdir()
        _csv(tmp_path / folder / "d.csv", n, seed=seed, bad={2: "?"})
    dataset = {
        "format": "csv",
        "path": str(tmp_path / "train" / "d.csv"),
        "test_path": str(tmp_path / "test" / "d.csv"),
        **TABLE,
    }
    result, quarantine, _, _ = _ingest(dask_engine, tmp_path, dataset, {"test_fraction": 0.0})
    assert sorted(quarantine["source"]) == ["test/d.csv", "train/d.csv"]
    assert result.declared_files == {"test": ["test/d.csv"]}
    assert result.splits["test"] == 4 and result.splits["train"] + result.splits["val"] == 9
    twice = {**dataset, "test_path": dataset["path"]}
    with pytest.raises(DataError, match="the same input file is given twice"):
        _ingest(dask_engine, tmp_path / "again", twice, {"test_fraction": 0.0})


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_official_test_set(dask_engine, tmp_path):
    cfg = load_config(ROOT / "conf" / "fashion_cnn.yaml", [f"runs_dir={tmp_path}"])
    assert cfg.dataset.test_path == "bundled:fashion-mnist/test-images"
    run = Run.create(cfg.name, cfg.runs_dir, dump_config(cfg), {"kind": dask_engine.kind})
    result = run_ingest(dask_engine, cfg.dataset, cfg.stages[0], cfg.engine.partitions, run)
    assert result.splits["test"] == 10_000 and result.splits["train"] + result.splits["val"] == 60_000
    assert result.read == 70_000 and result.rejected == 0
    assert result.declared_files == {"test": ["t10k-images-idx3-ubyte.gz"]}
    assert result.splits_digest["test"]["rows"] == 10_000


@pytest.mark.slow
def test_split_digest_same_on_both_engines_and_runs(dask_engine, spark_engine, tmp_path):
    _csv(tmp_path / "main.csv", 80, seed=5, bad={3: "?"})
    _csv(tmp_path / "holdout.csv", 20, seed=6)
    dataset = {"format": "csv", "path": str(tmp_path / "main.csv"), "test_path": str(tmp_path / "holdout.csv"), **TABLE}
    split = {"test_fraction": 0.0, "val_fraction": 0.2, "seed": 7}
    runs = [
        _ingest(dask_engine, tmp_path / "d1", dataset, split),
        _ingest(dask_engine, tmp_path / "d2", dataset, split),
        _ingest(spark_engine, tmp_path / "s1", dataset, split),
    ]
    digests = [r[0].splits_digest for r in runs]
    assert digests[0] == digests[1] == digests[2]
    for result, *_ in runs:  # the recorded digest is that of the rows as written, read back from the Parquet files
        for written, recorded in result.splits_digest.items():
            table = pq.read_table(result.outputs[written])
            assert combine_digests([partition_digest(table.to_pandas(), table.schema)]) == recorded, written
    # the rows do not depend on the partitions (the fitted scaler may, in its last bits: compare unscaled)
    unscaled = [
        _ingest(e, tmp_path / f"u{p}", dataset, split, p, standardize=False)
        for e, p in ((dask_engine, 2), (dask_engine, 5))
    ]
    assert unscaled[0][0].splits_digest == unscaled[1][0].splits_digest
    assert unscaled[0][0].splits_digest["test"] != digests[0]["test"]
    assert {s: d["rows"] for s, d in digests[0].items()} == {s: n for s, n in runs[0][0].splits.items() if n}
    assert len({d["digest"] for d in digests[0].values()}) == 3

    # one value of one test row changes: the test digest changes; train (and its scaler) and val do not
    frame = pd.read_csv(tmp_path / "holdout.csv")
    frame.loc[11, "a"] += 0.5
    frame.to_csv(tmp_path / "holdout.csv", index=False)
    changed = _ingest(dask_engine, tmp_path / "d3", dataset, split)
    assert changed[0].splits_digest["test"]["rows"] == digests[0]["test"]["rows"]
    assert changed[0].splits_digest["test"]["digest"] != digests[0]["test"]["digest"]
    assert {s: changed[0].splits_digest[s] for s in ("train", "val")} == {s: digests[0][s] for s in ("train", "val")}

    # `pipelines runs --compare` names the split whose digest differs, and only that one
    spark, dask = RunRecord.read(runs[2][3].dir), RunRecord.read(runs[0][3].dir)
    _, metrics = compare_runs(dask, RunRecord.read(changed[3].dir))
    keys = [k for k, _, _ in metrics if "splits_digest" in k]
    assert keys == ["ingest.splits_digest.test.digest"]
    assert same_splits(spark, dask) == ["ingest"] and same_splits(dask, RunRecord.read(changed[3].dir)) == []


def test_digest_ignores_order_and_partitions_and_sees_each_value():
    schema = pa.schema([("_source", pa.string()), ("_row", pa.int64()), ("x", pa.float64()), ("img", pa.binary())])
    rows = pd.DataFrame(
        {
            "_source": ["a.csv"] * 4 + ["b.csv"] * 2,
            "_row": [2, 3, 4, 5, 2, 3],
            "x": [0.0, 1.5, np.nan, -2.0, 7.0, 1e300],
            "img": [b"", b"\x00", b"abc", b"abcdefghij", None, b"\x01" * 3136],
        }
    )

    def digest(*parts: pd.DataFrame) -> dict:
        return combine_digests([partition_digest(p, schema) for p in parts])

    whole = digest(rows)
    assert whole["rows"] == 6
    assert digest(rows.iloc[::-1], rows.iloc[:0]) == whole  # order and empty partitions do not matter
    assert digest(rows.iloc[[5, 0]], rows.iloc[[3, 1, 4]], rows.iloc[[2]]) == whole
    negative_zero = rows.assign(x=rows["x"].replace(0.0, -0.0))
    assert digest(negative_zero) == whole  # one canonical zero
    for column, value in (("x", 1.5000000000000002), ("_row", 6), ("_source", "c.csv"), ("img", b"abd")):
        changed = rows.copy()
        changed.loc[2, column] = value
        assert digest(changed)["digest"] != whole["digest"], column
    assert digest(rows.iloc[:5])["digest"] != whole["digest"]


def test_tasks_are_made_once_for_their_frame_and_their_results(engine, tmp_path):
    """persist_tasks and write_mapped each run every partition's function once and reduce what it made."""
    schema = pa.schema([("part", pa.int64()), ("x", pa.float64())])
    calls = tmp_path / "calls"
    calls.mkdir()

    def numbers(item: tuple[int, int]) -> pd.DataFrame:  # nested: shipped by value to Spark's workers
        (calls / f"make-{uuid.uuid4().hex}").touch()  # one file per call: how often a partition is made
        n, part = item
        return pd.DataFrame({"part": np.full(n, part, dtype=np.int64), "x": np.arange(n, dtype=np.float64)})

    def doubled(pdf: pd.DataFrame) -> pd.DataFrame:
        (calls / f"map-{uuid.uuid4().hex}").touch()
        return pdf.assign(x=pdf["x"] * 2)

    def summed(pdf: pd.DataFrame) -> dict:
        return {"rows": len(pdf), "sum": float(pdf["x"].sum()), "float": str(pdf["x"].dtype)}

    items = [(5, 0), (0, 1), (7, 2)]
    frame, made = engine.persist_tasks(numbers, items, schema, summed)
    try:
        assert made == [{"rows": n, "sum": n * (n - 1) / 2, "float": "float64"} for n in (5, 0, 7)]
        assert made == engine.reduce_partitions(frame, summed)  # the same as a second job over the frame
        parts = engine.write_mapped(frame, doubled, str(tmp_path / "out"), schema, summed)
    finally:
        engine.release(frame)
    assert [(p["rows"], p["sum"]) for p in parts] == [(5, 20.0), (0, 0.0), (7, 42.0)]
    written = pq.read_table(tmp_path / "out")
    assert written.num_rows == 12 and sum(written.column("x").to_pylist()) == 62.0
    assert len([f for f in calls.iterdir() if f.name.startswith("make-")]) == 3  # each task once
    assert len([f for f in calls.iterdir() if f.name.startswith("map-")]) == 3  # writer and reduce share one map


def test_predict_reads_only_the_new_data(tmp_path):
    run_dataset = DatasetConfig(name="d", format="csv", path="main.csv", test_path="holdout.csv", **TABLE)
    assert new_dataset(run_dataset, "new.csv").test_path is None
    section = tmp_path / "new.yaml"
    section.write_text("dataset: {path: new.csv}\n")
    assert new_dataset(run_dataset, str(section)).test_path is None
    section.write_text("dataset: {path: new.csv, test_path: other.csv}\n")
    with pytest.raises(ConfigError, match="unknown key"):
        new_dataset(run_dataset, str(section))
