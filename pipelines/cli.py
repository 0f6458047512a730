"""Command line: `pipelines run|train|submit|schedule|validate|demo|generate|check`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from pipelines import __version__
from pipelines.config import PipelineConfig, load_config
from pipelines.errors import PipelineError

console = Console(stderr=True)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=console, show_path=False, show_time=True, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("pipelines").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("py4j", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def summary_table(rows: list[dict[str, Any]]) -> Table:
    """One line per (pipeline, engine): counts, partitions, split sizes, time, run directory."""
    table = Table(title="ingest summary", header_style="bold")
    for name in (
        "pipeline",
        "engine",
        "read",
        "accepted",
        "rejected",
        "partitions",
        "rows/partition",
        "train",
        "val",
        "test",
        "seconds",
        "run",
    ):
        table.add_column(name, justify="right" if name not in ("pipeline", "engine", "run") else "left")
    for r in rows:
        sizes = r.get("partition_rows", [0])
        table.add_row(
            r["pipeline"],
            r["engine"],
            f"{r['read']:,}",
            f"{r['accepted']:,}",
            f"{r['rejected']:,}",
            str(r["partitions"]),
            f"{min(sizes):,}-{max(sizes):,}",
            f"{r['splits']['train']:,}",
            f"{r['splits']['val']:,}",
            f"{r['splits']['test']:,}",
            f"{r['seconds']:.1f}",
            r["run"],
        )
    return table


def model_table(rows: list[dict[str, Any]]) -> Table:
    """One line per fitted model: rows, fit time, headline metrics, where its files are."""
    table = Table(title="model summary", header_style="bold")
    for name in ("pipeline", "engine", "stage", "model", "train rows", "fit s", "metrics", "files"):
        table.add_column(name, justify="right" if name in ("train rows", "fit s") else "left")
    for r in rows:
        facts = {k: v for k, v in r["facts"].items() if k not in ("model", "train_rows", "fit_seconds")}
        text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items())
        table.add_row(
            r["pipeline"],
            r["engine"],
            r["stage"],
            r["facts"].get("model", ""),
            f"{r['facts'].get('train_rows', 0):,}",
            f"{r['facts'].get('fit_seconds', 0):.2f}",
            text,
            r["files"],
        )
    return table


def _run_one(config: PipelineConfig, engine: Any, resume: str | bool, wait: bool) -> tuple[Any, dict[str, Any]]:
    """One pipeline run under its lock: new, or resuming a given (or the newest unfinished) run directory."""
    from pipelines.pipeline import run_pipeline
    from pipelines.resume import find_resumable
    from pipelines.runs import Run
    from pipelines.schedule import pipeline_lock

    with pipeline_lock(Path(config.runs_dir), config.name, wait=wait):
        earlier = Path(resume) if isinstance(resume, str) else find_resumable(config.runs_dir, config.name)
        if resume and earlier is not None:
            try:
                run = Run.reopen(earlier)
            except FileNotFoundError as exc:
                raise PipelineError(str(exc)) from None
            console.print(f"resuming {run.dir}")
            return run_pipeline(config, engine=engine, run=run)
        if isinstance(resume, str):
            raise PipelineError(f"--resume {resume}: no such run directory")
        return run_pipeline(config, engine=engine)


def _run_many(
    configs: list[PipelineConfig], engines: list[str], resume: str | bool = False, wait: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run each config on each engine, reusing one started engine per kind."""
    from pipelines.engines import make_engine

    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for kind in engines:
        first = configs[0].model_copy(deep=True)
        first.engine.kind = kind  # type: ignore[assignment]
        with make_engine(first.engine) as engine:
            for config in configs:
                config = config.model_copy(deep=True)
                config.engine.kind = kind  # type: ignore[assignment]
                t0 = time.perf_counter()
                run, state = _run_one(config, engine, resume, wait)
                ingest = state.get("ingest")
                if ingest is not None:
                    rows.append(
                        {
                            **ingest.summary(),
                            "pipeline": config.name,
                            "seconds": time.perf_counter() - t0,
                            "run": os.path.relpath(run.dir),
                        }
                    )
                fitted = [("models", n, r) for n, r in state.get("models", {}).items()]
                fitted += [("deep", n, r) for n, r in state.get("deep", {}).items()]
                for folder, name, result in fitted:
                    files = os.path.relpath(run.dir / folder / name)
                    models.append(
                        {
                            "pipeline": config.name,
                            "engine": kind,
                            "stage": name,
                            "facts": result.summary(),
                            "files": files,
                        }
                    )
                console.print(f"[green]done[/] {config.name} on {kind}: {run.dir}")
    return rows, models


def _engines(args: argparse.Namespace, config: PipelineConfig) -> list[str]:
    engines = args.engine.split(",") if args.engine else [config.engine.kind]
    bad = [e for e in engines if e not in ("spark", "dask")]
    if bad:
        raise PipelineError(f"--engine: unknown engine(s) {bad}; use spark, dask or spark,dask")
    return engines


def _print_tables(rows: list[dict[str, Any]], models: list[dict[str, Any]]) -> None:
    wide = Console(width=max(Console().width, 150))
    if rows:
        wide.print(summary_table(rows))
    if models:
        wide.print(model_table(models))


def cmd_run(args: argparse.Namespace) -> int:
    configs = [load_config(path, args.set) for path in args.config]
    _print_tables(*_run_many(configs, _engines(args, configs[0]), args.resume, args.wait))
    return 0


def _set_ranks(config: PipelineConfig, ranks: int | None, hosts: str | None) -> PipelineConfig:
    deep = [s for s in config.stages if s.stage == "deep"]
    if not deep:
        raise PipelineError(f"pipeline {config.name!r} has no deep stage to train")
    for stage in deep:
        if ranks:
            stage.ranks = ranks  # type: ignore[union-attr]
        if hosts:
            stage.hosts = hosts  # type: ignore[union-attr]
    return PipelineConfig.model_validate(config.model_dump())  # re-check the changed values


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        from pipelines.config import load_config as load

        config = _set_ranks(load(Path(args.resume) / "config.yaml"), args.ranks, args.hosts)
        resume: str | bool = args.resume
    elif args.config:
        config = _set_ranks(load_config(args.config, args.set), args.ranks, args.hosts)
        resume = False
    else:
        raise PipelineError("train: give a CONFIG, or --resume RUN_DIR")
    _print_tables(*_run_many([config], _engines(args, config), resume, args.wait))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import json

    from pipelines.config import dump_config
    from pipelines.launch.batch import submit

    config = load_config(args.config, args.set)
    if args.mode:
        config.batch.mode = args.mode
    config.runs_dir = str(Path.cwd().resolve() / config.runs_dir)  # the job may start elsewhere: pin its runs
    script, job, jobdir = submit(
        config.batch, config.name, config.runs_dir, dump_config(config), args.scheduler, args.dry_run
    )
    if args.dry_run:
        print(script)
        return 0
    print(json.dumps({"job_id": job, "job_dir": str(jobdir), "scheduler": args.scheduler}))
    console.print(f"[green]submitted[/] job {job} ({args.scheduler}); script and config in {jobdir}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from pipelines.launch.cron import cron_line, install

    config = load_config(args.config, args.set)
    conf = Path(args.config).resolve()
    log_file = Path(config.runs_dir).resolve() / config.name / "scheduled.log"
    line = cron_line(args.cron, conf, Path.cwd(), log_file)
    if args.dry_run:
        print(line)
        return 0
    log_file.parent.mkdir(parents=True, exist_ok=True)
    directives = [f"--time={config.batch.walltime}"] if args.scrontab else None
    crontab_file = Path(args.crontab_file) if args.crontab_file else None
    install(line, args.scrontab, directives, crontab_file)
    where = crontab_file or ("scrontab" if args.scrontab else "crontab")
    console.print(f"[green]scheduled[/] {config.name} in {where}: {line}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    for path in args.config:
        config = load_config(path, args.set)
        console.print(
            f"[green]ok[/] {path}: pipeline {config.name!r}, engine {config.engine.kind}, "
            f"stages {[s.stage for s in config.stages]}"
        )
    return 0


def default_configs() -> list[Path]:
    """The default job: bundled image data (Fashion-MNIST, else digits) and a bundled table."""
    from pipelines.data.bundled import FASHION_HOW_TO, fashion_mnist_available

    images = CONF_DIR / "fashion_mnist.yaml"
    if not fashion_mnist_available():
        console.print(f"[yellow]Fashion-MNIST not installed; using digits instead.[/] {FASHION_HOW_TO}")
        images = CONF_DIR / "digits.yaml"
    return [images, CONF_DIR / "fair.yaml"]


def cmd_demo(args: argparse.Namespace) -> int:
    args.config = [str(p) for p in default_configs()]
    return cmd_run(args)


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.data.synthetic import generate

    out = generate(
        args.out,
        kind=args.kind,
        rows=args.rows,
        features=args.features,
        parts=args.parts,
        seed=args.seed,
        classes=args.classes,
        fmt=args.format,
    )
    console.print(f"[green]wrote[/] {args.rows:,} rows x {args.features} features in {args.parts} parts to {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pipelines.data.bundled import fashion_mnist_available

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipelines.javacheck import require_java

    ok = True
    try:
        console.print(f"java: {require_java()} (ok)")
    except PipelineError as exc:
        ok = False
        console.print(f"[red]java:[/] {exc}")
    try:
        import horovod
        import horovod.tensorflow  # noqa: F401

        console.print(f"horovod: {horovod.__version__} with TensorFlow (ok)")
    except Exception as exc:  # report any import failure, not just ImportError (e.g. ABI mismatch)
        ok = False
        console.print(f"[red]horovod:[/] not importable ({exc}); run `make setup`")
    console.print(f"fashion-mnist: {'installed' if fashion_mnist_available() else 'missing (digits fallback)'}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipelines", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pipelines {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            "-s",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value by dotted path, e.g. engine.partitions=8 (repeatable)",
        )

    p = sub.add_parser("run", help="run pipeline config(s)")
    p.add_argument("config", nargs="+")
    p.add_argument("--engine", help="spark, dask or spark,dask (default: the config's engine.kind)")
    p.add_argument("--resume", action="store_true", help="continue the newest unfinished run of the pipeline")
    p.add_argument("--wait", action="store_true", help="wait for a running run of the same pipeline to end")
    with_overrides(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("train", help="run a pipeline whose deep stages train with N Horovod ranks; or resume one")
    p.add_argument("config", nargs="?")
    p.add_argument("--np", type=int, dest="ranks", help="Horovod ranks for every deep stage (default: its 'ranks')")
    p.add_argument("--engine", help="spark or dask for the ingest and hand-off")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run's unfinished stages (deep: from checkpoints)")
    p.add_argument("--hosts", help="horovodrun host list for every deep stage, e.g. node1:4,node2:4")
    p.add_argument("--wait", action="store_true", help="wait for a running run of the same pipeline to end")
    with_overrides(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("submit", help="render a batch script from the config's `batch` section and submit it")
    p.add_argument("config")
    p.add_argument("--scheduler", choices=["slurm", "pbs"], default="slurm")
    p.add_argument("--mode", choices=["spark", "dask", "horovod", "local"], help="override batch.mode")
    p.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")
    with_overrides(p)
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("schedule", help="run a pipeline on a cron schedule (crontab or SLURM scrontab)")
    p.add_argument("config")
    p.add_argument("--cron", required=True, help="five cron fields, e.g. '0 2 * * *'")
    p.add_argument("--scrontab", action="store_true", help="install in SLURM's scrontab instead of crontab")
    p.add_argument(
        "--crontab-file", metavar="FILE", help="write the entry into this file instead (one line per pipeline)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the entry instead of installing it")
    with_overrides(p)
    p.set_defaults(fn=cmd_schedule)

    p = sub.add_parser("validate", help="check config(s) without running them")
    p.add_argument("config", nargs="+")
    with_overrides(p)
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("demo", help="the default job: bundled image and table data on Spark and Dask")
    p.add_argument("--engine", default="spark,dask")
    with_overrides(p)
    p.set_defaults(fn=cmd_demo, resume=False, wait=False)

    p = sub.add_parser("generate", help="write synthetic data as partitioned Parquet (or CSV)")
    p.add_argument("out")
    p.add_argument("--kind", choices=["classification", "regression", "blobs"], default="classification")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--parts", type=int, default=8)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("check", help="check Java, Horovod and bundled data")
    p.set_defaults(fn=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except PipelineError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
