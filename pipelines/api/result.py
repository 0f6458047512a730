"""A finished (or running) run as a Python object: status, metrics, stages, models, summaries, inline HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import pandas as pd

from pipelines.errors import UsageError
from pipelines.report import REPORT, build_report, read_run
from pipelines.report.content import Figure, RunContent, StageContent, fmt, short_facts
from pipelines.runs.history import RunRecord, flat_values
from pipelines.runs.run import MANIFEST, METRICS

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from pipelines.pipeline import PipelineResult

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipelines.api", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
_ENV.filters["fmt"] = fmt
_ENV.filters["facts"] = short_facts


@dataclass
class Stage:
    """One stage of a run: its manifest facts, metrics, files (artifacts) and figures."""

    name: str
    status: str
    facts: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: list[Path]
    plots: list[Path]
    summaries: dict[str, str] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list, repr=False)

    def _repr_html_(self) -> str:
        return _ENV.get_template("stage.html.j2").render(s=self)


class Run:
    """One run directory (`runs/<pipeline>/<id>/`) read as Python values; the last line of a cell shows it."""

    def __init__(
        self, directory: str | Path, config: PipelineConfig | None = None, result: PipelineResult | None = None
    ) -> None:
        self.dir = Path(directory).resolve()
        self.config = config  # the config that ran (None for a run opened from disk)
        self.result = result  # the typed stage results (None for a run opened from disk)
        self._cache: dict[str, Any] = {}
        RunRecord.read(self.dir)  # a clear error now if this is not a run directory

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, status={self.status!r})"

    @property
    def record(self) -> RunRecord:
        """The run's manifest, metrics and config as recorded now (read again on every use)."""
        return RunRecord.read(self.dir)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def pipeline(self) -> str:
        return str(self.record.manifest.get("pipeline", self.dir.parent.name))

    @property
    def status(self) -> str:
        """running, succeeded, failed or interrupted."""
        return str(self.record.manifest.get("status", "?"))

    @property
    def engine(self) -> str:
        return self.record.engine

    @property
    def metrics(self) -> pd.DataFrame:
        """Every scalar metric the run recorded, one row per (stage, metric)."""
        rows = [
            (stage, key, value)
            for stage, section in self.record.metrics.items()
            for key, value in flat_values(section).items()
        ]
        return pd.DataFrame(rows, columns=["stage", "metric", "value"])

    @property
    def stages(self) -> list[str]:
        """The run's stage names in order."""
        return [s.name for s in self._content().stages]

    def stage(self, name: str) -> Stage:
        """One stage: facts, metrics, files and figures."""
        content = self._content()
        found = next((s for s in content.stages if s.name == name), None)
        if found is None:
            raise UsageError(f"{self.dir}: no stage {name!r}; the run has {[s.name for s in content.stages]}")
        return _stage(content, found, self.record.metrics.get(name, {}))

    def summary(self, name: str) -> str:
        """The R-style summary table(s) a model stage wrote (models/<name>/summary*.txt)."""
        texts = self.stage(name).summaries
        if not texts:
            raise UsageError(f"stage {name!r} wrote no summary (only classical models with summaries do)")
        return "\n\n".join(texts.values())

    def model(self, name: str) -> Any:
        """The fitted estimator of a model stage (pickle-free files) or the Keras model of a deep stage."""
        from pipelines.predict.saved import load_saved
        from pipelines.predict.score import load_ref

        return load_ref(load_saved(self.dir, name).model)

    @property
    def quarantine(self) -> pd.DataFrame:
        """The rows ingest rejected, with the reason (empty when none were)."""
        entry = self.record.manifest.get("quarantine") or {}
        path = self.dir / entry.get("file", "quarantine.csv")
        if not path.is_file() or path.stat().st_size == 0:
            return pd.DataFrame()
        return pd.read_csv(path, dtype=str, keep_default_na=False)

    @property
    def report_path(self) -> Path:
        """The run's report.html (built now if the run has none yet)."""
        path = self.dir / REPORT
        return path if path.is_file() else build_report(self.dir)

    def _content(self) -> RunContent:
        """The report's reading of the run folder (read again when the manifest or metrics changed)."""
        files = (self.dir / MANIFEST, self.dir / METRICS)
        stamp = tuple(p.stat().st_mtime_ns for p in files if p.exists())
        if self._cache.get("stamp") != stamp:
            self._cache.update(stamp=stamp, content=read_run(self.dir))
        return self._cache["content"]

    def _repr_html_(self) -> str:
        content = self._content()
        metrics = self.record.metrics
        stages = [_stage(content, s, metrics.get(s.name, {})) for s in content.stages]
        return _ENV.get_template("run.html.j2").render(
            run=content, m=content.manifest, stages=stages, report=html.escape(str(self.dir / REPORT))
        )


def _stage(content: RunContent, found: StageContent, metrics: dict[str, Any]) -> Stage:
    """A Stage from the report's reading of it, with the files under the run folder that belong to it."""
    artifacts = sorted(
        p
        for top in content.dir.iterdir()
        if top.is_dir() and not top.name.startswith(".")
        for p in [top / found.name]
        if p.exists()
    )
    plots = [content.dir / f.path for f in found.figures]
    summaries = {path: text for path, text in found.summaries}
    return Stage(found.name, found.status, dict(found.entry), metrics, artifacts, plots, summaries, found.figures)
