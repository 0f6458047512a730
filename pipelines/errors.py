"""Exception types that carry a user-facing message."""


class PipelineError(Exception):
    """Base class for errors the CLI reports without a traceback."""


class ConfigError(PipelineError):
    """A configuration file or override is invalid."""


class DataError(PipelineError):
    """Input data cannot be read or fails validation beyond what quarantine can absorb."""


class EnvironmentProblem(PipelineError):
    """The machine lacks something a run needs (Java, a data set, a service)."""
