"""The matrix stage: X @ Y, X.T @ X, SVD and solve on the engine's distributed matrices (docs/MATRIX.md)."""

from pipelines.matrix.sources import MatrixInput
from pipelines.matrix.stage import MatrixResult, MatrixStage

__all__ = ["MatrixInput", "MatrixResult", "MatrixStage"]
