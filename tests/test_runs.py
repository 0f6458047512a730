"""Run directories and atomic outputs: complete manifests, checksums, and no complete-looking file after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT

from pipelines.atomic import atomic_dir, atomic_write_bytes, sha256_file


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=ROOT, **kw
    )


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_failed_block_keeps_earlier_directory(tmp_path):
    target = tmp_path / "data"
    with atomic_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("second")
        raise RuntimeError("boom")
    assert (target / "a").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_kill_mid_write_leaves_no_complete_looking_output(tmp_path):
    target = tmp_path / "data"
    script = textwrap.dedent(f"""
        import time, pathlib
        from pipelines.atomic import atomic_dir
        with atomic_dir({str(target)!r}) as tmp:
            tmp.mkdir()
            (tmp / "part-0").write_text("x")
            print("written", flush=True)
            time.sleep(60)
            (tmp / "part-1").write_text("y")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".data.tmp-") for name in leftovers)


@pytest.mark.slow
def test_cli_run_writes_complete_run_directory(tmp_path):
    out = _cli("run", "conf/fair.yaml", "--engine", "dask", "-s", f"runs_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "fair" / "latest"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    stage = manifest["stages"][0]
    assert stage["status"] == "succeeded" and stage["read"] == 6366 == stage["accepted"] + stage["rejected"]
    assert sorted(stage["partition_rows"]) == [1591, 1591, 1592, 1592]
    for name, sums in manifest["outputs"].items():
        assert sums, name
        for rel, digest in sums.items():
            assert sha256_file(run_dir / name / rel) == digest
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ingest"]["splits"]["train"] + metrics["ingest"]["splits"]["test"] == 6366
    assert (run_dir / "quarantine.csv").read_text().startswith("source,row,column,reason,raw")
    assert "stage ingest succeeded" in (run_dir / "logs" / "run.log").read_text()
    assert "ingest summary" in out.stdout


@pytest.mark.slow
def test_failed_run_is_marked_failed_and_leaves_earlier_run_intact(tmp_path):
    assert _cli("run", "conf/fair.yaml", "-s", f"runs_dir={tmp_path}").returncode == 0
    first = (tmp_path / "fair" / "latest").resolve()
    before = json.loads((first / "manifest.json").read_text())
    bad = _cli(
        "run",
        "conf/fair.yaml",
        "-s",
        f"runs_dir={tmp_path}",
        "-s",
        "dataset.types.age=category",
        "-s",
        "dataset.categories.age=['1']",
    )
    assert bad.returncode == 3 and "above max_rejected_fraction" in bad.stderr
    runs = sorted(p for p in (tmp_path / "fair").iterdir() if p.is_dir() and p.name != "latest")  # not .lock
    failed = next(p for p in runs if p != first)
    manifest = json.loads((failed / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "max_rejected_fraction" in manifest["error"]
    assert not (failed / "data").exists()
    assert (tmp_path / "fair" / "latest").resolve() == first
    assert json.loads((first / "manifest.json").read_text()) == before


@pytest.mark.slow
def test_killed_run_never_looks_succeeded(tmp_path):
    """Kill the run right after its first output appears: whatever is visible has checksums, nothing looks done."""
    from pipelines.atomic import checksum_tree
    from pipelines.runs import find_resumable

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "conf/digits.yaml", "-s", f"runs_dir={tmp_path}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 180
    run_dir = None
    while time.time() < deadline and run_dir is None:
        for found in tmp_path.glob("digits/*/data/*"):
            if not found.name.startswith("."):  # a published split (temp folders start with a dot)
                run_dir = found.parent.parent
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert run_dir is not None, "the run never published an output"
    manifest = json.loads((run_dir / "manifest.json").read_text())  # complete JSON, not a torn write
    assert manifest["status"] == "running"
    assert not (tmp_path / "digits" / "latest").exists()
    visible = [f"data/{p.name}" for p in (run_dir / "data").iterdir() if not p.name.startswith(".")]
    assert visible, "the output seen before the kill is gone"
    for name in visible:  # checksums were recorded before the output became visible
        assert manifest["outputs"][name] == checksum_tree(run_dir / name), name
    assert find_resumable(tmp_path, "digits") == run_dir  # the killed run is what --resume continues
