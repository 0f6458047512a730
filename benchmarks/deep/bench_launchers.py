"""Where the ranks run: the same network trained by horovodrun ranks, Spark barrier ranks and Dask-task ranks.

In one process run, on the same cores (2 ranks): a Dask LocalCluster (2 one-thread workers) and a local
Spark session (local[2]) ingest Fashion-MNIST (digits if it is not installed); the same network is trained
with each launcher. Printed per launcher: images/s (mean of the epochs after the first), the ratio to
horovodrun (goal: engine launchers within 1.05x, i.e. ratio >= 0.952), start-up seconds (stage wall time
minus the ranks' training time: hand-off, process spawn, imports, rendezvous), and peak RSS of the tree.

    python -m benchmarks.deep.bench_launchers [--epochs 3] [--model lenet5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.common import measure
from pipelines.config import load_config
from pipelines.data.bundled import fashion_mnist_available
from pipelines.engines import make_engine
from pipelines.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]


def train(conf: Path, engine_kind: str, launcher: str, args: argparse.Namespace, runs: str) -> dict[str, float]:
    """One pipeline run on a fresh engine of that kind; the deep stage with the given launcher."""
    overrides = [
        f"runs_dir={runs}/{engine_kind}-{launcher}",
        f"engine.kind={engine_kind}",
        "engine.spark.master=local[2]",
        "engine.dask.n_workers=2",
        "engine.dask.threads_per_worker=1",
        f"stages.1.model={args.model}",
        "stages.1.params={}",
        f"stages.1.epochs={args.epochs}",
        "stages.1.ranks=2",
        f"stages.1.launcher={launcher}",
        "stages.1.early_stopping_patience=null",
    ]
    config = load_config(conf, overrides)
    with make_engine(config.engine) as engine:
        seconds, (run, _), peak = measure(lambda: run_pipeline(config, engine=engine))
    res = json.loads((run.dir / "deep" / config.stages[1].output_name / "results.json").read_text())
    entry = next(s for s in run.manifest["stages"] if s["name"] == config.stages[1].output_name)
    later = [h["samples_per_s"] for h in res["history"][1:]] or [res["history"][0]["samples_per_s"]]
    return {
        "images_s": sum(later) / len(later),
        "startup_s": entry["seconds"] - res["train_seconds"],
        "stage_s": entry["seconds"],
        "accuracy": (res.get("test") or res.get("val") or {}).get("accuracy", float("nan")),  # held-out split
        "peak_mb": peak / 1e6,
        "where": ", ".join(str(p.get("worker") or p.get("executor_id") or p.get("host")) for p in res["placement"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="lenet5")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    conf = ROOT / "conf" / ("fashion_cnn.yaml" if fashion_mnist_available() else "digits_deep.yaml")
    runs = tempfile.mkdtemp(prefix="bench-launchers-")
    rows = {}
    for engine_kind, launcher in (("dask", "horovodrun"), ("dask", "dask"), ("spark", "spark")):
        rows[launcher] = train(conf, engine_kind, launcher, args, runs)
        print(f"{launcher}: {rows[launcher]}", flush=True)
    base = rows["horovodrun"]["images_s"]
    print(f"\n{conf.name}, {args.model}, 2 ranks, {args.epochs} epochs")
    print(f"{'launcher':12} {'img/s':>8} {'ratio':>6} {'start-up s':>10} {'stage s':>8} {'held-out':>8} {'peak MB':>8}")
    for launcher, r in rows.items():
        print(
            f"{launcher:12} {r['images_s']:8.0f} {r['images_s'] / base:6.3f} {r['startup_s']:10.1f} "
            f"{r['stage_s']:8.1f} {r['accuracy']:8.4f} {r['peak_mb']:8,.0f}   ({r['where']})"
        )
    worst = min(rows[k]["images_s"] / base for k in ("spark", "dask"))
    print(f"engine launchers within 1.05x of horovodrun: {'yes' if worst >= 1 / 1.05 else 'no'} (worst {worst:.3f})")


if __name__ == "__main__":
    main()
