"""The one typed hand-off from ingest: the written splits, their fingerprint, and what kind of inputs they hold.

Every later stage (model, deep, sweep, pack, matrix, predict) takes a `TrainingData` and asks its `inputs`
(a `TableInputs` or an `ImageInputs`) what it needs: the model columns, each partition's samples as an
array, whether mirrored images keep their class. A new input kind is one more class here that answers the
same questions (see docs/ARCHITECTURE.md, "An input kind"); no consumer tests which kind it holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from pipelines.errors import ConfigError
from pipelines.ingest.schema import TableSchema
from pipelines.ingest.transform import Fitted, encoded_columns, image_pixels
from pipelines.runs.layout import Folder
from pipelines.settings import StrictModel

if TYPE_CHECKING:
    from pipelines.protocol import StageContext


NEEDS_WRITTEN_SPLITS = "needs an earlier ingest stage with write: true"


def needs_written_splits(needed_by: str) -> ConfigError:
    """The one error for a stage that reads written splits where no ingest wrote them."""
    return ConfigError(f"stage {needed_by!r} {NEEDS_WRITTEN_SPLITS}")


def unknown_columns(needed_by: str, missing: Sequence[str], have: Sequence[str]) -> ConfigError:
    """The one error for feature columns a stage names that the written splits lack."""
    return ConfigError(f"stage {needed_by!r}: unknown feature column(s) {list(missing)}; have {list(have)}")


class Inputs(Protocol):
    """What a kind of written split offers the stages after ingest."""

    @property
    def kind(self) -> str:
        """The kind's name, as the run records it."""
        ...

    @property
    def label(self) -> str | None:
        """The label column, if the splits have one."""
        ...

    @property
    def classes(self) -> int | None:
        """How many classes the label has, where known."""
        ...

    def columns(
        self, features: Sequence[str] | None, label: str | None, needed_by: str
    ) -> tuple[list[str], str | None]:
        """The model's feature names (default: all) and label column, checked against the written splits."""
        ...

    def samples(self, pdf: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
        """One partition's samples as an array (rows, *sample shape) of the chosen features."""
        ...

    def table(self, needed_by: str) -> TableInputs:
        """These inputs as named table columns, or the one error for a stage that needs them."""
        ...

    def names_of(self, classes: Sequence[int]) -> tuple[str, ...] | None:
        """What the data itself calls these label codes (image class folders), or None where it names none."""
        ...


class TableInputs(StrictModel, frozen=True):
    """Tabular splits: encoded, standardized numeric columns and a label column."""

    kind: Literal["table"] = "table"
    features: tuple[str, ...]
    label: str | None = None
    classes: int | None = None

    @classmethod
    def of(cls, schema: TableSchema, fitted: Fitted, encode: str) -> TableInputs:
        """The written columns of a table ingested with this schema, fit and encoding."""
        names = [name for name, dtype, _, _ in encoded_columns(schema, fitted, encode) if not pa.types.is_string(dtype)]
        return cls(features=tuple(names), label=schema.label.name if schema.label is not None else None)

    def columns(
        self, features: Sequence[str] | None, label: str | None, needed_by: str
    ) -> tuple[list[str], str | None]:
        """The stage's feature columns (default: every numeric one) and label, each one known."""
        chosen = list(features or self.features)
        missing = [f for f in chosen if f not in self.features]
        if missing:
            raise unknown_columns(needed_by, missing, self.features)
        return chosen, label or self.label

    def samples(self, pdf: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
        """The chosen columns as a float64 matrix."""
        if not len(pdf):
            return np.empty((0, len(features)))
        matrix: np.ndarray = pdf[list(features)].to_numpy(dtype="float64", na_value=np.nan)
        return matrix

    def table(self, needed_by: str) -> TableInputs:
        """Itself."""
        return self

    def names_of(self, classes: Sequence[int]) -> tuple[str, ...] | None:
        """None: a table's label codes are named by the ingest's fitted levels, not by the splits."""
        return None


class ImageInputs(StrictModel, frozen=True):
    """Image splits: an `image` column of pixel bytes (dtype, shape) and an integer `label`."""

    kind: Literal["images"] = "images"
    dtype: str
    shape: tuple[int, ...]
    classes: int | None = None
    flips: bool = False
    label: str | None = "label"
    class_names: tuple[str, ...] | None = None  # format images: the class folders or listing labels, in code order

    @property
    def features(self) -> tuple[str, ...]:
        """One name per pixel (px0, px1, ...), the names classical models see."""
        return tuple(f"px{i}" for i in range(int(np.prod(self.shape))))

    def columns(
        self, features: Sequence[str] | None, label: str | None, needed_by: str
    ) -> tuple[list[str], str | None]:
        """Every pixel, and the label column; images have no named columns to choose."""
        if features:
            raise ConfigError(f"stage {needed_by!r}: 'features' names table columns; the dataset holds images")
        return list(self.features), self.label

    def samples(self, pdf: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
        """The pixels as (rows, *shape), in the stored dtype (no copy)."""
        return image_pixels(pdf["image"].to_numpy(), self.dtype, self.shape)

    def table(self, needed_by: str) -> TableInputs:
        """Images have no feature columns."""
        raise ConfigError(f"stage {needed_by!r} needs a tabular ingest; the dataset holds images")

    def names_of(self, classes: Sequence[int]) -> tuple[str, ...] | None:
        """The class folder (or listing label) of each code, where the data was read from image files."""
        names = self.class_names
        if names is None:
            return None
        return tuple(names[c] if 0 <= c < len(names) else str(c) for c in classes)


# Every kind of written split, told apart by `kind` when a spec carries it to another process.
AnyInputs = Annotated[TableInputs | ImageInputs, Field(discriminator="kind")]


def splits_fingerprint(outputs: Mapping[str, Any], splits: Sequence[str]) -> str:
    """SHA-256 over the recorded checksums of the written splits (changes whenever ingest writes them again)."""
    sums = {name: outputs.get(Folder.DATA.of(name)) for name in sorted(splits)}
    return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()


@dataclass
class TrainingData:
    """The written splits a later stage trains on: folders, engine frames, row counts, fingerprint, inputs."""

    dataset: str
    outputs: dict[str, str]
    frames: dict[str, Any]
    rows: dict[str, int]
    fingerprint: str
    inputs: TableInputs | ImageInputs
    checksums: dict[str, Any] = field(default_factory=dict)

    def frame(self, split: str) -> Any:
        """The engine frame of a written split."""
        return self.frames[split]


def training_data(ctx: StageContext, needed_by: str) -> TrainingData:
    """The latest ingest's written splits, for the stage `needed_by`."""
    from pipelines.ingest.stage import IngestResult  # the result type lives with its stage

    return ctx.latest(IngestResult, needed_by).training_data(ctx.run.manifest["outputs"], needed_by)
