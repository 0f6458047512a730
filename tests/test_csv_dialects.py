"""CSV as RFC 4180 and real exports write it, and compressed input: every case read as pandas reads it.

Row numbers are the file's record numbers (the header is record 1); they equal line numbers until a quoted field
spans lines.
"""

from __future__ import annotations

import bz2
import gzip

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import DataError
from pipelines.ingest import sources
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.readers import read_csv_segment
from pipelines.ingest.stage import IngestStage, plan_ingest, read_part
from pipelines.ingest.validate import validate_table

SPREADSHEET = (
    '\ufeffid,"note, free text",x,y\r\n'
    '1,"plain",1.5,0\r\n'
    '2,"two\r\nlines",2.5,1\n'
    '3,"he said ""hi""",3.5,0\r\n'
    '4,"three\nlines\nhere, with a comma",4.5,1\n'
    "5,unquoted,5.5,0\r"  # a lone CR ends a record too (classic Mac)
    '6,"last, no newline",6.5,1'
)


def _dataset(path, **extra) -> DatasetConfig:
    return DatasetConfig(
        name="t",
        format="csv",
        path=str(path),
        features=["x", "note, free text"],
        label="y",
        types={"note, free text": "str", "y": "int", "x": "float"},
        **extra,
    )


def _read(engine, ds: DatasetConfig, partitions: int = 3, block_mb: int = 1) -> tuple[pd.DataFrame, object]:
    plan = plan_ingest(ds, partitions, engine, block_mb)
    parts = engine.run_tasks(lambda part: read_part(plan, part, IngestStage().split), plan.parts)
    return pd.concat(parts, ignore_index=True), plan


def _pandas(path, **kw) -> pd.DataFrame:
    ref = pd.read_csv(path, keep_default_na=False, **kw)
    ref.columns = [c.lstrip("\ufeff") for c in ref.columns]
    return ref


def test_spreadsheet_export_reads_like_pandas_on_both_engines(engine, tmp_path):
    """Quoted newlines, doubled quotes, CRLF / LF / lone CR, a BOM, no final newline: the same as pandas."""
    path = tmp_path / "export.csv"
    path.write_bytes(SPREADSHEET.encode("utf-8"))
    got, plan = _read(engine, _dataset(path))
    ref = _pandas(path)
    assert plan.files[0].records == len(ref) == 6
    assert got["_reason"].isna().all()
    assert got["note, free text"].fillna("").tolist() == ref["note, free text"].tolist()
    assert got["x"].tolist() == ref["x"].tolist()
    assert got["y"].tolist() == ref["y"].tolist()
    assert got["_row"].tolist() == [2, 3, 4, 5, 6, 7]  # record numbers, header = 1


def test_multiline_fields_across_many_index_blocks(dask_engine, tmp_path):
    """Multi-line fields in a file cut into hundreds of 4 KB blocks, many of them starting inside quotes."""
    rng = np.random.default_rng(3)
    n = 40_000
    notes = np.where(rng.random(n) < 0.05, 'line one\nline "two", quoted\r\nthree', "short note")
    ref = pd.DataFrame(
        {"id": np.arange(n), "note, free text": notes, "x": rng.normal(size=n), "y": rng.integers(0, 3, n)}
    )
    path = tmp_path / "big.csv"
    ref.to_csv(path, index=False)
    ds = _dataset(path)
    (indexed,) = sources.index_csv_files([str(path)], ",", 4096, dask_engine.run_tasks)
    assert indexed.records == n and len(indexed.checkpoints) > 300
    body = path.read_bytes()
    for offset, record in indexed.checkpoints[1:]:  # every checkpoint starts a record: the pandas row `record - 1`
        assert body[offset:].startswith(f"{record - 1},".encode())
    plan = plan_ingest(ds, 5, dask_engine)
    table = plan.table
    segments = [seg for part in sources.balanced_segments([indexed], 7) for seg in part]
    got = pd.concat([validate_table(read_csv_segment(seg, table, ","), table) for seg in segments], ignore_index=True)
    assert got["_reason"].isna().all()
    assert got["note, free text"].tolist() == ref["note, free text"].tolist()
    np.testing.assert_allclose(got["x"].to_numpy(), ref["x"].to_numpy(), rtol=1e-15)
    assert got["_row"].tolist() == list(range(2, n + 2))


def test_malformed_record_after_a_multiline_one_is_named_by_record(dask_engine, tmp_path):
    """The quarantine's row is the record number (line numbers drift once a field spans lines)."""
    path = tmp_path / "m.csv"
    path.write_text('id,note,x,y\n1,"a\nb",1.0,0\n2,"c",2.0\n3,"d",3.0,1\n')
    ds = DatasetConfig(name="m", format="csv", path=str(path), features=["x"], label="y", types={"y": "int"})
    got, _ = _read(dask_engine, ds, partitions=1)
    bad = got[got["_reason"].notna()]
    assert bad["_row"].tolist() == [3]
    assert "malformed row: 3 fields, expected 4" in bad["_reason"].iloc[0]
    assert got.loc[got["_reason"].isna(), "x"].tolist() == [1.0, 3.0]


def test_unclosed_quote_names_the_line_it_opens_on(dask_engine, tmp_path):
    path = tmp_path / "u.csv"
    path.write_text('x,y\n1.0,0\n2.0,"1\n3.0,0\n4.0,1\n')
    ds = DatasetConfig(name="u", format="csv", path=str(path), features=["x"], label="y", types={"y": "int"})
    with pytest.raises(DataError, match=r"u\.csv: line 3: a quoted field opens here and is never closed"):
        plan_ingest(ds, 2, dask_engine)


def test_latin1_with_semicolons(dask_engine, tmp_path):
    """A European export: Latin-1 text, `;` between fields."""
    path = tmp_path / "l.csv"
    text = 'ville;"note, free text";x;y\nZürich;"très bien";1,5;0\nKöln;"ça va";2,5;1\n'.replace(",5", ".5")
    path.write_bytes(text.encode("latin-1"))
    ds = _dataset(path, delimiter=";", encoding="latin-1")
    got, _ = _read(dask_engine, ds, partitions=2)
    assert got["note, free text"].tolist() == ["très bien", "ça va"]
    assert got["x"].tolist() == [1.5, 2.5]
    with pytest.raises(ValueError, match="not ASCII-compatible"):
        _dataset(path, encoding="utf-16")


@pytest.mark.parametrize("codec", ["gzip", "bz2", "zstd"])
def test_compressed_csv_is_one_segment_and_reads_like_plain(dask_engine, tmp_path, codec):
    plain = tmp_path / "plain.csv"
    plain.write_bytes(SPREADSHEET.encode("utf-8"))
    data = plain.read_bytes()
    suffix = {"gzip": ".gz", "bz2": ".bz2", "zstd": ".zst"}[codec]
    packed = tmp_path / f"packed.csv{suffix}"
    if codec == "gzip":
        packed.write_bytes(gzip.compress(data))
    elif codec == "bz2":
        packed.write_bytes(bz2.compress(data))
    else:
        with pa.CompressedOutputStream(str(packed), "zstd") as out:
            out.write(data)
    got, plan = _read(dask_engine, _dataset(tmp_path / "*.csv*"), partitions=4)
    packed_file = next(f for f in plan.files if f.name == packed.name)
    assert packed_file.compression == codec and not packed_file.splittable
    assert plan.unsplit() == [packed.name]  # what the manifest records as the ingest's `unsplit_files`
    owners = [part for part in plan.parts if any(s.file.name == packed.name for s in part)]
    assert len(owners) == 1 and len(owners[0]) == 1  # the compressed file is one whole segment
    by_source = {name: frame for name, frame in got.groupby("_source")}
    for column in ("note, free text", "x", "y", "_row"):
        assert by_source[packed.name][column].fillna("").tolist() == by_source[plain.name][column].fillna("").tolist()


@pytest.mark.parametrize("codec", ["snappy", "gzip", "zstd", "brotli", "lz4", "none"])
def test_parquet_any_codec(dask_engine, tmp_path, codec):
    table = pa.table({"x": np.arange(100, dtype=float), "y": np.arange(100) % 2})
    pq.write_table(table, tmp_path / "d.parquet", compression=codec)
    ds = DatasetConfig(name="p", format="parquet", path=str(tmp_path / "d.parquet"), features=["x"], label="y")
    got, _ = _read(dask_engine, ds, partitions=2)
    assert got["x"].tolist() == list(np.arange(100, dtype=float))
