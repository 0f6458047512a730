"""The matrix stage: one operation (multiply, gram, svd, solve) on the engine's distributed matrices."""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveInt

from pipelines.atomic import atomic_write_json
from pipelines.engines.matrix import MatrixOps, Out, Result, Source, auto_block_bytes, check_shapes, chunk_shape
from pipelines.errors import ConfigError
from pipelines.ingest.stage import written_splits_problems
from pipelines.matrix.sources import MatrixInput
from pipelines.protocol import (
    NotRestorable,
    PipelineSettings,
    Problem,
    RecordedResult,
    Stage,
    StageContext,
)
from pipelines.runs.layout import Folder
from pipelines.settings import SafeText, StrictModel

log = logging.getLogger(__name__)

NEEDS = {"multiply": ("x", "y"), "gram": ("x",), "svd": ("x",), "solve": ("x", "b")}
DEFAULT_K = 10


class OutSettings(StrictModel):
    """Where the result goes: gathered into the run as result.npy up to `gather_mb`, else written block by block."""

    format: Literal["zarr", "npy"] = "zarr"
    gather_mb: PositiveInt = 256
    path: SafeText | None = None  # a large result outside the run (must not exist); default: the run's folder


@dataclass
class MatrixResult(RecordedResult):
    """The summary of a matrix operation (the arrays stay in matrix/<name>/)."""

    def facts(self) -> dict[str, Any]:
        """Operation, shapes, chunking, seconds, where the result is."""
        keys = ("op", "engine", "x_shape", "result_shape", "block", "seconds", "result", "top_singular_values")
        return {k: self.values[k] for k in keys if k in self.values}


class MatrixStage(Stage):
    """X @ Y, X.T @ X, SVD (exact TSQR or randomized) or a solve, chunked from the memory per worker."""

    stage: Literal["matrix"] = "matrix"
    output_dir: ClassVar[str] = Folder.MATRIX
    op: Literal["multiply", "gram", "svd", "solve"]
    x: MatrixInput
    y: MatrixInput | None = None
    b: MatrixInput | None = None
    method: Literal["auto", "tsqr", "randomized"] = "auto"
    k: PositiveInt | None = None
    n_power_iter: NonNegativeInt = 2
    seed: NonNegativeInt = 0
    chunk_mb: PositiveInt | Literal["auto"] = "auto"
    out: OutSettings = Field(default_factory=OutSettings)

    placement_fields: ClassVar[frozenset[str]] = frozenset({"chunk_mb"})

    def default_name(self) -> str:
        """Outputs go under matrix/<op> unless named."""
        return self.op

    def check_values(self) -> list[Problem]:
        """The operands the operation needs are given, and no others; svd settings only for svd."""
        problems = [Problem(key, f"op {self.op} needs {key}") for key in NEEDS[self.op] if getattr(self, key) is None]
        problems += [
            Problem(key, f"op {self.op} takes no {key}")
            for key in ("y", "b")
            if key not in NEEDS[self.op] and getattr(self, key) is not None
        ]
        if self.op != "svd" and (self.method != "auto" or self.k is not None):
            problems.append(Problem("method", "method and k apply to op svd only"))
        return problems

    def check(self, earlier: Sequence[Stage], config: PipelineSettings) -> list[Problem]:
        """An input `from: ingest` needs an earlier ingest that writes its splits."""
        uses_ingest = [k for k in NEEDS[self.op] if getattr(self, k) is not None and getattr(self, k).from_]
        return [p for k in uses_ingest for p in written_splits_problems(earlier, f"{k}.from")]

    def block_bytes(self, memory_per_worker: int) -> int:
        """Bytes per block: chunk_mb, or `auto` (an eighth of one worker's memory)."""
        return self.chunk_mb * 2**20 if self.chunk_mb != "auto" else auto_block_bytes(memory_per_worker)

    def svd_method(self, x: Source, block: int) -> str:
        """`auto`: exact TSQR when x is tall-skinny and its columns x columns R fits a block, else randomized."""
        if self.method != "auto":
            return self.method
        rows, cols = x.shape
        return "tsqr" if rows >= cols and cols * cols * 8 <= block else "randomized"

    def run(self, ctx: StageContext) -> MatrixResult:
        """Run the operation on the engine's workers; write matrix/<name>/ (arrays + summary.json)."""
        ops = ctx.engine.matrix_ops()
        memory = ops.memory_per_worker()
        block = self.block_bytes(memory)
        sources = {k: getattr(self, k).source(ctx, self.output_name) for k in NEEDS[self.op]}
        x = sources["x"]
        check_shapes(self.op, x, sources.get("y") or sources.get("b"))
        if self.out.path and os.path.exists(self.out.path):
            raise ConfigError(f"matrix stage {self.output_name!r}: out.path {self.out.path} exists already")
        summary: dict[str, Any] = {
            "op": self.op,
            "engine": ops.kind,
            **{f"{k}_shape": list(s.shape) for k, s in sources.items()},
            **{f"{k}_input": getattr(self, k).describe() for k in sources},
            "block": list(chunk_shape(x.shape, block)),
            "block_mb": round(block / 2**20, 1),
            "memory_per_worker_mb": round(memory / 2**20, 1),
        }
        log.info("matrix %s on %s: x %s, blocks of %.0f MiB", self.op, ops.kind, x.shape, block / 2**20)
        with ctx.run.output(Folder.MATRIX.of(self.output_name)) as tmp:
            tmp.mkdir()
            target = self.out.path or str(tmp / f"result.{self.out.format}")
            out = Out(target, self.out.format, self.out.gather_mb * 2**20)
            t0 = time.perf_counter()
            result = self._apply(ops, sources, block, out, summary)
            summary["seconds"] = round(time.perf_counter() - t0, 3)
            summary["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            summary.update(_written(result, tmp, target, bool(self.out.path)))
            atomic_write_json(tmp / "summary.json", summary)
        return MatrixResult(summary)

    def _apply(self, ops: MatrixOps, src: dict[str, Source], block: int, out: Out, summary: dict) -> Result:
        if self.op == "multiply":
            return ops.multiply(src["x"], src["y"], block, out)
        if self.op == "gram":
            return ops.gram(src["x"], block, out)
        if self.op == "solve":
            return ops.solve(src["x"], src["b"], block)
        method = self.svd_method(src["x"], block)
        k = self.k or (min(src["x"].shape) if method == "tsqr" else min(DEFAULT_K, min(src["x"].shape)))
        summary.update({"method": method, "k": k, **({"n_power_iter": self.n_power_iter} if method != "tsqr" else {})})
        result = ops.svd(src["x"], method, k, self.n_power_iter, self.seed, block)
        summary["top_singular_values"] = [float(v) for v in result.extra["s"][:10]]
        return result

    def restore(self, ctx: StageContext) -> MatrixResult:
        """The summary this run wrote (its arrays stay where they are)."""
        self.recorded_facts(ctx)
        path = Folder.MATRIX.under(ctx.run.dir, self.output_name) / "summary.json"
        if not path.exists():
            raise NotRestorable(f"stage {self.output_name!r}: {path} is missing")
        return MatrixResult(json.loads(path.read_text()))


def _written(result: Result, tmp: Any, target: str, outside: bool) -> dict[str, Any]:
    """Save the gathered arrays into the output folder; name where each result is."""
    facts: dict[str, Any] = {"result_shape": list(result.shape)}
    for name, value in result.extra.items():
        np.save(tmp / f"{name}.npy", value)
    if result.value is not None and "s" not in result.extra:
        np.save(tmp / "result.npy", result.value)
        facts["result"] = "result.npy"
    elif result.written is not None:
        facts["result"] = target if outside else os.path.basename(target)
    else:
        facts["result"] = "s.npy"
    return facts
