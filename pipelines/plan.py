"""The pipeline plan, checked at validate time: stage order and inputs, parameter values, unique names."""

from __future__ import annotations

from collections import Counter

from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.protocol import Problem


def check_plan(config: PipelineConfig) -> list[Problem]:
    """Every problem of a parsed config that its schema cannot see, each with its key path."""
    problems: list[Problem] = []
    names = Counter(stage.output_name for stage in config.stages)
    for index, stage in enumerate(config.stages):
        where = f"stages[{index}]"
        if names[stage.output_name] > 1:
            problems.append(Problem(f"{where}.name", f"{stage.output_name!r} is used by more than one stage"))
        for problem in stage.check(config.stages[:index], config):
            problems.append(Problem(f"{where}.{problem.path}", problem.message))
    return problems


def require_valid_plan(config: PipelineConfig, source: str = "<config>") -> None:
    """Raise one ConfigError listing every plan problem (nothing runs if any)."""
    problems = check_plan(config)
    if problems:
        raise ConfigError(f"{source}: invalid pipeline plan:\n" + "\n".join(f"  - {p}" for p in problems))
