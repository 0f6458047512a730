"""The deep stage: hand the ingested splits to Horovod ranks as tensor shards, train, collect the results."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, PositiveInt, StringConstraints, ValidationInfo, field_validator

from pipelines.atomic import atomic_write_json
from pipelines.deep.augment import AugmentSpec, EvalViews, flip_problem
from pipelines.deep.models import APPLICATIONS, NETWORKS, check_params, network
from pipelines.deep.shards import MANIFEST, TensorShards, write_shards
from pipelines.deep.usercode import REF, SOURCE, UserCode, copy_code, is_user_model, pin_spec
from pipelines.engines.base import Engine
from pipelines.errors import ConfigError, DataError
from pipelines.ingest.handoff import TrainingData, training_data
from pipelines.ingest.stage import written_splits_problems
from pipelines.launch.horovod import is_progress, launch_command, run_ranks
from pipelines.launch.ranks import RankJob
from pipelines.protocol import PipelineSettings, Problem, RecordedResult, Stage, StageContext
from pipelines.runs.layout import Folder
from pipelines.settings import StrictModel

log = logging.getLogger(__name__)

SPLIT_FACTS = ("accuracy", "loss", "single_view_accuracy")
HEADLINE = ("model", "train_rows", "ranks", "epochs_run", "resumed_from", "launcher", "placement")


@dataclass
class DeepResult(RecordedResult):
    """A finished training run's results (results.json of rank 0: history, test metrics, timings, placement)."""

    def facts(self) -> dict[str, Any]:
        """Headline facts: model, ranks, epochs, time, test accuracy or loss."""
        facts = {k: self.metrics[k] for k in HEADLINE if self.metrics.get(k) is not None}
        facts["fit_seconds"] = self.metrics.get("train_seconds", 0.0)
        for split in ("test", "val"):
            if split in self.metrics:
                facts.update({f"{split}_{k}": self.metrics[split][k] for k in SPLIT_FACTS if k in self.metrics[split]})
                break
        return facts


if TYPE_CHECKING:
    DeepModelKind = str  # the names are known only at run time (the registry); pydantic checks the Literal below
else:
    DeepModelKind = Literal[tuple(NETWORKS)]  # the one list of names: the registry
UserModel = Annotated[str, StringConstraints(pattern=REF)]  # "package.module:function" of the user's own network


class TransferSpec(StrictModel):
    """Where a transferred model comes from and how much of it trains."""

    source: str = Field(
        description="'stage:<name>' of an earlier deep stage in this pipeline, a .keras file, or "
        "'keras:<architecture>' (a Keras Applications network, e.g. keras:MobileNetV2, without its top)"
    )
    weights: str | None = Field(
        default=None, description="keras:<architecture>: a local weights file for it (none: random init)"
    )
    mode: Literal["features", "finetune"] = "features"
    trainable_layers: int = Field(default=2, ge=0, description="finetune: top layers of the base left trainable")
    head: list[PositiveInt] = Field(default_factory=lambda: [128])


class DeepStage(Stage):
    """Train a TensorFlow/Keras network data-parallel with Horovod on the ingested splits."""

    stage: Literal["deep"] = "deep"
    model: DeepModelKind | UserModel = Field(
        description="a network of the zoo, or 'package.module:function' building the user's own Keras model"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    code: str | None = Field(
        default=None,
        description="user network: a .py file or a folder (relative to the config) to import `model` from",
    )
    transfer: TransferSpec | None = None
    classes: list[int] | None = Field(default=None, min_length=2, description="keep only these labels (renumbered)")
    ranks: PositiveInt = 2
    launcher: Literal["auto", "horovodrun", "mpirun", "srun", "spark", "dask"] = Field(
        default="auto",
        description="auto: the engine's own workers on a cluster (spark: barrier tasks, dask: worker tasks), "
        "else horovodrun on this host",
    )
    gpus_per_rank: int = Field(default=0, ge=0, description="spark/dask launchers: GPUs each rank's task holds")
    wait_for_workers_s: float = Field(default=60, ge=0, description="dask launcher: wait this long for workers")
    hosts: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:,-]+$")
    epochs: PositiveInt = 10
    batch_size: PositiveInt = Field(default=64, description="per rank; the global batch is batch_size x ranks")
    optimizer: Literal["adam", "sgd", "momentum", "rmsprop", "adadelta"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0, description="per rank; scaled by ranks when scale_lr")
    scale_lr: bool = True
    warmup_epochs: float = Field(default=1.0, ge=0)
    schedule: Literal["constant", "cosine", "step", "exponential"] = "constant"
    decay_steps: PositiveInt = Field(default=2000, description="exponential: rate - floor shrinks by e every N steps")
    min_learning_rate: float = Field(default=0.0, ge=0, description="exponential: the floor the rate decays to")
    weight_decay: float = Field(default=0.0, ge=0)
    augment: AugmentSpec | None = Field(
        default=None, description="random shifts, rotations, zoom, erasing, flips of training images; true: defaults"
    )
    test_time_augment: EvalViews | None = Field(
        default=None, description="final evaluations average the predictions of mirrored and shifted views"
    )
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
    tensorboard_every_steps: int = Field(
        default=50, ge=0, description="rank 0 logs the training loss to TensorBoard every N steps (0: per epoch only)"
    )

    output_dir: ClassVar[str] = Folder.DEEP
    placement_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "ranks",
            "launcher",
            "hosts",
            "gpus_per_rank",
            "wait_for_workers_s",
            "threads_per_rank",
            "cache_mb",
            "profile_steps",
            "timeout_s",
            "tensorboard_every_steps",
        }
    )

    def default_name(self) -> str:
        """Outputs go under deep/<network kind> (a user network: deep/<module>.<function>) unless named."""
        return self.model.replace(":", ".")

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, value: Any) -> Any:
        """One clear error for a name that is neither a network of the zoo nor a `module:function` ref."""
        if isinstance(value, str) and value not in NETWORKS and not is_user_model(value):
            raise ValueError(f"unknown network {value!r}: one of {sorted(NETWORKS)} or 'package.module:function'")
        return value

    @field_validator("code")
    @classmethod
    def _code_beside_config(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A relative `code:` path is taken beside the config file (absolute from then on)."""
        if value is None:
            return None
        base = (info.context or {}).get("config_dir")
        path = Path(value) if Path(value).is_absolute() or base is None else Path(base) / value
        return str(path.resolve())

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_switch(cls, value: Any) -> Any:
        """`augment: true` is the default spec (no flips), `false` none."""
        if isinstance(value, bool):
            return AugmentSpec() if value else None
        return value

    def check_values(self) -> list[Problem]:
        """Params fit the network's builder; a transfer network (only) has a transfer section; classes distinct."""
        problems = []
        if self.code is not None and not is_user_model(self.model):
            problems.append(Problem("code", f"'code' is for a user network ('module:function'), not {self.model!r}"))
        if network(self.model).from_base != (self.transfer is not None):
            message = f"model {self.model!r} needs a 'transfer' section, and only it takes one"
            problems.append(Problem("transfer", message))
        if self.test_time_augment is not None and network(self.model).task != "classify":
            message = f"{self.model!r} does not classify: its outputs are not averaged"
            problems.append(Problem("test_time_augment", message))
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            problems.append(Problem("classes", "classes must be distinct"))
        try:
            check_params(self.model, self.params, self.code, self.output_name)
        except ValueError as exc:
            problems.append(Problem("model" if str(exc).startswith("cannot import") else "params", str(exc)))
        return problems

    def check(self, earlier: Sequence[Stage], config: PipelineSettings) -> list[Problem]:
        """An ingest that writes its splits comes first; classes exist; a transfer source is there."""
        problems = written_splits_problems(earlier)
        if self.launcher in ("spark", "dask") and self.launcher != config.engine.kind:
            problems.append(Problem("launcher", f"{self.launcher!r} needs the {self.launcher} engine"))
        for field, spec in (("augment", self.augment), ("test_time_augment", self.test_time_augment)):
            flips = flip_problem(spec, config.dataset.name, config.dataset.image_flips())
            if flips:
                problems.append(Problem(f"{field}.flip", flips))
        image = getattr(config.dataset, "image", None)
        if self.test_time_augment is not None and image is None:
            problems.append(Problem("test_time_augment", "views are of images: the dataset has no image section"))
        if self.classes and image is not None and image.classes and max(self.classes) >= image.classes:
            problems.append(Problem("classes", f"{self.classes} outside 0..{image.classes - 1}"))
        source = self.transfer.source if self.transfer is not None else ""
        if self.transfer is not None and self.transfer.weights and not source.startswith("keras:"):
            problems.append(Problem("transfer.weights", "weights are for a 'keras:<architecture>' source"))
        if source.startswith("stage:"):
            deep = [s.output_name for s in earlier if isinstance(s, DeepStage)]
            if source[len("stage:") :] not in deep:
                problems.append(Problem("transfer.source", f"{source!r} is not an earlier deep stage (have {deep})"))
        elif source.startswith("keras:"):
            problems += _application_problems(source[len("keras:") :], self.transfer.weights if self.transfer else None)
        elif source and not Path(source).is_file():
            problems.append(Problem("transfer.source", f"{source!r}: no such file"))
        return problems

    def run(self, ctx: StageContext) -> DeepResult:
        """Hand off the latest ingest's splits as tensor shards, train with Horovod ranks, collect results."""
        return run_deep(ctx.engine, self, ctx.run, training_data(ctx, self.output_name))

    def restore(self, ctx: StageContext) -> DeepResult:
        """The results rank 0 wrote for this stage in this run."""
        self.recorded_facts(ctx)
        return DeepResult(json.loads((Folder.DEEP.under(ctx.run.dir, self.output_name) / "results.json").read_text()))


def _application_problems(name: str, weights: str | None) -> list[Problem]:
    """A Keras Applications source names a known architecture; its weights file, if named, is there."""
    problems = []
    if name not in APPLICATIONS:
        problems.append(Problem("transfer.source", f"keras:{name}: not one of {list(APPLICATIONS)}"))
    if weights is not None and not Path(weights).is_file():
        problems.append(Problem("transfer.weights", f"{weights!r}: no such file (weights are never downloaded)"))
    return problems


class RankSpec(StrictModel):
    """What every Horovod rank reads (spec.json): the stage, its tensors, checkpoints and output folders."""

    stage: DeepStage
    tensors: str
    checkpoints: str
    out: str
    tensorboard: str | None = None
    transfer_model: str | None = None
    class_names: list[str] | None = None
    code: UserCode | None = None  # a user network: the run's copy of its code, which the rank imports

    def write(self, path: Path) -> None:
        """Write the spec atomically as JSON."""
        atomic_write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path: str | Path) -> RankSpec:
        """Read and validate a spec a stage or sweep trial wrote (its user code pinned first: the stage imports it)."""
        text = Path(path).read_text()
        pin_spec(text)
        return cls.model_validate_json(text)


def rank_class_names(data: TrainingData, classes: Sequence[int]) -> list[str]:
    """What the ranks call each trained class: its image class folder where the data names it, else its code."""
    return list(data.inputs.names_of(classes) or [str(c) for c in classes])


def tensors_key(stage: DeepStage) -> str:
    """Folder name of the tensors a stage trains on (shared by stages with the same class filter)."""
    return "all" if stage.classes is None else "classes-" + "-".join(str(c) for c in stage.classes)


def hand_off(engine: Engine, stage: DeepStage, run: Any, data: TrainingData) -> TensorShards:
    """Write (once per run and class filter) the ingested splits as tensor shards.

    Shards written earlier in this run are reused while they were cut from the same splits: they were hashed
    as they were written, and a resumed run checked every recorded output before any stage ran.
    """
    key = tensors_key(stage)
    target = Folder.TENSORS.under(run.dir, key)
    if (target / MANIFEST).exists():
        if json.loads((target / MANIFEST).read_text()).get("source", {}).get("splits") == data.fingerprint:
            try:  # recorded outputs were hashed when written or checked by resume: hash only unrecorded ones
                return TensorShards(target, verify=Folder.TENSORS.of(key) not in run.manifest["outputs"])
            except DataError as exc:
                log.warning("tensors/%s: %s; writing the shards again", key, exc)
        else:
            log.info("tensors/%s were cut from other splits (ingest ran again); writing them again", key)
    features, label = data.inputs.columns(None, None, stage.output_name)
    if label is None:
        raise ConfigError(f"deep stage {stage.output_name!r}: the dataset has no label column")
    total = data.inputs.classes
    if stage.classes and total is not None and max(stage.classes) >= total:
        raise ConfigError(f"deep stage {stage.output_name!r}: classes {stage.classes} outside 0..{total - 1}")
    with run.output(Folder.TENSORS.of(key)) as tmp:
        tmp.mkdir()
        manifest = write_shards(
            engine,
            data.outputs,
            tmp,
            inputs=data.inputs,
            features=features,
            label=label,
            classes=stage.classes,
            n_classes=len(stage.classes) if stage.classes else total,
            source={"engine": engine.kind, "dataset": data.dataset, "run": run.id, "splits": data.fingerprint},
        )
        if manifest["splits"].get("train", {}).get("rows", 0) == 0:
            raise DataError(f"deep stage {stage.output_name!r}: no training rows left after the class filter")
    log.info(
        "tensors/%s: %s",
        key,
        ", ".join(f"{s} {v['rows']:,} rows in {len(v['shards'])} shards" for s, v in manifest["splits"].items()),
    )
    return TensorShards(target, verify=False)


def _fresh_checkpoints(folder: Path, stage: DeepStage) -> None:
    """Drop checkpoints written under another config of this stage (placement aside): a forced rerun starts over."""
    spec = folder / "spec.json"
    if not spec.exists():
        return
    what = set(type(stage).model_fields) - type(stage).placement_fields
    old = {k: v for k, v in json.loads(spec.read_text()).get("stage", {}).items() if k in what}
    if old != {k: v for k, v in stage.model_dump(mode="json").items() if k in what}:
        log.info("checkpoints/%s were written under another config of the stage; starting over", stage.output_name)
        shutil.rmtree(folder)


def transfer_model_path(stage: DeepStage, run: Any) -> str | None:
    """The .keras file a transfer network starts from (an earlier stage's model in this run, or a path)."""
    if stage.transfer is None:
        return None
    source = stage.transfer.source
    if source.startswith("keras:"):
        return source
    match = re.fullmatch(r"stage:(.+)", source)
    path = Folder.DEEP.under(run.dir, match.group(1)) / "model.keras" if match else Path(source)
    if not path.exists():
        raise ConfigError(f"deep stage {stage.output_name!r}: transfer source {source!r} not found ({path})")
    return str(path)


def user_code(run: Any, stage: DeepStage, name: str) -> UserCode | None:
    """The run's copy of a stage's user code (<run>/code/<name>/, checksums in the manifest), made once per run.

    Ranks, trials and predict import the copy (`usercode.pin`); a resumed run keeps the copy it trained with, and a
    later stage naming the same `code:` copies the run's first copy of it (one version of the code per run).
    """
    if stage.code is None:
        return None
    key = Folder.CODE.of(name)
    target = Folder.CODE.under(run.dir, name)
    if key not in run.manifest["outputs"] or not target.is_dir():
        copies = sorted((run.dir / Folder.CODE).glob(f"*/{SOURCE}"))
        same = [
            c.parent
            for c in copies
            if c.read_text() == stage.code and Folder.CODE.of(c.parent.name) in run.manifest["outputs"]
        ]
        with run.output(key) as tmp:
            copy_code(str(same[0]) if same else stage.code, tmp)
            (tmp / SOURCE).write_text(stage.code)  # hidden: not imported, not part of the checksums
        log.info("%s: copied the user code %s (%d files)", key, stage.code, len(run.manifest["outputs"][key]))
    return UserCode(stage=stage.output_name, dir=str(target), checksums=run.manifest["outputs"][key])


def run_deep(engine: Engine, stage: DeepStage, run: Any, data: TrainingData, ranks: int | None = None) -> DeepResult:
    """Hand off the data, train with Horovod ranks, write deep/<name>/ (model, history, plots, results)."""
    shards = hand_off(engine, stage, run, data)
    name = stage.output_name
    checkpoints = Folder.CHECKPOINTS.under(run.dir, name)
    _fresh_checkpoints(checkpoints, stage)
    checkpoints.mkdir(parents=True, exist_ok=True)
    classes = stage.classes or list(range(shards.classes))
    with run.output(Folder.DEEP.of(name)) as tmp:
        spec_path = checkpoints / "spec.json"
        RankSpec(
            stage=stage,
            tensors=str(shards.dir),
            checkpoints=str(checkpoints),
            out=str(tmp),
            tensorboard=str(
                Folder.TENSORBOARD.under(run.dir, name)
            ),  # rank 0's events; a folder every rank's host sees
            transfer_model=transfer_model_path(stage, run),
            class_names=rank_class_names(data, classes),
            code=user_code(run, stage, name),  # the run's copy of the user's network code, imported first
        ).write(spec_path)
        launcher = stage.launcher if stage.launcher != "auto" else engine.rank_launcher()
        n = ranks or stage.ranks
        net = engine.network  # the interface the ranks bind to, and their rendezvous timeout
        logs = run.dir / "logs"
        if launcher in ("spark", "dask"):
            if launcher != engine.kind:
                raise ConfigError(f"deep stage {name!r}: launcher {launcher!r} needs the {launcher} engine")
            worker = ("-m", "pipelines.deep.worker", str(spec_path))
            job = RankJob(n, worker, logs, name, stage.timeout_s, is_progress, stage.gpus_per_rank)
            job = dataclasses.replace(
                job,
                wait_s=stage.wait_for_workers_s,
                interface=net.interface,
                rendezvous_timeout_s=net.rendezvous_timeout_s,
            )
            log.info("training %s: %d ranks as %s tasks (logs: %s)", name, n, launcher, job.log(0).parent)
            placement = engine.run_ranks(job)
        else:
            worker_argv = [sys.executable, "-m", "pipelines.deep.worker", str(spec_path)]
            command = launch_command(launcher, n, stage.hosts, worker_argv, net.interface, net.rendezvous_timeout_s)
            run_ranks(command, logs / f"{name}.ranks.log", stage.timeout_s)
            placement = [{"rank": r} for r in range(n)]
        results = json.loads((tmp / "results.json").read_text())
        results["launcher"] = launcher
        results["placement"] = [_with_device(p, checkpoints) for p in placement]
        atomic_write_json(tmp / "results.json", results)
    return DeepResult(results)


def _with_device(facts: dict[str, Any], checkpoints: Path) -> dict[str, Any]:
    """A rank's launcher facts plus what the rank itself recorded (host, pid, device)."""
    path = checkpoints / "pids" / f"rank-{facts['rank']}.json"
    own = json.loads(path.read_text()) if path.exists() else {}
    return {**own, **facts}
