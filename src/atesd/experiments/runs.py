"""A resumable queue of experiment runs, shared by `atesd sweep` and `atesd compare`.

A run is (label, config file, overrides, seed) and lives in ``<out>/runs/<label>-seed<seed>``. It trains (or,
for the base pseudo-run, does not), evaluates the final model and writes ``result.json``. What a run does
depends on what its directory already holds, so that a killed sweep or comparison, started again with the
same arguments, continues at the first unfinished run and never redoes a finished one:

- ``result.json``: finished; it is loaded, nothing runs;
- ``trained.json``: training finished; only the evaluation is left;
- a checkpoint: training was interrupted; it resumes from the latest checkpoint;
- otherwise: training starts from scratch.

``trained.json`` is written once the trainer has returned, that is once ``final_model/`` is complete: the
directory alone could be a save that was cut short. Every run's directory keeps the resolved ``config.yaml``;
a run whose saved config differs from the one asked for is an error, never silently reused.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from atesd.config import Config, ConfigError, changed_keys, load_config, load_run_config, save_config
from atesd.experiments.guards import read_json
from atesd.experiments.presets import BASE_LABEL
from atesd.files import atomic_write_text
from atesd.train.checkpoint import checkpoint_step, latest_checkpoint
from atesd.train.recipe import Trainer
from atesd.train.run_dir import LOCK_FILE

RUNS_DIR = "runs"
RESULT_FILE = "result.json"
TRAINED_FILE = "trained.json"
EVAL_LABELS = {True: "trained", False: "base"}  # eval file label, by whether the run trains
T = TypeVar("T")
R = TypeVar("R")
# Settings that name where a run lives, not what it is: two runs that differ only here are the same experiment.
LOCATION_KEYS = ("run.output_dir", "run.name")


@dataclass(frozen=True)
class RunSpec:
    """What to run: `config_path` with `overrides`, at `seed`; ``trains=False`` evaluates the starting model.

    `base_seed`, when set, is the warm-start seed of the embedded base model (``model.embedded.seed``): the
    run is then one of several base models, named ``<label>-w<base_seed>-seed<seed>``.
    """

    label: str
    config_path: Path
    overrides: tuple[str, ...]
    seed: int
    trains: bool = True
    base_seed: int | None = None

    @property
    def name(self) -> str:
        base = "" if self.base_seed is None else f"-w{self.base_seed}"
        return f"{self.label}{base}-seed{self.seed}"

    @property
    def pair(self) -> tuple[int | None, int]:
        """(base model, training seed): what two methods' runs share when they are compared pair by pair."""
        return self.base_seed, self.seed

    def config(self, out: Path) -> Config:
        base = [] if self.base_seed is None else [f"model.embedded.seed={self.base_seed}"]
        # JSON strings are YAML strings: a path like "1.5" or "a: b" stays a path.
        return load_config(self.config_path, [*self.overrides, *base,
                                              f"run.output_dir={json.dumps(str(out / RUNS_DIR))}",
                                              f"run.name={self.name}", f"run.seed={self.seed}"])


def setting_key(override: str) -> tuple[str, ...]:
    """The dotted key of a ``key=value`` override, as a tuple."""
    return tuple(override.split("=", 1)[0].strip().split("."))


def identity(config: Config) -> dict[str, Any]:
    """What makes a run the method it is: the objective, the exposure policy with every setting of a fixed exposure,
    and whether the teacher is AR-OPD's."""
    exposure = config.exposure
    return {"method": config.method, "exposure.policy": exposure.policy,
            "exposure.alpha": getattr(exposure, "alpha", None),
            "teacher.anchored_residual": config.teacher.anchored_residual is not None}


def overlaps(user: tuple[str, ...], own: str) -> bool:
    """Whether a user's setting `user` and a method's own override `own` set the same thing: the same key, one inside
    the other's section, except a setting inside a section the method turns on with its defaults (``{}``)."""
    defining = setting_key(own)
    turns_on = own.split("=", 1)[1].strip() == "{}"
    inside = user[:len(defining)] == defining and (len(user) == len(defining) or not turns_on)
    return inside or defining[:len(user)] == user


def overrides_for_methods(methods: dict[str, tuple[Path, tuple[str, ...]]], overrides: Sequence[str], *,
                          command: str = "this experiment") -> dict[str, tuple[str, ...]]:
    """Each method's overrides (`methods`: label -> (recipe, the method's own overrides)): the command's overrides
    for all, then the method's own (docs/reliability.md#settings-that-merge). A setting of an exposure policy, or
    of AR-OPD's teacher, goes only to the methods whose exposure policy, or teacher, takes it
    (``exposure.controller.lookahead=2`` is for the methods with a controller); one that no method takes would do
    nothing and is refused. A setting that defines a method (its objective, exposure policy, fixed α, whether its
    teacher is AR-OPD's) or one the method sets itself is refused, naming both: the method would silently be
    another, or the setting silently not apply."""
    taken: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    tuning = [o for o in overrides
              if setting_key(o)[:1] == ("exposure",) and setting_key(o)[1:2] not in {("policy",), ("alpha",)}
              or setting_key(o)[:2] == ("teacher", "anchored_residual") and len(setting_key(o)) > 2]
    for label, (recipe, own) in methods.items():
        try:
            config = load_config(recipe, own)
        except ConfigError:  # the method's own config is broken: its run will say so with every override
            taken[label] = (*overrides, *own)
            continue
        fields = set(type(config.exposure).model_fields)
        kept = []
        for override in overrides:
            key = setting_key(override)
            if override in tuning and not (key[0] == "exposure" and key[1] in fields or key[0] == "teacher"
                                           and config.teacher.anchored_residual is not None):
                continue
            clash = next((o for o in own if overlaps(key, o)), None)
            if clash is not None:
                raise ConfigError(f"{override}: method '{label}' of {command} sets it itself ({clash}); leave it out")
            if label != BASE_LABEL:
                changed = {name: value for name, value in identity(load_config(recipe, [override, *own])).items()
                           if identity(config)[name] != value}
                if changed:
                    raise ConfigError(f"{override}: it would make method '{label}' of {command} another method "
                                      f"({', '.join(f'{name} {value}' for name, value in changed.items())}); leave it "
                                      "out, or compare the method it makes with --methods")
            kept.append(override)
        used.update(o for o in kept if o in tuning)
        taken[label] = (*kept, *own)
    unused = [o for o in tuning if o not in used]
    if unused:
        raise ConfigError(f"{', '.join(unused)}: no run of {command} has an exposure policy or a teacher that takes "
                          "it, so it would do nothing; leave it out")
    return taken


@dataclass(frozen=True)
class Run:
    """A spec resolved to its config and the directory it runs in (another experiment's, when reused)."""

    spec: RunSpec
    config: Config
    directory: Path


@dataclass(frozen=True)
class FinishedRun:
    run: Run
    result: dict[str, Any]

    def eval_file(self, benchmark: str) -> Path:
        return self.run.directory / self.result["benchmarks"][benchmark]["eval_file"]


def plan(specs: Sequence[RunSpec], out: Path) -> list[Run]:
    """Each spec's config, resolved now so that a bad override fails before the first run starts."""
    runs = []
    for spec in specs:
        config = spec.config(out)
        runs.append(Run(spec, config, Path(config.run.output_dir) / spec.name))
    return runs


def run_all(runs: Sequence[Run], jobs: int = 1) -> list[FinishedRun]:
    """Run the queue, printing one line per run; finished runs are loaded, not redone.

    With ``jobs > 1`` the runs go to that many worker processes of one thread each. The first run of each
    base model goes first and alone with the other base models' first runs: it builds (or loads) the cached
    warm start, which the later runs of that base model then share instead of each building it.
    """
    prefixes = {run.directory: f"[{index}/{len(runs)}] {_describe(run.spec)}" for index, run in enumerate(runs, 1)}
    todo = []
    for run in runs:
        if (run.directory / RESULT_FILE).is_file():
            check_saved_config(run)
            print(f"{prefixes[run.directory]}: finished earlier ({run.directory / RESULT_FILE})", flush=True)
        else:
            todo.append(run)
    if jobs <= 1:
        for run in todo:
            _timed(run, prefixes[run.directory])
    else:
        firsts: dict[int | None, Run] = {}
        for run in todo:
            firsts.setdefault(run.spec.base_seed, run)
        first_of_base = list(firsts.values())
        later = [run for run in todo if all(run is not first for first in first_of_base)]
        with worker_pool(jobs) as pool:
            for wave in (first_of_base, later):
                for future in as_completed([pool.submit(_timed, run, prefixes[run.directory]) for run in wave]):
                    future.result()  # a run's error stops the experiment, as it does with one job
    return [FinishedRun(run, read_json(run.directory / RESULT_FILE)) for run in runs]


def parallel_map(function: Callable[[T], R], items: Sequence[T], jobs: int) -> Iterator[R]:
    """`function` over `items`, each result as it comes in order, in `jobs` worker processes of one thread
    each when ``jobs > 1`` (and there is more than one item)."""
    if jobs <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    with worker_pool(jobs) as pool:
        yield from pool.map(function, items)


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """`jobs` fresh worker processes (spawned, not forked: torch's threads do not survive a fork) of one thread
    each, so that parallel jobs share the machine's cores; each ends itself when this process dies."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=one_thread,
                               initargs=(os.getpid(),))


def _describe(spec: RunSpec) -> str:
    base = "" if spec.base_seed is None else f" base model {spec.base_seed}"
    return f"{spec.label}{base} seed {spec.seed}"


def _timed(run: Run, prefix: str) -> None:
    print(f"{prefix} ...", flush=True)
    started = time.perf_counter()
    execute(run)
    print(f"{prefix} done in {time.perf_counter() - started:.0f}s", flush=True)


def one_thread(parent: int) -> None:
    """Initialiser of a worker process: one thread, so that parallel jobs share the machine's cores, and a
    watch on `parent` (the experiment's process)."""
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True, name="exit-with-parent").start()


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker once `parent` is gone (it is then adopted by another process). A killed experiment must
    not leave workers training on, holding their runs' locks against the rerun; what a worker had not
    checkpointed is redone by the rerun, as after any kill."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def execute(run: Run) -> None:
    """Train (or resume) the run when it trains, evaluate its model, and write ``result.json``."""
    from atesd.eval.runner import evaluate_model, results_file
    from atesd.train.base_model import evaluation_engine

    config, directory, trains = run.config, run.directory, run.spec.trains
    check_saved_config(run)
    if trains and not (directory / TRAINED_FILE).is_file():
        train(config, directory)
    if not trains:
        directory.mkdir(parents=True, exist_ok=True)
        save_config(config, directory / "config.yaml")

    started = time.perf_counter()
    engine, tokenizer = evaluation_engine(config, str(directory / "final_model") if trains else None)
    label = EVAL_LABELS[trains]
    summaries = evaluate_model(config, None, tokenizer, directory / "eval", label, engine=engine)
    eval_seconds = time.perf_counter() - started
    del engine
    gc.collect()

    result = {
        "label": run.spec.label,
        "seed": run.spec.seed,
        "method": config.method if trains else BASE_LABEL,
        "benchmarks": {name: {"eval_file": str(results_file(directory / "eval", label, name).relative_to(directory)),
                              "summary": summary} for name, summary in summaries.items()},
        **compute_columns(directory, trains),
        "eval_seconds": eval_seconds,
    }
    atomic_write_text(directory / RESULT_FILE, json.dumps(result, indent=1))


def train(config: Config, directory: Path) -> None:
    """Train the run to `train.steps`, resuming from its latest checkpoint when it has one."""
    trainer = Trainer(config, resume=latest_checkpoint(directory) is not None)
    trainer.train()
    del trainer
    gc.collect()
    atomic_write_text(directory / TRAINED_FILE, json.dumps({"steps": config.train.steps}))


def compute_columns(directory: Path, trains: bool) -> dict[str, float | int | None]:
    """Training cost from ``metrics.jsonl``: updates, generated and forward tokens, and training seconds.

    Seconds are the sum of the steps' own times, so time lost to an interruption (steps redone after a
    resume replace their earlier rows) does not count. A key no row has is None (an older trainer's log).
    """
    from atesd.train.metrics import read_metrics

    if not trains:
        return {"updates": 0, "generated_tokens": 0, "forward_tokens": 0, "train_seconds": 0.0}
    rows = read_metrics(directory / "metrics.jsonl")
    return {
        "updates": max((row["step"] for row in rows), default=0),
        "generated_tokens": _total(rows, "generated_tokens"),
        "forward_tokens": _total(rows, "forward_tokens"),
        "train_seconds": _total(rows, "step_time"),
    }


def _total(rows: list[dict[str, Any]], key: str) -> float | int | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return sum(values) if values else None


def continue_shorter(runs: Sequence[Run], folder: Path) -> list[Run]:
    """Each trained run not started yet whose first updates a finished run of `folder` already made — the same
    config but for its location and a smaller ``train.steps`` — starts as a copy of that run (its checkpoints
    and logs) and resumes from its last checkpoint. With a constant learning rate and an exposure that does not
    depend on the run's length, the first N updates of a longer run are the N-update run, so a longer budget
    costs only its extra updates. A run whose schedule or controller reads ``train.steps`` (the controller's
    state holds the progress t/T) trains from scratch. Returns the runs that were continued."""
    finished = saved_runs(folder, TRAINED_FILE)
    continued = []
    for run in runs:
        if not run.spec.trains or run.directory.exists():
            continue
        source = next((directory for directory, config in finished if config.train.steps < run.config.train.steps
                       and changed_keys(config, run.config, ignore=LOCATION_KEYS) == ["train.steps"]), None)
        if source is None or not length_independent(run.config):
            continue
        if not log_reaches_checkpoint(source):
            print(f"not continued: {source}'s metrics.jsonl stops before its last checkpoint; {run.spec.name} "
                  "trains from scratch", flush=True)
            continue
        partial = run.directory.with_name(run.directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial, ignore=shutil.ignore_patterns(
            RESULT_FILE, TRAINED_FILE, "eval", "final_model", LOCK_FILE, "*.png", "summary.md"))
        os.replace(partial, run.directory)  # whole or not at all: a killed copy leaves no half run
        continued.append(run)
    return continued


def log_reaches_checkpoint(directory: Path) -> bool:
    """Whether a finished run's log holds every step up to its last checkpoint (a copy continued from it must
    not lose the steps a damaged or truncated log is missing)."""
    from atesd.train.metrics import read_metrics

    checkpoint = latest_checkpoint(directory)
    if checkpoint is None:
        return False
    steps = [row.get("step") for row in read_metrics(directory / "metrics.jsonl")]
    return steps == list(range(1, checkpoint_step(checkpoint) + 1))


def saved_runs(folder: Path, marker: str) -> list[tuple[Path, Config]]:
    """The run directories of an experiment's out `folder` that hold `marker` (``trained.json`` or
    ``result.json``) and their ``config.yaml``, with that config."""
    return [(directory, load_run_config(directory / "config.yaml"))
            for directory in sorted((folder / RUNS_DIR).glob("*"))
            if (directory / marker).is_file() and (directory / "config.yaml").is_file()]


def length_independent(config: Config) -> bool:
    """Whether a run's first updates do not depend on its ``train.steps``: a constant learning rate, and an
    exposure policy whose decisions do not read the run's length (a schedule and the controller's state read t/T)."""
    return config.train.lr_scheduler == "constant" and not config.exposure.reads_run_length


def check_saved_config(run: Run) -> None:
    """Refuse to continue or reuse a run directory whose ``config.yaml`` is not this run's config (a run still
    training may grow its ``train.steps``: the trainer resumes it to the new length)."""
    path = run.directory / "config.yaml"
    if not path.is_file():
        return
    saved = load_run_config(path)
    changed = changed_keys(saved, run.config, ignore=LOCATION_KEYS)
    if changed == ["train.steps"] and run.config.train.steps > saved.train.steps and not (
            run.directory / TRAINED_FILE).is_file():
        return
    if changed:
        raise ConfigError(f"{path} differs from this run's config in: {', '.join(changed)}; use another --out "
                          "or the arguments that made it")
