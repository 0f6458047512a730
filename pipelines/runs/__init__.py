"""The runs room: run folder layout, manifest, checksummed outputs, lock, `latest`, retention, resume."""

from pipelines.runs.lock import LockBusy, pipeline_lock
from pipelines.runs.resume import config_diff, corrupt_outputs, find_resumable
from pipelines.runs.retention import prune_runs
from pipelines.runs.run import Run
from pipelines.runs.session import run_session

__all__ = [
    "LockBusy",
    "Run",
    "config_diff",
    "corrupt_outputs",
    "find_resumable",
    "pipeline_lock",
    "prune_runs",
    "run_session",
]
