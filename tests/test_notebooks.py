"""The example notebooks run top to bottom under a real Jupyter kernel (this interpreter's), on both engines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import pipelines
from pipelines.cli import main

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "pipelines-test"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec that starts ipykernel with this test's Python (the project's venv), found through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout
    return KERNEL


def execute(name: str, kernel: str, cwd: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / name, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs(nb, mime: str) -> list[str]:
    return [o.get("data", {}).get(mime, "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dask", "spark"])
def test_classical_notebook_matches_the_command_line(kind, kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINES_ENGINE", kind)
    monkeypatch.setenv("PIPELINES_RUNS", str(tmp_path / "runs"))
    nb = execute("classical.ipynb", kernel, tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    html = "".join(outputs(nb, "text/html"))
    assert 'src="data:image/png;base64,' in html and "Coefficients:" in html  # the run shown inline
    progress = [h for h in outputs(nb, "text/html") if "pipelines-progress" in h]
    assert len(progress) == 2  # run and predict: one live table each, left in its final state
    assert progress[0].count(">succeeded<") == 2 and ">ingest<" in progress[0] and ">lm<" in progress[0]
    assert (
        "dask dashboard" if kind == "dask" else "master local[2]"
    ) in html  # the engine shown (Spark's UI is off here)
    assert "6366 rows scored" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    ours = pipelines.open_run(next((tmp_path / "runs" / "fair").glob("2*")))
    assert ours.status == "succeeded" and ours.engine == kind
    # the CLI on the same config (the notebook's recorded one), on Dask
    conf = tmp_path / "cli.yaml"
    conf.write_text((ours.dir / "config.yaml").read_text().replace(str(tmp_path / "runs"), str(tmp_path / "cli")))
    assert main(["run", str(conf), "--engine", "dask"]) == 0
    theirs = pipelines.open_run(next((tmp_path / "cli" / "fair").glob("2*")))
    a, b = ours.record.metrics["lm"], theirs.record.metrics["lm"]
    for key in ("test_r2", "test_rmse", "train_r_squared"):
        assert a[key] == pytest.approx(b[key], rel=1e-6), key  # engines split and fit alike (tests/test_parity.py)
    assert a["summary"]["coefficients"]["estimate"] == pytest.approx(b["summary"]["coefficients"]["estimate"], rel=1e-6)
