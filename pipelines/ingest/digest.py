"""Content digest of a written split: equal on every engine and run that writes the same rows, whatever its part files.

Each row gets a 64-bit hash of its values in a canonical form (columns in schema order, each mixed with its name
and Arrow type; floats by their bits with -0.0 as 0.0 and one NaN; text and bytes by BLAKE2b; nulls as one
constant). The `_source` and `_row` columns make it a hash over (source file, row) and the values. A partition's
digest is the sum of its row hashes mod 2^64 and its row count, so the split's digest does not depend on how the
rows fall into partitions or files, nor on their order.
"""

from __future__ import annotations

import hashlib
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


def _bytes_hashes(column: pa.Array) -> np.ndarray:
    """BLAKE2b (64-bit) of each binary value, each distinct value hashed once; nulls as NULL."""
    encoded = column.dictionary_encode()
    keys = np.array(
        [int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "little") for v in encoded.dictionary.to_pylist()],
        dtype=np.uint64,
    )
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.full(len(column), NULL, dtype=np.uint64)
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


def row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash per row over its values, in column order, each column keyed by its name and type."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    for name, column in zip(table.column_names, table.columns, strict=True):
        key = np.uint64(zlib.crc32(f"{name}:{column.type}".encode()))
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
