"""Run a configured pipeline: a checked plan, one run session, its stages in order through the protocol."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from pipelines.config import PipelineConfig, dump_config
from pipelines.engines import make_engine
from pipelines.engines.base import Engine
from pipelines.errors import ConfigError, EnvironmentProblem
from pipelines.launch.batch import job_facts
from pipelines.plan import require_valid_plan
from pipelines.protocol import NotRestorable, StageContext, StageResult
from pipelines.report import build_report
from pipelines.runs import Run, config_diff, corrupt_outputs, run_session
from pipelines.tracking import track_run

log = logging.getLogger(__name__)

# Config keys that say where a run goes or how it is launched, never what it computes.
PLACEMENT_KEYS = ("runs_dir", "keep_runs", "batch", "engine.spark", "engine.dask", "tracking")


class PipelineResult(NamedTuple):
    """A finished run and the typed results of its stages, by output name in stage order."""

    run: Run
    results: dict[str, StageResult]


def first_changed_stage(config: PipelineConfig, run: Run, force: bool) -> int:
    """Index of the first stage whose config differs from what the run recorded (len(stages) if none).

    A changed key outside the stages (dataset, engine kind or partitions) changes every stage; an added or
    removed stage changes the stages from there on; placement keys (where and how fast, not what) may
    differ. Without `force` any other change is refused, naming the keys that differ.
    """
    recorded = run.recorded_config()
    given = config.model_dump(mode="json")
    old_stages, new_stages = recorded.pop("stages", []), given.pop("stages")
    changed: list[tuple[int, str]] = [(0, f"{p}: {a!r} -> {b!r}") for p, a, b in config_diff(recorded, given)]
    changed = [c for c in changed if not c[1].startswith(PLACEMENT_KEYS)]
    for index, stage in enumerate(config.stages):
        if index >= len(old_stages):
            changed.append((index, f"stages[{index}]: added"))
            continue
        for path, a, b in config_diff(old_stages[index], new_stages[index]):
            if path.split(".")[0].split("[")[0] not in type(stage).placement_fields:
                changed.append((index, f"stages[{index}].{path}: {a!r} -> {b!r}"))
    if len(old_stages) > len(config.stages):
        changed.append((len(config.stages), f"stages[{len(config.stages)}:]: removed"))
    if changed and not force:
        raise ConfigError(
            f"--resume {run.dir}: the config differs from the one the run recorded:\n"
            + "\n".join(f"  - {text}" for _, text in changed)
            + "\n(use --force to rerun the changed stages and those after them)"
        )
    first = min((index for index, _ in changed), default=len(config.stages))
    if changed:
        log.warning("resume --force: rerunning from stage %d (%s)", first, "; ".join(t for _, t in changed))
    return first


def run_pipeline(
    config: PipelineConfig,
    engine: Engine | None = None,
    runs_root: str | Path | None = None,
    resume: bool | str | Path = False,
    wait: bool = False,
    force: bool = False,
) -> PipelineResult:
    """Check the plan, then run every stage under the pipeline's lock on the given (or its own) engine.

    `resume`: True continues the newest unfinished run (a path: that run). Stages the run records as
    succeeded are restored instead of rerun while their config is unchanged and every recorded output still
    matches its checksum; a changed config is refused unless `force` (then the changed stages and those
    after them run again).
    """
    require_valid_plan(config, config.name)
    root = runs_root or config.runs_dir
    engine_facts = {"kind": config.engine.kind, "partitions": config.engine.partitions}
    session = run_session(config.name, root, dump_config(config), engine_facts, resume, wait, config.keep_runs)
    names = [s.output_name for s in config.stages]
    tracking = config.tracking
    steps = [write_report] + ([lambda run, _: track_run(run, tracking, names)] if tracking else [])
    with then(session, *steps) as run:
        start = 0
        if run.manifest.get("resumed"):
            start = first_changed_stage(config, run, force)
            bad = corrupt_outputs(run.dir, run.manifest)
            if bad:
                log.warning("resume: outputs %s changed since they were written; running every stage again", bad)
                start = 0
            if force:
                run.replace_config(dump_config(config))
            supersede(run, [s.output_name for s in config.stages[start:]])
        job = job_facts()
        if job is not None:
            run.manifest["job"] = job
        owned = engine is None
        engine = engine or make_engine(config.engine)
        try:
            if owned:
                engine.start()
            run.manifest["engine"].update(engine.describe())
            run.save()
            require_shared(engine, run.dir)
            ctx = StageContext(engine=engine, run=run, config=config)
            for index, stage in enumerate(config.stages):
                name = stage.output_name
                if index < start and run.stage_succeeded(name):
                    try:
                        ctx.results[name] = stage.restore(ctx)
                        continue
                    except NotRestorable as exc:
                        log.warning("resume: %s; stage %s runs again", exc, name)
                with run.stage(name) as entry:
                    result = stage.run(ctx)
                    entry.update(result.facts())
                    run.add_metrics(name, result.metrics)  # before the stage is recorded as succeeded
                ctx.results[name] = result
        finally:
            if owned:
                engine.stop()
    return PipelineResult(run, ctx.results)


def require_shared(engine: Engine, run_dir: Path) -> None:
    """Before any stage: every worker sees the run folder (a worker on another host writing into its own local
    folder of the same name would leave an empty share behind)."""
    blind = engine.hosts_not_seeing(str(run_dir / "manifest.json"))
    if blind:
        raise EnvironmentProblem(
            f"the run folder {run_dir} is not visible from worker host(s) {', '.join(blind)}: runs_dir must be on "
            "a file system shared by the driver and every worker (e.g. a project or scratch file system on HPC)"
        )


@contextlib.contextmanager
def then(session: contextlib.AbstractContextManager[Run], *steps: Callable[[Run, bool], None]) -> Iterator[Run]:
    """A run session followed, once it ends (succeeded or failed), by each step on its run (and whether it failed)."""
    run: Run | None = None
    try:
        with session as run:
            yield run
    finally:
        failing = sys.exc_info()[1] is not None
        if run is not None:
            for step in steps:
                step(run, failing)


def write_report(run: Run, failing: bool) -> None:
    """Leave report.html in the run directory.

    A report that cannot be written is logged; it never replaces the run's own outcome or error (a full disk
    that already failed the run is not said twice).
    """
    try:
        log.info("report: %s", build_report(run.dir))
    except EnvironmentProblem as exc:
        (log.info if failing else log.warning)("no report for %s: %s", run.dir, exc)
    except Exception:
        log.exception("could not write the report of %s", run.dir)


def supersede(run: Run, names: list[str]) -> None:
    """Mark earlier successes of stages that run again as superseded (a later resume never restores them)."""
    wanted = set(names)
    for entry in run.manifest["stages"]:
        if entry["name"] in wanted and entry["status"] == "succeeded":
            entry["status"] = "superseded"
    run.save()


def run_many(
    configs: list[PipelineConfig],
    engine_kinds: list[str] | None = None,
    resume: bool | str | Path = False,
    wait: bool = False,
    force: bool = False,
) -> list[tuple[PipelineConfig, PipelineResult]]:
    """Run each config on each engine kind; configs with identical engine sections share one started engine.

    Each config keeps its own engine settings: a config whose `engine` section differs gets its own engine.
    """
    if isinstance(resume, str | Path) and (len(configs) > 1 or len(engine_kinds or []) > 1):
        raise ConfigError(f"--resume {resume} continues one run: give one config and one engine")
    plan: list[list[PipelineConfig]] = []
    kinds: Sequence[str | None] = engine_kinds or [None]
    for kind in kinds:
        chosen = []
        for config in configs:
            config = config.model_copy(deep=True)
            if kind is not None:
                config.engine.kind = kind  # type: ignore[assignment]
            require_valid_plan(config, config.name)  # every plan is checked before any engine starts
            chosen.append(config)
        plan.append(chosen)
    done: list[tuple[PipelineConfig, PipelineResult]] = []
    for chosen in plan:
        groups: dict[str, list[PipelineConfig]] = {}
        for config in chosen:
            groups.setdefault(config.engine.model_dump_json(), []).append(config)
        for group in groups.values():
            with make_engine(group[0].engine) as engine:
                for config in group:
                    done.append((config, run_pipeline(config, engine, resume=resume, wait=wait, force=force)))
    return done
