"""One epoch of the Fashion-MNIST CNN with one rank per GPU, through each launcher (run by gpu_check.sh).

horovodrun: the ranks spawned by horovodrun on this host (Dask LocalCluster for the ingest). dask: a scheduler
and one worker per GPU started here (`--resources GPU=1`, CUDA_VISIBLE_DEVICES set per worker), ranks as pinned
worker tasks with `gpus_per_rank: 1`. spark: a standalone master and one worker offering every GPU (Spark's
own GPU discovery script), spark-submit, ranks as one barrier stage with `gpus_per_rank: 1`. Printed per
launcher: images/s (the epoch's samples_per_s), peak GPU memory (nvidia-smi sampled every 0.5 s), test accuracy.

    python -m benchmarks.deep.gpu_check [--launchers horovodrun,dask,spark] [--epochs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def gpu_count() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return len(out.stdout.split())


@contextlib.contextmanager
def peak_gpu_memory() -> Iterator[list[int]]:
    """Sample the summed used GPU memory (MiB) every 0.5 s while the block runs; yields [peak]."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout.split()
            peak[0] = max(peak[0], sum(int(x) for x in out if x.isdigit()))
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(5)


def config(folder: Path, launcher: str, ranks: int, epochs: int, engine: dict) -> Path:
    conf = yaml.safe_load((ROOT / "conf" / "fashion_cnn.yaml").read_text())
    conf["runs_dir"] = str(folder / "runs")
    conf["engine"] = {**conf["engine"], **engine}
    deep = conf["stages"][1]
    deep.update(epochs=epochs, ranks=ranks, launcher=launcher, warmup_epochs=0, mixed_precision=False)
    deep.pop("test_time_augment", None)
    if launcher != "horovodrun":
        deep["gpus_per_rank"] = 1
    path = folder / f"{launcher}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or dict(os.environ))


def wait_for(log: Path, text: str, count: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in {log}")
        time.sleep(0.5)


def run(launcher: str, folder: Path, gpus: int, epochs: int) -> dict:
    procs: list[subprocess.Popen] = []
    try:
        argv = [PY, "-m", "pipelines", "run"]
        if launcher == "horovodrun":
            conf = config(folder, launcher, gpus, epochs, {"kind": "dask"})
        elif launcher == "dask":
            procs.append(start([PY, "-m", "distributed.cli.dask_scheduler", "--port", "8796"], folder / "sched.log"))
            wait_for(folder / "sched.log", "Scheduler at:")
            for i in range(gpus):
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(i)}
                worker = [PY, "-m", "distributed.cli.dask_worker", "tcp://127.0.0.1:8796", "--nthreads", "1"]
                procs.append(start([*worker, "--resources", "GPU=1", "--name", f"gpu{i}"], folder / f"w{i}.log", env))
            wait_for(folder / "sched.log", "Register worker", gpus)
            conf = config(
                folder, launcher, gpus, epochs, {"kind": "dask", "dask": {"scheduler": "tcp://127.0.0.1:8796"}}
            )
        else:
            import pyspark

            home = Path(pyspark.__file__).parent
            env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": PY, "SPARK_LOCAL_IP": "127.0.0.1"}
            cls = str(home / "bin" / "spark-class")
            procs.append(
                start(
                    [cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "7097"],
                    folder / "master.log",
                    env,
                )
            )
            discovery = home / "examples" / "src" / "main" / "scripts" / "getGpusResources.sh"
            if not discovery.exists():
                discovery = folder / "gpus.sh"
                discovery.write_text(
                    "#!/bin/bash\nADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e ':a' -e 'N' "
                    '-e\'$!ba\' -e \'s/\\n/","/g\')\necho {\\"name\\": \\"gpu\\", \\"addresses\\":[\\"$ADDRS\\"]}\n'
                )
                discovery.chmod(0o755)
            wenv = {
                **env,
                "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount={gpus} "
                f"-Dspark.worker.resource.gpu.discoveryScript={discovery}",
            }
            procs.append(
                start(
                    [cls, "org.apache.spark.deploy.worker.Worker", "--cores", str(gpus), "spark://127.0.0.1:7097"],
                    folder / "worker.log",
                    wenv,
                )
            )
            wait_for(folder / "master.log", "Registering worker")
            conf = config(folder, launcher, gpus, epochs, {"kind": "spark"})
            argv = [str(home / "bin" / "spark-submit"), "--master", "spark://127.0.0.1:7097"]
            argv += [
                "--conf",
                f"spark.executor.resource.gpu.amount={gpus}",
                "--conf",
                "spark.task.resource.gpu.amount=1",
            ]
            argv += ["--conf", f"spark.executor.resource.gpu.discoveryScript={discovery}"]
            argv += ["--executor-cores", str(gpus), str(ROOT / "pipelines" / "__main__.py"), "run"]
        t0 = time.perf_counter()
        with peak_gpu_memory() as peak:
            done = subprocess.run([*argv, str(conf)], capture_output=True, text=True)
        if done.returncode != 0:
            return {"launcher": launcher, "error": (done.stdout + done.stderr)[-1500:]}
        run_dir = (folder / "runs" / "fashion-cnn" / "latest").resolve()
        res = json.loads((run_dir / "deep" / "fashion_cnn" / "results.json").read_text())
        return {
            "launcher": launcher,
            "ranks": gpus,
            "images_per_s": round(res["history"][-1]["samples_per_s"], 1),
            "peak_gpu_mib": peak[0],
            "test_accuracy": round(res.get("test_accuracy", float("nan")), 4),
            "devices": sorted({p.get("device", "?") for p in res.get("placement", [])}),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launchers", default="horovodrun,dask,spark")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    gpus = gpu_count()
    if not gpus:
        raise SystemExit("no GPU: nvidia-smi lists none")
    print(f"{gpus} GPU(s); one rank per GPU; Fashion-MNIST CNN, {args.epochs} epoch(s)")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for launcher in args.launchers.split(","):
            folder = Path(tmp) / launcher
            folder.mkdir()
            print(json.dumps(run(launcher, folder, gpus, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
