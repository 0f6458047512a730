"""Atomic file and directory writes: temp + fsync + rename, so readers never see a half-written output."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import EnvironmentProblem, PipelineError

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a full quota, a file-size limit (ulimit -f)


def disk_full(exc: BaseException) -> str | None:
    """What filled up, when an error says a disk, quota or file-size limit is full (also as an engine words it)."""
    if isinstance(exc, OSError) and exc.errno in FULL:
        return os.strerror(exc.errno)
    try:
        text = str(exc)
    except Exception:  # a Py4J error whose JVM is gone
        return None
    return next((os.strerror(code) for code in FULL if os.strerror(code) in text), None)


@contextlib.contextmanager
def full_disk_named(path: str | os.PathLike[str]) -> Iterator[None]:
    """A full disk met in the block ends it as one EnvironmentProblem naming `path` (exit code 4), not a traceback."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        reason = disk_full(exc)
        if reason is None:
            raise
        raise EnvironmentProblem(f"{reason[0].lower()}{reason[1:]} writing {path}") from exc


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to path atomically (same-directory temp file, fsync, rename)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with full_disk_named(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text to path atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON (sorted keys, indented) to path atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], before_publish: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temp directory that is renamed to path only if the block succeeds.

    `before_publish(tmp)` runs after the block and before the rename (e.g. to record checksums first).
    An existing directory at path is replaced only after the new one is complete; on error the
    temp directory is removed and the earlier output stays untouched (a full disk is named as writing path).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with full_disk_named(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            if before_publish is not None:
                before_publish(tmp)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_tree(root: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of every regular file under root, keyed by relative path (hidden files skipped)."""
    base = Path(root)
    out: dict[str, str] = {}
    for file in sorted(base.rglob("*")):
        rel = file.relative_to(base)
        if file.is_file() and not any(part.startswith((".", "_")) for part in rel.parts):
            out[str(rel)] = sha256_file(file)
    return out
