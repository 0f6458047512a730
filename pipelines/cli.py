"""Command line: `pipelines run|train|submit|schedule|validate|demo|generate|check|report`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.text import Text

from pipelines import __version__
from pipelines.config import PipelineConfig, load_config, parse_config
from pipelines.console import Terminal, console
from pipelines.errors import ConfigError, EnvironmentProblem, PipelineError, UsageError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _setup_logging(verbose: bool) -> Terminal:
    """Quiet by default: stage progress and our warnings on the terminal; engine logs in files; -v shows more."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")  # before TensorFlow is imported
    return Terminal(verbose)


def _engines(value: str | None) -> list[str] | None:
    """`--engine spark,dask` as a list (None: each config's own engine.kind)."""
    if not value:
        return None
    engines = value.split(",")
    bad = [e for e in engines if e not in ("spark", "dask")]
    if bad:
        raise UsageError(f"--engine: unknown engine(s) {bad}; use spark, dask or spark,dask")
    return engines


def _resume_and_configs(args: argparse.Namespace) -> tuple[list[str], bool | str]:
    """One `--resume` meaning for run and train: with no value the newest unfinished run of each config's
    pipeline; with a run directory that run (its recorded config unless a CONFIG is given)."""
    paths = list(args.config or [])
    resume = args.resume
    if isinstance(resume, str) and Path(resume).is_file():  # `--resume conf.yaml`: the value is a config
        paths.append(resume)
        resume = True
    if isinstance(resume, str) and not paths:
        paths = [str(Path(resume) / "config.yaml")]
    if not paths:
        raise UsageError(f"{args.command}: give a CONFIG, or --resume RUN_DIR")
    if isinstance(resume, str) and len(paths) > 1:
        raise UsageError("--resume RUN_DIR continues one run: give at most one CONFIG with it")
    return paths, resume


def _run(args: argparse.Namespace, configs: list[PipelineConfig], resume: bool | str) -> int:
    from pipelines.api import run_all
    from pipelines.console import end_progress, print_summaries

    runs = run_all(configs, _engines(args.engine), resume, args.wait, getattr(args, "force", False))
    end_progress()
    done = []
    for run in runs:
        assert run.config is not None and run.result is not None  # run_all returns runs it ran, never from disk
        done.append((run.config, run.result))
    for config, out in done:
        console.print(f"[green]done[/] {config.name} on {config.engine.kind}: {out.run.dir}")
    print_summaries(done)
    for _, out in done:
        report = out.run.dir / "report.html"
        if report.is_file():
            console.print(f"report: {os.path.relpath(report)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    paths, resume = _resume_and_configs(args)
    return _run(args, [load_config(path, args.set) for path in paths], resume)


def cmd_train(args: argparse.Namespace) -> int:
    if args.config:
        args.config = [args.config]
    paths, resume = _resume_and_configs(args)
    from pipelines.api import with_ranks

    config = with_ranks(load_config(paths[0], args.set), args.ranks, args.hosts)
    return _run(args, [config], resume)


def cmd_submit(args: argparse.Namespace) -> int:
    import json

    from pipelines.config import dump_config
    from pipelines.launch.batch import submit

    config = load_config(args.config, args.set)
    if args.mode:
        config.batch.mode = args.mode
    config.runs_dir = str(Path.cwd().resolve() / config.runs_dir)  # the job may start elsewhere: pin its runs
    if args.array:  # a driver job whose sweeps submit their trials as one job array (docs/ARRAYS.md)
        from pipelines.launch.array import submit_driver

        sweeps = [f"stages.{i}.executor={args.scheduler}" for i, s in enumerate(config.stages) if s.stage == "sweep"]
        if not sweeps:
            raise UsageError(f"--array: pipeline {config.name!r} has no sweep stage")
        script, job, jobdir = submit_driver(
            config.batch,
            config.name,
            config.runs_dir,
            dump_config(config),
            args.scheduler,
            sweeps,
            resume=args.resume,
            dry_run=args.dry_run,
        )
    elif args.resume:
        raise UsageError("submit --resume: only with --array (a plain job resumes with `pipelines run --resume`)")
    else:
        script, job, jobdir = submit(
            config.batch, config.name, config.runs_dir, dump_config(config), args.scheduler, args.dry_run
        )
    if args.dry_run:
        print(script)
        return 0
    print(json.dumps({"job_id": job, "job_dir": str(jobdir), "scheduler": args.scheduler}))
    console.print(f"[green]submitted[/] job {job} ({args.scheduler}); script and config in {jobdir}")
    return 0


def cmd_notebook(args: argparse.Namespace) -> int:
    from pipelines.launch.config import BatchSettings
    from pipelines.launch.notebook import notebook_cluster, submit_notebook

    flags = {"jobs": args.dask_jobs, "cores": args.dask_cores, "memory": args.dask_memory, "gpus": args.dask_gpus}
    if not args.dask and any(v is not None for v in flags.values()):
        raise UsageError("--dask-jobs, --dask-cores, --dask-memory and --dask-gpus need --dask")
    config = load_config(args.config, args.set) if args.config else None
    batch = config.batch if config else BatchSettings()
    given = {"walltime": args.walltime, "partition": args.partition, "account": args.account}
    given |= {"gpus_per_node": args.gpus, "cpus_per_task": args.cpus, "memory": args.memory}
    batch = batch.model_copy(update={k: v for k, v in given.items() if v is not None})
    dask = None
    if args.dask:
        section, network = (config.engine.dask.jobqueue, config.engine.network) if config else (None, None)
        dask = notebook_cluster(args.scheduler, batch, section, network.interface if network else None, flags)
    notebook = submit_notebook(batch, args.scheduler, Path(args.jobs_dir), timeout=args.timeout, dask=dask)
    print(notebook.tunnel(args.login))
    print(notebook.url)
    if notebook.dashboard_url:
        print(notebook.dashboard_url)
    console.print(f"[green]JupyterLab[/] in job {notebook.job} on {notebook.host}; cancel it to stop the server")
    if notebook.dask_address:
        console.print(
            f"[green]Dask[/] cluster at {notebook.dask_address} (its worker jobs end with the notebook's job); in the "
            'notebook: eng = pipelines.engine("dask")  # finds it through PIPELINES_DASK_SCHEDULER_FILE'
        )
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
    from pipelines.plan import check_plan

    failed = 0
    for path in args.config:
        try:
            config = load_config(path, args.set)
        except ConfigError as exc:
            console.print(Text.assemble(("invalid ", "bold red"), str(exc)), soft_wrap=True)
            failed += 1
            continue
        problems = check_plan(config)
        if problems:
            failed += 1
            lines = "\n".join(f"  - {p}" for p in problems)
            console.print(Text.assemble(("invalid ", "bold red"), f"{path}: pipeline plan:\n{lines}"), soft_wrap=True)
            continue
        console.print(
            f"[green]ok[/] {path}: pipeline {config.name!r}, engine {config.engine.kind}, "
            f"stages {[s.output_name for s in config.stages]}"
        )
    return 2 if failed else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from pipelines.ingest.stage import IngestStage, inspect_table, schema_snippet

    config = load_config(args.config, args.set)
    ingest = next((s for s in config.stages if isinstance(s, IngestStage)), None)  # its filter/derive read columns
    plan = inspect_table(config.dataset, ingest.filter if ingest else None, ingest.derive if ingest else None)
    print(f"# {config.dataset.name}: column types from the data; paste under `dataset:` to declare them")
    print(schema_snippet(plan), end="")
    return 0


def default_configs() -> tuple[list[Path], Path]:
    """The default job: bundled images (Fashion-MNIST, else digits) and a bundled table, then the demo network."""
    from pipelines.data.bundled import FASHION_HOW_TO, fashion_mnist_available

    images = CONF_DIR / "fashion_mnist.yaml"
    if not fashion_mnist_available():
        console.print(f"[yellow]Fashion-MNIST not installed; using digits instead.[/] {FASHION_HOW_TO}")
        images = CONF_DIR / "digits.yaml"
    return [images, CONF_DIR / "fair.yaml"], CONF_DIR / "demo_cnn.yaml"


def demo_network(path: Path, images: Path, overrides: list[str]) -> PipelineConfig:
    """The demo's CNN config on the same bundled images as the image pipeline (digits where that is the fallback)."""
    data = load_config(path, overrides).model_dump(mode="json")
    data["dataset"] = load_config(images).dataset.model_dump(mode="json")
    return parse_config(data, str(path))


def cmd_demo(args: argparse.Namespace) -> int:
    """Tables and images ingested and modelled on each engine, then a 2-rank Horovod CNN on the bundled images."""
    tables, network = default_configs()
    configs = [load_config(p, args.set) for p in tables]
    status = _run(args, configs, False)
    cnn = demo_network(network, tables[0], args.set)
    args.engine = None  # the network trains once, on its config's engine
    return status or _run(args, [cnn], False)


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


def cmd_runs(args: argparse.Namespace) -> int:
    from pipelines.api import run_records
    from pipelines.console import compare_tables, print_wide, runs_table
    from pipelines.runs.history import find_run

    if args.compare:
        a, b = (find_run(args.runs_dir, name) for name in args.compare)
        print_wide(*compare_tables(a, b))
        return 0
    print_wide(runs_table(run_records(args.runs_dir, args.pipeline)[: args.limit]))
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
        from pipelines.engines.quiet import engine_log_dir, stderr_to

        with stderr_to(engine_log_dir() / "tensorflow-import.log"):  # TF's C++ notices ignore TF_CPP_MIN_LOG_LEVEL
            import horovod
            import horovod.tensorflow  # noqa: F401

        console.print(f"horovod: {horovod.__version__} with TensorFlow (ok)")
    except Exception as exc:  # report any import failure, not just ImportError (e.g. ABI mismatch)
        ok = False
        console.print(f"[red]horovod:[/] not importable ({exc}); run `make setup`")
    console.print(f"fashion-mnist: {'installed' if fashion_mnist_available() else 'missing (digits fallback)'}")
    return 0 if ok else EnvironmentProblem.exit_code  # something the machine lacks (errors.py)


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report import build_report

    print(build_report(args.run_dir))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from pipelines.api import predict

    out = predict(
        args.run_dir,
        args.stage,
        args.data,
        args.out,
        _engine(args.engine),
        labels=args.labels,
        partitions=args.partitions,
    )
    summary = json.loads((out / "summary.json").read_text())
    print(json.dumps(summary, indent=2))
    console.print(
        f"[green]scored[/] {summary['scored']:,} of {summary['read']:,} rows ({summary['rejected']:,} rejected) "
        f"into {args.out}"
    )
    return 0


def _engine(value: str | None) -> str | None:
    """`--engine` of predict: one engine (default: the run's)."""
    if value not in (None, "spark", "dask"):
        raise UsageError(f"--engine: unknown engine {value!r}; use spark or dask")
    return value


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

    def with_resume(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=False,
            metavar="RUN_DIR",
            help="continue the newest unfinished run of the pipeline, or RUN_DIR: finished stages are restored, "
            "the rest run (deep stages from their checkpoints)",
        )
        p.add_argument("--force", action="store_true", help="with --resume: rerun stages whose config changed")
        p.add_argument("--wait", action="store_true", help="wait for a running run of the same pipeline to end")
        with_overrides(p)

    p = sub.add_parser("run", help="run pipeline config(s)")
    p.add_argument("config", nargs="*")
    p.add_argument("--engine", help="spark, dask or spark,dask (default: each config's engine.kind)")
    with_resume(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("train", help="run a pipeline whose deep stages train with N Horovod ranks; or resume one")
    p.add_argument("config", nargs="?")
    p.add_argument("--np", type=int, dest="ranks", help="Horovod ranks for every deep stage (default: its 'ranks')")
    p.add_argument("--engine", help="spark or dask for the ingest and hand-off")
    p.add_argument("--hosts", help="horovodrun host list for every deep stage, e.g. node1:4,node2:4")
    with_resume(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("submit", help="render a batch script from the config's `batch` section and submit it")
    p.add_argument("config")
    p.add_argument("--scheduler", choices=["slurm", "pbs"], default="slurm")
    p.add_argument("--mode", choices=["spark", "dask", "horovod", "local"], help="override batch.mode")
    p.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")
    p.add_argument("--array", action="store_true", help="run every sweep stage's trials as one job array")
    p.add_argument("--resume", action="store_true", help="with --array: the job continues the unfinished run")
    with_overrides(p)
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("notebook", help="start JupyterLab in a SLURM/PBS job and print the ssh tunnel and URL")
    p.add_argument("config", nargs="?", help="a pipeline config whose `batch` section gives the job's resources")
    p.add_argument("--scheduler", choices=["slurm", "pbs"], default="slurm")
    p.add_argument("--walltime", help="e.g. 02:00:00")
    p.add_argument("--partition", help="SLURM partition or PBS queue")
    p.add_argument("--account", help="allocation to charge")
    p.add_argument("--gpus", type=int, help="GPUs on the node")
    p.add_argument("--cpus", type=int, help="CPU cores for the notebook")
    p.add_argument("--memory", help="e.g. 16G")
    p.add_argument("--login", help="the login host in the ssh line (default: this host's name)")
    p.add_argument("--jobs-dir", default="runs", help="where the job folder goes (default: ./runs)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server (default 600)")
    p.add_argument("--dask", action="store_true", help="also start a dask-jobqueue cluster for the notebook")
    p.add_argument("--dask-jobs", type=int, help="worker jobs (default: the config's jobqueue section, else 1)")
    p.add_argument("--dask-cores", type=int, help="cores per worker job")
    p.add_argument("--dask-memory", help="memory per worker job, e.g. 16GB")
    p.add_argument("--dask-gpus", type=int, help="GPUs per worker job")
    with_overrides(p)
    p.set_defaults(fn=cmd_notebook)

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

    p = sub.add_parser("schema", help="print the dataset's column types inferred from its files, as YAML to paste")
    p.add_argument("config")
    with_overrides(p)
    p.set_defaults(fn=cmd_schema)

    p = sub.add_parser("demo", help="the default job: bundled image and table data on Spark and Dask")
    p.add_argument("--engine", default="spark,dask")
    with_overrides(p)
    p.set_defaults(fn=cmd_demo, wait=False)

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

    p = sub.add_parser("predict", help="score new data with a finished run's saved model (or network)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--stage", required=True, help="the model or deep stage's name in the run")
    p.add_argument("--data", required=True, help="files in the run's format (path, folder, glob) or a YAML config")
    p.add_argument("--labels", help="IDX images: their labels file (optional)")
    p.add_argument("--engine", help="spark or dask (default: the run's engine)")
    p.add_argument("--partitions", type=int, help="partitions of the new data (default: the run's)")
    p.add_argument("--out", required=True, help="output folder: predictions/, quarantine.csv, summary.json")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("check", help="check Java, Horovod and bundled data")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("runs", help="list earlier runs (newest first), or compare two with --compare A B")
    p.add_argument("pipeline", nargs="?", help="only this pipeline's runs")
    p.add_argument("--runs-dir", default="runs", help="the runs folder (default: ./runs)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two run directories or run ids: their differences")
    p.add_argument("--limit", type=int, default=20, help="show at most this many runs (default 20)")
    p.set_defaults(fn=cmd_runs)

    p = sub.add_parser("report", help="(re)build a run directory's report.html and print its path")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error ends it as one line with an exit code by kind (pipelines.errors), traceback logged."""
    args = build_parser().parse_args(argv)
    terminal = _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except (Exception, KeyboardInterrupt) as exc:
        return terminal.fail(exc)
    finally:
        terminal.close()


if __name__ == "__main__":
    sys.exit(main())
