"""Source files and their split into balanced record ranges (segments) that workers read independently."""

from __future__ import annotations

import csv
import glob
import gzip
import io
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.errors import DataError

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

TaskRunner = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


@dataclass(frozen=True)
class SourceFile:
    """One input file: how many records it holds and what is needed to seek to any of them."""

    path: str
    name: str
    records: int
    columns: tuple[str, ...] = ()
    checkpoints: tuple[tuple[int, int], ...] = ()
    header_lines: int = 0
    shape: tuple[int, ...] = ()
    dtype: str = ""
    data_offset: int = 0


@dataclass(frozen=True)
class Segment:
    """Records [start, stop) of one source file."""

    file: SourceFile
    start: int
    stop: int


def expand_paths(spec: str | list[str], suffixes: tuple[str, ...]) -> list[str]:
    """Files named by a path, a directory (its files with the given suffixes) or a glob, sorted."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in specs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.endswith(suffixes) and not f.startswith((".", "_"))
            )
        elif any(ch in item for ch in "*?["):
            found = sorted(glob.glob(item))
        else:
            found = [item]
        for path in found:
            if not os.path.isfile(path):
                raise DataError(f"{path}: input file not found")
            out.append(path)
    if not out:
        raise DataError(f"no input files match {spec!r}")
    return out


def _scan_newlines(block: tuple[str, int, int]) -> tuple[int, int]:
    """Count newlines in bytes [lo, hi) of a file and locate the first one (-1 if none)."""
    path, lo, hi = block
    count, first, pos = 0, -1, lo
    with open(path, "rb") as fh:
        fh.seek(lo)
        while pos < hi:
            chunk = fh.read(min(8 << 20, hi - pos))
            if not chunk:
                break
            if first < 0:
                idx = chunk.find(b"\n")
                if idx >= 0:
                    first = pos + idx
            count += chunk.count(b"\n")
            pos += len(chunk)
    return count, first


def _csv_header(path: str, delimiter: str) -> tuple[str, ...]:
    with open(path, "rb") as fh:
        line = fh.readline()
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: line 1 (header) is not UTF-8 text") from exc
    row = next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
    names = tuple(name.strip() for name in row)
    if not names or not any(names):
        raise DataError(f"{path}: line 1 (header) is empty; CSV input needs a header row")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: line 1 (header) repeats column name(s) {dupes}")
    return names


def index_csv_files(paths: list[str], delimiter: str, block_bytes: int, run: TaskRunner) -> list[SourceFile]:
    """Index CSV files: header, record count and a (byte offset, line) checkpoint per block, scanned in parallel."""
    per_file: dict[str, list[tuple[str, int, int]]] = {}
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            raise DataError(f"{path}: file is empty (no header row)")
        per_file[path] = [(path, lo, min(lo + block_bytes, size)) for lo in range(0, size, block_bytes)]
    blocks = [b for file_blocks in per_file.values() for b in file_blocks]
    scans = dict(zip(blocks, run(_scan_newlines, blocks), strict=True))
    files = []
    for path in paths:
        size = per_file[path][-1][2]
        columns = _csv_header(path, delimiter)
        checkpoints = [(0, 0)]
        newlines = 0
        for block in per_file[path]:
            count, first = scans[block]
            if block[1] > 0 and first >= 0:
                checkpoints.append((first + 1, newlines + 1))
            newlines += count
        with open(path, "rb") as fh:
            fh.seek(size - 1)
            unterminated = fh.read(1) != b"\n"
        lines = newlines + int(unterminated)
        files.append(
            SourceFile(
                path=path,
                name=os.path.basename(path),
                records=lines - 1,
                columns=columns,
                checkpoints=tuple(checkpoints),
                header_lines=1,
            )
        )
    return files


def index_parquet_files(paths: list[str]) -> list[SourceFile]:
    """Index Parquet files from their footers (row counts and column names)."""
    files = []
    for path in paths:
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        columns = tuple(meta.schema.to_arrow_schema().names)
        files.append(SourceFile(path=path, name=os.path.basename(path), records=meta.num_rows, columns=columns))
    return files


def open_maybe_gzip(path: str) -> Any:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def index_idx_file(path: str) -> SourceFile:
    """Read an MNIST-style IDX header: element type, dimensions, record count."""
    try:
        with open_maybe_gzip(path) as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
            code, ndim = head[2], head[3]
            if code not in IDX_DTYPES:
                raise DataError(f"{path}: IDX element type 0x{code:02x} is not one of the IDX types")
            dims_raw = fh.read(4 * ndim)
            if ndim == 0 or len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: IDX header is truncated")
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX header ({exc})") from exc
    dims = struct.unpack(f">{ndim}I", dims_raw)
    return SourceFile(
        path=path,
        name=os.path.basename(path),
        records=dims[0],
        shape=tuple(dims[1:]),
        dtype=IDX_DTYPES[code].str,
        data_offset=4 + 4 * ndim,
    )


def index_npz_file(path: str, key: str) -> SourceFile:
    """Record count, shape and dtype of one array inside an .npz archive (read without pickle)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise DataError(f"{path}: array {key!r} not found (archive has {archive.files})")
            arr = archive[key]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    if arr.ndim == 0:
        raise DataError(f"{path}: array {key!r} is a scalar, expected one record per row")
    return SourceFile(
        path=path, name=os.path.basename(path), records=arr.shape[0], shape=tuple(arr.shape[1:]), dtype=arr.dtype.str
    )


def balanced_segments(files: list[SourceFile], parts: int) -> list[list[Segment]]:
    """Cut the concatenated records of all files into `parts` ranges whose sizes differ by at most one."""
    total = sum(f.records for f in files)
    parts = max(1, min(parts, total))
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    out: list[list[Segment]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        segs, offset = [], 0
        for f in files:
            a, b = max(lo, offset), min(hi, offset + f.records)
            if a < b:
                segs.append(Segment(f, a - offset, b - offset))
            offset += f.records
        out.append(segs)
    return out
