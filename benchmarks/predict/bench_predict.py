"""`pipelines predict` throughput: rows/s on Dask and local Spark beside the saved model's own predict, same rows.

Two finished runs are made first, on generated data only (a Dask engine, untimed):
  glm, forest   logistic regression and a 20-tree random forest (ingest standardizes) on --train-rows synthetic
                rows x --features; the rows scored are --rows new synthetic rows (Parquet, no label)
  cnn           mnist_cnn (2 epochs, 2 ranks) on the bundled digits upscaled to --image-size (28: 3x3 blocks
                padded like MNIST; 8: as they are); scored: --images generated digits (random draws of the
                1,797, randomly shifted) in one IDX file, no labels
Each model is scored
  in process    the saved model loaded with the project's loader (load_model; Keras' load_model for the
                network) and its predict (+ predict_proba, as the scorer calls both) on a pandas frame of the
                same rows as the model sees them (standardized / unit-scaled before the timing); the network's
                model.predict on the same array, batch 1024 as the scorer's
  dask, spark   pipelines.predict.job.predict(run_dir, stage, data, out, engine=...) on an engine started
                once per kind (2 one-thread Dask workers / local[cores]): read + validate + transform + score
                + write Parquet + summary
For each it prints: start-up seconds (engine start, shown on the engine's own line; model load in process),
the first call's extra seconds over the steady call (workers importing and loading the model, Keras tracing),
the steady call's seconds (best of --repeat) and rows/s, the ratio engine rows/s / in-process rows/s, whether
the predictions equal the in-process ones, and the peak RSS of the whole process tree during the calls.
A second table splits each engine's steady call: read+validate (persist_tasks), quarantine (the rejected rows
collected to the driver), score+write (write_mapped) and the rest (loading the saved stage and checking its
checksums, planning, summary, the atomic rename).

    python -m benchmarks.predict.bench_predict [--rows 200000] [--images 20000] [--engines dask,spark]
        [--models glm,forest,cnn] [--partitions 4] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from benchmarks.common import PeakRSS, measure
from pipelines.config import parse_config
from pipelines.data.bundled import _digits, idx_bytes
from pipelines.data.synthetic import generate, generate_part
from pipelines.engines.config import DaskSettings, SparkSettings
from pipelines.engines.dask_engine import DaskEngine
from pipelines.engines.spark_engine import SparkEngine
from pipelines.pipeline import run_pipeline
from pipelines.predict import predict
from pipelines.predict.saved import load_saved
from pipelines.predict.score import KERAS_BATCH

TREES = 20
CLASSICAL = ("glm", "forest")


def _digit_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The bundled 1,797 digits (uint8), upscaled to size x size by 3x3 blocks and padded (size 8: as they are)."""
    images, labels = _digits()
    if size == 8:
        return images, labels
    if size < 24:
        raise SystemExit("--image-size: 8 (the digits as they are) or 24 and more (3x3 blocks, padded)")
    pad = ((size - 24) // 2, size - 24 - (size - 24) // 2)
    return np.pad(np.kron(images, np.ones((3, 3), np.uint8)), ((0, 0), pad, pad)), labels


def _draw(n: int, size: int, seed: int) -> np.ndarray:
    """n images drawn at random from the digits, each shifted by up to 2 pixels (wrapping)."""
    images, _ = _digit_images(size)
    rng = np.random.default_rng(seed)
    out = images[rng.integers(0, len(images), n)]
    shifts = rng.integers(-2, 3, (n, 2))
    return np.stack([np.roll(img, (int(dy), int(dx)), axis=(0, 1)) for img, (dy, dx) in zip(out, shifts, strict=True)])


def _write_idx(path: Path, array: np.ndarray) -> str:
    path.write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))
    return str(path)


def make_data(root: Path, args: argparse.Namespace) -> dict[str, str]:
    """Training data and the rows to score, all generated (kept in --dir between process runs)."""
    paths: dict[str, str] = {}
    train = root / f"train-{args.train_rows}x{args.features}"
    if not train.exists():
        generate(train, rows=args.train_rows, features=args.features, parts=2, seed=5)
    paths["train"] = str(train)
    score = root / f"score-{args.rows}x{args.features}"
    if not score.exists():  # same model as the training rows, parts no training file has; no label column
        tmp = root / f"{score.name}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        bounds = [round(i * args.rows / args.partitions) for i in range(args.partitions + 1)]
        for i in range(args.partitions):
            table = generate_part("classification", bounds[i + 1] - bounds[i], args.features, 5, 1000 + i)
            pq.write_table(table.drop(["y"]), tmp / f"part-{i:05d}.parquet", row_group_size=64_000)
        tmp.rename(score)
    paths["score"] = str(score)
    images, labels = _digit_images(args.image_size)
    paths["train_images"] = _write_idx(root / f"train-images-{args.image_size}.gz", images)
    paths["train_labels"] = _write_idx(root / f"train-labels-{args.image_size}.gz", labels)
    paths["images"] = _write_idx(
        root / f"score-images-{args.images}-{args.image_size}.gz", _draw(args.images, args.image_size, 7)
    )
    return paths


def classical_config(root: Path, paths: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "predict-bench-classical",
        "runs_dir": str(root / "runs"),
        "engine": {"kind": "dask", "partitions": 2},
        "dataset": {"name": "synthetic", "format": "parquet", "path": paths["train"], "formula": "y ~ .",
                    "types": {"y": "int"}},
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.2, "seed": 0}},
            {"stage": "model", "name": "glm", "model": "logistic_regression", "plots": False},
            {"stage": "model", "name": "forest", "model": "random_forest_classifier", "plots": False,
             "params": {"n_estimators": TREES, "max_depth": 8}},
        ],
    }  # fmt: skip


def cnn_config(root: Path, paths: dict[str, str], size: int, epochs: int) -> dict[str, Any]:
    return {
        "name": "predict-bench-cnn",
        "runs_dir": str(root / "runs"),
        "engine": {"kind": "dask", "partitions": 2},
        "dataset": {"name": "digits", "format": "idx", "path": paths["train_images"],
                    "labels_path": paths["train_labels"], "image": {"shape": [size, size], "classes": 10}},
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.2, "seed": 42}},
            {"stage": "deep", "name": "cnn", "model": "mnist_cnn", "epochs": epochs, "batch_size": 32, "ranks": 2,
             "plots": False},
        ],
    }  # fmt: skip


class InProcess:
    """The saved model's own predict on the rows as the model sees them (loaded from the run like the workers)."""

    def __init__(self, run_dir: Path, stage: str, data: str, args: argparse.Namespace) -> None:
        self.saved = load_saved(run_dir, stage)
        self.keras = self.saved.model.kind == "keras"
        if self.keras:
            images = _draw(args.images, args.image_size, 7)  # the same draws as the IDX file
            self.x = (images.astype(np.float32) / np.float32(255.0))[..., None]
            self.keys = pd.DataFrame({"row": np.arange(len(images))})
        else:
            files = sorted(Path(data).glob("*.parquet"))
            frames = [
                pq.read_table(f).to_pandas().assign(_file=f.name, row=np.arange(pq.read_metadata(f).num_rows))
                for f in files
            ]
            raw = pd.concat(frames, ignore_index=True)
            scale = self.saved.ingest.fitted.scale
            features = list(self.saved.features)
            self.x = pd.DataFrame({f: (raw[f].to_numpy() - scale[f][0]) / scale[f][1] for f in features})
            self.keys = raw[["_file", "row"]]
        self.rows = len(self.x)

    def load(self) -> Any:
        if self.keras:
            import keras

            return keras.saving.load_model(self.saved.model.path, compile=False, safe_mode=True)
        from pipelines.classical.persist import load_model

        return load_model(self.saved.model.path)

    def call(self, model: Any) -> np.ndarray:
        if self.keras:
            return np.asarray(model.predict(self.x, batch_size=KERAS_BATCH, verbose=0)).argmax(axis=1)
        prediction = model.predict(self.x)
        model.predict_proba(self.x)
        return np.asarray(prediction)

    def agree(self, out: Path, expected: np.ndarray) -> float:
        """Fraction of the engine's written predictions equal to the in-process ones, matched by file and row."""
        got = pd.read_parquet(out / "predictions", columns=["source_file", "row", "prediction"])
        if not self.keras:
            got["_file"] = got["source_file"].map(lambda s: Path(s).name)
        keys = ["row"] if self.keras else ["_file", "row"]
        merged = self.keys.assign(expected=expected).merge(got, on=keys, how="left")
        return float((merged["prediction"].to_numpy() == merged["expected"].to_numpy()).mean())


def _line(
    model: str, who: str, rows: int, start: str, first: float, steady: float, ratio: str, agree: str, peak: int
) -> None:
    print(
        f"{model:8} {who:12} {rows:>9,} {start:>8} {first:>+9.2f} {steady:9.3f} {rows / steady:>11,.0f} "
        f"{ratio:>7} {agree:>7} {peak / 2**20:>9,.0f} MiB",
        flush=True,
    )


class Phases:
    """Seconds an engine spends in predict's distributed steps (wraps the started engine's methods): reading and
    validating the parts, collecting the rejected rows for quarantine.csv, scoring and writing the predictions."""

    def __init__(self, engine: Any) -> None:
        self.seconds = {"persist_tasks": 0.0, "to_pandas": 0.0, "write_mapped": 0.0}
        for name in self.seconds:
            setattr(engine, name, self._timed(name, getattr(engine, name)))

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        return call

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic rows scored by the classical models")
    parser.add_argument("--images", type=int, default=20_000, help="images scored by the CNN")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=28, help="28 (upscaled digits, MNIST-sized) or 8")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4, help="predict's partitions (and score files)")
    parser.add_argument("--repeat", type=int, default=3, help="steady calls per line (the best is shown)")
    parser.add_argument("--engines", default="dask,spark")
    parser.add_argument("--models", default="glm,forest,cnn")
    parser.add_argument("--dir", default=None, help="keeps generated data between process runs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    models = [m for m in args.models.split(",") if m]
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-predict-"))
    paths = make_data(root, args)
    shutil.rmtree(root / "out", ignore_errors=True)  # predictions of an earlier process run
    cores = os.cpu_count() or 2

    t0 = time.perf_counter()
    runs: dict[str, Path] = {}
    with DaskEngine(DaskSettings(n_workers=2, threads_per_worker=1)) as trainer:
        if any(m in CLASSICAL for m in models):
            run = run_pipeline(parse_config(classical_config(root, paths)), engine=trainer).run.dir
            runs.update(dict.fromkeys(CLASSICAL, run))
        if "cnn" in models:
            config = parse_config(cnn_config(root, paths, args.image_size, args.epochs))
            runs["cnn"] = run_pipeline(config, engine=trainer).run.dir
    data = {m: paths["images"] if m == "cnn" else paths["score"] for m in models}
    print(f"runs made in {time.perf_counter() - t0:.0f} s (untimed below); {cores} cores")
    size = f"{args.image_size}x{args.image_size}"
    print(f"classical: {args.rows:,} rows x {args.features} features; cnn: {args.images:,} images of {size};")
    print(f"{args.partitions} partitions; steady = best of {args.repeat} calls\n")
    print(
        f"{'model':8} {'who':12} {'rows':>9} {'start s':>8} {'1st call':>9} {'seconds':>9} {'rows/s':>11} "
        f"{'ratio':>7} {'agree':>7} {'peak RSS':>13}"
    )

    base: dict[str, tuple[InProcess, np.ndarray, float]] = {}
    for m in models:
        ref = InProcess(runs[m], m, data[m], args)
        with PeakRSS() as mem:
            start, model, _ = measure(ref.load)
            first, _, _ = measure(lambda r=ref, mo=model: r.call(mo))
            steady, expected = min(
                (measure(lambda r=ref, mo=model: r.call(mo))[:2] for _ in range(args.repeat)), key=lambda t: t[0]
            )
        base[m] = (ref, expected, ref.rows / steady)
        _line(m, "in process", ref.rows, f"{start:.2f}", first - steady, steady, "1.00", "", mem.peak)

    split: list[tuple[str, str, float, dict[str, float]]] = []
    for kind in args.engines.split(","):
        if kind == "spark":
            engine: Any = SparkEngine(SparkSettings(master=f"local[{cores}]"), partitions=args.partitions)
        else:
            engine = DaskEngine(DaskSettings(n_workers=cores, threads_per_worker=1))
        with PeakRSS() as mem:
            start, _, _ = measure(engine.start)
        print(
            f"{'(start)':8} {kind:12} {'':>9} {start:8.2f} {'':>9} {'':>9} {'':>11} {'':>7} {'':>7} "
            f"{mem.peak / 2**20:>9,.0f} MiB",
            flush=True,
        )
        phases = Phases(engine)
        try:
            for m in models:
                ref, expected, base_rate = base[m]
                n = [0]

                def call(m: str = m) -> dict[str, Any]:
                    n[0] += 1
                    out = root / "out" / f"{kind}-{m}-{n[0]}"
                    return predict(runs[m], m, data[m], out, engine=engine, partitions=args.partitions)

                with PeakRSS() as mem:
                    first, summary, _ = measure(call)
                    timings = []
                    for _ in range(args.repeat):
                        phases.reset()
                        seconds, summary, _ = measure(call)
                        timings.append((seconds, dict(phases.seconds)))
                steady, parts = min(timings, key=lambda t: t[0])
                assert summary["scored"] == ref.rows, summary
                agree = ref.agree(root / "out" / f"{kind}-{m}-{n[0]}", expected)
                ratio = ref.rows / steady / base_rate
                _line(m, kind, ref.rows, "", first - steady, steady, f"{ratio:.3f}", f"{agree:.4f}", mem.peak)
                split.append((m, kind, steady, parts))
                for i in range(1, n[0] + 1):
                    shutil.rmtree(root / "out" / f"{kind}-{m}-{i}")
        finally:
            engine.stop()

    print("\nstart s: engine start (its own line) or loading the saved model in process; 1st call: the first")
    print("call's extra seconds over the steady one; ratio = engine rows/s / in-process rows/s (same rows);")
    print("agree: fraction of written predictions equal to the in-process ones")
    head = f"{'read+validate':>14} {'quarantine':>11} {'score+write':>12} {'rest':>7}"
    print(f"\n{'model':8} {'engine':8} {'seconds':>9} {head}")
    for m, kind, steady, parts in split:
        read, bad, score = parts["persist_tasks"], parts["to_pandas"], parts["write_mapped"]
        rest = steady - read - bad - score
        print(f"{m:8} {kind:8} {steady:9.2f} {read:14.2f} {bad:11.2f} {score:12.2f} {rest:7.2f}")
    print("read+validate: persist_tasks; quarantine: the rejected rows to the driver (to_pandas); score+write:")
    print("write_mapped (transform, predict, Parquet); rest: load + checksum the saved stage, plan, summary, rename")


if __name__ == "__main__":
    main()
