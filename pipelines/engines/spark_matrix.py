"""Matrix operations on Spark MLlib's distributed matrices (RowMatrix, IndexedRowMatrix, BlockMatrix).

Where Spark has a distributed form it is used: X.T @ X is RowMatrix.computeGramianMatrix; exact SVD is
RowMatrix.tallSkinnyQR's R (then the SVD of R on the driver); randomized SVD is RowMatrix.computeSVD (ARPACK,
Spark's own truncated SVD: `n_power_iter` has no meaning there); X @ Y is IndexedRowMatrix.multiply by a local
matrix when Y fits in a block, else BlockMatrix.multiply. Where it has none: there is no distributed solve,
so A x = b goes through the normal equations (A.T A) x = A.T b from one gramian of [A | b], solved on the
driver (conditioning squared); and the gramian (hence gram, tsqr, solve) is refused past 65,535 columns,
RowMatrix's own limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import scipy.linalg

from pipelines.engines.matrix import SPARK_MAX_COLS, MatrixOps, Out, Result, Source, row_ranges
from pipelines.engines.quiet import translated
from pipelines.errors import ConfigError

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def spark_bytes(text: str) -> int:
    """Spark's memory strings ("4g", "512m") in bytes."""
    found = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)b?\s*", text.lower())
    if not found:
        raise ConfigError(f"cannot read Spark memory size {text!r}")
    return int(found.group(1)) * _UNITS[found.group(2)]


def _rows_of(src: Source, extra: Source | None, span: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """(row index, row) of one block of rows; with `extra`, its columns appended (the [A | b] of a solve)."""
    block = src.read(*span)
    if extra is not None:
        block = np.hstack([block, extra.read(*span)])
    for i, row in enumerate(block):
        yield span[0] + i, row


def _chunk_writer(writer: Any, shape: tuple[int, int]) -> Any:
    def write(item: tuple[int, Iterable[tuple[int, np.ndarray]]]) -> int:
        _, rows = item
        rows = sorted(rows, key=lambda r: r[0])
        r0 = rows[0][0]
        writer[r0 : r0 + len(rows), :] = np.vstack([r[1] for r in rows])
        return len(rows)

    return write


def limit(what: str, cols: int) -> None:
    """A ConfigError when Spark's gramian cannot take this many columns."""
    if cols > SPARK_MAX_COLS:
        raise ConfigError(
            f"{what} on Spark needs RowMatrix.computeGramianMatrix, limited to {SPARK_MAX_COLS:,} columns; "
            f"this matrix has {cols:,} (use the dask engine, or svd method randomized)"
        )


class SparkMatrixOps(MatrixOps):
    """The matrix operations on MLlib's distributed matrices of one SparkSession."""

    kind = "spark"

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self.sc = spark.sparkContext

    def memory_per_worker(self) -> int:
        """Executor memory per core (the driver's memory per core in local mode)."""
        conf = self.sc.getConf()
        if self.sc.master.startswith("local"):
            return spark_bytes(conf.get("spark.driver.memory", "1g")) // max(1, self.sc.defaultParallelism)
        return spark_bytes(conf.get("spark.executor.memory", "1g")) // int(conf.get("spark.executor.cores", "1"))

    def indexed_rows(self, src: Source, block_bytes: int, extra: Source | None = None) -> Any:
        """An RDD of (index, row), one partition per block of rows, each read by its own task."""
        rows, cols = src.shape
        spans = row_ranges(rows, max(1, min(rows, block_bytes // (8 * cols))))
        return self.sc.parallelize(spans, len(spans)).flatMap(lambda span: _rows_of(src, extra, span))

    def row_matrix(self, src: Source, block_bytes: int, extra: Source | None = None) -> Any:
        from pyspark.mllib.linalg.distributed import RowMatrix

        return RowMatrix(self.indexed_rows(src, block_bytes, extra).map(lambda pair: pair[1]))

    def indexed_matrix(self, src: Source, block_bytes: int) -> Any:
        from pyspark.mllib.linalg.distributed import IndexedRowMatrix

        return IndexedRowMatrix(self.indexed_rows(src, block_bytes), src.shape[0], src.shape[1])

    def _deliver_rows(self, rows: Any, shape: tuple[int, int], block_bytes: int, out: Out) -> Result:
        """IndexedRows gathered when small; else grouped by output chunk, each chunk written by one task."""
        pairs = rows.map(lambda r: (int(r.index), r.vector.toArray()))
        if out.gathers(shape):
            value = np.zeros(shape)
            for i, row in pairs.collect():
                value[i] = row
            return Result(shape, value=value)
        chunk_rows = max(1, min(shape[0], block_bytes // (8 * shape[1])))
        writer = out.writer()
        writer.create(shape, (chunk_rows, shape[1]))
        chunks = -(-shape[0] // chunk_rows)
        grouped = pairs.map(lambda p: (p[0] // chunk_rows, p)).groupByKey(chunks)
        grouped.map(_chunk_writer(writer, shape)).sum()
        return Result(shape, written=out.path)

    def _deliver_local(self, value: np.ndarray, out: Out) -> Result:
        """A result Spark already returns to the driver (a local matrix): kept, or written when large."""
        if out.gathers(value.shape):
            return Result(value.shape, value=value)
        writer = out.writer()
        writer.create(value.shape, value.shape)
        writer[:, :] = value
        return Result(value.shape, written=out.path)

    @translated
    def multiply(self, x: Source, y: Source, block_bytes: int, out: Out) -> Result:
        from pyspark.mllib.linalg import DenseMatrix

        shape = (x.shape[0], y.shape[1])
        if y.nbytes <= block_bytes:  # Y to every task as a local matrix (column-major values)
            local = y.read(0, y.shape[0])
            dense = DenseMatrix(local.shape[0], local.shape[1], local.ravel(order="F"))
            product = self.indexed_matrix(x, block_bytes).multiply(dense)
        else:
            side = max(1, int(np.sqrt(block_bytes / 8)))
            xb = self.indexed_matrix(x, block_bytes).toBlockMatrix(side, side)
            yb = self.indexed_matrix(y, block_bytes).toBlockMatrix(side, side)
            product = xb.multiply(yb).toIndexedRowMatrix()
        return self._deliver_rows(product.rows, shape, block_bytes, out)

    @translated
    def gram(self, x: Source, block_bytes: int, out: Out) -> Result:
        limit("X.T @ X", x.shape[1])
        return self._deliver_local(self.row_matrix(x, block_bytes).computeGramianMatrix().toArray(), out)

    @translated
    def svd(self, x: Source, method: str, k: int, n_power_iter: int, seed: int, block_bytes: int) -> Result:
        rows, cols = x.shape
        if method == "tsqr":
            limit("svd method tsqr (its R is columns x columns on the driver)", cols)
            if rows < cols:
                raise ConfigError(f"svd method tsqr needs a tall-skinny matrix; x is {rows} x {cols} (use randomized)")
            r = self.row_matrix(x, block_bytes).tallSkinnyQR(computeQ=False).R.toArray()
            _, s, vt = np.linalg.svd(r)
            return Result((min(rows, cols),), value=s[:k], extra={"s": s[:k], "vt": vt[:k]})
        from pyspark import StorageLevel

        if not 0 < k < cols:
            raise ConfigError(f"svd on Spark (RowMatrix.computeSVD) needs 0 < k < columns ({cols}); k is {k}")
        matrix = self.row_matrix(x, block_bytes)
        rows = matrix._java_matrix_wrapper._java_model.rows()  # the JVM's rows: ARPACK passes over them many times
        rows.persist(self.sc._getJavaStorageLevel(StorageLevel.MEMORY_AND_DISK))
        try:
            found = matrix.computeSVD(k, computeU=False)
        finally:
            rows.unpersist(False)
        s = found.s.toArray()
        return Result((k,), value=s, extra={"s": s, "vt": found.V.toArray().T})

    @translated
    def solve(self, a: Source, b: Source, block_bytes: int) -> Result:
        n, m = a.shape[1], b.shape[1]
        limit("solve (normal equations from the gramian of [A | b])", n + m)
        g = self.row_matrix(a, block_bytes, extra=b).computeGramianMatrix().toArray()
        x = scipy.linalg.solve(g[:n, :n], g[:n, n:], assume_a="pos")
        return Result(x.shape, value=x)
