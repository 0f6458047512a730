"""The example notebooks run top to bottom under a real Jupyter kernel (this interpreter's), on both engines."""

from __future__ import annotations

import json
import re
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


def run_example(name: str, kind: str, kernel: str, tmp_path: Path, monkeypatch):
    """Execute examples/<name> on engine `kind`, its runs under tmp_path/runs; the executed notebook."""
    monkeypatch.setenv("PIPELINES_ENGINE", kind)
    monkeypatch.setenv("PIPELINES_RUNS", str(tmp_path / "runs"))
    return execute(name, kernel, tmp_path)


def outputs(nb, mime: str) -> list[str]:
    return [o.get("data", {}).get(mime, "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dask", "spark"])
def test_classical_notebook_matches_the_command_line(kind, kernel, tmp_path, monkeypatch):
    nb = run_example("classical.ipynb", kind, kernel, tmp_path, monkeypatch)
    assert not errors(nb)
    html = "".join(outputs(nb, "text/html"))
    assert 'src="data:image/png;base64,' in html and "Coefficients:" in html  # the run shown inline
    progress = [h for h in outputs(nb, "text/html") if "pipelines-progress" in h]
    assert len(progress) == 2  # run and predict: one live table each, left in its final state
    assert progress[0].count(">succeeded<") == 2 and ">ingest<" in progress[0] and ">lm<" in progress[0]
    assert (
        "dask dashboard" if kind == "dask" else "master local[2]"
    ) in html  # the engine shown (Spark's UI is off here)
    assert "6366 rows scored" in printed(nb)
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


def errors(nb) -> list[dict]:
    return [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


def printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def only_run(runs: Path):
    found = [p for p in runs.glob("2*") if p.is_dir()]
    assert len(found) == 1, found
    return pipelines.open_run(found[0])


# LeNet-5, 12 epochs, 2 ranks on 1,225 training images: measured test accuracy 0.9364 on both engines (the same
# global batches and seed, one thread per rank on 2 cores); the floor leaves 0.086 for other CPUs and thread counts
DEEP_FLOOR = 0.85


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dask", "spark"])
def test_deep_notebook_trains_with_the_engines_own_launcher(kind, kernel, tmp_path, monkeypatch):
    nb = run_example("deep.ipynb", kind, kernel, tmp_path, monkeypatch)
    assert not errors(nb)
    html = "".join(outputs(nb, "text/html"))
    assert 'src="data:image/png;base64,' in html  # the run's figures inline in its cell
    assert [png for png in outputs(nb, "image/png") if png]  # the curves at full size
    run = only_run(tmp_path / "runs" / "digits-deep")
    assert run.status == "succeeded" and run.engine == kind
    res = json.loads((run.dir / "deep" / "lenet5" / "results.json").read_text())
    assert res["launcher"] == kind and res["ranks"] == 2 and res["epochs_run"] == 12
    placement = res["placement"]
    assert [p["rank"] for p in placement] == [0, 1] and all(p["returncode"] == 0 for p in placement)
    parent = "worker_pid" if kind == "dask" else "task_pid"  # each rank a child of its own worker or barrier task
    assert len({p[parent] for p in placement}) == 2 and all(p["ppid"] == p[parent] for p in placement)
    if kind == "dask":
        assert len({p["worker"] for p in placement}) == 2  # two distinct Dask workers
    assert res["rank_weight_max_abs_diff"] == 0.0
    accuracy = res["test"]["accuracy"]
    assert accuracy > DEEP_FLOOR, accuracy
    text = printed(nb)
    assert f"launcher: {kind}" in text
    assert f"test accuracy {accuracy:.4f} on {res['test']['rows']} images" in text
    scored = re.search(r"(\d+) images scored, accuracy ([0-9.]+)", text)
    assert scored and int(scored[1]) == 1797  # every bundled digit
    assert float(scored[2]) > DEEP_FLOOR


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dask", "spark"])
def test_sweep_notebook_shows_the_best_trial_and_matches_the_command_line(kind, kernel, tmp_path, monkeypatch):
    import pandas as pd

    nb = run_example("sweep.ipynb", kind, kernel, tmp_path, monkeypatch)
    assert not errors(nb)
    assert [png for png in outputs(nb, "image/png") if png]  # the heatmap inline
    assert any("<table" in h and "params.C" in h for h in outputs(nb, "text/html"))  # the results DataFrame
    ours = only_run(tmp_path / "runs" / "digits-sweep")
    assert ours.status == "succeeded" and ours.engine == kind
    table = pd.read_csv(ours.dir / "sweeps" / "c-grid" / "results.csv")
    assert len(table) == 6 and (table["status"] == "ok").all()
    assert table["worker"].nunique() == 2  # load-balanced over both workers (task slots on Spark)
    best = ours.record.metrics["c-grid"]
    assert best["best_metric"] == table["metric"].max() > 0.9
    assert f"test_accuracy {best['best_metric']:.6f}" in printed(nb)
    # the CLI on the same config (the notebook's recorded one), on Dask
    conf = tmp_path / "cli.yaml"
    conf.write_text((ours.dir / "config.yaml").read_text().replace(str(tmp_path / "runs"), str(tmp_path / "cli")))
    assert main(["run", str(conf), "--engine", "dask"]) == 0
    theirs = only_run(tmp_path / "cli" / "digits-sweep")
    cli = pd.read_csv(theirs.dir / "sweeps" / "c-grid" / "results.csv")
    # the same split on either engine (tests/test_parity.py) and the same fit in each trial's process
    assert cli["metric"].to_numpy() == pytest.approx(table["metric"].to_numpy(), abs=1e-12)
    assert theirs.record.metrics["c-grid"]["best_values"] == best["best_values"]
