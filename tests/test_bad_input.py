"""Bad-input suite: every case checks its message and that no row is lost (read = accepted + rejected).

Row-level problems go to quarantine.csv with source, row (CSV record number, the header being 1; record index
otherwise),
column and reason; file-level problems stop the run with an error naming the file. Each row-level case
runs on both engines (real Dask LocalCluster, real local SparkSession).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import PipelineConfig, dump_config
from pipelines.data.bundled import idx_bytes
from pipelines.errors import DataError
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.stage import IngestStage, run_ingest
from pipelines.runs import Run


@dataclass
class Case:
    """One bad input: files to write, dataset settings, and the quarantine rows expected."""

    files: dict[str, Any]
    dataset: dict[str, Any]
    expect: list[tuple[int, str | None, str]]
    read: int
    stage: dict[str, Any] = field(default_factory=dict)


CSV3 = {"features": ["a", "b"], "label": "y", "types": {"a": "float", "b": "float", "y": "int"}}
TEXT3 = {"features": ["a", "name"], "label": "y", "types": {"name": "str", "y": "int"}}


def _idx(images: np.ndarray, labels: np.ndarray, gz: bool = True) -> dict[str, bytes]:
    pack = (lambda b: gzip.compress(b, mtime=0)) if gz else (lambda b: b)
    return {"img.idx": pack(idx_bytes(images)), "lbl.idx": pack(idx_bytes(labels))}


IMG = {"format": "idx", "path": "img.idx", "labels_path": "lbl.idx", "image": {"shape": [4, 4], "classes": 10}}
rng = np.random.default_rng(0)
PIX = rng.integers(0, 255, (12, 4, 4)).astype(np.uint8)
LAB = (np.arange(12) % 10).astype(np.uint8)
NAN_PIX = rng.random((6, 4, 4)).astype(np.float32)
NAN_PIX[2, 1, 1] = np.nan
NAN_PIX[4, 0, 0] = np.inf
_short_idx = _idx(PIX, LAB)
_short_idx["img.idx"] = gzip.compress(idx_bytes(PIX)[: 16 + 16 * 9], mtime=0)  # header says 12, holds 9
_mid_idx = _idx(PIX, LAB, gz=False)
_mid_idx["img.idx"] = idx_bytes(PIX)[: 16 + 16 * 9 + 5]  # cut 5 bytes into the tenth image

ROW_CASES = {
    "not_a_number": Case({"d.csv": "a,b,y\n1,2,0\n3,abc,1\n5,6,0\n"}, CSV3, [(3, "b", "not a number: 'abc'")], 3),
    "nan_text": Case({"d.csv": "a,b,y\n1,NaN,0\n3,4,1\n"}, CSV3, [(2, "b", "NaN value")], 2),
    "infinite": Case({"d.csv": "a,b,y\n1,2,0\n-inf,4,1\n"}, CSV3, [(3, "a", "infinite value")], 2),
    "missing_value": Case({"d.csv": "a,b,y\n1,,0\n3,4,1\n"}, CSV3, [(2, "b", "missing value")], 2),
    "missing_label": Case({"d.csv": "a,b,y\n1,2,\n3,4,1\n"}, CSV3, [(2, "y", "missing label")], 2),
    "too_few_fields": Case(
        {"d.csv": "a,b,y\n1,2\n3,4,1\n"}, CSV3, [(2, None, "malformed row: 2 fields, expected 3")], 2
    ),
    "too_many_fields": Case(
        {"d.csv": "a,b,y\n1,2,0,9\n3,4,1\n"}, CSV3, [(2, None, "malformed row: 4 fields, expected 3")], 2
    ),
    "empty_line": Case({"d.csv": "a,b,y\n1,2,0\n\n3,4,1\n"}, CSV3, [(3, None, "empty line")], 3),
    "not_an_integer": Case({"d.csv": "a,b,y\n1,2,0\n3,4,1.5\n"}, CSV3, [(3, "y", "not an integer")], 2),
    "unknown_category": Case(
        {"d.csv": "a,colour,y\n1,red,0\n2,purple,1\n3,blue,0\n"},
        {"features": ["a", "colour"], "label": "y", "categories": {"colour": ["red", "blue"]}, "types": {"y": "int"}},
        [(3, "colour", "unknown category: 'purple'")],
        3,
    ),
    "not_a_boolean": Case(
        {"d.csv": "a,flag,y\n1,yes,0\n2,maybe,1\n"},
        {"features": ["a", "flag"], "label": "y", "types": {"flag": "bool", "y": "int"}},
        [(3, "flag", "not a boolean: 'maybe'")],
        2,
    ),
    "parquet_text_in_number": Case(
        {"d.parquet": pa.table({"a": ["1", "x", "3"], "b": [1.0, 2.0, 3.0], "y": [0, 1, 0]})},
        {"format": "parquet", "path": "d.parquet", **CSV3},
        [(1, "a", "not a number: 'x'")],
        3,
    ),
    "parquet_null": Case(
        {"d.parquet": pa.table({"a": [1.0, None, 3.0], "b": [1.0, 2.0, float("nan")], "y": [0, 1, 0]})},
        {"format": "parquet", "path": "d.parquet", **CSV3},
        [(1, "a", "missing value"), (2, "b", "NaN value")],
        3,
    ),
    "idx_labels_short": Case(
        _idx(PIX, LAB[:10]), IMG, [(10, "label", "missing label"), (11, "label", "missing label")], 12
    ),
    "idx_label_out_of_range": Case(
        _idx(PIX, np.where(np.arange(12) == 5, 12, LAB).astype(np.uint8), gz=False),
        IMG,
        [(5, "label", "label 12.0 outside 0..9")],
        12,
    ),
    "idx_truncated_images": Case(
        _short_idx,
        IMG,
        [(9, "image", "missing image"), (10, "image", "missing image"), (11, "image", "missing image")],
        12,
    ),
    "npz_nan_pixels": Case(
        {"d.npz": {"x": NAN_PIX, "y": np.arange(6) % 3}},
        {"format": "npz", "path": "d.npz", "image": {"shape": [4, 4], "classes": 3}},
        [(2, "image", "NaN pixel value"), (4, "image", "infinite pixel value")],
        6,
    ),
    "invalid_utf8": Case(
        {"d.csv": b"a,name,y\n1,ok,0\n2,caf\xe9,1\n3,fine,0\n"},
        TEXT3,
        [(3, "name", "not valid utf-8 text")],
        3,
    ),
    "nul_byte_in_text": Case({"d.csv": "a,name,y\n1,o\x00k,0\n2,x,1\n"}, TEXT3, [(2, "name", "NUL byte in text")], 2),
    "nul_byte_in_number": Case({"d.csv": "a,b,y\n1,2\x00,0\n3,4,1\n"}, CSV3, [(2, "b", "not a number")], 2),
    "label_of_wrong_type": Case({"d.csv": "a,b,y\n1,2,0\n3,4,cat\n"}, CSV3, [(3, "y", "not a number: 'cat'")], 2),
    "comma_inside_quoted_number": Case(
        {"d.csv": 'a,b,y\n1,"2,5",0\n3,4,1\n'}, CSV3, [(2, "b", "not a number: '2,5'")], 2
    ),
    "whitespace_only_value": Case({"d.csv": "a,b,y\n1,   ,0\n3,4,1\n"}, CSV3, [(2, "b", "missing value")], 2),
    "malformed_after_multiline_record": Case(
        {"d.csv": 'a,name,y\n1,"two\nlines",0\n2,x\n3,z,1\n'},
        TEXT3,
        [(3, None, "malformed row: 2 fields, expected 3")],
        3,
    ),
    "partition_left_empty_by_rejects": Case(
        {"d.csv": "a,b,y\n1,2,0\n3,4,1\nx,5,0\ny,6,1\n"},
        CSV3,
        [(4, "a", "not a number: 'x'"), (5, "a", "not a number: 'y'")],
        4,
    ),
    "idx_truncated_mid_record": Case(
        _mid_idx,
        IMG,
        [(9, "image", "missing image"), (10, "image", "missing image"), (11, "image", "missing image")],
        12,
    ),
    "wrong_image_shape": Case(
        _idx(PIX, LAB),
        {**IMG, "image": {"shape": [5, 5], "classes": 10}},
        [(i, "image", "image shape (4, 4) does not match declared shape (5, 5)") for i in range(12)],
        12,
    ),
}


def _materialize(tmp_path, case: Case) -> dict[str, Any]:
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pa.Table):
            pq.write_table(content, path)
        elif isinstance(content, dict):
            np.savez(path, **content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    ds = {"name": "bad", "format": "csv", "path": "d.csv", **case.dataset}
    for key in ("path", "labels_path"):
        if key in ds:
            ds[key] = str(tmp_path / ds[key])
    return ds


def _ingest(engine, tmp_path, ds: dict[str, Any], stage: dict[str, Any], partitions: int = 2):
    dataset = DatasetConfig(**ds)
    cfg = PipelineConfig(name="bad", dataset=dataset, stages=[IngestStage(**stage)], runs_dir=str(tmp_path / "runs"))
    run = Run.create(cfg.name, cfg.runs_dir, dump_config(cfg), {"kind": engine.kind})
    try:
        result = run_ingest(engine, dataset, cfg.stages[0], partitions, run)
    finally:
        quarantine = pd.read_csv(run.dir / "quarantine.csv") if (run.dir / "quarantine.csv").exists() else None
    return result, quarantine, run


@pytest.mark.parametrize("name", sorted(ROW_CASES))
def test_row_level_problem_is_quarantined(engine, tmp_path, name):
    case = ROW_CASES[name]
    ds = _materialize(tmp_path, case)
    result, quarantine, _ = _ingest(engine, tmp_path, ds, {"max_rejected_fraction": 1.0, **case.stage})
    assert result.read == case.read
    assert result.read == result.accepted + result.rejected
    assert result.rejected == len(case.expect) == len(quarantine)
    got = [(int(r.row), None if pd.isna(r.column) else r.column, r.reason) for r in quarantine.itertuples()]
    for (row, column, reason), (grow, gcol, greason) in zip(case.expect, got, strict=True):
        assert (grow, gcol) == (row, column)
        assert reason in greason
    assert set(quarantine["source"]) == {ds["path"].rsplit("/", 1)[-1]}
    assert sum(result.splits.values()) == result.accepted


def test_quarantine_keeps_raw_line_text(dask_engine, tmp_path):
    ds = _materialize(tmp_path, ROW_CASES["too_few_fields"])
    _, quarantine, _ = _ingest(dask_engine, tmp_path, ds, {"max_rejected_fraction": 1.0})
    assert quarantine.loc[0, "raw"] == "1,2"


def test_rejected_fraction_above_limit_fails_with_counts(dask_engine, tmp_path):
    ds = _materialize(tmp_path, ROW_CASES["wrong_image_shape"])
    with pytest.raises(
        DataError, match=r"12 of 12 rows rejected \(100\.00%\), above max_rejected_fraction=0\.00%"
    ) as err:
        _ingest(dask_engine, tmp_path, ds, {"max_rejected_fraction": 0.0})
    assert "quarantine.csv" in str(err.value)
    q = next((tmp_path / "runs").rglob("quarantine.csv"))
    assert len(pd.read_csv(q)) == 12


FILE_CASES = {
    "missing_column": ({"d.csv": "a,y\n1,0\n"}, CSV3, r"d\.csv: missing column\(s\) \['b'\]"),
    "empty_csv": ({"d.csv": ""}, CSV3, r"d\.csv: file is empty"),
    "duplicate_header": (
        {"d.csv": "a,b,a,y\n1,2,3,0\n"},
        CSV3,
        r"d\.csv: line 1 \(header\) repeats column name\(s\) \['a'\]",
    ),
    "unclosed_quote": (
        {"d.csv": 'a,b,y\n1,"2,0\n4,5,1\n'},
        CSV3,
        r"d\.csv: line 2: a quoted field opens here and is never closed",
    ),
    "header_only": ({"d.csv": "a,b,y\n"}, CSV3, r"d\.csv: a header and no records"),
    "header_blank_name": (
        {"d.csv": "a,,y\n1,2,0\n"},
        CSV3,
        r"d\.csv: line 1 \(header\) has no name for column\(s\) \[2\]",
    ),
    "header_not_text": ({"d.csv": b"\x89PNG\r\n\x1a\n\x00\xff\xfe"}, CSV3, r"d\.csv: line 1 \(header\) is not utf-8"),
    "path_is_directory_without_csv": ({"d.csv/notes.md": "hello"}, CSV3, r"d\.csv: a directory with no \.csv"),
    "glob_matches_nothing": ({}, {**CSV3, "path": "nothing-*.csv"}, r"no input files match .*nothing-\*\.csv"),
    "labels_idx_wrong_magic": (
        {"img.idx": idx_bytes(PIX), "lbl.idx": b"\x08\x03\x00\x01" + bytes(12)},
        IMG,
        r"lbl\.idx: not an IDX file \(bad magic number 08030001\)",
    ),
    "not_idx": ({"img.idx": b"hello world", "lbl.idx": idx_bytes(LAB)}, IMG, r"img\.idx: not an IDX file"),
    "file_not_found": ({}, CSV3, r"d\.csv: input file not found"),
    "npz_object_array": (
        {"d.npz": {"x": np.array([np.zeros(2), np.zeros(3)], dtype=object), "y": np.arange(2)}},
        {"format": "npz", "path": "d.npz", "image": {"shape": [2]}},
        r"d\.npz: not a readable \.npz",
    ),
    "not_parquet": (
        {"d.parquet": "not parquet"},
        {"format": "parquet", "path": "d.parquet", **CSV3},
        r"d\.parquet: not a readable Parquet file",
    ),
}


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_file_level_problem_names_the_file(dask_engine, tmp_path, name):
    files, dataset, message = FILE_CASES[name]
    ds = _materialize(tmp_path, Case(files, dataset, [], 0))
    with pytest.raises(DataError, match=message):
        _ingest(dask_engine, tmp_path, ds, {"max_rejected_fraction": 1.0})
