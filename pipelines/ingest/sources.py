"""Source files and their split into balanced record ranges (segments) that workers read independently."""

from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import io
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
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
    compression: str | None = None
    encoding: str = "utf-8"

    @property
    def splittable(self) -> bool:
        """Whether workers may read parts of it independently (a compressed stream must be read from its start)."""
        return self.compression is None


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
            if not found:
                raise DataError(f"{item}: a directory with no {' / '.join(suffixes)} files")
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


QUOTE, LF, CR = 34, 10, 13
COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4"}
CSV_SUFFIXES = tuple(f"{base}{codec}" for base in (".csv", ".txt", ".tsv") for codec in ("", *COMPRESSED))


def compression_of(path: str) -> str | None:
    """The codec a file's name or magic number says it is compressed with (None: plain)."""
    for suffix, codec in COMPRESSED.items():
        if path.endswith(suffix):
            return codec
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic[:3] == b"BZh":
        return "bz2"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


def open_source(path: str, compression: str | None) -> Any:
    """A binary reader of the file's bytes, decompressed on the fly where it is compressed."""
    if compression is None:
        return open(path, "rb")
    return pa.input_stream(path, compression=compression)


def _line_ends(buf: np.ndarray, next_byte: int | None) -> np.ndarray:
    """Offsets of the bytes that end a line: every LF, and a CR not followed by LF (`next_byte` follows `buf`)."""
    ends = np.flatnonzero(buf == LF)
    crs = np.flatnonzero(buf == CR)
    if len(crs):
        following = np.append(buf, np.uint8(LF if next_byte == LF else 0))[crs + 1]
        ends = np.union1d(ends, crs[following != LF])
    return ends


def _ends_by_quote_state(buf: np.ndarray, next_byte: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Line ends with an even and with an odd number of quotes before them in `buf`, and the parity of all its quotes.

    RFC 4180: a doubled quote inside quotes flips twice, so the parity of the quotes seen so far tells inside a
    quoted field from outside. Only the quote positions are searched, not every byte accumulated.
    """
    ends = _line_ends(buf, next_byte)
    quotes = np.flatnonzero(buf == QUOTE)
    if not len(quotes):
        return ends, ends[:0], 0
    odd = (np.searchsorted(quotes, ends) & 1).astype(bool)
    return ends[~odd], ends[odd], len(quotes) & 1


def record_ends(buf: np.ndarray, parity: int, next_byte: int | None) -> tuple[np.ndarray, int]:
    """Offsets of the record-ending bytes in `buf` (LF, CR LF's LF, a lone CR) outside quotes, and the parity after.

    `parity` is 1 when `buf` starts inside a quoted field; `next_byte` is the byte after `buf` (None at its end).
    """
    even, odd, flips = _ends_by_quote_state(buf, next_byte)
    return (odd if parity else even), parity ^ flips


@dataclass(frozen=True)
class BlockScan:
    """Record ends in one byte block for either quote state at its start: counts, first end, and the block's quotes."""

    ends: tuple[int, int]
    first: tuple[int, int]
    flips: int


def _scan_block(block: tuple[str, int, int]) -> BlockScan:
    """Count record ends in bytes [lo, hi) of a file for both possible quote states at `lo` (one read, in chunks)."""
    path, lo, hi = block
    counts, firsts, parities = [0, 0], [-1, -1], [0, 1]
    with open(path, "rb") as fh:
        fh.seek(lo)
        pos = lo
        while pos < hi:
            chunk = fh.read(min(8 << 20, hi - pos))
            if not chunk:
                break
            nxt = fh.read(1)
            fh.seek(-len(nxt), os.SEEK_CUR)
            even, odd, flips = _ends_by_quote_state(np.frombuffer(chunk, dtype=np.uint8), nxt[0] if nxt else None)
            for state in (0, 1):
                ends = (even, odd)[
                    parities[state]
                ]  # outside quotes: an even count since the block began, if it began so
                if firsts[state] < 0 and len(ends):
                    firsts[state] = pos + int(ends[0])
                counts[state] += len(ends)
                parities[state] ^= flips
            pos += len(chunk)
    return BlockScan((counts[0], counts[1]), (firsts[0], firsts[1]), parities[0])


def _scan_stream(source: tuple[str, str]) -> tuple[int, int, bool]:
    """Record ends, final quote state and whether the last record is unterminated, of a compressed file (one pass)."""
    path, compression = source
    count, parity, last = 0, 0, LF
    with open_source(path, compression) as fh:
        chunk = fh.read(8 << 20)
        while chunk:
            nxt = fh.read(8 << 20)
            ends, parity = record_ends(np.frombuffer(chunk, dtype=np.uint8), parity, nxt[0] if nxt else None)
            count += len(ends)
            last = chunk[-1]
            chunk = nxt
    return count, parity, last not in (LF, CR)


def _unclosed_quote_line(path: str, compression: str | None) -> int:
    """Line on which the quoted field that is never closed opens (a sequential pass, only to name it)."""
    parity, opened, number, rest = 0, 0, 0, b""
    with open_source(path, compression) as fh:
        while chunk := fh.read(8 << 20):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                number += 1
                before, parity = parity, parity ^ (line.count(b'"') & 1)
                opened = number if before == 0 and parity == 1 else opened
    if rest:
        number += 1
        opened = number if parity == 0 and rest.count(b'"') & 1 else opened
    return opened or number


def _csv_header(path: str, delimiter: str, compression: str | None, encoding: str) -> tuple[str, ...]:
    with open_source(path, compression) as fh:
        head = fh.read(1 << 20)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    try:
        text = head.decode(encoding)
    except UnicodeDecodeError as exc:
        text = head[: exc.start].decode(encoding)
        if "\n" not in text and "\r" not in text:
            hint = "try the dataset's `encoding` option"
            raise DataError(f"{path}: line 1 (header) is not {encoding} text ({hint})") from exc
    row = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    names = tuple(name.strip() for name in row)
    if not names or not any(names):
        raise DataError(f"{path}: line 1 (header) is empty; CSV input needs a header row")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise DataError(f"{path}: line 1 (header) has no name for column(s) {blank}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: line 1 (header) repeats column name(s) {dupes}")
    return names


def index_csv_files(
    paths: list[str], delimiter: str, block_bytes: int, run: TaskRunner, encoding: str = "utf-8"
) -> list[SourceFile]:
    """Index CSV files: header, record count and a (byte offset, record) checkpoint per block, scanned in parallel.

    Record boundaries respect quotes (RFC 4180): a field quoted across lines stays in its record, at the cost of
    only the block it sits in. A compressed file cannot be split: it is scanned whole by one task, and read as
    one segment.
    """
    per_file: dict[str, list[tuple[str, int, int]]] = {}
    codecs = {path: compression_of(path) for path in paths}
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            raise DataError(f"{path}: file is empty (no header row)")
        if codecs[path] is None:
            per_file[path] = [(path, lo, min(lo + block_bytes, size)) for lo in range(0, size, block_bytes)]
    blocks = [b for file_blocks in per_file.values() for b in file_blocks]
    streams = [(p, c) for p, c in codecs.items() if c is not None]
    tasks: list[tuple[str, int, int] | tuple[str, str]] = [*blocks, *streams]
    scans = dict(zip(tasks, run(_scan_any, tasks), strict=True))
    files = []
    for path in paths:
        columns = _csv_header(path, delimiter, codecs[path], encoding)
        checkpoints = [(0, 0)]
        codec = codecs[path]
        if codec is None:
            ends, parity = 0, 0
            for block in per_file[path]:
                scan: BlockScan = scans[block]
                if block[1] > 0 and scan.first[parity] >= 0:
                    checkpoints.append((scan.first[parity] + 1, ends + 1))
                ends += scan.ends[parity]
                parity ^= scan.flips
            size = per_file[path][-1][2]
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                unterminated = fh.read(1)[0] not in (LF, CR)
        else:
            ends, parity, unterminated = scans[(path, codec)]
        if parity:
            line = _unclosed_quote_line(path, codecs[path])
            raise DataError(f"{path}: line {line}: a quoted field opens here and is never closed")
        files.append(
            SourceFile(
                path=path,
                name=os.path.basename(path),
                records=ends + int(unterminated) - 1,
                columns=columns,
                checkpoints=tuple(checkpoints),
                header_lines=1,
                compression=codecs[path],
                encoding=encoding,
            )
        )
    if not any(f.records for f in files):
        named = files[0].path if len(files) == 1 else f"{len(files)} files ({files[0].path}, ...)"
        raise DataError(f"{named}: a header and no records")
    return files


def _scan_any(item: tuple[str, int, int] | tuple[str, str]) -> Any:
    """One indexing task: a byte block of a plain file, or a whole compressed file."""
    return _scan_block(item) if len(item) == 3 else _scan_stream(item)


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


def npz_names(path: str) -> list[str]:
    """Names of the arrays inside an .npz archive (nothing is loaded)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc


def with_distinct_names(files: Sequence[SourceFile]) -> list[SourceFile]:
    """The files named by their base names or, where two share one, all by their paths below their common folder.

    Rows are known by (file name, row) in the quarantine, the split and the digest, so names must differ; the same
    path given twice is refused.
    """
    paths = [os.path.abspath(f.path) for f in files]
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise DataError(f"{twice[0]}: the same input file is given twice")
    if len({f.name for f in files}) == len(files):
        return list(files)
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return [dataclasses.replace(f, name=os.path.relpath(p, root)) for f, p in zip(files, paths, strict=True)]


def balanced_segments(files: list[SourceFile], parts: int) -> list[list[Segment]]:
    """Cut the records into `parts` ranges whose sizes differ by at most one; an unsplittable file is a part of its own.

    With unsplittable (compressed) files, each is one part and the splittable files share the remaining parts.
    """
    whole = [[Segment(f, 0, f.records)] for f in files if not f.splittable and f.records]
    rest = [f for f in files if f.splittable]
    total = sum(f.records for f in rest)
    if not total:
        return whole or [[]]
    parts = max(1, min(parts - len(whole), total))
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    out: list[list[Segment]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        segs, offset = [], 0
        for f in rest:
            a, b = max(lo, offset), min(hi, offset + f.records)
            if a < b:
                segs.append(Segment(f, a - offset, b - offset))
            offset += f.records
        out.append(segs)
    return whole + out


def table_header(dataset: Any) -> list[str] | None:
    """Column names of a tabular dataset's first file (None when it cannot be read yet: no file, a bad path)."""
    from pipelines.data.bundled import resolve_path
    from pipelines.errors import PipelineError

    suffix = CSV_SUFFIXES if dataset.format == "csv" else (".parquet", ".pq")
    try:
        path = expand_paths(resolve_path(dataset.path), suffix)[0]
        if dataset.format == "parquet":
            return list(pq.read_schema(path).names)
        return list(_csv_header(path, dataset.delimiter, compression_of(path), dataset.encoding))
    except (PipelineError, OSError):
        return None
