"""User-defined networks: `model: "package.module:function"` imported from the stage's `code:` or an installed package.

User code runs only where a config names it. A run copies the `code:` file or folder into `<run>/code/<stage>/`
(recorded with its checksums in the manifest); the ranks, sweep trials and `pipelines predict` put that copy first
on `sys.path` ("pin" it), so they import exactly the code the run trained with.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from pipelines.runs.layout import Folder
from pipelines.settings import StrictModel

REF = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$"
SOURCE = ".source"  # in a copy: the `code:` path it was copied from

_pinned: dict[str, Path] = {}  # stage name -> the folder its user code is imported from in this process


def is_user_model(model: str) -> bool:
    """Whether a deep stage's `model` names user code ("module:function") rather than a network of the zoo."""
    return re.fullmatch(REF, model) is not None


def import_root(code: Path) -> Path:
    """The folder put on sys.path for a `code:` entry: a file's folder, or the folder itself."""
    return code.parent if code.is_file() else code


def pin(stage: str, root: str | Path) -> None:
    """Import the named stage's user code from root (a run's copy) in this process, ahead of anything else."""
    _pinned[stage] = Path(root)


class UserCode(StrictModel):
    """Where a rank, trial or predict imports a stage's user network from: the run's copy of its `code:`."""

    stage: str = Field(description="the deep stage whose `model` it defines (the name it is pinned under)")
    dir: str = Field(description="the run's copy, <run>/code/<name>/")
    checksums: dict[str, str] = Field(default_factory=dict, description="the copy's files, as the manifest has them")

    def pin(self) -> None:
        """Import this stage's user code from the run's copy in this process."""
        pin(self.stage, self.dir)


def pin_spec(text: str) -> None:
    """Pin a JSON spec's `code` before the spec validates (its deep stage's check imports the network)."""
    raw = json.loads(text)
    if isinstance(raw, dict) and raw.get("code"):
        UserCode.model_validate(raw["code"]).pin()


def pin_run(run_dir: str | Path) -> None:
    """Pin every deep stage's copied user code of a finished run (predict)."""
    folder = Path(run_dir) / Folder.CODE
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if sub.is_dir():
                pin(sub.name, sub)


def load(ref: str, code: str | None, stage: str | None = None) -> Callable[..., Any]:
    """The function a `module:function` ref names, imported from the pinned copy, `code:`, or installed packages."""
    module_name, function = ref.split(":")
    root = _pinned.get(stage or "") or (import_root(Path(code)) if code else None)
    if root is not None:
        if not root.is_dir():
            raise ValueError(f"user code folder {root} does not exist")
        if str(root) in sys.path:
            sys.path.remove(str(root))
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way: report it as a config problem
        where = f" (from {root})" if root is not None else ""
        raise ValueError(f"cannot import {module_name!r}{where}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"{module_name!r} has no function {function!r}")
    return fn


def copy_code(code: str, target: Path) -> None:
    """Copy a `code:` file (as itself) or folder (its contents) into target, without caches and hidden files."""
    source = Path(code)
    target.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        shutil.copy2(source, target / source.name)
        return
    ignore = shutil.ignore_patterns("__pycache__", ".*", "*.pyc")
    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
