"""The LSU course's 27-trial grid (hidden units {128,256,512} x batch {50,100,200} x filters {8,16,32}) of the
Keras MNIST CNN on digits, as a sweep stage (conf/sweep_cnn.yaml):

1. load-balanced on a Dask LocalCluster of 2 one-thread workers (a free slot takes the next trial);
2. the same trials one after another (1 worker, 1 slot);
3. the same grid with Hyperband (epochs 1..9, eta 3): epochs spent vs the full grid's 27 x 9.

Printed: wall seconds of each, the sequential / load-balanced ratio (2 slots: ideal 2.0), peak RSS of the
process tree (driver, workers, trial processes), the best trial, and Hyperband's epochs saved.

    python -m benchmarks.sweep.bench_sweep [--epochs 2] [--skip-hyperband]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import measure
from pipelines.config import load_config
from pipelines.engines import make_engine
from pipelines.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "sweep_cnn.yaml"


def sweep(runs: str, label: str, workers: int, *overrides: str) -> dict[str, Any]:
    """One pipeline run of conf/sweep_cnn.yaml on a fresh Dask LocalCluster with `workers` one-thread workers."""
    config = load_config(
        CONF,
        [
            f"runs_dir={runs}/{label}",
            f"engine.dask.n_workers={workers}",
            "engine.dask.threads_per_worker=1",
            *overrides,
        ],
    )
    with make_engine(config.engine) as engine:
        seconds, (run, _), peak = measure(lambda: run_pipeline(config, engine=engine))
    metrics = json.loads((run.dir / "metrics.json").read_text())[config.stages[1].output_name]
    return {"seconds": seconds, "peak_mb": peak / 1e6, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each grid trial")
    parser.add_argument("--skip-hyperband", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    runs = tempfile.mkdtemp(prefix="bench-sweep-")
    epochs = f"stages.1.target.epochs={args.epochs}"
    rows = {
        "load-balanced, 2 slots": sweep(runs, "balanced", 2, epochs),
        "one after another": sweep(runs, "sequential", 1, epochs),
    }
    if not args.skip_hyperband:
        stop = "stages.1.early_stopping={kind: hyperband, min_epochs: 1, max_epochs: 9, eta: 3}"
        rows["hyperband 1..9 epochs, 2 slots"] = sweep(runs, "hyperband", 2, stop)
    print(f"\n{CONF.name}: 27 trials of mnist_cnn on digits, {args.epochs} epochs each (Hyperband: 1..9)")
    print(f"{'run':32} {'wall s':>8} {'peak MB':>8} {'done':>5} {'epochs':>7} {'of':>5} {'best':>7}  best values")
    for name, r in rows.items():
        print(
            f"{name:32} {r['seconds']:8.1f} {r['peak_mb']:8,.0f} {r['done']:5d} {r['epochs_spent']:7d} "
            f"{r['epochs_full_grid']:5d} {r['best_metric']:7.4f}  {r['best_values']}"
        )
    ratio = rows["one after another"]["seconds"] / rows["load-balanced, 2 slots"]["seconds"]
    print(f"one after another / load-balanced on 2 slots: {ratio:.2f}x")
    if not args.skip_hyperband:
        hb = rows["hyperband 1..9 epochs, 2 slots"]
        saved = 1 - hb["epochs_spent"] / hb["epochs_full_grid"]
        print(f"hyperband: {hb['epochs_spent']} epochs of the full grid's {hb['epochs_full_grid']} ({saved:.0%} saved)")


if __name__ == "__main__":
    main()
