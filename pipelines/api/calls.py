"""The public functions: load a config, run or train it, score new data, list and open runs.

The command line calls these same functions (`cli.py` only parses arguments and prints).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.api.engines import EngineSession
from pipelines.api.progress import progress
from pipelines.api.result import Run
from pipelines.config import PipelineConfig, apply_override, parse_config
from pipelines.config import load_config as _load_file
from pipelines.engines.base import Engine
from pipelines.errors import ConfigError, UsageError
from pipelines.runs.history import RunRecord, find_run, list_runs

ConfigLike = PipelineConfig | dict[str, Any] | str | os.PathLike[str]
EngineLike = EngineSession | Engine | str | None


def load_config(config: ConfigLike, overrides: Sequence[str] | dict[str, Any] | None = None) -> PipelineConfig:
    """A validated pipeline config from a YAML file, a mapping or a config, with dotted overrides applied.

    `overrides`: `["engine.partitions=8"]` (values parsed as YAML) or `{"engine.partitions": 8}`. Problems
    raise `pipelines.errors.ConfigError` naming each key's path.
    """
    if isinstance(overrides, dict):
        overrides = [f"{k}={_yaml_value(v)}" for k, v in overrides.items()]
    overrides = list(overrides or [])
    if isinstance(config, str | os.PathLike):
        return _load_file(config, overrides)
    if isinstance(config, PipelineConfig):
        if not overrides:
            return config.model_copy(deep=True)
        data, source = config.model_dump(mode="json"), f"<config {config.name}>"
    elif isinstance(config, dict):
        data, source = copy.deepcopy(config), "<dict>"
    else:
        raise ConfigError(f"a config is a YAML path, a mapping or a PipelineConfig, not {type(config).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_config(data, source)


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _started(engine: EngineLike) -> Engine | None:
    if isinstance(engine, EngineSession):
        if engine.closed:
            raise UsageError(f"the {engine.kind} engine was closed; start another with pipelines.engine(...)")
        return engine.engine
    return engine if isinstance(engine, Engine) else None


def run_all(
    configs: Sequence[ConfigLike],
    engine: EngineLike | Sequence[str] = None,
    resume: bool | str | os.PathLike[str] = False,
    wait: bool = False,
    force: bool = False,
) -> list[Run]:
    """Run several configs: on a started engine, or on each kind named (one started engine per engine section)."""
    from pipelines.pipeline import run_many, run_pipeline

    loaded = [load_config(c) for c in configs]
    resume = str(resume) if isinstance(resume, os.PathLike) else resume
    started = _started(engine)  # type: ignore[arg-type]
    with progress():
        if started is not None:
            if isinstance(resume, str) and len(loaded) > 1:
                raise ConfigError(f"--resume {resume} continues one run: give one config")
            done = []
            for config in loaded:
                config.engine.kind = started.kind  # type: ignore[assignment]
                done.append((config, run_pipeline(config, started, resume=resume, wait=wait, force=force)))
        else:
            kinds = [engine] if isinstance(engine, str) else (list(engine) if engine else None)  # type: ignore[arg-type]
            done = run_many(loaded, kinds, resume, wait, force)
    return [Run(out.run.dir, config, out) for config, out in done]


def run(
    config: ConfigLike,
    engine: EngineLike = None,
    resume: bool | str | os.PathLike[str] = False,
    wait: bool = False,
    force: bool = False,
) -> Run:
    """Run one pipeline and return its Run (status, metrics, stages, models; shown inline in Jupyter).

    `engine`: a started `pipelines.engine(...)` to reuse, a kind ("spark", "dask") replacing the config's, or
    None for the config's own (started and stopped for this run). `resume`: True continues the newest
    unfinished run of the pipeline, a run directory that run; `force` reruns stages whose config changed.
    """
    return run_all([config], engine, resume, wait, force)[0]


def with_ranks(config: PipelineConfig, ranks: int | None = None, hosts: str | None = None) -> PipelineConfig:
    """The config with every deep stage's `ranks` and `hosts` set (checked again)."""
    if not any(s.stage == "deep" for s in config.stages):
        raise UsageError(f"pipeline {config.name!r} has no deep stage to train")
    data = config.model_dump()
    for index, stage in enumerate(config.stages):
        if stage.stage == "deep":
            data["stages"][index].update({k: v for k, v in (("ranks", ranks), ("hosts", hosts)) if v})
    return parse_config(data, config.name)


def train(
    config: ConfigLike,
    ranks: int | None = None,
    hosts: str | None = None,
    engine: EngineLike = None,
    resume: bool | str | os.PathLike[str] = False,
    wait: bool = False,
    force: bool = False,
) -> Run:
    """Run a pipeline whose deep stages train with `ranks` Horovod ranks (default: each stage's own)."""
    return run(with_ranks(load_config(config), ranks, hosts), engine, resume, wait, force)


def _run_dir(run: Run | str | os.PathLike[str], runs_dir: str | os.PathLike[str]) -> Path:
    return run.dir if isinstance(run, Run) else find_run(runs_dir, str(run)).dir


def predict(
    run: Run | str | os.PathLike[str],
    stage: str,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    engine: EngineLike = None,
    labels: str | None = None,
    partitions: int | None = None,
    runs_dir: str | os.PathLike[str] = "runs",
) -> pd.DataFrame | Path:
    """Score new data with a finished run's model stage (docs/PREDICT.md).

    With `out` the predictions, quarantine and summary.json are written there and the folder is returned;
    without, a pandas DataFrame of the predictions (its `attrs["summary"]` holds the counts and metrics).
    """
    from pipelines.predict import predict as score

    run_dir = _run_dir(run, runs_dir)
    kind = engine if isinstance(engine, str) else None
    if kind not in (None, "spark", "dask"):
        raise UsageError(f"engine {kind!r}: use spark or dask")
    with progress(), _output_folder(out) as folder:
        summary = score(run_dir, stage, str(data), folder, kind, _started(engine), labels, partitions)
        if out is not None:
            return Path(folder)
        frame = pd.read_parquet(Path(folder) / "predictions")
    frame = frame.sort_values(["source_file", "row"], kind="stable").reset_index(drop=True)
    frame.attrs["summary"] = summary
    return frame


@contextlib.contextmanager
def _output_folder(out: str | os.PathLike[str] | None) -> Iterator[str]:
    """The output folder given, or one in a temporary folder removed afterwards."""
    if out is not None:
        yield str(out)
        return
    with tempfile.TemporaryDirectory(prefix="pipelines-predict-") as tmp:
        yield str(Path(tmp) / "out")


def run_records(runs_dir: str | os.PathLike[str] = "runs", pipeline: str | None = None) -> list[RunRecord]:
    """The runs under `runs_dir` (of one pipeline), newest first; an error when there are none."""
    if not Path(runs_dir).is_dir():
        raise UsageError(f"{runs_dir}: no runs folder here (give --runs-dir)")
    records = list_runs(runs_dir, pipeline)
    if not records:
        which = f" of {pipeline!r}" if pipeline else ""
        raise UsageError(f"no runs{which} in {runs_dir}")
    return records


def runs(runs_dir: str | os.PathLike[str] = "runs", pipeline: str | None = None) -> pd.DataFrame:
    """Earlier runs, newest first: pipeline, run id, status, start, seconds, engine, directory, headline metrics."""
    rows = []
    for record in run_records(runs_dir, pipeline):
        rows.append(
            {
                "pipeline": record.manifest.get("pipeline", record.dir.parent.name),
                "run": record.id,
                "status": record.manifest.get("status"),
                "started": pd.Timestamp(record.manifest["started"]) if record.manifest.get("started") else pd.NaT,
                "seconds": record.seconds,
                "engine": record.engine,
                "dir": str(record.dir),
                **record.headline(),
            }
        )
    return pd.DataFrame(rows)


def open_run(path_or_id: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs") -> Run:
    """A run by its directory, or by its id (or a unique prefix of one) under `runs_dir`."""
    return Run(find_run(runs_dir, str(path_or_id)).dir)
