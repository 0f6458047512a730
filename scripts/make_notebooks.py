"""Write the example notebooks in examples/ (nbformat), then render them with their outputs into docs/notebooks/.

python scripts/make_notebooks.py            # write examples/*.ipynb (no outputs)
python scripts/make_notebooks.py --render   # also execute them (nbclient) and write docs/notebooks/*.md
python scripts/make_notebooks.py --render deep sweep   # only those
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

DIGITS = """    "dataset": {
        "name": "digits", "format": "idx",  # 1,797 8x8 images of handwritten digits, 10 classes
        "path": "bundled:digits/images", "labels_path": "bundled:digits/labels",
        "image": {"shape": [8, 8], "classes": 10},
    },"""


def engine_cell(memory_limit: str) -> nbformat.NotebookNode:
    """The cell that starts one engine for the notebook: two one-thread Dask workers, or Spark `local[2]`."""
    return new_code_cell(
        f"""if ENGINE == "spark":
    settings = {{"master": "local[2]"}}
else:
    settings = {{"n_workers": 2, "threads_per_worker": 1, "memory_limit": "{memory_limit}"}}
eng = pipelines.engine(ENGINE, **settings)
eng"""
    )


DEEP = [
    new_markdown_cell(
        "# Deep learning from a notebook: Horovod ranks on the engine's workers\n\n"
        "scikit-learn's handwritten digits ingested on Dask or Spark, then LeNet-5 trained data-parallel by two "
        "Horovod ranks. The ranks run where the engine runs its work (`launcher` = the engine): on Dask as tasks "
        "pinned to two distinct workers, on Spark as one barrier stage of two tasks; each task starts a fresh "
        "rank process, so TensorFlow never loads into the workers themselves (docs/DEEP.md). The same stages run "
        "from the shell as `pipelines train conf/digits_deep.yaml --np 2`."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        """config = pipelines.load_config({
    "name": "digits-deep",
    "engine": {"kind": ENGINE, "partitions": 2},
"""
        + DIGITS
        + """
    "stages": [
        {"stage": "ingest", "split": {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 42}, "image_scale": "unit"},
        {"stage": "deep", "model": "lenet5", "epochs": 12, "learning_rate": 0.003,
         "batch_size": 32, "ranks": 2, "launcher": ENGINE},
    ],
}, {"runs_dir": RUNS})"""
    ),
    new_markdown_cell(
        "Two workers (Dask) or two task slots (Spark `local[2]`): one per rank. A barrier stage starts all its "
        "tasks together or none, and the Dask launcher refuses to put two ranks on one worker."
    ),
    engine_cell("3GB"),
    new_code_cell("run = pipelines.run(config, engine=eng)\nrun"),
    new_markdown_cell(
        "## Where the ranks ran\n\nThe stage records its launcher and, per rank, where it ran: the Dask worker "
        "(address and pid) or the Spark task, and the rank's own process."
    ),
    new_code_cell(
        """import pandas as pd

lenet = run.stage("lenet5")
print("launcher:", lenet.facts["launcher"])
pd.DataFrame(lenet.facts["placement"]).set_index("rank").dropna(axis=1, how="all")"""
    ),
    new_markdown_cell(
        "## Training curves and test accuracy\n\nRank 0 wrote the figures shown with the run above (curves, "
        "confusion matrix, first-layer filters, misclassified test images) into `deep/lenet5/`; the curves at "
        "full size, then the history, one row per epoch (loss and accuracy over both ranks' batches)."
    ),
    new_code_cell(
        """from IPython.display import Image

Image(filename=run.dir / "deep" / "lenet5" / "curves.png")"""
    ),
    new_code_cell(
        """history = pd.DataFrame(lenet.metrics["history"]).set_index("epoch")
columns = ["loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
print(f"test accuracy {lenet.metrics['test']['accuracy']:.4f} on {lenet.metrics['test']['rows']} images")
history[columns].round(4)"""
    ),
    new_markdown_cell(
        "## Predict on new images\n\nThe saved network scores IDX images on the engine's workers. Here the "
        "bundled digits themselves, with their labels (train and test images together, so this accuracy is not "
        "a held-out figure)."
    ),
    new_code_cell(
        """from pipelines.data.bundled import resolve_path

scored = pipelines.predict(
    run, "lenet5", resolve_path("bundled:digits/images"), labels=resolve_path("bundled:digits/labels"), engine=eng
)
summary = scored.attrs["summary"]
print(summary["scored"], "images scored, accuracy", round(summary["metrics"]["accuracy"], 4))
scored.head()"""
    ),
    new_code_cell("eng.close()"),
]

SWEEP = [
    new_markdown_cell(
        "# A hyperparameter sweep from a notebook\n\n"
        "Softmax (multinomial logistic) regression on scikit-learn's handwritten digits, trained once per "
        "combination of the regularization strength `C` and whether the model fits an intercept: a 3 x 2 grid of "
        "trials, load-balanced over the engine's two workers (docs/SWEEP.md). Each trial is its own process that "
        "reads the run's ingested train/test splits; the sweep writes a results table, a heatmap and the best trial."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        """config = pipelines.load_config({
    "name": "digits-sweep",
    "engine": {"kind": ENGINE, "partitions": 2},
"""
        + DIGITS
        + """
    "stages": [
        {"stage": "ingest", "split": {"test_fraction": 0.25, "seed": 42}, "image_scale": "unit"},
        {
            "stage": "sweep", "name": "c-grid",
            "target": {"stage": "model", "model": "logistic_regression"},
            "grid": {"params.C": [0.01, 0.1, 1.0], "params.fit_intercept": [True, False]},
            "metric": "test_accuracy", "mode": "max",
        },
    ],
}, {"runs_dir": RUNS})"""
    ),
    engine_cell("2GB"),
    new_code_cell("run = pipelines.run(config, engine=eng)\nrun.status"),
    new_markdown_cell(
        "## The heatmap\n\nThe best test accuracy for each pair of values (here every pair is one trial)."
    ),
    new_code_cell(
        """from IPython.display import Image

sweep = run.stage("c-grid")
Image(filename=run.dir / "sweeps" / "c-grid" / "heatmap.png")"""
    ),
    new_markdown_cell(
        "## The results table\n\nOne row per trial: its values, status, the metric, how long it took and the "
        "worker that ran it."
    ),
    new_code_cell(
        """import pandas as pd

table = pd.read_csv(run.dir / "sweeps" / "c-grid" / "results.csv").set_index("index")
shown = ["params.C", "params.fit_intercept", "status", "metric", "seconds", "worker"]
table[shown]"""
    ),
    new_markdown_cell(
        "## The best trial\n\nThe sweep records the best trial (by `metric` and `mode`) with the run's metrics; "
        "`best.json` beside the table holds the same."
    ),
    new_code_cell(
        """best = sweep.metrics  # the sweep's section of metrics.json
print(f"best trial {best['best_index']}: {best['best_values']} test_accuracy {best['best_metric']:.6f}")
table.loc[[best["best_index"]], shown]"""
    ),
    new_code_cell("eng.close()"),
]

NOTEBOOKS = {"classical.ipynb": CLASSICAL, "deep.ipynb": DEEP, "sweep.ipynb": SWEEP}


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
        # figures as <notebook>_<cell>_<output>.png, so that two notebooks' files never share a name
        body, resources = MarkdownExporter().from_notebook_node(nb, resources={"unique_key": path.stem})
        (out / path.with_suffix(".md").name).write_text(body)
        for name, data in resources.get("outputs", {}).items():
            (out / name).write_bytes(data)


if __name__ == "__main__":
    written = write()
    if "--render" in sys.argv:
        names = sys.argv[sys.argv.index("--render") + 1 :]  # the notebooks named after --render, else all
        render([p for p in written if not names or p.name in names or p.stem in names])
