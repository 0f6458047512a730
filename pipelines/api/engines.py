"""An engine started once in a kernel and reused by several runs: `with pipelines.engine("dask") as eng: ...`."""

from __future__ import annotations

import html
import os
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.engines import make_engine
from pipelines.engines.base import Engine
from pipelines.engines.config import EngineConfig


def links(engine: Engine) -> dict[str, str]:
    """The engine's web UIs: the Dask dashboard or the Spark UI (none when it serves none)."""
    found: dict[str, str] = {}
    dashboard = getattr(engine, "dashboard", None)
    if callable(dashboard) and dashboard():
        found["dask dashboard"] = str(dashboard())
    spark = getattr(engine, "spark", None)
    ui = spark.sparkContext.uiWebUrl if spark is not None else None
    if ui:
        found["spark UI"] = str(ui)
    return found


class EngineSession:
    """A started engine (Spark session or Dask client) that runs and predictions share until it is closed."""

    def __init__(self, settings: EngineConfig) -> None:
        self.settings = settings
        self.engine: Engine = make_engine(settings)
        self.engine.start()
        self.closed = False

    @property
    def kind(self) -> str:
        return self.settings.kind

    @property
    def links(self) -> dict[str, str]:
        return links(self.engine)

    def describe(self) -> dict[str, Any]:
        """What the engine reports about itself (version, master or scheduler, workers)."""
        return self.engine.describe()

    def close(self) -> None:
        """Stop the engine (a local cluster shuts down; a remote one is left running)."""
        if not self.closed:
            self.closed = True
            self.engine.stop()

    def __enter__(self) -> EngineSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ", ".join(f"{k}: {v}" for k, v in self.links.items()) or "started"
        return f"<pipelines engine {self.kind} ({state})>"

    def _repr_html_(self) -> str:
        if self.closed:
            return f"<div>pipelines engine <b>{self.kind}</b> (closed)</div>"
        facts = {k: v for k, v in self.describe().items() if isinstance(v, str | int | float) and k != "log"}
        text = ", ".join(f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in facts.items())
        anchors = " · ".join(
            f'<a href="{html.escape(url)}" target="_blank">{html.escape(name)}</a>' for name, url in self.links.items()
        )
        return f"<div>pipelines engine <b>{self.kind}</b>: {text}<br>{anchors}</div>"


def engine(
    kind: str | EngineConfig | PipelineConfig = "dask", partitions: int | None = None, **settings: Any
) -> EngineSession:
    """Start an engine to share between runs: a kind ("dask", "spark") with its settings, or a config's section.

    `settings` are the kind's section (docs/ARCHITECTURE.md, engines/config.py), e.g.
    `engine("dask", n_workers=4)`, `engine("spark", master="local[4]")`, `engine("dask", scheduler_file=...)`.
    In a notebook started by `pipelines notebook --dask`, `engine("dask")` connects to the cluster started with
    it (its scheduler file is in PIPELINES_DASK_SCHEDULER_FILE) unless a scheduler or jobqueue section is given.
    """
    cluster_file = os.environ.get("PIPELINES_DASK_SCHEDULER_FILE")
    if kind == "dask" and cluster_file and not {"scheduler", "scheduler_file", "jobqueue"} & settings.keys():
        settings = {**settings, "scheduler_file": cluster_file}
    if isinstance(kind, PipelineConfig):
        section = kind.engine
    elif isinstance(kind, EngineConfig):
        section = kind
    else:
        section = EngineConfig.model_validate({"kind": kind, kind: settings})
    if partitions is not None:
        section = section.model_copy(update={"partitions": partitions})
    return EngineSession(section)
