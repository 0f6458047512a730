"""The ingest stage: plan balanced segments, read and validate them on the engine, split, fit, write."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, PositiveInt

from pipelines.atomic import atomic_write_bytes
from pipelines.data.bundled import resolve_path
from pipelines.engines.base import Engine
from pipelines.errors import ConfigError, DataError
from pipelines.ingest import images as image_files
from pipelines.ingest import readers, sources
from pipelines.ingest.config import ColumnType, DatasetConfig, SplitConfig, declared_split_problems
from pipelines.ingest.digest import combine_digests, partition_digest
from pipelines.ingest.expressions import (
    FILTERED,
    ExpressionError,
    Expressions,
    compile_expressions,
    declared_kinds,
    expression_columns,
    expression_problems,
    filter_list,
    read_schema,
    validate_with_steps,
)
from pipelines.ingest.handoff import (
    NEEDS_WRITTEN_SPLITS,
    ImageInputs,
    TableInputs,
    TrainingData,
    needs_written_splits,
    splits_fingerprint,
)
from pipelines.ingest.infer import infer_types, sample_types, summarize_part
from pipelines.ingest.schema import TableSchema, parse_formula, resolve_table_schema
from pipelines.ingest.split import SPLIT_NAMES, TRAIN, assign_split
from pipelines.ingest.stratify import restratify, stratified_cuts
from pipelines.ingest.transform import (
    Fitted,
    image_output_schema,
    output_schema,
    partition_stats,
    stored_image_dtype,
    transform_images,
    transform_table,
)
from pipelines.ingest.validate import DROPPED, image_arrow_schema, table_arrow_schema, validate_images, validate_table
from pipelines.protocol import NotRestorable, PipelineSettings, Problem, Stage, StageContext, StageResult
from pipelines.runs.layout import Folder

log = logging.getLogger(__name__)
SPLIT_CODES = {name: code for code, name in SPLIT_NAMES.items()}


@dataclass(frozen=True)
class ImageInput:
    """One images file of an image data set: its labels file (None: unlabelled) and what is wrong with its shape."""

    images: sources.SourceFile
    labels: sources.SourceFile | None
    problem: str | None = None


@dataclass
class Plan:
    """What to read: the files, their balanced segments, and the declared schema.

    `declared` maps the name of each file a dataset declares for a split (`test_path`, `val_path`) to that
    split's code; the seeded split divides the other files. `images` holds each images file of an image set.
    """

    dataset: DatasetConfig
    files: list[sources.SourceFile]
    parts: list[list[sources.Segment]]
    table: TableSchema | None = None
    labels: sources.SourceFile | None = None
    image_problem: str | None = None
    labelled: bool = True
    declared: dict[str, int] = field(default_factory=dict)
    images: dict[str, ImageInput] = field(default_factory=dict)
    expressions: Expressions | None = None
    reading: TableSchema | None = None  # the file columns read (the schema's and the expressions' inputs)
    listing: image_files.ImageListing | None = None  # format images: the files, in row order of the one part source

    @property
    def class_names(self) -> list[str] | None:
        """Names of the classes, in label order (format images: the class folders or the listing's labels)."""
        names = self.listing.class_names if self.listing is not None else None
        return list(names) if names is not None else None

    def unsplit(self) -> list[str]:
        """Names of the files read whole by one task (compressed: a stream cannot be split)."""
        return [f.name for f in self.files if not f.splittable]

    def declared_files(self) -> dict[str, list[str]]:
        """File names per declared split."""
        out: dict[str, list[str]] = {}
        for name, code in self.declared.items():
            out.setdefault(SPLIT_NAMES[code], []).append(name)
        return out

    @property
    def records(self) -> int:
        return sum(seg.stop - seg.start for part in self.parts for seg in part)

    @property
    def has_labels(self) -> bool:
        """Whether the files hold labels (a label column, a labels file, class folders or a listing's labels)."""
        return self.table.label is not None if self.table is not None else self.labelled

    def input_types(self) -> dict[str, ColumnType]:
        """The type each file column the expressions read is read as (recorded: new data is read the same way)."""
        if self.expressions is None or self.reading is None:
            return {}
        kinds = {c.name: c.kind for c in self.reading.columns}
        return {name: kinds[name] for name in self.expressions.inputs}

    def arrow_schema(self) -> pa.Schema:
        """The schema of the validated rows the plan's partitions become."""
        return table_arrow_schema(self.table) if self.table is not None else image_arrow_schema()


def plan_ingest(
    dataset: DatasetConfig,
    partitions: int,
    engine: Engine,
    block_mb: int = 32,
    table: TableSchema | None = None,
    labels_optional: bool = False,
    filters: str | list[str] | None = None,
    derive: dict[str, str] | None = None,
    input_types: dict[str, ColumnType] | None = None,
    classes: list[str] | None = None,
) -> Plan:
    """Index the input files and cut them into `partitions` balanced segments.

    `table` (a finished run's schema) is checked against the files instead of resolved from them; with
    `labels_optional` (new data to score) a label column or labels file the data lacks is left out.
    `filters` and `derive` (the ingest stage's) are checked against the first file's columns. Without `table`,
    the undeclared columns the schema or the expressions read are typed by all their values (one pass);
    with it, by the run's types (`input_types`: those of the columns only the expressions read).
    `classes` (format images: a finished run's class names) fixes the class index of each folder name.
    """
    fmt = dataset.format
    declared = dataset.declared()
    if fmt == "images":
        return _image_files_plan(dataset, partitions, labels_optional, classes)
    if fmt in ("csv", "parquet"):
        suffix = sources.CSV_SUFFIXES if fmt == "csv" else (".parquet", ".pq")
        groups: list[tuple[int | None, list[str]]] = [(None, sources.expand_paths(resolve_path(dataset.path), suffix))]
        groups += [(SPLIT_CODES[name], sources.expand_paths(resolve_path(path), suffix)) for name, path, _ in declared]
        paths = [p for _, group in groups for p in group]
        if fmt == "csv":
            files = sources.index_csv_files(
                paths, dataset.delimiter, block_mb << 20, engine.run_tasks, dataset.encoding
            )
        else:
            files = sources.index_parquet_files(paths)
        files = sources.with_distinct_names(files)
        parts = sources.balanced_segments(files, partitions)
        expressions = None
        if dataset.formula:  # the formula's computed terms (I(x^2), log(x), a:b) are derived columns after derive's
            own = dict(derive or {})
            derive = {**own, **{name: sql for name, sql in parse_formula(dataset.formula).derive if name not in own}}
        label = table.label.name if table is not None and table.label is not None else None
        if (
            labels_optional
            and derive
            and label in derive  # new data may lack what the label comes from
            and expression_columns(derive[label]) - set(files[0].columns) - set(derive)
        ):
            derive = {name: text for name, text in derive.items() if name != label}
        kinds = declared_kinds(dataset)
        if table is None:  # undeclared columns the schema or the expressions read: typed by their values
            names = _undeclared_read(dataset, files, filters, derive or {}, kinds)
            inferred = _inferred_types(dataset, names, parts, engine)
        else:  # new data: the run's types (its schema's and its expressions' inputs'), never the new values'
            inferred = {c.name: c.kind for c in table.columns if c.name not in table.derived}
            inferred.update(input_types or {})
        kinds = {**inferred, **kinds}
        if filters or derive:
            columns = {c: kinds.get(c, "float") for c in files[0].columns}
            expressions = compile_expressions(filters, derive or {}, columns, dataset.types)
        derived = expressions.derived if expressions else {}
        inputs = expressions.inputs if expressions else ()
        if table is None:
            table = resolve_table_schema(dataset, list(files[0].columns), files[0].path, derived, inputs, inferred)
            for f in files[1:]:
                resolve_table_schema(dataset, list(f.columns), f.path, derived, inputs)
        else:
            table = _given_table(table, files, labels_optional, derived)
        for f in files:
            lacking = [n for n in inputs if n not in f.columns]
            if lacking:
                raise DataError(
                    f"{f.path}: missing column(s) {lacking} read by filter/derive; it has {list(f.columns)}"
                )
        reading = read_schema(table, expressions, kinds) if expressions else None
        file_codes = [code for code, group in groups for _ in group]
        codes = {f.name: code for f, code in zip(files, file_codes, strict=True) if code is not None}
        return Plan(
            dataset,
            files,
            parts,
            table=table,
            declared=codes,
            expressions=expressions,
            reading=reading,
        )
    image_inputs = [_image_input(dataset, dataset.path, dataset.labels_path, labels_optional)]
    image_inputs += [_image_input(dataset, path, labels, False) for _, path, labels in declared]
    named = sources.with_distinct_names([i.images for i in image_inputs])
    image_inputs = [dataclasses.replace(i, images=f) for i, f in zip(image_inputs, named, strict=True)]
    main = image_inputs[0]
    for other in image_inputs[1:]:
        if np.dtype(other.images.dtype) != np.dtype(main.images.dtype):
            raise DataError(
                f"{other.images.path}: {np.dtype(other.images.dtype)} records, but {main.images.path} holds "
                f"{np.dtype(main.images.dtype)}; every split's images need one element type"
            )
    combined = [
        dataclasses.replace(i.images, records=max(i.images.records, i.labels.records if i.labels else 0))
        for i in image_inputs
    ]
    return Plan(
        dataset,
        [i.images for i in image_inputs],
        sources.balanced_segments(combined, partitions),
        labels=main.labels,
        image_problem=main.problem,
        labelled=main.labels is not None,
        declared={i.images.name: SPLIT_CODES[name] for i, (name, _, _) in zip(image_inputs[1:], declared, strict=True)},
        images={i.images.name: i for i in image_inputs},
    )


def _undeclared_read(
    dataset: DatasetConfig,
    files: list[sources.SourceFile],
    filters: str | list[str] | None,
    derive: dict[str, str],
    kinds: dict[str, ColumnType],
) -> list[str]:
    """File columns the schema or the expressions read that no `types:`/`categories:`/`C()` declares.

    The schema is resolved against every file's header first (a missing column fails before any value is read);
    derived columns stand in as floats here, their types come from their expressions.
    """
    read: set[str] = set()
    for text in [*derive.values(), *_texts(filters)]:
        with contextlib.suppress(ExpressionError):  # compile_expressions names the key
            read |= expression_columns(text)
    placeholders: dict[str, ColumnType] = {name: "float" for name in derive}
    header = list(files[0].columns)
    for f in files:
        table = resolve_table_schema(dataset, list(f.columns), f.path, placeholders, sorted(read))
    wanted = set(table.undeclared()) | (read & set(header))
    return [c for c in header if c in wanted and c not in kinds and c not in derive]


def _inferred_types(
    dataset: DatasetConfig, names: list[str], parts: list[list[sources.Segment]], engine: Engine
) -> dict[str, ColumnType]:
    """Each named column's type inferred from all of its values (one pass on the engine, per partition)."""
    if not names:
        return {}
    summarize = functools.partial(summarize_part, fmt=dataset.format, delimiter=dataset.delimiter, names=names)
    inferred, _ = infer_types(engine.run_tasks(summarize, parts), names)
    log.info("%s: inferred column types %s", dataset.name, inferred)
    return inferred


class _InProcess:
    """Runs planning tasks one after another in this process (for commands that start no engine)."""

    kind = "local"

    def run_tasks(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        return [fn(item) for item in items]


def inspect_table(
    dataset: DatasetConfig, filters: str | list[str] | None = None, derive: dict[str, str] | None = None
) -> Plan:
    """A tabular dataset's plan with every undeclared column's type inferred, in this process (no engine)."""
    if dataset.format not in ("csv", "parquet"):
        raise ConfigError(f"dataset {dataset.name!r}: format {dataset.format!r} has no table schema")
    plan = plan_ingest(dataset, 1, _InProcess(), filters=filters, derive=derive)  # type: ignore[arg-type]
    assert plan.table is not None
    return plan


def schema_snippet(plan: Plan) -> str:
    """The column types as a YAML `types:` section ready to paste under `dataset:` (declared ones marked).

    Columns only the expressions read are listed too; derived columns are comments (their expressions type them).
    """
    assert plan.table is not None
    entries = plan.table.column_types()
    if plan.reading is not None:
        declared = declared_kinds(plan.dataset)
        for c in plan.reading.columns:
            origin = "declared" if c.name in declared else "inferred"
            entries.setdefault(c.name, {"type": c.kind, "origin": origin})
    lines = ["types:"]
    for name, entry in entries.items():
        key = yaml_key(name)
        if entry["origin"] == "derived":
            lines.append(f"  # {key}: {entry['type']}  (derived: its expression gives the type)")
            continue
        lines.append(f"  {key}: {entry['type']}" + ("  # declared" if entry["origin"] == "declared" else ""))
    return "\n".join(lines) + "\n"


def yaml_key(name: str) -> str:
    """A column name as a YAML mapping key (quoted where plain YAML would read it otherwise)."""
    import yaml

    return yaml.safe_dump({name: 0}, default_flow_style=False).rsplit(": 0", 1)[0]


def _one_root(dataset: DatasetConfig, path: str | list[str], key: str) -> str:
    """The one folder or listing a path of format images names (after bundled: references resolve)."""
    root = resolve_path(path)
    if not isinstance(root, str):
        raise DataError(f"dataset {dataset.name!r}: format 'images' takes one folder or listing in {key!r}")
    return root


def _image_files_plan(
    dataset: DatasetConfig, partitions: int, labels_optional: bool, classes: list[str] | None
) -> Plan:
    """Format images: list the files (folder or listing; declared splits' too) as one source of rows, one a file."""
    assert dataset.image is not None
    root = _one_root(dataset, dataset.path, "path")
    main = image_files.list_images(root, tuple(classes) if classes is not None else None, labels_optional)
    known = main.class_names
    declared_classes = dataset.image.classes
    if classes is None and declared_classes is not None and known is not None and len(known) != declared_classes:
        raise DataError(f"{root}: {len(known)} classes {list(known)}, but image.classes is {declared_classes}")
    groups: list[tuple[int | None, str, image_files.ImageListing]] = [(None, root, main)]
    for n, path, _ in dataset.declared():
        declared_root = _one_root(dataset, path, f"{n}_path")
        groups.append((SPLIT_CODES[n], declared_root, image_files.list_images(declared_root, known)))
    if len(groups) > 1:  # rows are named below the folder that holds every root, so names stay distinct
        top = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for _, p, _ in groups])
        groups = [(c, p, image_files.renamed(g, top)) for c, p, g in groups]
    listing = image_files.concat([g for _, _, g in groups])
    codes = {name: code for code, _, g in groups if code is not None for name in g.names}
    source = sources.SourceFile(
        path=root,
        name=os.path.basename(os.path.normpath(root)),
        records=len(listing.paths),
        shape=tuple(dataset.image.shape),
        dtype="|u1",
    )
    return Plan(
        dataset,
        [source],
        sources.balanced_segments([source], partitions),
        labelled=main.labelled,
        declared=codes,
        listing=listing,
    )


def _image_input(
    dataset: DatasetConfig, path: str | list[str], labels_path: str | None, labels_optional: bool
) -> ImageInput:
    """Index one images file (and its labels) and check its record shape against the declared one."""
    assert dataset.image is not None
    image_path = resolve_path(path)
    if not isinstance(image_path, str):
        raise DataError(f"dataset {dataset.name!r}: image formats take one file in 'path', got {image_path}")
    labels: sources.SourceFile | None = None
    if dataset.format == "idx":
        images = sources.index_idx_file(sources.expand_paths(image_path, (".gz",))[0])
        if labels_path or not labels_optional:
            labels = sources.index_idx_file(sources.expand_paths(resolve_path(labels_path), (".gz",))[0])
    else:
        found = sources.expand_paths(image_path, (".npz",))[0]
        images = sources.index_npz_file(found, dataset.npz_keys.images)
        if not labels_optional or dataset.npz_keys.labels in sources.npz_names(found):
            labels = sources.index_npz_file(found, dataset.npz_keys.labels)
    declared = tuple(dataset.image.shape)
    problem = None
    if int(np.prod(images.shape)) != int(np.prod(declared)):
        problem = f"image shape {images.shape} does not match declared shape {declared}"
    return ImageInput(images, labels, problem)


def _given_table(
    table: TableSchema, files: list[sources.SourceFile], labels_optional: bool, derived: Any = ()
) -> TableSchema:
    """A recorded schema checked against each file's columns (its label dropped where optional and absent;
    derived columns are made, not read)."""
    label = table.label.name if table.label is not None else None
    if label is not None and label not in derived and labels_optional and not any(label in f.columns for f in files):
        table = dataclasses.replace(table, label=None)
    for f in files:
        missing = [n for n in table.names if n not in f.columns and n not in derived]
        if missing:
            raise DataError(f"{f.path}: missing column(s) {missing}; the file has {list(f.columns)}")
    return table


def _with_split(frame: pd.DataFrame, split: SplitConfig, declared: dict[str, int]) -> pd.DataFrame:
    """The split code of each row: its file's declared split, else the seeded split's draw."""
    codes = np.zeros(len(frame), dtype=np.int8)
    for source, idx in frame.groupby("_source", sort=False).indices.items():
        name = str(source)
        codes[idx] = declared[name] if name in declared else assign_split(name, frame["_row"].to_numpy()[idx], split)
    marked = np.isin(frame["_split"].to_numpy(), (FILTERED, DROPPED))  # a filter's or a policy's drop stays a drop
    frame["_split"] = np.where(marked, frame["_split"].to_numpy(), codes).astype(np.int8)
    return frame


def read_part(plan: Plan, part: list[sources.Segment], split: SplitConfig) -> pd.DataFrame:
    """Read and validate one partition's segments (runs on a worker)."""
    frames = []
    for seg in part:
        if plan.listing is not None:
            image = plan.dataset.image
            assert image is not None  # an image format's dataset has its image section (checked in config)
            frames.append(
                image_files.image_file_rows(
                    plan.listing, seg.start, seg.stop, tuple(image.shape), image.resize, image.filter, plan.labelled
                )
            )
        elif plan.table is not None:
            reading = plan.reading or plan.table
            if plan.dataset.format == "csv":
                chunk = readers.read_csv_segment(seg, reading, plan.dataset.delimiter)
            else:
                chunk = readers.read_parquet_segment(seg, reading)
            if plan.expressions is not None:
                frames.append(validate_with_steps(chunk, reading, plan.table, plan.expressions))
            else:
                frames.append(validate_table(chunk, plan.table))
        else:
            source = plan.images[seg.file.name]
            img_seg = sources.Segment(source.images, seg.start, seg.stop)
            lbl_seg = sources.Segment(source.labels, seg.start, seg.stop) if source.labels else None
            keys = (plan.dataset.npz_keys.images, plan.dataset.npz_keys.labels)
            x, y = readers.read_image_segment(img_seg, lbl_seg, plan.dataset.format, keys)
            image = plan.dataset.image
            assert image is not None  # an image format's dataset has its image section (checked in config)
            rows = np.arange(seg.start, seg.stop, dtype=np.int64)
            frames.append(
                validate_images(
                    source.images.name, rows, x, y, tuple(image.shape), image.classes, source.problem, plan.labelled
                )
            )
    frame = pd.concat(frames, ignore_index=True) if len(frames) != 1 else frames[0]
    return _with_split(frame, split, plan.declared)


@dataclass
class IngestResult(StageResult):
    """What ingest hands to later stages: counts, the fitted encoding, the written splits as engine frames."""

    dataset: str
    engine: str
    read: int
    accepted: int
    rejected: int
    splits: dict[str, int]
    partition_rows: list[int]
    split_partition_rows: dict[str, list[int]]
    fitted: Fitted
    schema: TableSchema | None
    outputs: dict[str, str] = field(default_factory=dict)
    frames: dict[str, Any] = field(default_factory=dict)
    image_dtype: str | None = None
    image_shape: tuple[int, ...] | None = None
    encode: str = "onehot"
    input_columns: list[str] = field(default_factory=list)
    split_rejected: dict[str, int] = field(default_factory=dict)
    declared_files: dict[str, list[str]] = field(default_factory=dict)
    unsplit_files: list[str] = field(default_factory=list)
    splits_digest: dict[str, dict[str, Any]] = field(default_factory=dict)
    filtered: int = 0
    filters: list[dict[str, Any]] = field(default_factory=list)  # each filter: key, expression, rows dropped
    derived: dict[str, str] = field(default_factory=dict)  # each derived column's type
    expression_inputs: list[str] = field(default_factory=list)
    input_types: dict[str, ColumnType] = field(
        default_factory=dict
    )  # each expression input's type (declared or inferred)
    dropped: int = 0  # rows a missing-value policy `drop` left out
    class_names: list[str] | None = None  # format images: the class folders or the listing's labels, in label order

    image_classes: int | None = None
    image_flips: bool = False

    @property
    def inputs(self) -> TableInputs | ImageInputs:
        """What the written splits hold, for the stages after ingest."""
        if self.schema is None:
            assert self.image_dtype is not None and self.image_shape is not None
            shape = tuple(self.image_shape)
            names = tuple(self.class_names) if self.class_names is not None else None
            classes = len(names) if names else self.image_classes
            return ImageInputs(
                dtype=self.image_dtype, shape=shape, classes=classes, flips=self.image_flips, class_names=names
            )
        return TableInputs.of(self.schema, self.fitted, self.encode)

    def new_data_schema(self) -> TableSchema | None:
        """The schema new data must match to be scored (unseen category levels are rejected); None for images."""
        if self.schema is None:
            return None
        levels = {name: tuple(values) for name, values in self.fitted.levels.items()}
        return dataclasses.replace(self.schema, categories=levels)

    def new_data_rows(self, plan: Plan, image_scale: str) -> tuple[Callable[[pd.DataFrame], pd.DataFrame], Any]:
        """How validated new data becomes rows as this ingest wrote them, and what those rows hold."""
        if plan.table is not None:
            transform = functools.partial(
                transform_table, split=TRAIN, schema=plan.table, fitted=self.fitted, encode=self.encode
            )
            return transform, self.inputs
        dtype = plan.files[0].dtype
        inputs = self.inputs.model_copy(update={"dtype": stored_image_dtype(dtype, image_scale)})
        return functools.partial(transform_images, split=TRAIN, dtype=dtype, scale=image_scale), inputs

    def training_data(self, recorded: dict[str, Any], needed_by: str) -> TrainingData:
        """The written splits as the one hand-off (`recorded`: the run's output checksums)."""
        if "train" not in self.outputs:
            raise needs_written_splits(needed_by)
        return TrainingData(
            dataset=self.dataset,
            outputs=dict(self.outputs),
            frames=dict(self.frames),
            rows=dict(self.splits),
            fingerprint=splits_fingerprint(recorded, list(self.outputs)),
            inputs=self.inputs,
            checksums={name: recorded.get(Folder.DATA.of(name)) for name in sorted(self.outputs)},
        )

    def facts(self) -> dict[str, Any]:
        """Facts for the manifest and metrics (no frames); enough to restore the result on resume."""
        return {
            "dataset": self.dataset,
            "engine": self.engine,
            "read": self.read,
            "filtered": self.filtered,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "missing": {
                k: v if isinstance(v, str) else v.model_dump()
                for k, v in (self.schema.missing if self.schema else {}).items()
            },
            "imputed_values": self.fitted.impute,
            "imputed_cells": self.fitted.imputed,
            "filters": self.filters,
            "derived": self.derived,
            "expression_inputs": self.expression_inputs,
            "input_types": self.input_types,
            "splits": self.splits,
            "split_rejected": self.split_rejected,
            "declared_files": self.declared_files,
            "unsplit_files": self.unsplit_files,
            "splits_digest": self.splits_digest,
            "partitions": len(self.partition_rows),
            "partition_rows": self.partition_rows,
            "split_partition_rows": self.split_partition_rows,
            "scaler": {k: {"mean": m, "std": s} for k, (m, s) in self.fitted.scale.items()},
            "levels": self.fitted.levels,
            "constant_columns": self.fitted.constant,
            "poly_bases": {k: {"mean": m, "basis": b} for k, (m, b) in self.fitted.poly.items()},
            "input_columns": self.input_columns,
            "column_types": self.schema.column_types() if self.schema is not None else {},
            "image_dtype": self.image_dtype,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "class_names": self.class_names,
        }

    @classmethod
    def restore(
        cls, facts: dict[str, Any], dataset: DatasetConfig, stage: IngestStage, run: Any, engine: Engine
    ) -> IngestResult:
        """Rebuild a finished ingest from its manifest facts and written splits (no input file is read)."""
        result = cls.from_facts(facts, dataset, stage.encode, engine.kind)
        for name in SPLIT_NAMES.values():
            path = Folder.DATA.under(run.dir, name)
            if Folder.DATA.of(name) in run.manifest["outputs"] and path.exists():
                result.outputs[name] = str(path)
                result.frames[name] = engine.read_parquet(str(path))
        log.info("resume: ingest restored from %s (%d rows accepted)", run.dir, result.accepted)
        return result

    @classmethod
    def from_facts(cls, facts: dict[str, Any], dataset: DatasetConfig, encode: str, engine: str) -> IngestResult:
        """The counts, schema and fitted encoding a finished ingest recorded (no frames)."""
        schema = None
        if facts["image_shape"] is None:
            inferred = {n: t["type"] for n, t in facts.get("column_types", {}).items() if t["origin"] == "inferred"}
            schema = resolve_table_schema(
                dataset,
                facts["input_columns"],
                "the recorded header",
                facts.get("derived", {}),
                facts.get("expression_inputs", []),
                inferred,
            )
        return cls(
            dataset=facts["dataset"],
            engine=engine,
            read=facts["read"],
            accepted=facts["accepted"],
            rejected=facts["rejected"],
            splits=facts["splits"],
            partition_rows=facts["partition_rows"],
            split_partition_rows=facts["split_partition_rows"],
            fitted=Fitted(
                scale={k: (v["mean"], v["std"]) for k, v in facts["scaler"].items()},
                levels=facts["levels"],
                constant=facts["constant_columns"],
                impute=facts.get("imputed_values", {}),
                imputed=facts.get("imputed_cells", {}),
                poly={k: (v["mean"], v["basis"]) for k, v in facts.get("poly_bases", {}).items()},
            ),
            dropped=facts.get("dropped", 0),
            schema=schema,
            encode=encode,
            input_columns=facts["input_columns"],
            image_dtype=facts["image_dtype"],
            image_shape=tuple(facts["image_shape"]) if facts["image_shape"] else None,
            split_rejected=facts.get("split_rejected", {}),  # absent from runs recorded before these facts
            declared_files=facts.get("declared_files", {}),
            unsplit_files=facts.get("unsplit_files", []),
            splits_digest=facts.get("splits_digest", {}),
            image_classes=dataset.image.classes if dataset.image else None,
            image_flips=dataset.image_flips() if dataset.image else False,
            filtered=facts.get("filtered", 0),
            filters=facts.get("filters", []),
            derived=facts.get("derived", {}),
            expression_inputs=facts.get("expression_inputs", []),
            input_types=facts.get("input_types", {}),
            class_names=facts.get("class_names"),
        )


class IngestStage(Stage):
    """Read, validate, split, encode and standardize; write partitioned Parquet."""

    stage: Literal["ingest"] = "ingest"
    split: SplitConfig = Field(default_factory=SplitConfig)
    standardize: bool = True
    image_scale: Literal["none", "unit"] = "unit"
    encode: Literal["onehot", "dummy", "index"] = "onehot"
    max_rejected_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    index_block_mb: PositiveInt = 32
    write: bool = True
    filter: str | list[str] | None = Field(default=None, description="SQL condition(s) a row must meet to be kept")
    derive: dict[str, str] = Field(default_factory=dict, description="new columns: name -> SQL expression, in order")

    placement_fields: ClassVar[frozenset[str]] = frozenset({"index_block_mb"})

    def check_values(self) -> list[Problem]:
        """Each filter and derived expression parses and uses only the documented SQL (docs/DATA.md)."""
        return expression_problems(self.filter, self.derive)

    def check(self, earlier: Sequence[Stage], config: PipelineSettings) -> list[Problem]:
        """A split the dataset declares files for is not also drawn by a fraction; expressions fit the file."""
        problems = declared_split_problems(config.dataset, self.split)
        if (self.filter or self.derive) and config.dataset.format in ("csv", "parquet"):
            problems += _expression_check(config.dataset, self.filter, self.derive)
        return problems

    def run(self, ctx: StageContext) -> IngestResult:
        """Ingest the pipeline's dataset on the context's engine into the run."""
        return run_ingest(ctx.engine, ctx.config.dataset, self, ctx.config.engine.partitions, ctx.run)

    def restore(self, ctx: StageContext) -> IngestResult:
        """The finished ingest of this run, from its manifest facts and written splits."""
        try:
            return IngestResult.restore(self.recorded_facts(ctx), ctx.config.dataset, self, ctx.run, ctx.engine)
        except KeyError as exc:  # a run recorded by an older version lacks a fact
            raise NotRestorable(f"stage {self.output_name!r}: the manifest lacks {exc}") from None


def written_splits_problems(earlier: Sequence[Stage], path: str = "stage") -> list[Problem]:
    """The validate-time check of a stage that reads the written splits: an ingest with write: true comes first."""
    if any(isinstance(s, IngestStage) and s.write for s in earlier):
        return []
    return [Problem(path, NEEDS_WRITTEN_SPLITS)]


def _texts(filters: Any) -> list[str]:
    return [text for _, text in filter_list(filters)]


def _expression_check(dataset: DatasetConfig, filters: Any, derive: dict[str, str]) -> list[Problem]:
    """Unknown columns and type errors of the expressions, against the first file's header where it is readable
    (undeclared columns they read typed by the first rows: `sample_types`)."""
    header = sources.table_header(dataset)
    if header is None:
        return []  # the files are not there yet: the run checks them when it reads them
    kinds = declared_kinds(dataset)
    read = [c for c in header if c not in kinds and c not in derive]
    try:
        read = [c for c in read if any(c in expression_columns(t) for t in [*derive.values(), *_texts(filters)])]
    except ExpressionError:
        return []  # check_values names it
    kinds = {**sample_types(dataset, header, read), **kinds}  # undeclared: typed by the first rows, as the run will
    try:
        compile_expressions(filters, derive, {c: kinds.get(c, "float") for c in header}, dataset.types)
    except ConfigError as exc:
        key, _, message = str(exc).partition(": ")
        return [Problem(key, message)]
    return []


QUARANTINE_COLUMNS = {"_source": "source", "_row": "row", "_column": "column", "_reason": "reason", "_raw": "raw"}


def rejected_rows(engine: Engine, validated: Any, count: int) -> pd.DataFrame:
    """The rejected rows of a validated frame as quarantine records (only they leave the workers); with the
    partitions' own count at 0, no pass is made."""
    if count == 0:
        return pd.DataFrame(columns=list(QUARANTINE_COLUMNS.values()))
    bad = engine.to_pandas(engine.where_set(validated, "_reason", list(QUARANTINE_COLUMNS)))
    return bad.rename(columns=QUARANTINE_COLUMNS)


def write_quarantine(path: Path, rejected: pd.DataFrame) -> None:
    """Write rejected rows as CSV atomically (row: CSV line number, else 0-based record index)."""
    rejected = rejected.sort_values(["source", "row"], kind="stable")
    atomic_write_bytes(path, rejected.to_csv(index=False, columns=list(QUARANTINE_COLUMNS.values())).encode("utf-8"))


def run_ingest(
    engine: Engine, dataset: DatasetConfig, stage: IngestStage, partitions: int, run: Any = None
) -> IngestResult:
    """Ingest a dataset on an engine; with a Run, write quarantine, splits and manifest facts into it."""
    problems = declared_split_problems(dataset, stage.split)
    if problems:
        raise ConfigError("; ".join(str(p) for p in problems))
    plan = plan_ingest(dataset, partitions, engine, stage.index_block_mb, filters=stage.filter, derive=stage.derive)
    log.info(
        "%s: %d records in %d file(s), %d partitions", dataset.name, plan.records, len(plan.files), len(plan.parts)
    )
    validated, stats = engine.persist_tasks(
        lambda part: read_part(plan, part, stage.split),
        plan.parts,
        plan.arrow_schema(),
        lambda pdf: partition_stats(pdf, plan.table),
    )
    frame = validated
    try:
        if stage.split.stratify:
            frame, stats = _stratified(engine, validated, plan, stage.split)
        read = sum(s["read"] for s in stats)
        rejected = sum(s["rejected"] for s in stats)
        dropped = sum(s["dropped"] for s in stats)
        by_filter = {key: sum(s["filtered"].get(key, 0) for s in stats) for key, _ in filter_list(stage.filter)}
        filtered = sum(by_filter.values())
        if read != plan.records:
            raise DataError(f"{dataset.name}: read {read} records but the files hold {plan.records}")
        splits = {name: sum(s["splits"][name] for s in stats) for name in SPLIT_NAMES.values()}
        fitted = Fitted.from_stats(stats, plan.table, stage.standardize)
        result = IngestResult(
            dataset=dataset.name,
            engine=engine.kind,
            read=read,
            accepted=read - filtered - rejected - dropped,
            rejected=rejected,
            dropped=dropped,
            filtered=filtered,
            filters=[{"key": k, "expression": t, "dropped": by_filter[k]} for k, t in filter_list(stage.filter)],
            derived=dict(plan.expressions.derived) if plan.expressions else {},
            expression_inputs=list(plan.expressions.inputs) if plan.expressions else [],
            input_types=plan.input_types(),
            splits=splits,
            partition_rows=[s["read"] for s in stats],
            split_partition_rows={name: [s["splits"][name] for s in stats] for name in SPLIT_NAMES.values()},
            fitted=fitted,
            schema=plan.table,
            encode=stage.encode,
            input_columns=list(plan.files[0].columns),
            split_rejected={name: sum(s["split_rejected"][name] for s in stats) for name in SPLIT_NAMES.values()},
            declared_files=plan.declared_files(),
            unsplit_files=plan.unsplit(),
            class_names=plan.class_names,
        )
        if plan.unsplit():
            log.info("%s: compressed, read whole by one task each: %s", dataset.name, ", ".join(plan.unsplit()))
        if plan.table is None:
            assert dataset.image is not None
            result.image_dtype = stored_image_dtype(plan.files[0].dtype, stage.image_scale)
            result.image_shape = tuple(dataset.image.shape)
            result.image_classes, result.image_flips = dataset.image.classes, dataset.image_flips()
        if run is not None:
            quarantine = rejected_rows(engine, validated, rejected)
            write_quarantine(run.dir / "quarantine.csv", quarantine)
            run.manifest["quarantine"] = {"file": "quarantine.csv", "rows": rejected}
            run.save()
        kept = read - filtered - dropped  # rows a filter or a `drop` policy left out are not part of the rejected share
        fraction = rejected / kept if kept else 0.0
        if read == 0:
            raise DataError(f"{dataset.name}: no records to read")
        if fraction > stage.max_rejected_fraction:
            where = f" (see {run.dir / 'quarantine.csv'})" if run is not None else ""
            if run is not None and len(quarantine):  # name the first rejected row: file, row, column, reason
                row = quarantine.sort_values(["source", "row"]).iloc[0]
                reason = str(row["reason"]).replace("\n", "\\n")
                where = f"; first: {row['source']} row {row['row']}, column {row['column']}: {reason}{where}"
            raise DataError(
                f"{dataset.name}: {rejected} of {kept} rows rejected ({fraction:.2%}), above "
                f"max_rejected_fraction={stage.max_rejected_fraction:.2%}{where}"
            )
        if run is not None and stage.write:
            _write_splits(engine, frame, plan, stage, fitted, result, run)
        return result
    finally:
        engine.release(validated)


def _stratified(engine: Engine, validated: Any, plan: Plan, split: SplitConfig) -> tuple[Any, list[dict[str, Any]]]:
    """The validated frame with per-class exact split shares (lazily mapped) and its partition stats again."""
    if plan.table is not None and plan.table.label is None:
        raise ConfigError(f"{plan.dataset.name}: split.stratify needs a label (the dataset declares none)")
    label = plan.table.label.name if plan.table is not None else "label"  # type: ignore[union-attr]
    declared = frozenset(plan.declared)
    cuts = stratified_cuts(engine, validated, label, declared, split)
    log.info("%s: stratified split over %d classes of %r", plan.dataset.name, len(cuts), label)
    fn = functools.partial(restratify, label=label, declared=declared, seed=split.seed, cuts=cuts)
    frame = engine.map_partitions(validated, fn, plan.arrow_schema())
    return frame, engine.reduce_partitions(frame, lambda pdf: partition_stats(pdf, plan.table))


def _write_splits(
    engine: Engine, validated: Any, plan: Plan, stage: IngestStage, fitted: Fitted, result: IngestResult, run: Any
) -> None:
    for code, name in SPLIT_NAMES.items():
        if result.splits[name] == 0:
            continue
        if plan.table is not None:
            schema = output_schema(plan.table, fitted, stage.encode)
            transform = functools.partial(
                transform_table, split=code, schema=plan.table, fitted=fitted, encode=stage.encode
            )
        else:
            schema = image_output_schema()
            transform = functools.partial(
                transform_images, split=code, dtype=plan.files[0].dtype, scale=stage.image_scale
            )
        digest_of = functools.partial(partition_digest, schema=schema)
        with run.output(Folder.DATA.of(name)) as tmp:  # the digest comes from the partitions as they are written
            parts = engine.write_mapped(validated, transform, str(tmp), schema, digest_of)
            digest = combine_digests(parts)
            if digest["rows"] != result.splits[name]:
                raise DataError(
                    f"{Folder.DATA.of(name)}: wrote {digest['rows']} rows where {result.splits[name]} were accepted"
                )
        result.splits_digest[name] = digest
        result.outputs[name] = str(Folder.DATA.under(run.dir, name))
        result.frames[name] = engine.read_parquet(result.outputs[name])
