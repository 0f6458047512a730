"""Config sections of the ingest family: the dataset (files, schema, images) and the split."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from pipelines.data.bundled import bundled_flips
from pipelines.protocol import Problem
from pipelines.settings import StrictModel

ColumnType = Literal["float", "int", "str", "category", "bool"]


class ImageSpec(StrictModel):
    """Declared shape of one image record and the number of label classes."""

    shape: list[PositiveInt] = Field(min_length=1, max_length=3)
    classes: PositiveInt | None = None
    resize: Literal["stretch", "crop", "pad"] = Field(
        default="stretch", description="format images: stretch to the shape, centre-crop to its aspect, or pad"
    )
    filter: Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"] = Field(
        default="bilinear", description="format images: Pillow's resampling filter"
    )
    flips: bool | None = Field(
        default=None,
        description="whether a mirrored image keeps its class (default: the bundled set's own kind, else false: "
        "digits and letters change under a mirror)",
    )


class NpzKeys(StrictModel):
    """Array names inside an .npz archive."""

    images: str = "x"
    labels: str = "y"


DECLARED_SPLITS = ("test", "val")


class Impute(StrictModel):
    """Fill a column's missing cells with a value fitted on the train split (or a constant)."""

    impute: Literal["mean", "median", "most_frequent", "constant"]
    value: float | str | None = None

    @model_validator(mode="after")
    def _constant_has_value(self) -> Impute:
        if (self.impute == "constant") != (self.value is not None):
            raise ValueError("'value' goes with impute: constant (and only with it)")
        return self


MissingPolicy = Literal["quarantine", "drop"] | Impute


class DatasetConfig(StrictModel):
    """Where the data is and what it must look like."""

    name: str
    format: Literal["csv", "parquet", "idx", "npz", "images"]
    path: str | list[str]
    labels_path: str | None = None
    test_path: str | list[str] | None = Field(default=None, description="files whose rows all go to the test split")
    test_labels_path: str | None = None
    val_path: str | list[str] | None = Field(default=None, description="files whose rows all go to the val split")
    val_labels_path: str | None = None
    features: list[str] | None = None
    label: str | None = None
    types: dict[str, ColumnType] = Field(default_factory=dict)
    categories: dict[str, list[str]] = Field(default_factory=dict)
    formula: str | None = None
    missing: dict[str, MissingPolicy] = Field(
        default_factory=dict, description="per column: quarantine (default), drop, or {impute: ..., value: ...}"
    )
    image: ImageSpec | None = None
    npz_keys: NpzKeys = Field(default_factory=NpzKeys)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = Field(default="utf-8", description="CSV text encoding, e.g. latin-1 or cp1252")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            info = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None
        if "\n".encode(info.name) != b"\n" or '"'.encode(info.name) != b'"':
            raise ValueError(f"encoding {value!r} is not ASCII-compatible (UTF-16/32 CSV is not supported)")
        return info.name

    @model_validator(mode="after")
    def _check_shape(self) -> DatasetConfig:
        tabular = self.format in ("csv", "parquet")
        if tabular and self.image is None:
            if self.formula and (self.features or self.label):
                raise ValueError("give either 'formula' or 'features'/'label', not both")
            if not self.formula and not self.features:
                raise ValueError("tabular data needs 'formula' or 'features' (and usually 'label')")
        if not tabular and self.image is None:
            raise ValueError(f"format {self.format!r} needs an 'image' section (shape, classes)")
        if self.format == "images" and self.image is not None:
            shape = self.image.shape
            if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
                raise ValueError(f"format 'images' needs image.shape [H, W] or [H, W, C] with C 1 or 3, got {shape}")
            if self.labels_path:
                raise ValueError("format 'images' takes its labels from class folders or the listing's label column")
        if self.format == "idx" and not self.labels_path:
            raise ValueError("format 'idx' needs 'labels_path' (the labels IDX file)")
        for split in DECLARED_SPLITS:
            path, labels = getattr(self, f"{split}_path"), getattr(self, f"{split}_labels_path")
            if labels and self.format != "idx":
                raise ValueError(f"'{split}_labels_path' is for format 'idx' (a {self.format} file holds its labels)")
            if labels and not path:
                raise ValueError(f"'{split}_labels_path' needs '{split}_path' (the {split} images)")
            if path and self.format == "idx" and not labels:
                raise ValueError(f"format 'idx' with '{split}_path' needs '{split}_labels_path' (its labels IDX file)")
        return self

    def image_flips(self) -> bool:
        """Whether mirrored images keep their class: declared, else the bundled set's kind, else false."""
        if self.image is None:
            return False
        if self.image.flips is not None:
            return self.image.flips
        paths = [self.path] if isinstance(self.path, str) else self.path
        return all(bundled_flips(p) for p in paths)

    def declared(self) -> list[tuple[str, str | list[str], str | None]]:
        """(split, path, labels path) of each split the dataset names its own files for."""
        out = []
        for split in DECLARED_SPLITS:
            path = getattr(self, f"{split}_path")
            if path:
                out.append((split, path, getattr(self, f"{split}_labels_path")))
        return out


class SplitConfig(StrictModel):
    """Seeded hash split: membership depends only on (file, row, seed)."""

    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = 0
    stratify: bool = Field(default=False, description="exact per-class shares of the label (classification)")

    @model_validator(mode="after")
    def _check_total(self) -> SplitConfig:
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError("test_fraction + val_fraction must be below 1")
        return self


def declared_split_problems(dataset: DatasetConfig, split: SplitConfig) -> list[Problem]:
    """A split both declared by files and drawn by a fraction: refused, its rows would come from both."""
    return [
        Problem(
            f"split.{name}_fraction",
            f"dataset.{name}_path declares the {name} split; set split.{name}_fraction: 0 "
            f"(the seeded split then divides the main files among the other splits)",
        )
        for name, _, _ in dataset.declared()
        if getattr(split, f"{name}_fraction") != 0
    ]
