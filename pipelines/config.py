"""Pipeline configuration: the YAML schema, safe loading, dotted overrides and readable errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PositiveInt, ValidationError

from pipelines.engines.config import EngineConfig
from pipelines.errors import ConfigError
from pipelines.ingest.config import DatasetConfig
from pipelines.launch.config import BatchSettings
from pipelines.registry import STAGES, StageConfig
from pipelines.settings import Name, StrictModel
from pipelines.tracking import TrackingConfig


class PipelineConfig(StrictModel):
    """One pipeline: a dataset, an engine and the stages to run on it."""

    name: Name
    engine: EngineConfig = Field(default_factory=EngineConfig)
    dataset: DatasetConfig
    stages: list[StageConfig] = Field(min_length=1)
    runs_dir: str = "runs"
    keep_runs: PositiveInt | None = Field(default=None, description="after a successful run, keep the newest N")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    tracking: TrackingConfig | None = Field(default=None, description="log each run to MLflow (docs/TRACKING.md)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a YAML mapping safely (no Python tags, no duplicate keys)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one dotted `a.b.0.c=value` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {assignment!r}: empty key in {dotted!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML: {exc}") from exc
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:i]) or '<root>'} has no item {key}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:i])} is a value, not a section")


STAGE_TAGS = tuple(STAGES)


def _format_loc(loc: tuple[Any, ...]) -> str:
    if len(loc) > 2 and loc[0] == "stages" and isinstance(loc[1], int) and loc[2] in STAGE_TAGS:
        loc = loc[:2] + loc[3:]  # drop the union's tag: stages[0].split, not stages[0].ingest.split
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def parse_config(
    data: dict[str, Any], source: str = "<config>", config_dir: str | os.PathLike[str] | None = None
) -> PipelineConfig:
    """Validate a raw mapping; errors name each key's path and the source file (relative `code:` is beside it)."""
    try:
        context = {"config_dir": str(config_dir)} if config_dir is not None else None
        return PipelineConfig.model_validate(data, context=context)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required field is missing"
            got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
            lines.append(f"  - {_format_loc(tuple(err['loc']))}: {msg}{got}")
        raise ConfigError(f"{source}: invalid config:\n" + "\n".join(lines)) from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> PipelineConfig:
    """Load, override and validate a pipeline config file."""
    data = load_yaml(path)
    for assignment in overrides or []:
        apply_override(data, assignment)
    _resolve_code(data, Path(path).resolve().parent)
    return parse_config(data, source=str(Path(path)), config_dir=Path(path).resolve().parent)


def _resolve_code(node: Any, base: Path) -> None:
    """Each stage's `code:` (the user's file or folder, beside the config) as an absolute path, in place."""
    if isinstance(node, dict):
        code = node.get("code")
        if isinstance(code, str) and "stage" in node and not Path(code).is_absolute():
            node["code"] = str(base / code)
        for value in node.values():
            _resolve_code(value, base)
    elif isinstance(node, list):
        for value in node:
            _resolve_code(value, base)


def dump_config(config: PipelineConfig) -> str:
    """The resolved config as YAML (what a run records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
