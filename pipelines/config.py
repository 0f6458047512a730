"""Pipeline configuration: the YAML schema, safe loading, dotted overrides and readable errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, model_validator

from pipelines.engines.config import EngineConfig
from pipelines.errors import ConfigError
from pipelines.ingest.config import DatasetConfig, SplitConfig
from pipelines.launch.config import BatchSettings
from pipelines.settings import StrictModel


class StageBase(StrictModel):
    """What every stage config has: its kind (`stage`) and the name its outputs and metrics go under."""

    stage: str

    @property
    def output_name(self) -> str:
        """Name of this stage in the manifest, metrics.json and output directories."""
        return self.stage


class IngestStage(StageBase):
    """Read, validate, split, encode and standardize; write partitioned Parquet."""

    stage: Literal["ingest"] = "ingest"
    split: SplitConfig = Field(default_factory=SplitConfig)
    standardize: bool = True
    image_scale: Literal["none", "unit"] = "unit"
    encode: Literal["onehot", "dummy", "index"] = "onehot"
    max_rejected_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    index_block_mb: PositiveInt = 32
    write: bool = True


ModelKind = Literal[
    "linear_regression",
    "logistic_regression",
    "kmeans",
    "pca",
    "truncated_svd",
    "random_forest_classifier",
    "random_forest_regressor",
]


class ModelStage(StageBase):
    """Fit a classical model on the ingested train split; evaluate on test; metrics, plots and model files."""

    stage: Literal["model"] = "model"
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelKind
    params: dict[str, Any] = Field(default_factory=dict)
    features: list[str] | None = None
    label: str | None = None
    elbow: list[PositiveInt] | None = None
    variance_targets: list[float] = Field(default_factory=lambda: [0.8, 0.9, 0.95])
    sample: PositiveInt = 5000
    plots: bool = True
    save: bool = True

    @model_validator(mode="after")
    def _check_params(self) -> ModelStage:
        from pipelines.classical import ESTIMATORS

        try:
            ESTIMATORS[self.model](**self.params)
        except TypeError as exc:
            raise ValueError(f"params for {self.model}: {exc}") from None
        if any(not 0 < t <= 1 for t in self.variance_targets):
            raise ValueError("variance_targets must lie in (0, 1]")
        return self

    @property
    def output_name(self) -> str:
        """Directory name of this stage's outputs (models/<name>, plots/<name>)."""
        return self.name or self.model


DeepModelKind = Literal[
    "softmax",
    "mlp",
    "mnist_cnn",
    "lenet5",
    "fashion_cnn",
    "dense_autoencoder",
    "deep_autoencoder",
    "conv_autoencoder",
    "denoising_autoencoder",
    "transfer",
]


class TransferSpec(StrictModel):
    """Where a transferred model comes from and how much of it trains."""

    source: str = Field(description="'stage:<name>' of an earlier deep stage in this pipeline, or a .keras file")
    mode: Literal["features", "finetune"] = "features"
    trainable_layers: int = Field(default=2, ge=0, description="finetune: top layers of the base left trainable")
    head: list[PositiveInt] = Field(default_factory=lambda: [128])


class DeepStage(StageBase):
    """Train a TensorFlow/Keras network data-parallel with Horovod on the ingested splits."""

    stage: Literal["deep"] = "deep"
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: DeepModelKind
    params: dict[str, Any] = Field(default_factory=dict)
    transfer: TransferSpec | None = None
    classes: list[int] | None = Field(default=None, min_length=2, description="keep only these labels (renumbered)")
    ranks: PositiveInt = 2
    launcher: Literal["horovodrun", "mpirun", "srun"] = "horovodrun"
    hosts: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:,-]+$")
    epochs: PositiveInt = 10
    batch_size: PositiveInt = Field(default=64, description="per rank; the global batch is batch_size x ranks")
    optimizer: Literal["adam", "sgd", "momentum", "rmsprop"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0, description="per rank; scaled by ranks when scale_lr")
    scale_lr: bool = True
    warmup_epochs: float = Field(default=1.0, ge=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    weight_decay: float = Field(default=0.0, ge=0)
    augment: bool = False
    noise: float = Field(default=0.3, ge=0, description="denoising autoencoder: Gaussian noise on the inputs")
    early_stopping_patience: int | None = Field(default=None, ge=1)
    seed: int = 0
    threads_per_rank: int | None = Field(default=None, ge=1)
    mixed_precision: bool = False
    keep_checkpoints: PositiveInt = 3
    cache_mb: float = Field(default=2048, ge=0, description="each rank reads a split into memory below this size")
    profile_steps: int = Field(default=0, ge=0, description="time this many steps with and without allreduce first")
    timeout_s: PositiveInt = 24 * 3600
    plots: bool = True

    @model_validator(mode="after")
    def _check_transfer(self) -> DeepStage:
        if (self.model == "transfer") != (self.transfer is not None):
            raise ValueError("model 'transfer' needs a 'transfer' section, and only it takes one")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        from pipelines.deep.models import check_params

        check_params(self.model, self.params)
        return self

    @property
    def output_name(self) -> str:
        """Directory name of this stage's outputs (deep/<name>, plots/<name>)."""
        return self.name or self.model


StageConfig = Annotated[IngestStage | ModelStage | DeepStage, Field(discriminator="stage")]


class PipelineConfig(StrictModel):
    """One pipeline: a dataset, an engine and the stages to run on it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    dataset: DatasetConfig
    stages: list[StageConfig] = Field(min_length=1)
    runs_dir: str = "runs"
    keep_runs: PositiveInt | None = Field(default=None, description="after a successful run, keep the newest N")
    batch: BatchSettings = Field(default_factory=BatchSettings)


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


STAGE_TAGS = tuple(cls.model_fields["stage"].default for cls in (IngestStage, ModelStage, DeepStage))


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


def parse_config(data: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    """Validate a raw mapping; errors name each key's path and the source file."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"]
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
    return parse_config(data, source=str(Path(path)))


def dump_config(config: PipelineConfig) -> str:
    """The resolved config as YAML (what a run records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
