"""The runs room: run folder layout, manifest, checksummed outputs, lock, `latest`, retention, resume.

The package is also callable: `pipelines.runs("runs")` is the public API's table of earlier runs
(`pipelines.api.runs`), since this subpackage and that function share the name `pipelines.runs`.
"""

import sys
import types
from typing import Any

from pipelines.runs.lock import LockBusy, pipeline_lock
from pipelines.runs.resume import config_diff, corrupt_outputs, find_resumable
from pipelines.runs.retention import prune_runs
from pipelines.runs.run import Run
from pipelines.runs.session import run_session


class _CallableRuns(types.ModuleType):
    """This package, callable as `pipelines.runs(runs_dir, pipeline)` -> pandas.DataFrame (pipelines.api.runs)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pipelines.api import runs

        return runs(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableRuns

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
