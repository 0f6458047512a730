"""A stratified 5-fold cross-validated sweep (conf/sweep_cv.yaml): its folds' makespan against the lower bound.

Every fold of every trial is a task load-balanced over the Dask workers' slots; the makespan of the folds is
compared with the bound no schedule can beat, max(longest fold, total fold work / slots), where a fold's work
is its task's wall time (its trial process included). Baseline in the same run: the same folds one after
another on one slot. Printed: wall seconds, makespan / bound, sequential / balanced, peak RSS of the tree.

    python -m benchmarks.sweep.bench_cv [--trials 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import measure
from pipelines.config import apply_override, load_yaml, parse_config
from pipelines.engines import make_engine
from pipelines.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "sweep_cv.yaml"


def sweep(runs: str, label: str, workers: int, depths: str) -> dict[str, Any]:
    """One run of conf/sweep_cv.yaml on a fresh Dask LocalCluster of `workers` one-thread workers."""
    overrides = [f"runs_dir={runs}/{label}", f"engine.dask.n_workers={workers}", "engine.dask.threads_per_worker=1"]
    data = load_yaml(CONF)
    for assignment in overrides:
        apply_override(data, assignment)
    data["stages"][1]["grid"]["params.max_depth"] = json.loads(depths)  # a dotted key: not an override path
    config = parse_config(data, str(CONF))
    with make_engine(config.engine) as engine:
        seconds, (run, _), peak = measure(lambda: run_pipeline(config, engine=engine))
    metrics = json.loads((run.dir / "metrics.json").read_text())[config.stages[1].output_name]
    return {"seconds": seconds, "peak_mb": peak / 1e6, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="[2, 4]", help="the grid's max_depth values (x 2 leaf sizes)")
    args = parser.parse_args()
    runs = tempfile.mkdtemp(prefix="bench-cv-")
    rows = {"load-balanced, 2 slots": sweep(runs, "balanced", 2, args.depths)}
    rows["one after another, 1 slot"] = sweep(runs, "sequential", 1, args.depths)
    print(f"\n{CONF.name}: {rows['load-balanced, 2 slots']['trials']} trials x 5 stratified folds")
    print(f"{'run':28} {'stage s':>7} {'folds':>6} {'makespan':>9} {'bound':>7} {'ratio':>6} {'peak MB':>8}  best")
    for name, r in rows.items():
        cv = r["cv"]
        ratio = cv["makespan_s"] / cv["lower_bound_s"]
        print(
            f"{name:28} {r['seconds']:7.1f} {cv['folds_run']:6d} {cv['makespan_s']:9.1f} {cv['lower_bound_s']:7.1f} "
            f"{ratio:6.2f} {r['peak_mb']:8,.0f}  {r['best_values']} cv {r['best_metric']:.4f} +- {cv['best_std']:.4f}"
            f", test {r['best_test_metric']:.4f}"
        )
    speedup = rows["one after another, 1 slot"]["cv"]["makespan_s"] / rows["load-balanced, 2 slots"]["cv"]["makespan_s"]
    print(f"folds one after another / load-balanced on 2 slots: {speedup:.2f}x (ideal 2.0)")


if __name__ == "__main__":
    main()
