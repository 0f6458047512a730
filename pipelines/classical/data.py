"""Model inputs as row blocks of NumPy arrays, persisted on an engine's workers or held locally."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from pipelines.engines.base import Block, Engine
from pipelines.errors import DataError
from pipelines.ingest.handoff import Inputs

R = TypeVar("R")

MAX_LEVELS = 1000


class ModelInputError(DataError, ValueError):
    """Input a model cannot fit: a DataError for the CLI, and the ValueError scikit-learn's API promises."""


def block_key(block: Block) -> str:
    """A block's identity: its source file and first row (the same on either engine), else its partition."""
    if block.get("source"):
        first = int(block["row"][0]) if len(block["row"]) else -1
        return f"{block['source']}:{first}:{len(block['row'])}"
    return f"part{block.get('part', 0)}:{len(block['row'])}"


def block_seed(block: Block, seed: int, salt: int = 0) -> np.random.Generator:
    """A generator seeded by the block's identity, so both engines draw alike for the same rows."""
    return np.random.default_rng([seed, salt, zlib.crc32(block_key(block).encode())])


def extract_block(pdf: pd.DataFrame, features: Sequence[str], label: str | None, x: np.ndarray | None = None) -> Block:
    """One partition's feature matrix (float64, or `x`), label and row numbers; notes the first non-finite value."""
    if x is None:
        x = pdf[list(features)].to_numpy(dtype="float64", na_value=np.nan) if len(pdf) else np.empty((0, len(features)))
    block: Block = {
        "x": np.ascontiguousarray(x),
        "row": pdf["_row"].to_numpy(dtype="int64") if "_row" in pdf else np.arange(len(pdf), dtype="int64"),
        "source": str(pdf["_source"].iloc[0]) if "_source" in pdf and len(pdf) else "",
    }
    if label is not None:
        block["y"] = pdf[label].to_numpy(dtype="float64", na_value=np.nan)
        block["y_int"] = np.array(pd.api.types.is_integer_dtype(pdf[label].dtype))
    bad = ~np.isfinite(x)
    if label is not None:
        bad = np.column_stack([bad, ~np.isfinite(block["y"])])
    if bad.any():
        i, j = np.argwhere(bad)[0]
        column = list(features)[j] if j < len(features) else label
        source = pdf["_source"].iloc[i] if "_source" in pdf else "<input>"
        block["bad"] = np.array([str(source), str(block["row"][i]), str(column), str(int(bad.sum()))])
    return block


def extract_inputs_block(pdf: pd.DataFrame, inputs: Inputs, features: Sequence[str], label: str | None) -> Block:
    """One partition of a written split as a block: its inputs' samples flattened to a float64 matrix."""
    x = inputs.samples(pdf, features)
    return extract_block(pdf, features, label, np.asarray(x, dtype="float64").reshape(len(x), -1))


def _block_facts(block: Block) -> dict[str, Any]:
    facts: dict[str, Any] = {"rows": len(block["x"]), "key": block_key(block)}
    if "bad" in block:
        facts["bad"] = [str(v) for v in block["bad"]]
    if "y" in block:
        levels = np.unique(block["y"])
        facts["labels"] = levels.tolist() if len(levels) <= MAX_LEVELS else None
        facts["integer_labels"] = bool(block.get("y_int", False))
    return facts


@dataclass
class Blocks:
    """A model's input: row blocks (x, y, row) on an engine's workers, or in this process when engine is None.

    rows_per_block and keys (block identities) are in block order; labels are the distinct label values
    (empty above MAX_LEVELS), integer_labels whether the label column has an integer type; named is False
    when the feature names were made up (x0, x1, ...) for an array without column names.
    """

    features: list[str]
    label: str | None
    engine: Engine | None = None
    handle: Any = None
    rows_per_block: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    integer_labels: bool = False
    named: bool = True
    slots: int = 1

    @property
    def n_rows(self) -> int:
        return sum(self.rows_per_block)

    @property
    def nbytes(self) -> int:
        """Size of the feature matrix as float64."""
        return self.n_rows * self.n_features * 8

    @property
    def parallelism(self) -> int:
        """Task slots a fit may fill: the engine's, or (in this process) those of the engine the blocks came from."""
        return self.engine.parallelism if self.engine is not None else self.slots

    def in_process(self) -> Blocks:
        """These blocks copied into this process (the engine's copies released), identities and slots kept."""
        if self.engine is None:
            return self
        local = replace(self, engine=None, handle=self.map(lambda block: block), slots=self.engine.parallelism)
        self.release()
        return local

    @property
    def n_features(self) -> int:
        return len(self.features)

    def map(self, fn: Callable[[Block], R]) -> list[R]:
        """Run fn on each block (on the workers) and return the results in block order."""
        if self.engine is None:
            return [fn(block) for block in self.handle]
        return self.engine.map_blocks(self.handle, fn)

    def release(self) -> None:
        """Free the persisted blocks."""
        if self.engine is not None and self.handle is not None:
            self.engine.release_blocks(self.handle)
        self.handle = None

    def __enter__(self) -> Blocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _check(self, what: str) -> Blocks:
        facts = self.map(_block_facts)
        self.rows_per_block = [f["rows"] for f in facts]
        self.keys = [f["key"] for f in facts]
        levels = [f.get("labels") for f in facts]
        self.labels = [] if None in levels else sorted({v for part in levels for v in part or []})
        self.integer_labels = any("integer_labels" in f for f in facts) and all(
            f["integer_labels"] for f in facts if "integer_labels" in f
        )
        bad = [f["bad"] for f in facts if "bad" in f]
        if bad:
            source, row, column, count = bad[0]
            total = sum(int(b[3]) for b in bad)
            raise ModelInputError(
                f"{what}: {total} non-finite value(s) (NaN or inf) reached the model; first at {source} row {row}, "
                f"column {column!r} (ingest should have quarantined it: check the column's declared type)"
            )
        if self.n_rows == 0:
            raise ModelInputError(f"{what}: no rows to fit")
        return self

    @classmethod
    def from_frame(
        cls, engine: Engine, frame: Any, features: Sequence[str], label: str | None, what: str = "data"
    ) -> Blocks:
        """Persist an engine frame's feature/label columns as blocks on the workers."""
        features = list(features)
        handle = engine.to_blocks(frame, lambda pdf: extract_block(pdf, features, label))
        return cls(features, label, engine, handle)._check(what)

    @classmethod
    def from_inputs(
        cls,
        engine: Engine,
        frame: Any,
        inputs: Inputs,
        features: Sequence[str],
        label: str | None,
        what: str = "data",
    ) -> Blocks:
        """Persist a written split's chosen features (any input kind, flattened) and label as blocks."""
        features = list(features)
        handle = engine.to_blocks(frame, lambda pdf: extract_inputs_block(pdf, inputs, features, label))
        return cls(features, label, engine, handle)._check(what)

    @classmethod
    def from_arrays(
        cls,
        X: Any,
        y: Any = None,
        n_blocks: int = 1,
        features: Sequence[str] | None = None,
        label: str | None = None,
    ) -> Blocks:
        """Wrap in-memory numeric arrays (NumPy or pandas) as local blocks."""
        named = features is not None or isinstance(X, pd.DataFrame)
        if isinstance(X, pd.DataFrame):
            features = list(features or X.columns.astype(str))
            X = X.to_numpy(dtype="float64")
        X = np.asarray(X, dtype="float64")
        if X.ndim != 2:
            raise ModelInputError(f"expected a 2-D feature matrix, got shape {X.shape}")
        features = list(features or [f"x{i}" for i in range(X.shape[1])])
        frame = pd.DataFrame(X, columns=features)
        frame["_row"] = np.arange(len(X))
        frame["_source"] = "<array>"
        name = None
        if y is not None:
            name = label or (y.name if isinstance(y, pd.Series) and y.name else "y")
            labels = np.asarray(y)
            frame[name] = labels if labels.dtype.kind in "iu" else labels.astype("float64")
        bounds = np.linspace(0, len(frame), max(1, n_blocks) + 1).astype(int)
        pairs = zip(bounds[:-1], bounds[1:], strict=True)
        handle = [{**extract_block(frame.iloc[a:b], features, name), "part": i} for i, (a, b) in enumerate(pairs)]
        return cls(features, name, None, handle, named=named)._check("data")


def gather(blocks: Blocks, fn: Callable[[Block], np.ndarray]) -> np.ndarray:
    """Concatenate a per-block array result in row order (for predictions and scores)."""
    parts = blocks.map(fn)
    return np.concatenate(parts) if parts else np.empty(0)


def sample_rows(blocks: Blocks, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """A uniform random sample of about n rows (x, y) gathered to the driver."""
    rate = min(1.0, n / max(1, blocks.n_rows))

    def take(block: Block) -> tuple[np.ndarray, np.ndarray | None]:
        keep = block_seed(block, seed, 7).random(len(block["x"])) < rate
        return block["x"][keep], block["y"][keep] if "y" in block else None

    parts = blocks.map(take)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]) if blocks.label is not None else None
    return x, y
