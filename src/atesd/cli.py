"""The command line: ``atesd train | eval | demo | sweep | compare | testbed | diagnose | config``.

    atesd train CONFIG [key=value ...] [--resume]
    atesd eval CONFIG [key=value ...] [--model DIR] [--teacher-alpha A] [--out DIR]
    atesd eval --checkpoints RUN [key=value ...] [--out DIR]
    atesd demo [CONFIG] [key=value ...] [--resume]
    atesd sweep [CONFIG] [key=value ...] [--alphas A ...] [--seeds N] [--out DIR] [--mismatch-problems P]
    atesd compare [key=value ...] [--recipes DIR] [--seeds N] [--base-models N [--first-base-model K]]
                  [--alphas A ...] [--jobs N] [--reuse DIR] [--continue-from DIR] [--out DIR] [--quick]
                  [--methods M ...] [--best-alpha A | --sweep SWEEP_DIR]
    atesd testbed [CONFIG] [key=value ...] [--base-models N] [--jobs N] [--out DIR]
    atesd diagnose RUN [RUN ...] [--out DIR] [--steps N]
    atesd config show CONFIG [key=value ...]
    atesd config list
    atesd --version

CONFIG is a config file, or the name of a config that ships with atesd (``embedded/opsd``; ``atesd config
list``), and so is compare's --recipes folder (``embedded``): see `atesd.packaged`. Overrides are dotted config
keys (``train.steps=50``), before or after the options (``atesd train CONFIG --resume train.steps=50``), except
after an option that takes several values (--alphas, --methods); every run writes its resolved config. --seeds
is always training seeds (run.seed 0..N-1), --base-models always the embedded base models of warm-start seeds
0..N-1 (compare's --first-base-model K shifts them to K..K+N-1). A sweep or comparison killed midway continues
where it stopped when started again with the same arguments. A user error (a setting, a data row, a file, a busy
run directory) prints one line, ``atesd: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from atesd import __version__
from atesd.config import Config, ConfigError, load_config, load_run_config, save_config
from atesd.errors import UserError
from atesd.experiments.presets import (
    DEFAULT_ALPHAS,
    DEFAULT_MISMATCH_PROBLEMS,
    DEFAULT_SEEDS,
    METHOD_NAMES,
    QUICK_SEEDS,
)
from atesd.files import atomic_write_text
from atesd.packaged import (
    PACKAGED,
    launch_configs,
    listing,
    packaged_configs,
    packaged_folders,
    resolve_config,
)

# Packaged names (atesd.packaged), found from any folder; a path given instead is used as it is.
DEMO_CONFIG = "embedded/atesd"
SWEEP_CONFIG = "embedded/opsd"
RECIPES = "embedded"


def _train(args: argparse.Namespace) -> None:
    from atesd.experiments.along_training import along_training_section
    from atesd.experiments.diagnose_report import run_section
    from atesd.experiments.guards import report_or_warn
    from atesd.experiments.plots import exposure_summary, plot_run
    from atesd.train.recipe import Trainer

    config = load_config(resolve_config(args.config), args.overrides)
    trainer = Trainer(config, resume=args.resume)
    run_dir = trainer.train()
    if trainer.accelerator.is_main_process:  # the run is finished and saved: what follows only reports on it
        plots = report_or_warn("the run's plots", lambda: plot_run(run_dir, run_dir.name)) or []
        summary = report_or_warn("the exposure summary", lambda: exposure_summary(run_dir))
        if summary:
            print(summary)
        diagnosis = report_or_warn("the run's diagnosis", lambda: run_section(run_dir, args.command_line))
        if diagnosis:
            print(f"\n{diagnosis}")
        along = report_or_warn("the report of the evaluations along training",
                               lambda: along_training_section(run_dir))
        if along:
            print(f"\n{along}")
        print(f"run directory: {run_dir} (plots: {', '.join(p.name for p in plots)}"
              + ("; diagnose.md" if diagnosis and (run_dir / "diagnose.md").is_file() else "") + ")")


def _eval(args: argparse.Namespace) -> None:
    from atesd.eval.runner import evaluate_model
    from atesd.experiments.guards import writable_folder
    from atesd.experiments.tables import evaluation_table
    from atesd.models.loading import resolve_model_path
    from atesd.train.base_model import evaluation_engine
    from atesd.train.run_dir import run_directory

    if args.checkpoints:
        return _eval_checkpoints(args)
    if args.config is None:
        raise ConfigError("atesd eval needs CONFIG (or --checkpoints RUN to evaluate a run's checkpoints)")
    if args.teacher_alpha is not None and not 0.0 <= args.teacher_alpha <= 1.0:  # NaN fails this too
        raise ConfigError(f"--teacher-alpha must be an exposure in [0, 1], got {args.teacher_alpha}")
    config = load_config(resolve_config(args.config), args.overrides)
    run_dir = run_directory(config)
    model_path: str | None
    if args.model:
        model_path = resolve_model_path(args.model, setting="--model")
    else:
        model_path = str(run_dir / "final_model") if (run_dir / "final_model").is_dir() else None
    # Files named and filled with what is evaluated: a teacher at another α or another model never overwrites them.
    label = "student" if args.teacher_alpha is None else f"teacher-alpha{args.teacher_alpha:g}"
    if args.teacher_alpha is not None:  # the saved config says what was evaluated
        config.eval.teacher_alpha = args.teacher_alpha
    out_dir = writable_folder(Path(args.out) if args.out else run_dir / "eval", "--out")
    engine, tokenizer = evaluation_engine(config, model_path)  # eval.engine: hf | vllm
    summaries = evaluate_model(config, None, tokenizer, out_dir, label, args.teacher_alpha, engine=engine,
                               model_name=model_path or config.model.name_or_path)
    save_config(config, out_dir / f"{label}-config.yaml")
    print(f"model: {model_path or config.model.name_or_path}")
    for benchmark, summary in summaries.items():
        print(f"\n{benchmark}\n" + evaluation_table({label: summary}, config.eval.num_samples))
    print(f"\nper-problem results: {out_dir}")


def _eval_checkpoints(args: argparse.Namespace) -> None:
    """The base model and every checkpoint of a run, with the run's own config (and eval.* overrides)."""
    from atesd.experiments.along_training import evaluate_checkpoints, write_along_training_report
    from atesd.experiments.guards import experiment_lock, guard_settings, writable_folder

    run_dir = Path(args.checkpoints).resolve()
    if args.config or args.model or args.teacher_alpha is not None:
        raise ConfigError("--checkpoints evaluates the run's student with its own config.yaml: give only key=value "
                          "overrides (eval.*), not CONFIG, --model or --teacher-alpha")
    others = [override for override in args.overrides if not override.strip().startswith("eval.")]
    if others:
        raise ConfigError(f"--checkpoints evaluates what the run trained, with its own config.yaml: "
                          f"{', '.join(others)} would change it; give only eval.* overrides")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--checkpoints {run_dir}: no config.yaml there; give a run directory (atesd train's)")
    config = load_run_config(run_dir / "config.yaml", args.overrides)
    out_dir = writable_folder(Path(args.out) if args.out else run_dir / "eval" / "checkpoints", "--out")
    with experiment_lock(out_dir, "eval --checkpoints"):
        # a folder holds one evaluation's results: another run or other eval.* settings go to another --out
        guard_settings(out_dir / "eval_settings.json",
                       {"run": str(run_dir), "eval": config.eval.model_dump(mode="json")})
        rows = evaluate_checkpoints(config, run_dir, out_dir)
    save_config(config, out_dir / "config.yaml")
    print(write_along_training_report(rows, out_dir / "report.md", f"{run_dir.name}: the checkpoints evaluated"))
    print(f"per-problem results and report.md: {out_dir}")


def _demo(args: argparse.Namespace) -> None:
    """Base model vs the trained model (ATESD by default) on the embedded task, with the base teacher at α = 1
    for reference."""
    from atesd.data.sources import benchmark_key
    from atesd.eval.runner import evaluate_model
    from atesd.experiments.diagnose_report import run_section
    from atesd.experiments.guards import report_or_warn
    from atesd.experiments.plots import exposure_summary, plot_bucket_accuracy, plot_run
    from atesd.experiments.tables import evaluation_table
    from atesd.train.base_model import load_model
    from atesd.train.recipe import Trainer
    from atesd.train.run_dir import run_directory
    from atesd.train.versions import versions_line

    config_name = args.config or DEMO_CONFIG
    config = load_config(resolve_config(config_name), args.overrides)
    if config.eval.engine != "hf":
        raise ConfigError(f"atesd demo evaluates with transformers (eval.engine=hf), not eval.engine="
                          f"{config.eval.engine}: leave eval.engine out, or train with atesd train and evaluate with "
                          f"atesd eval CONFIG eval.engine={config.eval.engine}")
    started = time.perf_counter()
    run_dir = run_directory(config)
    out_dir = run_dir / "eval"
    k = config.eval.num_samples

    base_model, tokenizer = load_model(config)
    print(f"[{_clock(started)}] base model ready; evaluating it on held-out problems (k={k})")
    rows = {"base (student)": evaluate_model(config, base_model, tokenizer, out_dir, "base")}
    if config.eval.teacher_alpha is not None:
        rows[f"base teacher (alpha={config.eval.teacher_alpha:g})"] = evaluate_model(
            config, base_model, tokenizer, out_dir, "teacher", config.eval.teacher_alpha)
    del base_model
    if config.eval.teacher_alpha is not None:
        for benchmark in config.eval.benchmarks:
            student, teacher = (row[benchmark]["all"][f"average@{k}"] for row in rows.values())
            print(f"[{_clock(started)}] base model on {benchmark}: student {student:.1%}, teacher at "
                  f"alpha={config.eval.teacher_alpha:g} {teacher:.1%} (the gap distillation can close: "
                  f"{teacher - student:+.1%})")

    method = _method_label(config)
    print(f"[{_clock(started)}] training {method} for {config.train.steps} steps")
    trainer = Trainer(config, resume=args.resume)
    trainer.train()
    trained_model, tokenizer = load_model(config, str(run_dir / "final_model"))
    print(f"[{_clock(started)}] evaluating the trained model")
    rows[f"{method} (student)"] = evaluate_model(config, trained_model, tokenizer, out_dir, "trained")

    plots = report_or_warn("the run's plots", lambda: plot_run(run_dir, f"{method} on embedded")) or []
    report = [f"# {method} on the embedded task\n", f"Command: `atesd demo {config_name}"
              + "".join(f" {o}" for o in args.overrides) + "`\n"]
    exposure = report_or_warn("the exposure summary", lambda: exposure_summary(run_dir))
    if exposure:
        print(f"\n{exposure}")
        report.append(f"{exposure}\n")
    diagnosis = report_or_warn("the run's diagnosis", lambda: run_section(run_dir, args.command_line))
    if diagnosis:
        print(f"\n{diagnosis}")
        report.append(diagnosis)
    for benchmark in config.eval.benchmarks:
        per_label = {label: summaries[benchmark] for label, summaries in rows.items()}
        table = evaluation_table(per_label, k)
        report.append(f"## {benchmark}\n\n{table}\n")
        print(f"\nheld-out {benchmark}, Average@{k} per difficulty bucket:\n{table}")
        plot = functools.partial(plot_bucket_accuracy, per_label, f"average@{k}",
                                 run_dir / f"accuracy-{benchmark_key(benchmark)}.png",
                                 f"{benchmark}: Average@{k} per bucket")
        report_or_warn(f"the {benchmark} plot", plot)
    report.append(f"Versions: {versions_line()}\n")
    atomic_write_text(run_dir / "summary.md", "\n".join(report))
    atomic_write_text(run_dir / "summary.json", json.dumps(rows, indent=1))
    print(f"\n[{_clock(started)}] done. run directory: {run_dir} (config.yaml, metrics.jsonl, decisions.jsonl, "
          f"checkpoints, final_model, eval/, summary.md, {', '.join(p.name for p in plots)})")


def _sweep(args: argparse.Namespace) -> None:
    from atesd.experiments.guards import experiment_lock, writable_folder
    from atesd.experiments.sweep import run_sweep

    config_path = resolve_config(args.config or SWEEP_CONFIG)
    out = writable_folder(Path(args.out), "--out")
    with experiment_lock(out, "atesd sweep"):
        written = run_sweep(config_path, args.overrides, args.alphas, args.seeds, out, args.mismatch_problems,
                            args.command_line)
    print(f"sweep done: {', '.join(str(p) for p in written)}")


def _compare(args: argparse.Namespace) -> None:
    from atesd.experiments.compare import run_compare
    from atesd.experiments.guards import experiment_lock, writable_folder

    seeds = (QUICK_SEEDS if args.quick else DEFAULT_SEEDS) if args.seeds is None else args.seeds
    recipes = resolve_config(args.recipes, folder=True, argument="--recipes")
    out = writable_folder(Path(args.out), "--out")
    with experiment_lock(out, "atesd compare"):
        written = run_compare(recipes, args.methods, args.overrides, seeds, out, quick=args.quick,
                              best=args.best_alpha, sweep_dir=Path(args.sweep) if args.sweep else None,
                              command=args.command_line, base_models=args.base_models,
                              first_base_model=args.first_base_model, alphas=args.alphas or (),
                              jobs=args.jobs, mismatch_problems=args.mismatch_problems,
                              reuse=[Path(folder) for folder in args.reuse or ()],
                              continue_from=Path(args.continue_from) if args.continue_from else None)
    print(f"comparison done: {', '.join(str(p) for p in written)}")


def _testbed(args: argparse.Namespace) -> None:
    from atesd.experiments.guards import experiment_lock, writable_folder
    from atesd.experiments.testbed import run_testbed

    config_path = resolve_config(args.config or SWEEP_CONFIG)
    out = writable_folder(Path(args.out), "--out")
    with experiment_lock(out, "atesd testbed"):
        written = run_testbed(config_path, args.overrides, args.base_models, out, args.jobs, args.command_line)
    print(f"testbed done: {', '.join(str(p) for p in written)}")


def _diagnose(args: argparse.Namespace) -> None:
    from atesd.experiments.diagnose_report import diagnose_paths, diagnosis_markdown, write_diagnosis
    from atesd.experiments.guards import experiment_lock, writable_folder

    paths = [Path(path) for path in args.runs]
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps: at least 1 update, got {args.steps}")
    diagnosis = diagnose_paths(paths, args.steps)  # reads only: every path is checked before anything is written
    out = writable_folder(Path(args.out) if args.out else paths[0] if len(paths) == 1 else Path("runs/diagnose"),
                          "--out")
    with experiment_lock(out, "diagnose"):
        written = write_diagnosis(diagnosis, out, args.command_line)
    print(diagnosis_markdown(diagnosis))
    print(f"written: {', '.join(str(p) for p in written)}")


def _config_show(args: argparse.Namespace) -> None:
    """The config as a run of it writes its config.yaml: every default filled in, the overrides applied."""
    config = load_config(resolve_config(args.config), args.overrides)
    # save_config's YAML: what a run of it writes as config.yaml (tests/test_cli_config.py holds them equal)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")


def _config_list(args: argparse.Namespace) -> None:
    print("\n".join(packaged_configs()))
    print(f"\nrecipe folders (atesd compare --recipes): {', '.join(packaged_folders())}")
    print(f"accelerate launch configs (--config_file): {listing([f'accelerate/{p.name}' for p in launch_configs()])}")
    print(f"all in {PACKAGED}")


def _method_label(config: Config) -> str:
    """The trained method as the demo names it: its ``method``, with OPSD's exposure policy where it is not a fixed
    α and AR-OPD's teacher where that is on (their method is opsd, and a plain OPSD run must not read the same)."""
    label: str = config.method
    if config.method == "opsd" and config.exposure.policy != "fixed":
        label += f" with exposure {config.exposure.policy}"
    return label + (" with the AR-OPD teacher" if config.teacher.anchored_residual is not None else "")


def _clock(started: float) -> str:
    seconds = int(time.perf_counter() - started)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class CommandParser(argparse.ArgumentParser):
    """atesd's parser, holding each command's own parser (`parse_args` reads a command line with it)."""

    commands: Mapping[str, argparse.ArgumentParser]


def _config_arguments(parser: argparse.ArgumentParser, default: str | None = None, optional: bool = True) -> None:
    """CONFIG and the key=value overrides, as every command that reads a config takes them."""
    parser.add_argument("config", nargs="?" if optional else None, metavar="CONFIG",
                        help="a config file, or a packaged config by name (`atesd config list`), e.g. embedded/opsd"
                        + (f" (default {default})" if default else ""))
    parser.add_argument("overrides", nargs="*", default=(), metavar="key=value",
                        help="dotted overrides of the config (train.steps=50), before or after the options")


def build_parser() -> CommandParser:
    parser = CommandParser(prog="atesd", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"atesd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train with a config")
    _config_arguments(train, optional=False)
    train.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint; it may "
                       "change only eval.*, train.steps (upward), train.checkpoint_every, train.keep_checkpoints, "
                       "rollout.sampler, rollout.loop.cache and .drop_finished, its location, and train.lr after "
                       "non-finite steps stopped it")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a model on the config's benchmarks")
    _config_arguments(evaluate)
    evaluate.add_argument("--model", help="model directory (default: the run's final_model, else the base model)")
    evaluate.add_argument("--teacher-alpha", type=float, help="evaluate the teacher prompt at this exposure")
    evaluate.add_argument("--out", help="folder for the per-problem JSON (default: <run>/eval, with --checkpoints "
                          "<run>/eval/checkpoints)")
    evaluate.add_argument("--checkpoints", metavar="RUN", help="evaluate the base model and every checkpoint of "
                          "the run directory RUN with its config: the last and the best per benchmark")
    evaluate.set_defaults(handler=_eval)

    demo = commands.add_parser("demo", help="the embedded default end to end: base vs trained, with a table")
    _config_arguments(demo, DEMO_CONFIG)
    demo.add_argument("--resume", action="store_true", help="continue the demo's training run from its latest "
                      "checkpoint (the base model is evaluated again)")
    demo.set_defaults(handler=_demo)

    sweep = commands.add_parser("sweep", help="train at each fixed exposure α over several seeds; accuracy and "
                                "mismatch per α (CSV, table, plots)")
    _config_arguments(sweep, SWEEP_CONFIG)
    sweep.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS), metavar="ALPHA",
                       help="the fixed exposures to train at (default %(default)s); put key=value overrides before "
                       "this option, which takes every number after it")
    sweep.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="N",
                       help="training seeds 0..N-1 (run.seed) of each α (default %(default)s)")
    sweep.add_argument("--out", default="runs/sweep", help="output folder (default %(default)s)")
    sweep.add_argument("--mismatch-problems", type=int, default=DEFAULT_MISMATCH_PROBLEMS, metavar="P",
                       help="training problems whose rollouts measure the mismatch (default %(default)s)")
    sweep.set_defaults(handler=_sweep)

    compare = commands.add_parser("compare", help="base, SFT, GRPO, OPSD, best fixed α, random, ATESD and its "
                                  "ablations over several seeds (CSV, report.md, plots)")
    compare.add_argument("overrides", nargs="*", default=(), metavar="key=value",
                         help="dotted overrides for every method")
    compare.add_argument("--recipes", default=RECIPES, metavar="DIR", help="folder of method configs, or a "
                         "packaged one by name (`atesd config list`; default %(default)s)")
    compare.add_argument("--seeds", type=int, metavar="N",
                         help="training seeds 0..N-1 (run.seed) of each method (default 3; 2 with --quick)")
    compare.add_argument("--out", default="runs/compare", help="output folder (default %(default)s)")
    compare.add_argument("--quick", action="store_true", help="fewer seeds, steps and eval problems")
    compare.add_argument("--base-models", type=int, metavar="N",
                         help="every method on each of N embedded base models (warm-start seeds 0..N-1), paired "
                         "by base model and seed (default: the config's one base model)")
    compare.add_argument("--first-base-model", type=int, default=0, metavar="K",
                         help="with --base-models N: warm-start seeds K..K+N-1 instead, base models an earlier "
                         "comparison did not use (default %(default)s)")
    compare.add_argument("--alphas", type=float, nargs="+", metavar="ALPHA",
                         help="also a run at each fixed exposure (alpha-<α>; 1 is opsd), with the mismatch per α "
                         "of each base model; the best of them is the 'best fixed α' the report compares with")
    compare.add_argument("--mismatch-problems", type=int,
                         help="with --alphas: training problems whose rollouts measure the mismatch (default "
                         f"{DEFAULT_MISMATCH_PROBLEMS})")
    compare.add_argument("--jobs", type=int, default=1, metavar="N",
                         help="runs at once, one thread each (default %(default)s)")
    compare.add_argument("--reuse", action="append", metavar="DIR",
                         help="another comparison's or a sweep's out folder whose finished runs that are runs of "
                         "this one are taken instead of run again (repeatable)")
    compare.add_argument("--continue-from", metavar="DIR",
                         help="a comparison of the same runs with fewer updates (train.steps): each run here starts "
                         "from its run there and trains only the extra updates, where its first updates do not "
                         "depend on train.steps (constant lr, fixed or random exposure or a peer's rule); the others "
                         "run from scratch")
    compare.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES, metavar="METHOD",
                         help=f"methods to run (default all: {' '.join(METHOD_NAMES)}); put key=value overrides "
                         "before this option, which takes every word after it")
    best = compare.add_mutually_exclusive_group()
    best.add_argument("--best-alpha", type=float, help="α of fixed-best (default 0.5, the paper's best)")
    best.add_argument("--sweep", help="a sweep's out folder: fixed-best takes its best α, and its finished runs "
                      "that match a method's config are reused")
    compare.set_defaults(handler=_compare)

    testbed = commands.add_parser("testbed", help="the embedded base model over warm-start seeds: student and "
                                  "teacher accuracy per base model and bucket, with the health verdict")
    _config_arguments(testbed, SWEEP_CONFIG)
    testbed.add_argument("--base-models", type=int, default=10, metavar="N", help="the embedded base models of "
                         "warm-start seeds 0..N-1 (model.embedded.seed), as compare's --base-models (default "
                         "%(default)s)")
    testbed.add_argument("--jobs", type=int, default=1, metavar="N",
                         help="base models measured in parallel (default %(default)s)")
    testbed.add_argument("--out", default="runs/testbed", help="output folder (default %(default)s)")
    testbed.set_defaults(handler=_testbed)

    diagnose = commands.add_parser("diagnose", help="what each reward term says about α in runs where α varied: its "
                                   "slope on α, t, and the decisions it needs for t = 2 (table, CSV, JSON)")
    diagnose.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or compare / sweep out folders "
                          "(their runs whose α varied), pooled with one intercept per run")
    diagnose.add_argument("--out", help="folder for diagnose.md, .csv and .json (default: the one folder given, "
                          "else runs/diagnose)")
    diagnose.add_argument("--steps", type=int, metavar="N", help="only each run's first N updates: what a run "
                          "that stopped there would have said (e.g. 100 of a 300-update run)")
    diagnose.set_defaults(handler=_diagnose)

    config = commands.add_parser("config", help="the packaged configs, and a config as a run resolves it")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the config as a run writes its config.yaml: every default "
                              "filled in, the overrides applied")
    _config_arguments(show, optional=False)
    show.set_defaults(handler=_config_show)
    actions.add_parser("list", help="list the packaged configs, by the names every command takes") \
        .set_defaults(handler=_config_list)
    parser.commands = commands.choices  # for parse_args
    config.commands = actions.choices
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments of a command line. A command's own parser reads them intermixed, so that overrides may
    follow its options (argparse cannot intermix at the level of the subcommands); ``atesd config show`` is a
    command of two words."""
    parser = build_parser()
    target: argparse.ArgumentParser = parser
    words: list[str] = []
    for word in argv:
        choices: Mapping[str, argparse.ArgumentParser] = getattr(target, "commands", {})
        if word not in choices:
            break
        target = choices[word]
        words.append(word)
    if words and not hasattr(target, "commands"):
        args = target.parse_intermixed_args(argv[len(words):])
        args.command = " ".join(words)
        return args
    return parser.parse_args(argv)  # no command, or -h: argparse says what is missing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.command_line = shlex.join(["atesd", *(sys.argv[1:] if argv is None else argv)])  # for the reports
    # overrides, no config
    if args.command in ("demo", "sweep", "testbed", "eval") and args.config and "=" in args.config:
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        args.handler(args)
    except (UserError, FileNotFoundError) as error:  # the user's to fix: one line; anything else is a bug
        print("atesd: error: " + " ".join(line.strip() for line in str(error).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
