"""Matrix operations on dask.array, computed on the engine's distributed Client (blocks read where they run)."""

from __future__ import annotations

import math
from typing import Any, cast

import dask.array as da
import numpy as np
import psutil
from dask.base import tokenize

from pipelines.engines.matrix import MatrixOps, Out, Result, Source, chunk_shape
from pipelines.engines.quiet import translated
from pipelines.errors import ConfigError


class DaskMatrixOps(MatrixOps):
    """X @ Y, X.T @ X, TSQR / randomized SVD and solve as dask.array graphs on a distributed Client."""

    kind = "dask"

    def __init__(self, client: Any) -> None:
        self.client = client

    def memory_per_worker(self) -> int:
        """The smallest worker's memory limit per thread (the machine's memory shared out when unlimited)."""
        workers = list(self.client.scheduler_info(n_workers=-1)["workers"].values())
        per = [w["memory_limit"] // max(1, w["nthreads"]) for w in workers if w.get("memory_limit")]
        if per:
            return min(per)
        threads = max(1, sum(w["nthreads"] for w in workers))
        return psutil.virtual_memory().total // threads

    def array(self, src: Source, chunks: tuple[int, int]) -> da.Array:
        """The source as a dask array whose blocks are read by the tasks that use them."""
        return da.from_array(src, chunks=chunks, asarray=True, name=f"matrix-{tokenize(src, chunks)}")

    def _compute(self, *arrays: da.Array) -> list[np.ndarray]:
        return self.client.gather(self.client.compute(list(arrays)))

    def _deliver(self, arr: da.Array, out: Out) -> Result:
        """Gather a small result; write a large one block by block from the workers (never gathered)."""
        if out.gathers(arr.shape):
            return Result(arr.shape, value=self._compute(arr)[0])
        writer = out.writer()
        shape, chunks = cast("tuple[int, int]", arr.shape), cast("tuple[int, int]", arr.chunksize)  # known sizes
        writer.create(shape, chunks)  # regular chunks: each dask block is whole store chunks
        # dask's annotation asks for an array; a store target needs only __setitem__ (dask.array.store's docs)
        self.client.compute(da.store(arr, writer, lock=False, compute=False)).result()  # type: ignore[arg-type]
        return Result(arr.shape, written=out.path)

    @translated
    def multiply(self, x: Source, y: Source, block_bytes: int, out: Out) -> Result:
        br, bc = chunk_shape(x.shape, block_bytes)
        by = max(1, min(y.shape[1], block_bytes // (8 * max(br, bc))))
        return self._deliver(self.array(x, (br, bc)) @ self.array(y, (bc, by)), out)

    @translated
    def gram(self, x: Source, block_bytes: int, out: Out) -> Result:
        arr = self.array(x, chunk_shape(x.shape, block_bytes))
        return self._deliver(arr.T @ arr, out)

    @translated
    def svd(self, x: Source, method: str, k: int, n_power_iter: int, seed: int, block_bytes: int) -> Result:
        rows, cols = x.shape
        if method == "tsqr":
            if rows < cols:
                raise ConfigError(f"svd method tsqr needs a tall-skinny matrix; x is {rows} x {cols} (use randomized)")
            arr = self.array(x, (max(cols, min(rows, block_bytes // (8 * cols))), cols))  # one column block
            _, s, vt = da.linalg.tsqr(arr, compute_svd=True)
            s, vt = self._compute(s, vt)
            return Result((min(rows, cols),), value=s[:k], extra={"s": s[:k], "vt": vt[:k]})
        arr = self.array(x, chunk_shape(x.shape, block_bytes))
        _, s, vt = da.linalg.svd_compressed(arr, k, n_power_iter=n_power_iter, seed=seed)
        s, vt = self._compute(s, vt)
        return Result((k,), value=s, extra={"s": s, "vt": vt})

    @translated
    def solve(self, a: Source, b: Source, block_bytes: int) -> Result:
        rows, cols = a.shape
        if rows == cols:  # LU on square blocks
            c = max(1, min(cols, int(math.sqrt(block_bytes / 8))))
            x = da.linalg.solve(self.array(a, (c, c)), self.array(b, (c, b.shape[1])))
        else:  # least squares by TSQR: A in one column block
            br = max(cols, min(rows, block_bytes // (8 * cols)))
            x = da.linalg.lstsq(self.array(a, (br, cols)), self.array(b, (br, b.shape[1])))[0]
        value = self._compute(x)[0]
        return Result(value.shape, value=value)
