"""One Horovod rank: `horovodrun -np N python -m pipelines.deep.worker SPEC.json` (the stage writes SPEC)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.atomic import atomic_write_json
from pipelines.deep.shards import MANIFEST
from pipelines.deep.stage import RankSpec


def _write_outputs(trainer: Any, spec: RankSpec, out: Path, info: dict[str, Any]) -> None:
    """Rank 0: final model, history, test metrics and plots."""
    from pipelines.deep import plots

    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save(out / "model.keras")
    results: dict[str, Any] = {**info, "history": trainer.state["history"]}
    figures = []
    names = spec.class_names or [str(i) for i in range(trainer.shards.classes)]
    for split_name in ("test", "val"):
        split = getattr(trainer, split_name)
        if split is None:
            continue
        ev = _final_evaluation(trainer, split, want_examples=25 if split_name == "test" else 0)
        examples = ev.pop("examples")
        results[split_name] = {k: v for k, v in ev.items() if k != "confusion"}
        if "confusion" in ev:
            results[split_name]["confusion_matrix"] = {"labels": names, "counts": ev["confusion"]}
            if split_name == "test":
                trainer.board.misclassified(examples, names, trainer.state["epoch"])
        if split_name == "test" and trainer.stage.plots:
            if "confusion" in ev:
                figures.append(plots.confusion(out / "confusion.png", np.array(ev["confusion"]), names))
                figures.append(plots.misclassified(out / "misclassified.png", examples, names))
                kernel = plots.first_conv_kernel(trainer.model)
                if kernel is not None:
                    figures.append(plots.filters(out / "filters.png", kernel))
            elif examples:
                figures.append(plots.reconstructions(out / "reconstructions.png", examples))
    if trainer.stage.plots:
        figures.append(plots.curves(out / "curves.png", trainer.state["history"]))
    results["plots"] = figures
    trainer.board.close()
    atomic_write_json(out / "results.json", results)


def _final_evaluation(trainer: Any, split: Any, want_examples: int = 0) -> dict[str, Any]:
    """A split's last evaluation: over the stage's test-time views when it has them, the single view beside."""
    if trainer.stage.test_time_augment is None:
        return trainer.evaluate(split, want_examples)
    ev = trainer.evaluate(split, want_examples, views=True)
    single = trainer.evaluate(split)
    ev.update({f"single_view_{k}": single[k] for k in ("accuracy", "loss") if k in single})
    return ev


def _evaluate_other_ranks(trainer: Any) -> None:
    """Ranks > 0 join rank 0's evaluations (they are collective)."""
    for split_name in ("test", "val"):
        split = getattr(trainer, split_name)
        if split is not None:
            _final_evaluation(trainer, split)


def die_with_parent(interval_s: float = 1.0) -> None:
    """Exit when the process that started this rank (a Spark or Dask task, horovodrun) is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        print(f"rank process {os.getpid()}: its parent {parent} is gone; stopping", file=sys.stderr, flush=True)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def check_shared(spec: RankSpec) -> None:
    """A rank on another node must see the run directory: fail clearly, never train on an empty share."""
    tensors = Path(spec.tensors)
    if not (tensors / MANIFEST).is_file():
        host = socket.gethostname()
        raise SystemExit(
            f"rank on {host} cannot see the tensor shards at {tensors}: runs_dir must be on a file system "
            "shared by the driver and every worker (e.g. a project or scratch directory on an HPC site)"
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    die_with_parent()
    spec = RankSpec.read(args[0])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    check_shared(spec)
    import horovod.tensorflow as hvd

    from pipelines.deep.train import Trainer

    hvd.init()
    stage = spec.stage
    pids = Path(spec.checkpoints) / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank-{hvd.rank()}.pid").write_text(str(os.getpid()))
    t0 = time.perf_counter()
    trainer = Trainer(stage, spec.tensors, spec.checkpoints, spec.transfer_model, hvd, spec.tensorboard)
    place = {"rank": hvd.rank(), "host": socket.gethostname(), "pid": os.getpid(), "ppid": os.getppid()}
    place["device"] = trainer.device
    atomic_write_json(pids / f"rank-{hvd.rank()}.json", place)
    resumed = trainer.restore()
    if hvd.rank() == 0:
        where = f"resuming after epoch {resumed}" if resumed is not None else "starting"
        print(
            f"{stage.output_name}: {where}; {hvd.size()} rank(s) on {trainer.device}, {trainer.train.rows} train rows, "
            f"{trainer.steps} steps/epoch, global batch {stage.batch_size * hvd.size()}",
            flush=True,
        )
    profile = trainer.time_steps(stage.profile_steps) if stage.profile_steps else None
    state = trainer.fit(log=lambda line: print(line, flush=True))
    info = {
        "model": stage.model,
        "ranks": hvd.size(),
        "device": trainer.device,
        "params": int(trainer.model.count_params()),
        "train_rows": trainer.train.rows,
        "steps_per_epoch": trainer.steps,
        "global_batch": stage.batch_size * hvd.size(),
        "epochs_run": state["epoch"],
        "resumed_from": state.get("resumed_from"),
        "best_epoch": state.get("best_epoch"),
        "train_seconds": round(time.perf_counter() - t0, 3),
    }
    info["rank_weight_max_abs_diff"] = trainer.weight_divergence()
    if profile is not None:
        info["step_seconds"] = profile
        info["allreduce_share"] = max(0.0, 1.0 - profile["local"] / profile["distributed"])
    if hvd.rank() == 0:
        _write_outputs(trainer, spec, Path(spec.out), info)
    else:
        _evaluate_other_ranks(trainer)
    hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
