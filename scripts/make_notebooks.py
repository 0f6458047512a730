"""Write the example notebooks in examples/ (nbformat), then render them with their outputs into docs/notebooks/.

python scripts/make_notebooks.py            # write examples/*.ipynb (no outputs)
python scripts/make_notebooks.py --render   # also execute them (nbclient) and write docs/notebooks/*.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

SETUP = """import os
import pipelines

ENGINE = os.environ.get("PIPELINES_ENGINE", "dask")  # or "spark"
RUNS = os.environ.get("PIPELINES_RUNS", "runs")"""

CLASSICAL = [
    new_markdown_cell(
        "# Classical models from a notebook\n\n"
        "statsmodels' *fair* survey (6,366 rows) ingested, split and standardized on Dask or Spark, then R's "
        "`summary(lm(...))` with the same formula. The same config runs from the shell as `pipelines run "
        "conf/fair.yaml`."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        """config = pipelines.load_config({
    "name": "fair",
    "engine": {"kind": ENGINE, "partitions": 2},
    "dataset": {
        "name": "fair", "format": "csv", "path": "bundled:fair",
        "formula": "affairs ~ rate_marriage + age + yrs_married + children + religious + educ"
                   " + C(occupation) + C(occupation_husb)",
        "types": {"rate_marriage": "int", "religious": "int"},
    },
    "stages": [
        {"stage": "ingest", "split": {"test_fraction": 0.2, "seed": 7}, "standardize": True, "encode": "dummy"},
        {"stage": "model", "name": "lm", "model": "linear_regression"},
    ],
}, {"runs_dir": RUNS})"""
    ),
    new_markdown_cell("One engine for the whole notebook: its dashboard link is shown; every run below reuses it."),
    new_code_cell(
        """settings = {"master": "local[2]"} if ENGINE == "spark" else {"n_workers": 2, "memory_limit": "2GB"}
eng = pipelines.engine(ENGINE, **settings)
eng"""
    ),
    new_code_cell("run = pipelines.run(config, engine=eng)\nrun"),
    new_code_cell('print(run.summary("lm"))'),
    new_code_cell(
        'metrics = run.metrics\nmetrics[(metrics.stage == "lm") & metrics.metric.str.match(r"test_|summary\\.r")]'
    ),
    new_markdown_cell(
        "## Predict on new data\n\nThe run's saved model and recorded fit score a file in the run's format."
    ),
    new_code_cell(
        """from pipelines.data.bundled import resolve_path

scored = pipelines.predict(run, "lm", resolve_path("bundled:fair"), engine=eng)
print(scored.attrs["summary"]["scored"], "rows scored")
scored.head()"""
    ),
    new_code_cell("pipelines.runs(RUNS)"),
    new_code_cell("eng.close()"),
]

NOTEBOOKS = {"classical.ipynb": CLASSICAL}


def write() -> list[Path]:
    EXAMPLES.mkdir(exist_ok=True)
    paths = []
    for name, cells in NOTEBOOKS.items():
        for index, cell in enumerate(cells):
            cell.id = f"{Path(name).stem}-{index}"  # stable ids: a rewrite changes nothing that did not change
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        path = EXAMPLES / name
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def render(paths: list[Path]) -> None:
    """Execute each notebook with this interpreter's kernel and write it as Markdown with its outputs."""
    from nbclient import NotebookClient
    from nbconvert import MarkdownExporter

    out = ROOT / "docs" / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=900, resources={"metadata": {"path": str(EXAMPLES)}}).execute()
        body, resources = MarkdownExporter().from_notebook_node(nb)
        (out / path.with_suffix(".md").name).write_text(body)
        for name, data in resources.get("outputs", {}).items():
            (out / name).write_bytes(data)


if __name__ == "__main__":
    written = write()
    if "--render" in sys.argv:
        render(written)
