"""The Python API (docs/NOTEBOOKS.md): what the command line does, callable from a script or a notebook."""

from pipelines.api.calls import load_config, open_run, predict, run, run_all, run_records, runs, train, with_ranks
from pipelines.api.engines import EngineSession, engine
from pipelines.api.result import Run, Stage

__all__ = [
    "EngineSession",
    "Run",
    "Stage",
    "engine",
    "load_config",
    "open_run",
    "predict",
    "run",
    "run_all",
    "run_records",
    "runs",
    "train",
    "with_ranks",
]
