"""Read one segment of a source file into a RawChunk: declared columns, row numbers, raw text of lines."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.errors import DataError
from pipelines.ingest.schema import TableSchema
from pipelines.ingest.sources import Segment, open_maybe_gzip, open_source, record_ends


@dataclass
class Malformed:
    """A record that could not be split into fields (wrong field count)."""

    row: int
    reason: str
    raw: str
    column: str | None = None


@dataclass
class RawChunk:
    """What a reader hands to validation: values (typed or text), their row numbers, and rejects so far."""

    source: str
    values: pa.Table
    rows: np.ndarray
    typed: bool
    malformed: list[Malformed] = field(default_factory=list)
    body: bytes | None = None
    starts: np.ndarray | None = None
    first_line: int = 0
    encoding: str = "utf-8"

    def raw_lines(self, mask: np.ndarray) -> list[str]:
        """Original text of the selected records (CSV only; empty strings otherwise)."""
        if self.body is None or self.starts is None:
            return [""] * int(mask.sum())
        return [_line_text(self.body, self.starts, int(r - self.first_line), self.encoding) for r in self.rows[mask]]

    def empty_lines(self) -> np.ndarray:
        """Mask of records whose line holds only whitespace (CSV only)."""
        n = len(self.rows)
        if self.body is None or self.starts is None or n == 0:
            return np.zeros(n, bool)
        idx = self.rows - self.first_line
        short = (self.starts[idx + 1] - self.starts[idx]) <= 4
        out = np.zeros(n, bool)
        out[short] = [not self.body[self.starts[i] : self.starts[i + 1]].strip() for i in idx[short]]
        return out


def _csv_records(segment: Segment) -> tuple[bytes, np.ndarray]:
    """Bytes of the segment's records and the start offset of each record (plus the end).

    Records end at a line end outside quotes, so a quoted field spanning lines stays in its record; reading
    starts at a checkpoint, which is always a record boundary (outside quotes).
    """
    f = segment.file
    first = segment.start + f.header_lines
    last = segment.stop + f.header_lines
    offset, record = max((cp for cp in f.checkpoints if cp[1] <= first), key=lambda cp: cp[1])
    need = last - record
    parts: list[bytes] = []
    positions: list[np.ndarray] = []
    found = size = parity = 0
    with open_source(f.path, f.compression) as fh:
        if offset:
            fh.seek(offset)
        chunk = fh.read(16 << 20)
        while chunk and found < need:
            nxt = fh.read(16 << 20)
            ends, parity = record_ends(np.frombuffer(chunk, dtype=np.uint8), parity, nxt[0] if nxt else None)
            parts.append(chunk)
            positions.append(ends + size)
            found += len(ends)
            size += len(chunk)
            chunk = nxt
    data = b"".join(parts)
    ends = np.concatenate(positions) if positions else np.empty(0, np.int64)
    skip = first - record
    begin = 0 if skip == 0 else int(ends[skip - 1]) + 1
    end = int(ends[need - 1]) + 1 if len(ends) >= need else len(data)
    body = data[begin:end]
    inner = ends[(ends >= begin) & (ends < end)] - begin + 1
    starts = np.concatenate([[0], inner[inner < len(body)], [len(body)]]).astype(np.int64)
    if len(starts) - 1 != segment.stop - segment.start:
        raise DataError(
            f"{f.path}: expected {segment.stop - segment.start} records from record {first + 1}, "
            f"found {len(starts) - 1}"
        )
    return body, starts


def _line_text(body: bytes, starts: np.ndarray, i: int, encoding: str = "utf-8") -> str:
    return body[starts[i] : starts[i + 1]].rstrip(b"\r\n").decode(encoding, errors="replace")


def read_csv_segment(segment: Segment, schema: TableSchema, delimiter: str) -> RawChunk:
    """Parse a CSV segment: typed fast path, text fallback when a value does not convert."""
    f = segment.file
    body, starts = _csv_records(segment)
    n_lines = len(starts) - 1
    first_line_no = segment.start + f.header_lines + 1
    multiline = b'"' in body  # a quoted field may span lines
    bad: list[Malformed] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        line_no = first_line_no + row.number - 1
        bad.append(
            Malformed(
                line_no, f"malformed row: {row.actual_columns} fields, expected {row.expected_columns}", row.text or ""
            )
        )
        return "skip"

    def parse(typed: bool, binary: bool = False) -> pa.Table:
        bad.clear()
        text = pa.binary() if binary else pa.string()
        types = {c.name: (c.arrow_type if typed and c.kind != "bool" else text) for c in schema.columns}
        return pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(
                column_names=list(f.columns),
                use_threads=False,
                block_size=max(len(body), 1 << 20) + 1,
                encoding=f.encoding,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                invalid_row_handler=on_invalid,
                ignore_empty_lines=False,
                newlines_in_values=multiline,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=schema.names,
                null_values=[""],
                strings_can_be_null=typed,
                quoted_strings_can_be_null=typed,
            ),
        )

    typed = True
    try:
        table = parse(typed=True) if n_lines else None
    except pa.ArrowInvalid:
        typed = False
        try:
            table = parse(typed=False)
        except pa.ArrowInvalid as exc:
            if "invalid UTF8" not in str(exc):
                raise DataError(
                    f"{f.path}: records {first_line_no}-{first_line_no + n_lines - 1}: cannot parse CSV ({exc})"
                ) from exc
            table = parse(typed=False, binary=True)
    undecodable: list[Malformed] = []
    if table is not None and any(pa.types.is_binary(t) for t in table.schema.types):
        table, undecodable = _drop_undecodable(table, first_line_no, bad, f.encoding)
        table = _without_rows(table, undecodable, first_line_no, bad)
    values = table if table is not None else pa.table({c.name: pa.array([], pa.string()) for c in schema.columns})
    rows = np.arange(first_line_no, first_line_no + n_lines, dtype=np.int64)
    for m in undecodable:
        m.raw = _line_text(body, starts, m.row - first_line_no, f.encoding)
    bad.extend(undecodable)
    bad.sort(key=lambda m: m.row)
    if bad:
        rows = rows[~np.isin(rows, np.array([m.row for m in bad], dtype=np.int64))]
    if len(rows) != values.num_rows:
        raise DataError(
            f"{f.path}: records {first_line_no}-{first_line_no + n_lines - 1}: the CSV parser found "
            f"{values.num_rows} records where the quote-aware scan found {n_lines}"
        )
    return RawChunk(f.name, values, rows, typed, list(bad), body, starts, first_line_no, f.encoding)


def _drop_undecodable(
    table: pa.Table, first: int, skipped: list[Malformed], encoding: str
) -> tuple[pa.Table, list[Malformed]]:
    """Text columns parsed as bytes (some value is not valid text): decode them, naming each record that fails."""
    kept_rows = _parsed_rows(table.num_rows, first, skipped)
    bad: dict[int, Malformed] = {}
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa.types.is_binary(column.type):
            columns[name] = column
            continue
        values = column.to_pylist()
        text: list[str | None] = []
        for i, value in enumerate(values):
            try:
                text.append(None if value is None else value.decode(encoding))
            except UnicodeDecodeError:
                text.append(None)
                row = int(kept_rows[i])
                bad.setdefault(row, Malformed(row, f"not valid {encoding} text", "", name))
        columns[name] = pa.array(text, pa.string())
    return pa.table(columns), sorted(bad.values(), key=lambda m: m.row)


def _parsed_rows(n: int, first: int, skipped: list[Malformed]) -> np.ndarray:
    """Record numbers of the rows a parse returned (records it skipped as malformed left out)."""
    rows = np.arange(first, first + n + len(skipped), dtype=np.int64)
    return rows[~np.isin(rows, np.array([m.row for m in skipped], dtype=np.int64))]


def _without_rows(table: pa.Table, drop: list[Malformed], first: int, skipped: list[Malformed]) -> pa.Table:
    """The table less the given records."""
    if not drop:
        return table
    rows = _parsed_rows(table.num_rows, first, skipped)
    return table.filter(pa.array(~np.isin(rows, np.array([m.row for m in drop], dtype=np.int64))))


def read_parquet_segment(segment: Segment, schema: TableSchema) -> RawChunk:
    """Read rows [start, stop) of a Parquet file (only the row groups that hold them)."""
    f = segment.file
    pf = pq.ParquetFile(f.path)
    groups, first_row, offset = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > segment.start and offset < segment.stop:
            groups.append(g)
            first_row = offset if first_row is None else first_row
        offset += n
    table = (
        pf.read_row_groups(groups, columns=schema.names)
        if groups
        else pf.schema_arrow.empty_table().select(schema.names)
    )
    start = segment.start - (first_row or 0)
    table = table.slice(start, segment.stop - segment.start)
    rows = np.arange(segment.start, segment.stop, dtype=np.int64)
    return RawChunk(f.name, table, rows, typed=True)


def _read_records(segment: Segment, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Records [start, stop) of an IDX file (gzipped or not) as an array of the file's own shape."""
    f = segment.file
    stop = min(segment.stop, f.records)
    if segment.start >= stop:
        return np.empty((0, *shape), dtype=np.dtype(dtype).newbyteorder("="))
    dt = np.dtype(dtype)
    rec = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    with open_maybe_gzip(f.path) as fh:
        fh.seek(f.data_offset + segment.start * rec)
        data = fh.read((stop - segment.start) * rec)
    n = len(data) // rec
    arr = np.frombuffer(data[: n * rec], dtype=dt).reshape((n, *shape))
    return arr.astype(dt.newbyteorder("="), copy=False)


def read_image_segment(
    images: Segment, labels: Segment | None, fmt: str, npz_keys: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Image records and labels for one segment (labels None where the labels source has no record)."""
    if fmt == "npz":
        with np.load(images.file.path, allow_pickle=False) as archive:
            x = archive[npz_keys[0]][images.start : images.stop]
            y = archive[npz_keys[1]][images.start : images.stop] if npz_keys[1] in archive.files else None
        return x, y
    x = _read_records(images, images.file.shape, images.file.dtype)
    y = _read_records(labels, labels.file.shape, labels.file.dtype) if labels is not None else None
    return x, y
