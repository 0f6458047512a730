"""Data resident on a single host: block arrays in .npy files that Python workers map once and keep between
passes, and frame partitions as Arrow files.

On a local Spark master every Python worker runs on the driver's host, so a block built by one task can be
written once to a host directory and memory-mapped by whichever worker runs a later pass: the engine then
caches only a small handle per block, and a pass ships the model to the data instead of the data to the model
(no JVM-to-Python copy of the rows each pass). Each worker keeps its maps between tasks (Spark reuses Python
workers) and drops those whose directory is gone (released).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.engines.base import Block

MIN_FILE_BYTES = 1 << 16  # arrays at least this large go to a file; smaller values ride in the handle
_MAPPED: dict[str, Block] = {}  # this worker's open blocks, by block directory


def new_store(root: str | None = None, kind: str = "blocks") -> str:
    """A fresh directory for one set of blocks or frame parts (under PIPELINES_BLOCKS_DIR, else the temp dir)."""
    base = root or os.environ.get("PIPELINES_BLOCKS_DIR") or tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=f"pipelines-{kind}-", dir=base)


def write_frame_part(store: str, index: int, table: pa.Table) -> None:
    """Write partition `index` of a frame as an Arrow IPC file in store (atomically: a retried task replaces it)."""
    path = os.path.join(store, f"part-{index:05d}.arrow")
    with pa.OSFile(path + ".tmp", "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(path + ".tmp", path)


def read_frame_part(store: str, index: int) -> pa.Table:
    """Partition `index` of a frame written by `write_frame_part`, memory-mapped (no copy)."""
    path = os.path.join(store, f"part-{index:05d}.arrow")
    try:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()
    except FileNotFoundError:
        raise RuntimeError(
            f"{path} is missing: resident frames need every worker on the driver's host (a local master) and "
            "the directory kept until the frame is released"
        ) from None


def write_block(store: str, index: int, block: Block) -> dict[str, Any]:
    """Write a block's large numeric arrays as .npy files in store; its handle (small values kept inline)."""
    directory = os.path.join(store, f"part-{index:05d}")
    os.makedirs(directory, exist_ok=True)
    files, inline = [], {}
    for key, value in block.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.nbytes >= MIN_FILE_BYTES:
            tmp = os.path.join(directory, f".{key}.npy.tmp")
            with open(tmp, "wb") as out:
                np.save(out, np.ascontiguousarray(value), allow_pickle=False)
            os.replace(tmp, os.path.join(directory, f"{key}.npy"))
            files.append(key)
        else:
            inline[key] = value
    return {"resident": directory, "files": files, "inline": inline}


def load_block(handle: dict[str, Any]) -> Block:
    """The block a handle names: arrays memory-mapped read-only (once per worker process), small values inline."""
    directory = handle["resident"]
    for gone in [d for d in _MAPPED if d != directory and not os.path.isdir(d)]:
        del _MAPPED[gone]  # released by the driver: unmap
    arrays = _MAPPED.get(directory)
    if arrays is None:
        try:
            arrays = {
                key: np.asarray(np.load(os.path.join(directory, f"{key}.npy"), mmap_mode="r", allow_pickle=False))
                for key in handle["files"]
            }
        except FileNotFoundError:
            raise RuntimeError(
                f"block files under {directory} are missing: resident blocks need every worker on the driver's "
                "host (a local master) and the directory kept until the blocks are released"
            ) from None
        _MAPPED[directory] = arrays
    return {**handle["inline"], **arrays}


def remove_store(store: str) -> None:
    """Delete a store's files (workers unmap theirs on their next pass)."""
    shutil.rmtree(store, ignore_errors=True)
