"""Exception types that carry a user-facing message, each with the exit code the CLI ends with.

Exit codes: 0 success, 1 internal error (a bug: the traceback is in the run's log), 2 config or usage,
3 data, 4 environment, 5 a run that failed for another reported reason (a training rank, a held lock,
a scheduler that refused a job, workers lost beyond the engine's retries), 130 interrupted.
"""

from __future__ import annotations

INTERNAL = 1
INTERRUPTED = 130


class PipelineError(Exception):
    """Base class for errors the CLI reports as one line, without a traceback."""

    exit_code = 5
    kind = "error"


class ConfigError(PipelineError):
    """A configuration file or override is invalid."""

    exit_code = 2
    kind = "config error"


class DataError(PipelineError):
    """Input data cannot be read or fails validation beyond what quarantine can absorb."""

    exit_code = 3
    kind = "data error"


class EnvironmentProblem(PipelineError):
    """The machine lacks something a run needs (Java, a data set, a service)."""

    exit_code = 4
    kind = "environment error"


class UsageError(PipelineError):
    """A command names something that is not there or cannot serve (a run directory, a stage, an output folder)."""

    exit_code = 2
    kind = "usage error"


class EngineFailure(PipelineError):
    """The engine gave up on a task: the processes running it died more often than it retries (the run is kept)."""

    exit_code = 5
    kind = "engine error"


_ALL: list[type[PipelineError]] = [PipelineError, *PipelineError.__subclasses__()]
KINDS: dict[str, type[PipelineError]] = {cls.__name__: cls for cls in _ALL}
