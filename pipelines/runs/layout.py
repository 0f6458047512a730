"""The run folder's layout, named once: every stage's folders, for stages, report, tracking and predict."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path


class Folder(StrEnum):
    """A top-level folder of a run directory; a stage writes `<folder>/<stage name>` (data: `data/<split>`)."""

    DATA = "data"  # ingest's written splits, one Parquet folder per split
    MODELS = "models"  # a model stage's fitted model and summary
    PLOTS = "plots"  # a model stage's figures
    DEEP = "deep"  # a deep stage's network, results and figures
    TENSORS = "tensors"  # tensor shards cut from the written splits, shared by deep stages with the same key
    CHECKPOINTS = "checkpoints"  # a deep stage's checkpoints (resume)
    TENSORBOARD = "tensorboard"  # rank 0's TensorBoard events
    SWEEPS = "sweeps"  # a sweep's trials, results table and figures
    PACKS = "packs"  # a pack's task results and figures
    MATRIX = "matrix"  # a matrix stage's result and summary
    CODE = "code"  # user code a stage names, copied into the run

    def of(self, name: str) -> str:
        """This folder's entry for a stage (or split) `name`, relative to the run directory."""
        return f"{self.value}/{name}"

    def under(self, run_dir: str | Path, name: str) -> Path:
        """This folder's entry for `name` inside the run directory `run_dir`."""
        return Path(run_dir) / self.value / name


# What a stage leaves for people to look at: logged with its MLflow run and listed in the report.
STAGE_ARTIFACTS = (
    Folder.MODELS,
    Folder.DEEP,
    Folder.PLOTS,
    Folder.TENSORBOARD,
    Folder.SWEEPS,
    Folder.PACKS,
    Folder.MATRIX,
)
