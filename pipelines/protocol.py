"""The one stage protocol: every stage kind is a config model that checks, runs and restores itself.

A stage kind is one module: a `Stage` subclass (its config fields, `check` at validate time, `run` with a
`StageContext`, `restore` on resume) and a `StageResult` subclass (what later stages receive; it records
itself in the manifest and metrics.json). `pipelines.registry` lists the kinds; nothing else does.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

from pydantic import model_validator

from pipelines.engines.base import Engine
from pipelines.engines.config import EngineConfig
from pipelines.errors import ConfigError, PipelineError
from pipelines.runs import Run
from pipelines.settings import Name, StrictModel

R = TypeVar("R", bound="StageResult")


class NotRestorable(PipelineError):
    """A finished stage's result cannot be rebuilt from the run directory: the stage runs again."""


class Problem(NamedTuple):
    """One problem found when a pipeline is planned: the key path and what is wrong there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PipelineSettings(Protocol):
    """What a stage may read of the pipeline's config besides its own section."""

    name: str
    engine: EngineConfig
    dataset: Any  # the ingest room's DatasetConfig: a room above this one, so not named here


class StageResult(abc.ABC):
    """What a stage hands to later stages, records in the manifest (`facts`) and in metrics.json (`metrics`)."""

    @abc.abstractmethod
    def facts(self) -> dict[str, Any]:
        """Headline facts (JSON) for the manifest entry and the console tables."""

    @property
    def metrics(self) -> dict[str, Any]:
        """This stage's section of metrics.json (default: its facts)."""
        return self.facts()


@dataclass
class RecordedResult(StageResult):
    """A result that is its recorded values: all of them are its metrics.json section; `facts` picks headlines."""

    values: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """Every value the stage recorded."""
        return self.values


@dataclass
class StageContext:
    """Everything a running stage may use: the engine, the run, the pipeline config, earlier results."""

    engine: Engine
    run: Run
    config: PipelineSettings
    results: dict[str, StageResult] = field(default_factory=dict)

    def latest(self, kind: type[R], needed_by: str) -> R:
        """The newest earlier result of this type; a clear error naming the stage that needs it."""
        found = [r for r in self.results.values() if isinstance(r, kind)]
        if not found:
            raise ConfigError(f"stage {needed_by!r} needs an earlier stage producing {kind.__name__}")
        return found[-1]


class Stage(StrictModel, abc.ABC):
    """Base of every stage config: its kind (`stage`), an optional `name`, and the protocol's three steps."""

    stage: str
    name: Name | None = None

    output_dir: ClassVar[str] = ""  # folder of the run where this kind writes <output_name>/ (models, deep)
    # Fields that say where or how fast a stage runs, not what it computes: they may change on resume.
    placement_fields: ClassVar[frozenset[str]] = frozenset()

    @property
    def output_name(self) -> str:
        """Name of this stage in the manifest, metrics.json and its output directories."""
        return self.name or self.default_name()

    def default_name(self) -> str:
        """Output name when the config gives none."""
        return self.stage

    @model_validator(mode="after")
    def _check_own_values(self) -> Stage:
        problems = self.check_values()
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return self

    def check_values(self) -> list[Problem]:
        """Problems in this stage's own values (e.g. parameters its estimator or network refuses), at load time."""
        return []

    def check(self, earlier: Sequence[Stage], config: PipelineSettings) -> list[Problem]:
        """Problems that need the rest of the pipeline (inputs from earlier stages, the dataset), at validate time."""
        return []

    @abc.abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Do the stage's work on the engine, write its outputs into the run, return its result."""

    def restore(self, ctx: StageContext) -> StageResult:
        """Rebuild a finished stage's result from the run directory (resume); default: not restorable."""
        raise NotRestorable(f"stage {self.output_name!r} cannot be restored")

    def recorded_facts(self, ctx: StageContext) -> dict[str, Any]:
        """The manifest entry this stage wrote when it succeeded in this run."""
        facts = ctx.run.stage_facts(self.output_name)
        if facts is None:
            raise NotRestorable(f"stage {self.output_name!r} has not succeeded in {ctx.run.dir}")
        return facts
