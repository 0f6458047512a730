"""One trial: `python -m pipelines.sweep.trial TRIALS_DIR INDEX` trains the target with the trial's values.

It reads TRIALS_DIR/<NNN>/spec.json (written by the sweep's driver), fits a classical model on the run's
written splits (read with pyarrow, in this process) or trains a deep network with the deep stage's worker
(its own checkpoints in the trial folder, so a bigger epoch budget continues it), and writes
TRIALS_DIR/<NNN>/result.json atomically. A non-zero exit code means the trial failed. The same command is
what a task of the engine runs (in a subprocess, with a time limit) and what a SLURM/PBS array task runs.
With a third argument (a fold number, or `final`) it fits one cross-validation fold of the trial (spec.cv)
and writes fold-NN.json, or refits on the whole train split and writes final.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PositiveInt

from pipelines.atomic import atomic_write_json
from pipelines.classical.stage import ModelStage
from pipelines.deep.stage import DeepStage
from pipelines.deep.usercode import UserCode, pin_spec
from pipelines.ingest.handoff import AnyInputs
from pipelines.settings import StrictModel

SPEC = "spec.json"
RESULT = "result.json"


class CrossValidation(StrictModel):
    """k-fold cross-validation of each trial on the train split (scikit-learn's splitters, shuffled and seeded)."""

    folds: int = Field(default=5, ge=2)
    stratified: bool = False
    repeats: PositiveInt = 1
    seed: int = 0

    @property
    def tasks(self) -> int:
        """Folds in all: folds x repeats."""
        return self.folds * self.repeats

    def splitter(self) -> Any:
        """scikit-learn's splitter (shuffled, seeded): KFold, StratifiedKFold or their Repeated* forms."""
        from sklearn import model_selection as ms

        if self.repeats > 1:
            kind = ms.RepeatedStratifiedKFold if self.stratified else ms.RepeatedKFold
            return kind(n_splits=self.folds, n_repeats=self.repeats, random_state=self.seed)
        kind = ms.StratifiedKFold if self.stratified else ms.KFold
        return kind(n_splits=self.folds, shuffle=True, random_state=self.seed)


class TrialSpec(StrictModel):
    """One trial, as the sweep's driver writes it (spec.json) and the trial process reads it back, validated."""

    index: int
    digest: str = ""
    values: dict[str, Any]
    target: Annotated[ModelStage | DeepStage, Field(discriminator="stage")]
    metric: str
    epochs: int | None = None
    splits: str = Field(description="fingerprint of the written splits the trial reads")
    # a classical trial: the written split folders, what they hold, the model's columns
    data: dict[str, str] = Field(default_factory=dict)
    inputs: AnyInputs | None = None
    features: list[str] = Field(default_factory=list)
    label: str | None = None
    cv: CrossValidation | None = Field(default=None, description="the folds a fold task of this trial picks from")
    # a deep trial: the tensor shards and what every rank needs besides the stage
    tensors: str | None = None
    transfer_model: str | None = None
    class_names: list[str] | None = None
    code: UserCode | None = None  # a user network: the run's copy of its code (its checksums are in the digest)
    ranks: int = 1

    def with_digest(self) -> TrialSpec:
        """The spec with the digest of what its result depends on (not the budget, index or folder paths)."""
        what = self.model_dump(mode="json", exclude={"index", "digest", "epochs", "data"})
        text = json.dumps(what, sort_keys=True, default=str)
        return self.model_copy(update={"digest": hashlib.sha256(text.encode()).hexdigest()[:16]})

    def write(self, path: Path) -> None:
        """Write the spec atomically as JSON."""
        atomic_write_json(path, self.model_dump(mode="json"))

    @classmethod
    def read(cls, path: Path) -> TrialSpec:
        """Read and validate a spec the driver wrote (its user code pinned first: the target stage imports it)."""
        text = path.read_text()
        pin_spec(text)
        return cls.model_validate_json(text)


def trial_dir(trials_dir: str | os.PathLike[str], index: int) -> Path:
    """The folder of trial `index`: <trials>/<NNN>."""
    return Path(trials_dir) / f"{index:03d}"


def read_result(folder: Path, digest: str) -> dict[str, Any] | None:
    """The trial's result.json when it was written for this spec (digest), else None."""
    path = folder / RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError:
        return None
    return result if result.get("digest") == digest else None


def rung_of(result: dict[str, Any] | None, epochs: int | None) -> dict[str, Any] | None:
    """The result at an epoch budget (None: the trial has not finished that budget), a timeout counting as one."""
    if result is None:
        return None
    key = str(epochs)
    if key in result.get("rungs", {}):
        return {**result, "status": "ok", "epochs": epochs, "metric": result["rungs"][key]}
    if result.get("status") == "timeout" and result.get("epochs") == epochs:
        return result
    return None


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _split_blocks(path: str, spec: TrialSpec) -> Any:
    """A written split (a Parquet folder) as local blocks of the trial's inputs, rows in their recorded order."""
    import pyarrow.parquet as pq

    from pipelines.classical import Blocks
    from pipelines.classical.data import extract_inputs_block

    assert spec.inputs is not None
    frame = pq.read_table(path).to_pandas().sort_values(["_source", "_row"], kind="stable")
    block = extract_inputs_block(frame, spec.inputs, spec.features, spec.label)
    y = frame[spec.label].to_numpy() if spec.label else None
    return Blocks.from_arrays(block["x"], y, features=spec.features, label=spec.label)


def classical_metrics(spec: TrialSpec) -> dict[str, float]:
    """Fit the target model on the train split, evaluate it as the model stage does (test split)."""
    from pipelines.classical.stage import ModelStage, evaluate_fit

    stage = spec.target
    assert isinstance(stage, ModelStage)
    train = _split_blocks(spec.data["train"], spec)
    test = _split_blocks(spec.data["test"], spec) if "test" in spec.data else None
    model = stage.estimator()
    t0 = time.perf_counter()
    model.fit(train)
    metrics = {"fit_seconds": time.perf_counter() - t0, "train_rows": train.n_rows}
    metrics.update(evaluate_fit(stage, model, train, test, None))
    return _scalars(metrics)


def fold_metrics(spec: TrialSpec, fold: int) -> dict[str, float]:
    """Fit on the train split less fold `fold` (rows in their recorded order), evaluate on the fold's rows."""
    import numpy as np

    from pipelines.classical import Blocks
    from pipelines.classical.stage import ModelStage, evaluate_fit

    stage = spec.target
    assert isinstance(stage, ModelStage) and spec.cv is not None
    train = _split_blocks(spec.data["train"], spec)
    x = np.concatenate(train.map(lambda block: block["x"]))
    y = np.concatenate(train.map(lambda block: block["y"])) if train.label is not None else None
    fit_rows, held = list(spec.cv.splitter().split(x, y))[fold]

    def part(rows: np.ndarray) -> Blocks:
        labels = None if y is None else (y[rows].astype(np.int64) if train.integer_labels else y[rows])
        return Blocks.from_arrays(x[rows], labels, features=train.features, label=train.label)

    fit_on, score_on = part(fit_rows), part(held)
    model = stage.estimator()
    t0 = time.perf_counter()
    model.fit(fit_on)
    metrics = {"fit_seconds": time.perf_counter() - t0, "train_rows": fit_on.n_rows, "fold": fold}
    metrics.update(evaluate_fit(stage, model, fit_on, score_on, None))
    return _scalars(metrics)


def deep_metrics(spec: TrialSpec, folder: Path) -> dict[str, float]:
    """Train with the deep worker (1 rank in this process, k ranks under horovodrun) up to the budget; its metrics."""
    from pipelines.deep.stage import DeepStage, RankSpec
    from pipelines.launch.horovod import launch_command

    budget = {"plots": False, "tensorboard_every_steps": 0}
    if spec.epochs is not None:
        budget["epochs"] = spec.epochs
    assert spec.tensors is not None
    assert isinstance(spec.target, DeepStage)
    RankSpec(
        stage=spec.target.model_copy(update=budget),
        tensors=spec.tensors,
        checkpoints=str(folder / "checkpoints"),
        out=str(folder / "out"),
        transfer_model=spec.transfer_model,
        class_names=spec.class_names,
        code=spec.code,
    ).write(folder / "worker.json")
    if spec.ranks == 1:  # the one rank trains in this trial's own process: no second interpreter to start
        from pipelines.deep import worker

        worker.main([str(folder / "worker.json")])
    else:
        argv = [sys.executable, "-m", "pipelines.deep.worker", str(folder / "worker.json")]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        subprocess.run(launch_command("horovodrun", spec.ranks, None, argv), check=True, env=env)
    results = json.loads((folder / "out" / "results.json").read_text())
    metrics: dict[str, Any] = {"epochs_run": results["epochs_run"], "train_seconds": results["train_seconds"]}
    history = results.get("history") or [{}]
    metrics.update({f"train_{k}": v for k, v in history[-1].items() if k in ("loss", "accuracy")})
    for split in ("test", "val"):
        metrics.update({f"{split}_{k}": v for k, v in results.get(split, {}).items() if k in ("loss", "accuracy")})
    return _scalars(metrics)


def fold_file(fold: int | str) -> str:
    """The result file of one cross-validation fold (fold-NN.json) or of the final refit (final.json)."""
    return "final.json" if fold == "final" else f"fold-{int(fold):02d}.json"


def read_fold(folder: Path, digest: str, fold: int | str) -> dict[str, Any] | None:
    """A fold's (or the final refit's) result when it was written for this spec, else None."""
    path = folder / fold_file(fold)
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("digest") == digest else None


def run_trial(trials_dir: str, index: int, fold: int | str | None = None) -> dict[str, Any]:
    """Run one trial (or one cv fold of it, or its final refit) from its spec and write its result file."""
    folder = trial_dir(trials_dir, index)
    spec = TrialSpec.read(folder / SPEC)
    t0 = time.perf_counter()
    if fold is not None and fold != "final":
        metrics = fold_metrics(spec, int(fold))
    else:
        metrics = classical_metrics(spec) if spec.target.stage == "model" else deep_metrics(spec, folder)
    name = spec.metric
    if name not in metrics:
        raise SystemExit(f"trial {index:03d}: metric {name!r} not among the results {sorted(metrics)}")
    if fold is not None:
        seconds = round(time.perf_counter() - t0, 3)
        result = {"index": index, "digest": spec.digest, "fold": fold, "metric": metrics[name], "metrics": metrics}
        result.update(status="ok", seconds=seconds, host=socket.gethostname(), epochs=None)
        atomic_write_json(folder / fold_file(fold), result)
        return result
    result = write_result(folder, spec, "ok", time.perf_counter() - t0, metrics[name], metrics, pid=os.getpid())
    return result


def write_result(
    folder: Path,
    spec: TrialSpec,
    status: str,
    seconds: float,
    metric: float | None = None,
    metrics: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write a trial's result.json atomically: its status at this budget, with the rungs reached before kept."""
    rungs = dict((read_result(folder, spec.digest) or {}).get("rungs", {}))
    if status == "ok":
        rungs[str(spec.epochs)] = metric
    result = {
        "index": spec.index,
        "digest": spec.digest,
        "values": spec.values,
        "status": status,
        "epochs": spec.epochs,
        "metric": metric,
        "metrics": metrics or {},
        "seconds": round(seconds, 3),
        "rungs": rungs,
        "host": socket.gethostname(),
        **extra,
    }
    atomic_write_json(folder / RESULT, result)
    return result


class TrialFailed(RuntimeError):
    """A trial's process ended with a non-zero exit code (the engine task raises it, so it is retried)."""


@dataclass(frozen=True)
class TrialItem:
    """What an engine task needs to run one trial: the trials folder, the index and the time limit."""

    trials_dir: str
    index: int
    timeout_s: float
    fold: int | str | None = None  # one cv fold of the trial, or "final" (the best refitted on all train rows)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def run_trial_task(item: TrialItem) -> dict[str, Any]:
    """Engine task: run the trial command in its own process group with a time limit, log each attempt.

    A trial over its limit has its whole process group killed and is recorded as `timeout` (returned, not
    raised: it is not retried); a non-zero exit raises `TrialFailed` with the log's last line.
    """
    folder = trial_dir(item.trials_dir, item.index)
    spec = TrialSpec.read(folder / SPEC)
    tag = "" if item.fold is None else f"{item.fold}-" if item.fold == "final" else f"fold{int(item.fold):02d}-"
    attempt = 1 + len(list(folder.glob(f"{tag}attempt-*.log")))
    log_path = folder / f"{tag}attempt-{attempt}.log"
    command = [sys.executable, "-m", "pipelines.sweep.trial", item.trials_dir, str(item.index)]
    command += [] if item.fold is None else [str(item.fold)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    where = {"host": socket.gethostname(), "worker_pid": os.getpid(), "attempt": attempt}
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=item.timeout_s)
        except BaseException as exc:  # over the limit, or the task itself was cancelled: stop the whole trial
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            out.write(f"stopped: over the trial time limit of {item.timeout_s:g} s\n")
            limit = f"over the time limit of {item.timeout_s:g} s"
            result = write_result(folder, spec, "timeout", time.perf_counter() - t0, error=limit)
            return {**result, **where}
    if rc != 0:
        raise TrialFailed(f"trial {item.index:03d} exited with code {rc}: {_last_line(log_path)}")
    if item.fold is not None:
        found = read_fold(folder, spec.digest, item.fold)
        if found is None:
            raise TrialFailed(f"trial {item.index:03d} fold {item.fold} exited without writing its result")
        return {**found, **where}
    recorded = read_result(folder, spec.digest)
    if recorded is None:
        raise TrialFailed(f"trial {item.index:03d} exited without writing {RESULT}")
    return {**recorded, **where}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m pipelines.sweep.trial TRIALS_DIR INDEX [FOLD|final]", file=sys.stderr)
        return 2
    from pipelines.deep.worker import die_with_parent

    die_with_parent()  # an engine task that starts this dies with its worker: so does the trial
    fold = None if len(args) == 2 else args[2] if args[2] == "final" else int(args[2])
    result = run_trial(args[0], int(args[1]), fold)
    print(f"trial {result['index']:03d}: {result['metric']} at epochs {result['epochs']} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
