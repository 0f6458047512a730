"""Training checkpoints: weights, optimizer state and loop state per epoch, written atomically, no pickle."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.atomic import atomic_dir

PATTERN = re.compile(r"^epoch-(\d{5})$")


@dataclass
class Checkpoint:
    """What a resumed run needs: model and optimizer arrays, and the loop's own state (epoch, history, ...)."""

    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    state: dict[str, Any]
    best: list[np.ndarray] | None = None


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    np.savez(path, **{f"a{i:05d}": a for i, a in enumerate(arrays)})  # type: ignore[arg-type]  # numpy stub: ** might hold allow_pickle


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[k] for k in sorted(data.files)]


def save(directory: Path, epoch: int, ckpt: Checkpoint, keep: int) -> Path:
    """Write checkpoints/epoch-NNNNN/ atomically, then drop all but the newest `keep`."""
    target = directory / f"epoch-{epoch:05d}"
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        tmp.mkdir()
        _save_arrays(tmp / "weights.npz", ckpt.weights)
        _save_arrays(tmp / "optimizer.npz", ckpt.optimizer)
        if ckpt.best is not None:
            _save_arrays(tmp / "best.npz", ckpt.best)
        (tmp / "state.json").write_text(json.dumps(ckpt.state, indent=1))
    for old in epochs(directory)[:-keep]:
        shutil.rmtree(directory / f"epoch-{old:05d}", ignore_errors=True)
    return target


def epochs(directory: Path) -> list[int]:
    """Epoch numbers of the complete checkpoints in a directory, oldest first."""
    if not directory.exists():
        return []
    found = [
        int(m.group(1)) for p in directory.iterdir() if (m := PATTERN.match(p.name)) and (p / "state.json").exists()
    ]
    return sorted(found)


def latest(directory: Path) -> Checkpoint | None:
    """The newest complete checkpoint, or None."""
    found = epochs(directory)
    if not found:
        return None
    path = directory / f"epoch-{found[-1]:05d}"
    return Checkpoint(
        _load_arrays(path / "weights.npz"),
        _load_arrays(path / "optimizer.npz"),
        json.loads((path / "state.json").read_text()),
        _load_arrays(path / "best.npz") if (path / "best.npz").exists() else None,
    )
