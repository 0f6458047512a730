"""The stage registry: every stage kind, once. Adding a kind is one module and one entry here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from pipelines.classical.stage import ModelStage
from pipelines.deep.stage import DeepStage
from pipelines.ingest.stage import IngestStage
from pipelines.matrix.stage import MatrixStage
from pipelines.pack.stage import PackStage
from pipelines.protocol import Stage
from pipelines.sweep.stage import SweepStage

STAGE_CLASSES: tuple[type[Stage], ...] = (IngestStage, ModelStage, DeepStage, PackStage, SweepStage, MatrixStage)
STAGES: dict[str, type[Stage]] = {cls.model_fields["stage"].default: cls for cls in STAGE_CLASSES}
if TYPE_CHECKING:
    StageConfig = Stage  # every kind is a Stage; the union below exists only at run time (built from the tuple)
else:
    StageConfig = Annotated[Union[STAGE_CLASSES], Field(discriminator="stage")]  # noqa: UP007 - built from a tuple
