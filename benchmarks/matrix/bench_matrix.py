"""Out-of-core matrix work on Dask: against NumPy where it fits, then the seeds' 8 GB case and one past RAM.

  fit    X of each --fit size as .npy on disk: X.T @ X and X @ Y by NumPy (np.load, then BLAS on the driver)
         and by the matrix ops on a Dask LocalCluster (blocks read by the workers); seconds, ratio dask/numpy,
         peak RSS of the process tree, max relative difference.
  big    the seeds' 100,000 x 10,000 float64 (8 GB) .npy: X.T @ X (10,000 x 10,000 = 800 MB, gathered) and
         X @ Y with Y 10,000 x 2,000 written to Zarr chunk by chunk (1.6 GB, never gathered).
  huge   --huge-rows x 2,000 float64 .npy larger than this machine's memory (default 1.8 M rows = 28.8 GB):
         X.T @ X from disk.
Workers: --workers x 1 thread, --memory-limit each (spilling on); chunks `auto` (an eighth of a worker's
memory). Inputs are written once under --dir (by the workers, block by block) and removed unless --keep.

    python -m benchmarks.matrix.bench_matrix --phases fit,big,huge --dir /tmp/matrix-bench
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import dask.array as da
import numpy as np
import psutil

from benchmarks.common import measure
from pipelines.engines.config import DaskSettings
from pipelines.engines.dask_engine import DaskEngine
from pipelines.engines.matrix import Generated, Npy, NpyWriter, Out, Zarr, auto_block_bytes, chunk_shape

GB = 1e9


def write_npy(ops, src: Generated, path: Path, block_bytes: int) -> float:
    """Write a generated matrix to .npy block by block from the workers; seconds."""
    if path.exists():
        return 0.0
    t0 = time.perf_counter()
    tmp = path.with_suffix(".tmp.npy")
    writer = NpyWriter(str(tmp))
    writer.create(src.shape, src.shape)
    arr = ops.array(src, (max(1, block_bytes // (8 * src.shape[1])), src.shape[1]))
    ops.client.compute(da.store(arr, writer, lock=False, compute=False)).result()
    tmp.rename(path)
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (the workers) so far."""
    total = 0.0
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def timed(fn):
    """(seconds, result, peak RSS, CPU seconds of the process tree) of one call."""
    cpu = cpu_seconds()
    seconds, result, peak = measure(fn)
    return seconds, result, peak, cpu_seconds() - cpu


def line(what: str, seconds: float, peak: int, cpu: float, extra: str = "") -> None:
    print(f"  {what:<44} {seconds:8.1f} s (cpu {cpu:7.1f} s)   peak RSS {peak / GB:6.2f} GB   {extra}", flush=True)


def phase_fit(ops, folder: Path, sizes: list[tuple[int, int]], block: int) -> None:
    print("fit: Dask (blocks read on the workers) vs NumPy (whole array on the driver)")
    for rows, cols in sizes:
        path = folder / f"fit_{rows}x{cols}.npy"
        write_npy(ops, Generated(rows, cols, seed=1), path, block)
        x, y = Npy.open(str(path)), Generated(cols, 500, seed=2)
        out = Out(str(folder / "unused"), gather_bytes=1 << 62)

        def np_gram() -> np.ndarray:
            arr = np.load(path)
            return arr.T @ arr

        def np_mult() -> np.ndarray:
            return np.load(path) @ y.read(0, cols)

        for name, ref, ours in (
            ("X.T @ X", np_gram, lambda: ops.gram(x, block, out).value),
            ("X @ Y (Y: cols x 500)", np_mult, lambda: ops.multiply(x, y, block, out).value),
        ):
            t_np, want, p_np = measure(ref)
            t_da, got, p_da = measure(ours)
            err = float(np.abs(got - want).max() / np.abs(want).max())
            print(
                f"  {rows} x {cols} {name:<24} numpy {t_np:6.2f} s ({p_np / GB:.2f} GB)   dask {t_da:6.2f} s "
                f"({p_da / GB:.2f} GB)   ratio dask/numpy {t_da / t_np:5.2f}   max rel diff {err:.1e}",
                flush=True,
            )
        path.unlink()


def phase_big(ops, folder: Path, block: int) -> None:
    print("big: the seeds' 100,000 x 10,000 float64 (8 GB) from .npy on disk")
    path = folder / "big_100000x10000.npy"
    seconds, _, peak, cpu = timed(lambda: write_npy(ops, Generated(100_000, 10_000, seed=7), path, block))
    line("write X (generated on the workers)", seconds, peak, cpu)
    x = Npy.open(str(path))
    seconds, gram, peak, cpu = timed(lambda: ops.gram(x, block, Out(str(folder / "g"), gather_bytes=1 << 62)).value)
    ok = np.allclose(gram, gram.T) and bool((np.diag(gram) > 0).all())
    line("X.T @ X -> 10,000 x 10,000 (gathered)", seconds, peak, cpu, f"symmetric, positive diagonal: {ok}")
    y, target = Generated(10_000, 2_000, seed=8), folder / "big_product.zarr"
    shutil.rmtree(target, ignore_errors=True)
    seconds, res, peak, cpu = timed(lambda: ops.multiply(x, y, block, Out(str(target), "zarr", gather_bytes=0)))
    rows = Zarr.open(res.written).read(0, 100)
    check = np.abs(rows - x.read(0, 100) @ y.read(0, 10_000)).max()
    line("X @ Y -> 100,000 x 2,000 to Zarr (chunkwise)", seconds, peak, cpu, f"first 100 rows max diff {check:.1e}")
    shutil.rmtree(target, ignore_errors=True)


def phase_huge(ops, folder: Path, rows: int, block: int) -> None:
    cols = 2_000
    print(f"huge: {rows:,} x {cols:,} float64 ({rows * cols * 8 / GB:.1f} GB) from .npy on disk")
    path = folder / f"huge_{rows}x{cols}.npy"
    seconds, _, peak, cpu = timed(lambda: write_npy(ops, Generated(rows, cols, seed=9), path, block))
    line("write X (generated on the workers)", seconds, peak, cpu)
    x = Npy.open(str(path))
    seconds, gram, peak, cpu = timed(lambda: ops.gram(x, block, Out(str(folder / "g"), gather_bytes=1 << 62)).value)
    head = x.read(0, 4096)
    line("X.T @ X -> 2,000 x 2,000", seconds, peak, cpu, f"diag/rows ~1 (normal): {np.diag(gram).mean() / rows:.4f}")
    print(f"  (first 4096 rows alone give diag/rows {np.diag(head.T @ head).mean() / 4096:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="fit,big,huge")
    parser.add_argument("--dir", default="/tmp/matrix-bench")
    parser.add_argument("--fit", default="20000x1000,40000x2000", help="rows x cols sizes for the fit phase")
    parser.add_argument("--huge-rows", type=int, default=1_800_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    print(f"disk free under {folder}: {free / GB:.1f} GB; workers {args.workers} x {args.memory_limit}")
    settings = DaskSettings(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit)
    with DaskEngine(settings) as engine:
        ops = engine.matrix_ops()
        block = auto_block_bytes(ops.memory_per_worker())
        print(f"auto block: {block / 2**20:.0f} MiB (8 GB case blocks {chunk_shape((100_000, 10_000), block)})")
        phases = args.phases.split(",")
        if "fit" in phases:
            sizes = [tuple(int(v) for v in s.split("x")) for s in args.fit.split(",")]
            phase_fit(ops, folder, sizes, block)
        if "big" in phases:
            phase_big(ops, folder, block)
        if "huge" in phases:
            if args.huge_rows * 2_000 * 8 > free - 5 * GB:
                print(f"huge: skipped, {args.huge_rows * 16_000 / GB:.1f} GB would not fit in {free / GB:.1f} GB free")
            else:
                phase_huge(ops, folder, args.huge_rows, block)
    if not args.keep:
        for p in folder.glob("*.npy"):
            p.unlink()


if __name__ == "__main__":
    main()
