"""The hand-off: ingest partitions written as tensor shards (.npy) with a manifest, and read back safely.

Each partition of a split becomes one shard, written by the worker that holds it (Spark task or Dask
worker): `x` as float32 (rows, *sample shape), `y` as int64 labels. The driver only renames the shards
into partition order and writes `manifest.json` (shard, rows, shape, dtype, SHA-256). Readers open the
shards as read-only memory maps (`allow_pickle=False`), after checking every listed file exists and
matches its checksum.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipelines.atomic import atomic_write_json, sha256_file
from pipelines.engines.base import Engine
from pipelines.errors import DataError
from pipelines.ingest.handoff import Inputs

MANIFEST = "manifest.json"
FORMAT = "pipelines-tensor-shards/1"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest()


def partition_tensors(
    pdf: pd.DataFrame,
    inputs: Inputs,
    features: Sequence[str],
    label: str,
    classes: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One partition's samples (float32) and labels (int64), keeping and renumbering only `classes`."""
    y = pdf[label].to_numpy(dtype="int64") if len(pdf) else np.empty(0, dtype="int64")
    x = np.asarray(inputs.samples(pdf, features), dtype="float32")
    if classes is not None:
        keep = np.isin(y, list(classes))
        order = np.argsort(classes)
        x, y = x[keep], order[np.searchsorted(np.asarray(classes)[order], y[keep])].astype("int64")
    return x, y


def part_files(directory: str | os.PathLike[str]) -> list[Path]:
    """A split's Parquet part files in partition order (part-00002-... and part.2.parquet alike)."""

    def natural(path: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]

    return sorted(Path(directory).glob("*.parquet"), key=natural)


def write_partition(part: str, directory: str, **how: Any) -> dict[str, Any]:
    """Write one ingest part file as a shard under a temporary name (runs on a worker); returns its facts."""
    x, y = partition_tensors(pq.read_table(part).to_pandas(), **how)
    if len(x) == 0:
        return {"rows": 0}
    stem = f".part-{uuid.uuid4().hex}"
    facts: dict[str, Any] = {"rows": int(len(x)), "shape": list(x.shape[1:]), "dtype": str(x.dtype), "files": {}}
    for key, array in (("x", x), ("y", y)):
        name = f"{stem}.{key}.npy"
        facts["files"][key] = {"file": name, "sha256": _write(Path(directory) / name, _npy_bytes(array))}
    facts["label_range"] = [int(y.min()), int(y.max())]
    return facts


def write_shards(
    engine: Engine,
    splits: dict[str, str],
    out: Path,
    *,
    inputs: Inputs,
    features: Sequence[str],
    label: str,
    classes: Sequence[int] | None,
    n_classes: int | None,
    source: dict[str, Any],
) -> dict[str, Any]:
    """Write every split's part files (one per ingest partition) as shards under out/<split>/, and the manifest.

    The tasks run on the engine's workers, one per part file, so shards are the same whichever engine wrote
    the splits (Spark's reader would otherwise merge small files into fewer partitions). Without n_classes
    (tabular labels) the class count is the largest label + 1, from the workers' label ranges.
    """
    how: dict[str, Any] = {
        "inputs": inputs,
        "features": list(features),
        "label": label,
        "classes": list(classes) if classes else None,
    }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "sample_shape": None,
        "dtype": "float32",
        "label_dtype": "int64",
        "classes": n_classes,
        "class_filter": how["classes"],
        "source": source,
        "splits": {},
    }
    low, high = 0, -1
    for split, folder in splits.items():
        directory = out / split
        directory.mkdir(parents=True)
        target = str(directory)
        files = [str(f) for f in part_files(folder)]
        parts = engine.run_tasks(functools.partial(write_partition, directory=target, **how), files)
        shards: list[dict[str, Any]] = []
        for facts in parts:
            if not facts["rows"]:
                continue
            index = len(shards)
            entry = {"rows": facts["rows"], "shape": facts["shape"], "dtype": facts["dtype"]}
            for key, f in facts["files"].items():
                final = f"shard-{index:05d}.{key}.npy"
                os.replace(directory / f["file"], directory / final)
                entry[key] = {"file": f"{split}/{final}", "sha256": f["sha256"]}
            shards.append(entry)
            manifest["sample_shape"] = facts["shape"]
            low, high = min(low, facts["label_range"][0]), max(high, facts["label_range"][1])
        manifest["splits"][split] = {"rows": sum(s["rows"] for s in shards), "shards": shards}
    if low < 0:
        raise DataError(f"{out}: labels must be class numbers 0..K-1, found {low}")
    if not manifest["classes"]:
        manifest["classes"] = high + 1
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


@dataclass
class SplitShards:
    """One split's shards opened as read-only memory maps, addressable by global row."""

    name: str
    x: list[np.ndarray]
    y: list[np.ndarray]
    offsets: np.ndarray
    resident: bool = False
    _tensors: Any = field(default=None, init=False, repr=False)

    def as_tensors(self) -> tuple[Any, Any]:
        """The in-memory split as TensorFlow tensors, made once."""
        import tensorflow as tf

        if self._tensors is None:
            self._tensors = (tf.constant(self.x[0]), tf.constant(self.y[0]))
        return self._tensors

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples and labels of the given global rows, in the given order (one gather per shard)."""
        rows = np.asarray(rows, dtype="int64")
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        x = np.empty((len(rows), *self.x[0].shape[1:]), dtype=self.x[0].dtype)
        y = np.empty(len(rows), dtype=self.y[0].dtype)
        if len(rows) and shard[0] == shard[-1] and (shard == shard[0]).all():
            local = rows - self.offsets[shard[0]]
            np.take(self.x[shard[0]], local, axis=0, out=x)
            np.take(self.y[shard[0]], local, out=y)
            return x, y
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            local = rows[at] - self.offsets[s]
            x[at] = self.x[s][local]
            y[at] = self.y[s][local]
        return x, y

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes + y.nbytes for x, y in zip(self.x, self.y, strict=True))

    def in_memory(self) -> SplitShards:
        """The same rows read once into one in-memory array (one fancy index per batch chunk afterwards)."""
        x = np.concatenate([np.asarray(a) for a in self.x])
        y = np.concatenate([np.asarray(a) for a in self.y])
        return SplitShards(self.name, [x], [y], np.array([0, len(x)], dtype="int64"), resident=True)

    def range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous global rows [start, stop)."""
        return self.take(np.arange(start, stop))


class TensorShards:
    """A written shard set: its manifest, verified files, and memory-mapped splits."""

    def __init__(self, directory: str | os.PathLike[str], verify: bool = True):
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.exists():
            raise DataError(f"{path}: tensor manifest is missing (was the deep stage's hand-off written?)")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"{path}: not a tensor shard manifest (format {self.manifest.get('format')!r})")
        if verify:
            self.verify()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["sample_shape"])

    @property
    def classes(self) -> int:
        return int(self.manifest["classes"])

    def splits(self) -> list[str]:
        return [s for s, v in self.manifest["splits"].items() if v["rows"]]

    def _files(self) -> list[tuple[str, str]]:
        return [
            (shard[key]["file"], shard[key]["sha256"])
            for split in self.manifest["splits"].values()
            for shard in split["shards"]
            for key in ("x", "y")
        ]

    def verify(self) -> None:
        """Every listed shard exists and matches its checksum; a problem is a DataError naming the shard."""
        for name, expected in self._files():
            path = self.dir / name
            if not path.exists():
                raise DataError(f"{path}: shard listed in {self.dir / MANIFEST} is missing")
            got = sha256_file(path)
            if got != expected:
                raise DataError(
                    f"{path}: shard is corrupt (SHA-256 {got[:16]}..., manifest says {expected[:16]}...); "
                    "re-run the stage to rewrite the tensors"
                )

    def open(self, split: str, cache_mb: float = 0) -> SplitShards:
        """Memory-map one split's shards (no pickle), checking shapes; read into memory if under cache_mb."""
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.dir / MANIFEST}: no split {split!r}; have {sorted(self.manifest['splits'])}")
        xs, ys, sizes = [], [], []
        for shard in self.manifest["splits"][split]["shards"]:
            x = np.load(self.dir / shard["x"]["file"], mmap_mode="r", allow_pickle=False)
            y = np.load(self.dir / shard["y"]["file"], mmap_mode="r", allow_pickle=False)
            expected = (shard["rows"], *shard["shape"])
            if x.shape != expected or y.shape != (shard["rows"],):
                raise DataError(f"{self.dir / shard['x']['file']}: shape {x.shape}, manifest says {expected}")
            xs.append(x)
            ys.append(y)
            sizes.append(shard["rows"])
        opened = SplitShards(split, xs, ys, np.concatenate([[0], np.cumsum(sizes)]).astype("int64"))
        return opened.in_memory() if opened.nbytes <= cache_mb * 1e6 else opened
