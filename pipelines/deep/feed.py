"""Each rank's balanced share of the shards, with the same number of steps on every rank (NumPy batches for
training, tf.data for evaluation).

Training: every epoch draws one permutation of all rows from (seed, epoch), identical on all ranks, keeps
steps x global batch rows and gives rank r the r-th slice of every global batch. So shares never overlap,
every rank runs exactly `steps` steps (unequal counts would hang allreduce), and np=1 and np=2 with the
same global batch see the same rows in every step. Evaluation: rank r takes a contiguous 1/size of the
rows (all rows, no drop); metrics are summed across ranks afterwards.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipelines.deep.shards import SplitShards
from pipelines.errors import DataError

CHUNK_BATCHES = 32  # batches gathered per read from the memory maps
PREFETCH = 2  # batches read ahead; fixed, not AUTOTUNE: a rank owns few cores and tf.data threads would take them


def steps_per_epoch(rows: int, batch: int, size: int) -> int:
    """Full global batches per epoch; fewer rows than one global batch is an error."""
    steps = rows // (batch * size)
    if steps == 0:
        raise DataError(f"{rows} training rows are fewer than one global batch ({batch} per rank x {size} ranks)")
    return steps


def train_rows(rows: int, rank: int, size: int, batch: int, epoch: int, seed: int) -> np.ndarray:
    """This rank's rows for an epoch as a (steps, batch) array of global row numbers."""
    steps = steps_per_epoch(rows, batch, size)
    perm = np.random.default_rng([seed, epoch]).permutation(rows)
    return perm[: steps * batch * size].reshape(steps, size, batch)[:, rank, :]


def eval_range(rows: int, rank: int, size: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of an evaluation split."""
    return rows * rank // size, rows * (rank + 1) // size


def _chunks(split: SplitShards, plan: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Up to CHUNK_BATCHES batches per read, shaped (batches, batch, ...)."""
    for start in range(0, len(plan), CHUNK_BATCHES):
        chunk = plan[start : start + CHUNK_BATCHES]
        x, y = split.take(chunk.reshape(-1))
        yield x.reshape(chunk.shape + x.shape[1:]), y.reshape(chunk.shape)


def _dataset(split: SplitShards, plan: np.ndarray) -> Any:
    """Batches of the (batches, batch) row plan.

    A split held in memory is gathered by tf.data itself (parallel `tf.gather` on one tensor copy); a
    memory-mapped split is read in chunks of batches by a Python generator and split up by tf.data.
    """
    import tensorflow as tf

    if split.resident:
        x, y = split.as_tensors()
        rows = tf.data.Dataset.from_tensor_slices(plan)
        return rows.map(lambda i: (tf.gather(x, i), tf.gather(y, i)))

    shape = split.x[0].shape[1:]
    signature = (
        tf.TensorSpec((None, plan.shape[1], *shape), tf.float32),
        tf.TensorSpec((None, plan.shape[1]), tf.int64),
    )
    return tf.data.Dataset.from_generator(lambda: _chunks(split, plan), output_signature=signature).unbatch()


def train_dataset(split: SplitShards, rank: int, size: int, batch: int, epoch: int, seed: int) -> Iterator[Any]:
    """One epoch of this rank's training share as NumPy (x, y) batches: shuffled, gathered a chunk ahead.

    NumPy gathers of CHUNK_BATCHES batches at a time, split into views, reach about 0.7 of a raw read of the
    same bytes; tf.data's per-batch cost held it near 0.3. The step's tf.function takes the arrays as tensors.
    """
    plan = train_rows(split.rows, rank, size, batch, epoch, seed)
    return _read_ahead(_chunks(split, plan))


def _read_ahead(chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The batches of each chunk, the next chunk gathered by one thread meanwhile."""
    with cf.ThreadPoolExecutor(1, thread_name_prefix="feed") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield from zip(*chunk, strict=True)


def eval_dataset(split: SplitShards, rank: int, size: int, batch: int) -> Any:
    """tf.data over this rank's evaluation share (last batch may be short)."""

    start, stop = eval_range(split.rows, rank, size)
    if stop == start:
        return None
    rows = np.arange(start, stop)
    full = len(rows) // batch * batch
    parts = [_dataset(split, rows[:full].reshape(-1, batch))] if full else []
    if full < len(rows):
        parts.append(_dataset(split, rows[full:].reshape(1, -1)))
    data = parts[0].concatenate(parts[1]) if len(parts) == 2 else parts[0]
    return _limit(data.prefetch(PREFETCH))


def _limit(data: Any) -> Any:
    """One tf.data thread and no autotuning per rank, so input work never competes with the step's cores."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return data.with_options(options)
