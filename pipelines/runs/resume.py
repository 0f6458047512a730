"""Resume facts: which earlier run to continue, whether its outputs are intact, how its config differs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.atomic import checksum_tree
from pipelines.runs.run import MANIFEST


def find_resumable(runs_dir: str | Path, pipeline: str) -> Path | None:
    """The newest run of a pipeline if it did not succeed (failed, or killed while `running`)."""
    folder = Path(runs_dir) / pipeline
    if not folder.exists():
        return None
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and (p / MANIFEST).exists())
    if not runs:
        return None
    newest = runs[-1]
    status = json.loads((newest / MANIFEST).read_text()).get("status")
    return newest if status in ("failed", "running") else None


def corrupt_outputs(run_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Recorded outputs that are missing or whose files no longer match their SHA-256."""
    bad = []
    for name, sums in manifest.get("outputs", {}).items():
        path = run_dir / name
        if not path.exists() or checksum_tree(path) != sums:
            bad.append(name)
    return bad


def config_diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every key path whose value differs between two plain configs, with (old, new) values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            out += config_diff(old.get(key), new.get(key), sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in config_diff(a, b, f"{path}[{i}]")]
    return [] if old == new else [(path or "<root>", old, new)]
