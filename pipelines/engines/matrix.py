"""Distributed matrices on the engine seam: sources read by row blocks, writers, chunking, and `MatrixOps`.

A source (`Generated`, `Npy`, `Zarr`, `Parquet`) is a small picklable description that any worker can read a
block of rows from (`read(r0, r1)`); nothing is loaded on the driver. A writer (`NpyWriter`, `ZarrWriter`)
takes blocks of a large result from any worker. Each engine implements `MatrixOps` on its own distributed
arrays (dask.array; Spark MLlib's RowMatrix / IndexedRowMatrix / BlockMatrix); stages speak only this module.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipelines.errors import ConfigError, DataError

GEN_TILE_ROWS = 4096  # generated values depend on (seed, row tile) only, never on how blocks are cut
SPARK_MAX_COLS = 65535  # RowMatrix.computeGramianMatrix (and everything built on it) refuses more columns


class Source(abc.ABC):
    """A 2-d float matrix any worker can read a block of rows from; also a dask `from_array` target."""

    ndim = 2

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("float64")

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @abc.abstractmethod
    def read(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 (all columns) as a C-ordered float array."""

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        start, stop, _ = rows.indices(self.shape[0])
        block = self.read(start, stop)
        return block if cols == slice(None) else np.ascontiguousarray(block[:, cols])

    def __dask_tokenize__(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class Generated(Source):
    """Random values made where they are read: tile t of GEN_TILE_ROWS rows is drawn from rng([seed, t])."""

    rows: int
    cols: int
    seed: int = 0
    kind: Literal["normal", "uniform"] = "normal"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def read(self, r0: int, r1: int) -> np.ndarray:
        out = np.empty((r1 - r0, self.cols))
        for tile in range(r0 // GEN_TILE_ROWS, -(-r1 // GEN_TILE_ROWS)):
            t0 = tile * GEN_TILE_ROWS
            rng = np.random.default_rng([self.seed, tile])
            n = min(GEN_TILE_ROWS, self.rows - t0)
            values = rng.standard_normal((n, self.cols)) if self.kind == "normal" else rng.random((n, self.cols))
            lo, hi = max(r0, t0), min(r1, t0 + n)
            out[lo - r0 : hi - r0] = values[lo - t0 : hi - t0]
        return out


@dataclass(frozen=True)
class Npy(Source):
    """A 1-d or 2-d .npy file; a reader reads only its rows (one contiguous run; memory-mapped if Fortran-ordered)."""

    path: str
    _shape: tuple[int, int] = field(default=(0, 0), compare=False)
    _dtype: str = field(default="float64", compare=False)
    offset: int = field(default=-1, compare=False)  # where the values start (C order); -1: memory-map instead

    @classmethod
    def open(cls, path: str) -> Npy:
        """Read the header only; a missing or non-2-d file is a DataError naming it."""
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy file ({exc})") from None
        if arr.ndim not in (1, 2) or arr.dtype.kind not in "fiu":
            raise DataError(f"{path}: need a 1-d or 2-d numeric array, found shape {arr.shape} dtype {arr.dtype}")
        shape = (arr.shape[0], arr.shape[1] if arr.ndim == 2 else 1)
        return cls(path, shape, arr.dtype.str, -1 if arr.flags.f_contiguous and arr.ndim == 2 else arr.offset)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def read(self, r0: int, r1: int) -> np.ndarray:
        cols, dtype = self._shape[1], np.dtype(self._dtype)
        if self.offset >= 0:  # C order: the rows are one contiguous run of the file, read straight into memory
            block = np.fromfile(self.path, dtype, (r1 - r0) * cols, offset=self.offset + r0 * cols * dtype.itemsize)
            return block.reshape(r1 - r0, cols).astype(np.float64, copy=False)
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return np.array(arr[r0:r1], dtype=np.float64, order="C").reshape(r1 - r0, cols)


@dataclass(frozen=True)
class Zarr(Source):
    """A 2-d Zarr array (a store directory)."""

    path: str
    _shape: tuple[int, int] = field(default=(0, 0), compare=False)
    chunk_rows: int = field(default=0, compare=False)

    @classmethod
    def open(cls, path: str) -> Zarr:
        import zarr

        try:
            arr = zarr.open_array(path, mode="r")
        except Exception as exc:  # zarr raises several kinds for a missing or foreign store
            raise DataError(f"{path}: not a readable Zarr array ({exc})") from None
        if arr.ndim != 2:
            raise DataError(f"{path}: need a 2-d array, found shape {arr.shape}")
        rows, cols = arr.shape
        return cls(path, (rows, cols), arr.chunks[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def read(self, r0: int, r1: int) -> np.ndarray:
        import zarr

        return np.asarray(zarr.open_array(self.path, mode="r")[r0:r1], dtype=np.float64, order="C")


@dataclass(frozen=True)
class Parquet(Source):
    """Numeric columns of a Parquet file or directory of part files; rows in file then row-group order."""

    path: str
    columns: tuple[str, ...]
    groups: tuple[tuple[str, int, int, int], ...] = field(default=(), compare=False)  # file, group, row0, rows

    @classmethod
    def open(cls, path: str, columns: list[str] | None) -> Parquet:
        """List the files and row groups (metadata only); columns default to every numeric one."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = (
            sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet") and not f.startswith("."))
            if os.path.isdir(path)
            else [path]
        )
        if not files:
            raise DataError(f"{path}: no .parquet files")
        schema = pq.read_schema(files[0])
        numeric = [f.name for f in schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
        cols = list(columns or numeric)
        missing = [c for c in cols if c not in numeric]
        if missing:
            raise ConfigError(f"{path}: column(s) {missing} are missing or not numeric; numeric: {numeric}")
        groups, row = [], 0
        for f in files:
            meta = pq.ParquetFile(f).metadata
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    groups.append((f, g, row, n))
                    row += n
        return cls(path, tuple(cols), tuple(groups))

    @property
    def shape(self) -> tuple[int, int]:
        rows = self.groups[-1][2] + self.groups[-1][3] if self.groups else 0
        return (rows, len(self.columns))

    def read(self, r0: int, r1: int) -> np.ndarray:
        import pyarrow.parquet as pq

        parts = []
        for f, g, start, n in self.groups:
            if start < r1 and start + n > r0:
                table = pq.ParquetFile(f).read_row_group(g, columns=list(self.columns))
                block = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in self.columns])
                parts.append(block[max(r0, start) - start : min(r1, start + n) - start])
        return np.ascontiguousarray(np.concatenate(parts)) if parts else np.empty((0, len(self.columns)))


class Writer(abc.ABC):
    """A result written block by block from any worker (`writer[r0:r1, c0:c1] = block`); a dask `store` target."""

    def __init__(self, path: str) -> None:
        self.path = path

    @abc.abstractmethod
    def create(self, shape: tuple[int, int], chunks: tuple[int, int]) -> None:
        """Make the empty float64 array on disk (driver side, once)."""

    @abc.abstractmethod
    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        """Write one block."""


class NpyWriter(Writer):
    """A .npy file written in place: whole-row blocks with one positioned write, others through a memory map.

    (A positioned write keeps the block out of the worker's resident memory; pages written through a map
    count against a worker's memory limit until they are unmapped.)
    """

    fmt = "npy"

    def create(self, shape: tuple[int, int], chunks: tuple[int, int]) -> None:
        out = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float64, shape=shape)
        del out

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        out = np.load(self.path, mmap_mode="r+", allow_pickle=False)
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        slices = isinstance(rows, slice) and isinstance(cols, slice)
        start, stop, step = rows.indices(out.shape[0]) if slices else (0, 0, 0)
        whole_rows = slices and step == 1 and cols.indices(out.shape[1]) == (0, out.shape[1], 1)
        if not (whole_rows and out.flags.c_contiguous):
            out[key] = value
            out.flush()
            return
        offset, width = out.offset + start * out.strides[0], out.shape[1]
        del out
        data = np.ascontiguousarray(np.broadcast_to(value, (stop - start, width)), dtype=np.float64)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view, done = memoryview(data).cast("B"), 0  # type: ignore[arg-type]  # numpy stub: __buffer__ only on 3.12+
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
        finally:
            os.close(fd)


class ZarrWriter(Writer):
    """A Zarr store; blocks aligned to its chunks write without locks."""

    fmt = "zarr"

    def create(self, shape: tuple[int, int], chunks: tuple[int, int]) -> None:
        import zarr

        zarr.create_array(self.path, shape=shape, chunks=chunks, dtype="float64", overwrite=False)

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        import zarr

        zarr.open_array(self.path, mode="r+")[key] = value


WRITERS: dict[str, type[Writer]] = {"npy": NpyWriter, "zarr": ZarrWriter}


@dataclass(frozen=True)
class Out:
    """Where a matrix result goes: gathered to the driver when at most `gather_bytes`, else `fmt` at `path`."""

    path: str
    fmt: Literal["npy", "zarr"] = "zarr"
    gather_bytes: int = 256 * 2**20

    def gathers(self, shape: tuple[int, int]) -> bool:
        return shape[0] * shape[1] * 8 <= self.gather_bytes

    def writer(self) -> Writer:
        return WRITERS[self.fmt](self.path)


@dataclass
class Result:
    """A matrix result: `value` when gathered, else `written` (the path of the stored array)."""

    shape: tuple[int, ...]
    value: np.ndarray | None = None
    written: str | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. s and vt of an SVD


def chunk_shape(shape: tuple[int, int], block_bytes: int, itemsize: int = 8) -> tuple[int, int]:
    """(block rows, block columns) for a block of about `block_bytes`.

    Columns stay whole while a cols x cols tile of a product (X.T @ X, X @ Y) fits in block_bytes; wider
    matrices are cut into equal column blocks that do. Rows then fill the block (at least one row).
    """
    rows, cols = shape
    tile_cols = max(1, int(math.sqrt(block_bytes / itemsize)))
    ncb = max(1, -(-cols // tile_cols))
    block_cols = -(-cols // ncb)
    block_rows = max(1, min(rows, block_bytes // (itemsize * block_cols)))
    return block_rows, block_cols


def auto_block_bytes(memory_per_worker: int) -> int:
    """The `auto` block size: an eighth of a worker's memory (inputs, products and partial sums fit beside it)."""
    return max(1 << 20, memory_per_worker // 8)


def row_ranges(rows: int, block_rows: int) -> list[tuple[int, int]]:
    """Consecutive [r0, r1) ranges of block_rows rows covering 0..rows."""
    return [(r, min(rows, r + block_rows)) for r in range(0, rows, block_rows)]


class MatrixOps(abc.ABC):
    """Matrix operations one engine runs on its workers; inputs are sources, big outputs go through `Out`."""

    kind: str = "abstract"

    @abc.abstractmethod
    def memory_per_worker(self) -> int:
        """Bytes of memory one task may use (how `auto` chunking is sized)."""

    @abc.abstractmethod
    def multiply(self, x: Source, y: Source, block_bytes: int, out: Out) -> Result:
        """X @ Y."""

    @abc.abstractmethod
    def gram(self, x: Source, block_bytes: int, out: Out) -> Result:
        """X.T @ X."""

    @abc.abstractmethod
    def svd(self, x: Source, method: str, k: int, n_power_iter: int, seed: int, block_bytes: int) -> Result:
        """Singular values (extra "s", descending) and right vectors (extra "vt"); method tsqr or randomized."""

    @abc.abstractmethod
    def solve(self, a: Source, b: Source, block_bytes: int) -> Result:
        """x of A x = b: exact for square A, least squares for tall A; value has b's columns."""


def check_shapes(op: str, x: Source, y: Source | None) -> None:
    """Operands that fit the operation, else a ConfigError naming both shapes."""
    if op == "multiply" and y is not None and x.shape[1] != y.shape[0]:
        raise ConfigError(f"multiply: x has {x.shape[1]} columns but y has {y.shape[0]} rows")
    if op == "solve" and y is not None:
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"solve: x (A) has {x.shape[0]} rows but b has {y.shape[0]}")
        if x.shape[0] < x.shape[1]:
            raise ConfigError(f"solve: A is {x.shape}, wider than tall (underdetermined); need rows >= columns")
