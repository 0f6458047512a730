"""Content digest of a written split: equal on every engine and run that writes the same rows, whatever its part files.

Each row gets a 64-bit hash of its values in a canonical form (columns in schema order, each mixed with its name
and canonical kind; floats by their bits with -0.0 as 0.0 and one NaN; integers as int64; text (UTF-8) and bytes as
their 64-bit words folded with SplitMix64; nulls as one constant). The `_source` and `_row` columns make it a hash
over (source file, row) and the values. A partition's digest is the sum of its row hashes mod 2^64 and its row
count, so the split's digest does not depend on how the rows fall into partitions or files, nor on their order.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.engines.base import to_arrow
from pipelines.ingest.split import splitmix64

NULL = np.uint64(0x6E756C6C6E756C6C)
NAN_BITS = np.float64(np.nan).view(np.uint64)
MASK = (1 << 64) - 1


def _fold(block: np.ndarray) -> np.ndarray:
    """Hash each row of a (rows, length) uint8 matrix: its zero-padded little-endian 64-bit words, each mixed with
    its position by SplitMix64, summed with the mixed length (mod 2^64) and mixed once more; in row chunks."""
    rows, length = block.shape
    if length % 8:
        block = np.concatenate([block, np.zeros((rows, 8 - length % 8), np.uint8)], axis=1)
    words = np.ascontiguousarray(block).view("<u8")
    positions = splitmix64(np.arange(words.shape[1], dtype=np.uint64))
    out = np.empty(rows, dtype=np.uint64)
    step = max(1, (1 << 19) // max(1, words.shape[1]))  # about 4 MB of words at a time
    for lo in range(0, rows, step):
        mixed = splitmix64(words[lo : lo + step] ^ positions)
        out[lo : lo + step] = mixed.sum(axis=1, dtype=np.uint64)
    return splitmix64(out + splitmix64(np.full(rows, length, dtype=np.uint64)))


def _bytes_hashes(column: pa.Array) -> np.ndarray:
    """A hash of each binary value (`_fold`); nulls as NULL. Values of one length are hashed together as a matrix:
    straight from Arrow's buffer when every value has one length (images), else each distinct value once."""
    n = len(column)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset : column.offset + n + 1]
    lengths = np.diff(offsets)
    if n and column.null_count == 0 and (lengths == lengths[0]).all():
        data = np.frombuffer(column.buffers()[2] or b"", dtype=np.uint8)
        return _fold(data[offsets[0] : offsets[-1]].reshape(n, int(lengths[0])))
    encoded = column.dictionary_encode()
    values = encoded.dictionary.to_pylist()
    sizes = np.array([len(v) for v in values], dtype=np.int64)
    keys = np.zeros(len(values), dtype=np.uint64)
    for size in np.unique(sizes):
        pick = np.flatnonzero(sizes == size)
        block = np.frombuffer(b"".join(values[i] for i in pick), dtype=np.uint8).reshape(len(pick), int(size))
        keys[pick] = _fold(block)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.full(n, NULL, dtype=np.uint64)
    present = codes >= 0
    out[present] = keys[codes[present]]
    return out


def _number_bits(column: pa.Array) -> np.ndarray:
    """The bits of each number in a canonical form: floats as float64 (-0.0 as 0.0, one NaN), integers as int64."""
    if pa.types.is_floating(column.type):
        x = column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        x = np.where(x == 0.0, 0.0, x)
        bits = x.view(np.uint64).copy()
        bits[np.isnan(x)] = NAN_BITS
    else:
        bits = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64).copy()
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    bits[nulls] = NULL
    return bits


def column_hashes(column: pa.Array) -> np.ndarray:
    """A 64-bit value per row of one column: numbers by their bits, text and bytes by their hash."""
    kind = column.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return _number_bits(column)
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
    try:
        as_bytes = column.cast(pa.large_binary())  # text as its UTF-8 bytes
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TypeError(f"no canonical form for Arrow type {kind}") from exc
    return _bytes_hashes(as_bytes)


def _kind(kind: pa.DataType) -> str:
    """The canonical kind a column is hashed as (string and large_string, int32 and int64 are alike)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_floating(kind):
        return "float"
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return "int"
    return "bytes"


def row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash per row over its values, in column order, each column keyed by its name and type."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for name, column in zip(table.column_names, table.columns, strict=True):
        key = np.uint64(zlib.crc32(f"{name}:{_kind(column.type)}".encode()))
        h = splitmix64(h ^ splitmix64(column_hashes(column.combine_chunks()) ^ key))
    return h


def partition_digest(pdf: pd.DataFrame, schema: pa.Schema) -> dict[str, Any]:
    """Row count and the sum (mod 2^64) of the row hashes of one written partition, as Arrow sees it under `schema`."""
    hashes = row_hashes(to_arrow(pdf, schema))
    return {"rows": len(hashes), "sum": int(hashes.sum(dtype=np.uint64))}


def combine_digests(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The split's digest from its partitions': row count and 16 hex digits."""
    total = sum(p["sum"] for p in parts) & MASK
    return {"rows": sum(p["rows"] for p in parts), "digest": f"{total:016x}"}
