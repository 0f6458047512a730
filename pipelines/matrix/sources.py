"""Where a matrix stage's operands come from: the ingested train split, Parquet, Zarr, NPY, or generated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_serializer, model_validator

from pipelines.engines.matrix import Generated, Npy, Parquet, Source, Zarr
from pipelines.ingest.handoff import training_data
from pipelines.protocol import StageContext
from pipelines.settings import SafeText, StrictModel


class GenerateSettings(StrictModel):
    """A random matrix drawn block by block on the workers (never on the driver)."""

    rows: PositiveInt
    cols: PositiveInt
    seed: NonNegativeInt = 0
    kind: Literal["normal", "uniform"] = "normal"


class MatrixInput(StrictModel):
    """Exactly one of `from: ingest`, `parquet` (+ `columns`), `zarr`, `npy`, `generate`."""

    from_: Literal["ingest"] | None = Field(default=None, alias="from")
    parquet: SafeText | None = None
    columns: list[str] | None = None
    zarr: SafeText | None = None
    npy: SafeText | None = None
    generate: GenerateSettings | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> MatrixInput:
        given = [k for k in ("from_", "parquet", "zarr", "npy", "generate") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of from: ingest, parquet, zarr, npy, generate")
        if self.columns is not None and self.parquet is None and self.from_ is None:
            raise ValueError("columns applies to parquet and from: ingest only")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Only the given keys, `from` under its own name (a recorded config loads back as it was written)."""
        data = {("from" if k == "from_" else k): v for k, v in handler(self).items() if v is not None}
        return data

    def describe(self) -> str:
        """One line naming the input (for the summary)."""
        if self.from_:
            return "ingest:train"
        if self.generate:
            g = self.generate
            return f"generate:{g.rows}x{g.cols}:{g.kind}:seed={g.seed}"
        return next(f"{k}:{v}" for k in ("parquet", "zarr", "npy") if (v := getattr(self, k)))

    def source(self, ctx: StageContext, needed_by: str) -> Source:
        """The engine-side source (only metadata is read here, never the values)."""
        if self.generate:
            g = self.generate
            return Generated(g.rows, g.cols, g.seed, g.kind)
        if self.npy:
            return Npy.open(self.npy)
        if self.zarr:
            return Zarr.open(self.zarr)
        if self.parquet:
            return Parquet.open(self.parquet, self.columns)
        data = training_data(ctx, needed_by)
        table = data.inputs.table(needed_by)
        return Parquet.open(data.outputs["train"], self.columns or [f for f in table.features if f != table.label])
