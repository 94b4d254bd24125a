"""The configs that ship with the package, found by name from any folder (`atesd.packaged`); ``atesd config show``
and ``atesd config list``; ``atesd --version``; help text on every argument; one meaning of --seeds."""

from __future__ import annotations

import argparse

import pytest
import yaml

import atesd
from atesd.cli import build_parser, main
from atesd.config import load_config, save_config
from atesd.errors import UserError
from atesd.packaged import PACKAGED, packaged_configs, packaged_folders, resolve_config


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working folder outside the repository, as a user's after `pip install atesd`."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("atesd: error: "), err
    return err[0]


@pytest.mark.parametrize("name", ["embedded/opsd", "embedded/opsd.yaml", "configs/embedded/opsd.yaml",
                                  "./embedded/opsd"])
def test_a_packaged_config_is_found_by_name_from_any_folder(elsewhere, name):
    assert resolve_config(name) == PACKAGED / "embedded" / "opsd.yaml"


@pytest.mark.parametrize("name", ["embedded", "embedded/strong-teacher", "configs/embedded/", "qwen3-8b"])
def test_a_packaged_recipe_folder_is_found_by_name(elsewhere, name):
    found = resolve_config(name, folder=True)
    assert found.is_dir() and (found / "opsd.yaml").is_file()


def test_a_path_comes_before_a_packaged_name(elsewhere):
    (elsewhere / "embedded").mkdir()
    (elsewhere / "embedded" / "opsd.yaml").write_text("method: sft\n")
    assert resolve_config("embedded/opsd.yaml").resolve() == elsewhere / "embedded" / "opsd.yaml"
    assert resolve_config("embedded/opsd") == PACKAGED / "embedded" / "opsd.yaml"  # no such file here
    assert resolve_config("embedded", folder=True).resolve() == elsewhere / "embedded"


def test_every_packaged_config_loads_with_its_extends():
    names = packaged_configs()
    assert {"embedded/atesd", "embedded/strong-teacher/opsd", "qwen3-8b/opsd-full"} <= set(names)
    assert not [name for name in names if name.startswith("accelerate/")]  # accelerate's, not atesd's
    for name in names:
        load_config(resolve_config(name))
    strong = load_config(resolve_config("embedded/strong-teacher/atesd"))  # extends ../atesd.yaml
    assert strong.method == "atesd" and strong != load_config(resolve_config("embedded/atesd"))
    assert "embedded/strong-teacher" in packaged_folders()


@pytest.mark.parametrize("argv,said", [
    (["config", "show", "nope"], ("CONFIG 'nope': no such file, and no packaged config of that name (packaged: "
                                  "embedded/{adaptive,atesd,grpo,opsd,sft}, ")),
    (["train", "embedded/nope"], "CONFIG 'embedded/nope': no such file"),
    (["demo", "embedded"], "CONFIG 'embedded': not a file, and no packaged config"),
    (["compare", "--recipes", "nope"], ("--recipes 'nope': no such folder, and no packaged folder of configs of "
                                        "that name (packaged: embedded, embedded/{low-exposure,strong-teacher}, "
                                        "qwen3-1.7b, ")),
])
def test_an_unknown_config_is_one_line_and_exit_2(elsewhere, capsys, argv, said):
    if argv[0] == "demo":
        (elsewhere / "embedded").mkdir()  # a folder of that name here is not a config file
    assert main(argv) == 2
    assert said in one_line_error(capsys)


def test_config_show_prints_the_config_a_run_writes(tmp_path, capsys):
    assert main(["config", "show", "embedded/atesd", "train.steps=7", "exposure.hold_steps=3"]) == 0
    shown = capsys.readouterr().out
    save_config(load_config(PACKAGED / "embedded" / "atesd.yaml", ["train.steps=7", "exposure.hold_steps=3"]),
                tmp_path / "config.yaml")
    assert shown == (tmp_path / "config.yaml").read_text()
    tree = yaml.safe_load(shown)
    assert tree["method"] == "atesd" and tree["train"]["steps"] == 7 and tree["exposure"]["hold_steps"] == 3
    assert "controller" in tree["exposure"] and "lookahead" in tree["exposure"]["controller"]  # defaults filled in


def test_config_show_refuses_a_bad_override_in_one_line(capsys):
    assert main(["config", "show", "embedded/opsd", "train.stepz=3"]) == 2
    assert "train.stepz: unknown key" in one_line_error(capsys)


def test_config_list_names_every_packaged_config(elsewhere, capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:len(packaged_configs())] == packaged_configs()
    assert any(line.startswith("recipe folders (atesd compare --recipes): embedded, ") for line in lines)
    assert any("accelerate/{ddp.yaml," in line for line in lines) and lines[-1] == f"all in {PACKAGED}"


def test_demo_sweep_testbed_and_quick_compare_find_their_configs_from_another_folder(elsewhere, monkeypatch,
                                                                                      capsys):
    import atesd.experiments.compare as compare_module
    import atesd.experiments.sweep as sweep_module
    import atesd.experiments.testbed as testbed_module
    from atesd import cli

    taken = {}

    def stop_at_load(path, overrides=()):
        taken["demo"] = path
        raise UserError("stopped here")

    def record(command):
        def run(path, *args, **kwargs):
            taken[command] = path
            return []
        return run

    monkeypatch.setattr(cli, "load_config", stop_at_load)
    monkeypatch.setattr(compare_module, "run_compare", record("compare"))
    monkeypatch.setattr(sweep_module, "run_sweep", record("sweep"))
    monkeypatch.setattr(testbed_module, "run_testbed", record("testbed"))
    assert main(["demo"]) == 2 and "stopped here" in one_line_error(capsys)
    for argv in (["compare", "--quick"], ["sweep"], ["testbed"]):
        assert main(argv) == 0, argv
    assert taken == {"demo": PACKAGED / "embedded" / "atesd.yaml", "compare": PACKAGED / "embedded",
                     "sweep": PACKAGED / "embedded" / "opsd.yaml", "testbed": PACKAGED / "embedded" / "opsd.yaml"}
    # and every recipe of the comparison loads from there, with --quick's overrides
    for method in compare_module.methods(compare_module.PAPER_BEST_ALPHA).values():
        load_config(taken["compare"] / method.recipe, [*compare_module.quick_overrides(), *method.overrides])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"atesd {atesd.__version__}\n"


def _parsers(parser: argparse.ArgumentParser, prog: str = "atesd"):
    """`parser` and every parser of its subcommands, each with its command line."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{prog} {name}: no help line"
                yield from _parsers(sub, f"{prog} {name}")


def test_every_argument_of_every_command_has_help():
    missing = [f"{prog}: {action.option_strings or action.metavar or action.dest}"
               for prog, parser in _parsers(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and not (action.help or "").strip()]
    assert not missing, missing


def test_seeds_are_training_seeds_and_base_models_warm_start_seeds_in_every_command():
    flags = {(prog, flag): action.help for prog, parser in _parsers(build_parser()) for action in parser._actions
             for flag in action.option_strings if flag in ("--seeds", "--base-models")}
    assert {prog for prog, flag in flags if flag == "--seeds"} == {"atesd sweep", "atesd compare"}
    assert {prog for prog, flag in flags if flag == "--base-models"} == {"atesd compare", "atesd testbed"}
    for (prog, flag), text in flags.items():
        assert ("training seeds 0..N-1" if flag == "--seeds" else "warm-start seeds 0..N-1") in text, (prog, flag)


def test_the_wheel_carries_every_packaged_config():
    """pyproject's package data (configs/**/*.yaml) covers every file in the configs folder: a .yml or another
    file there would be missing from a wheel (checked by hand with `pip wheel` and `unzip -l`)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((PACKAGED.parents[2] / "pyproject.toml").read_text())
    assert "configs/**/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["atesd"]
    files = [path for path in PACKAGED.rglob("*") if path.is_file()]
    assert files and all(path.suffix == ".yaml" for path in files), files
    assert (PACKAGED.parents[2] / "configs").resolve() == PACKAGED  # the checkout's configs/ is a link to it


@pytest.mark.parametrize("parent", ["qwen3-1.7b/adaptive", "configs/qwen3-1.7b/adaptive.yaml"])
def test_a_users_config_extends_a_packaged_one_by_name_from_any_folder(elsewhere, parent):
    (elsewhere / "my-run.yaml").write_text(f"extends: {parent}\ntrain:\n  steps: 7\n")
    config = load_config(resolve_config("my-run.yaml"))
    recipe = load_config(resolve_config("qwen3-1.7b/adaptive"))
    assert config.train.steps == 7 and config.teacher == recipe.teacher and config.model == recipe.model


def test_a_file_beside_the_config_comes_before_a_packaged_name(elsewhere):
    (elsewhere / "embedded").mkdir()
    (elsewhere / "embedded" / "opsd.yaml").write_text("method: sft\n")
    (elsewhere / "mine.yaml").write_text("extends: embedded/opsd.yaml\n")
    assert load_config(resolve_config("mine.yaml")).method == "sft"
    (elsewhere / "other.yaml").write_text("extends: embedded/nope.yaml\n")
    with pytest.raises(UserError, match=r"config file not found: embedded/nope.yaml \(extended by .*other.yaml\)"):
        load_config(resolve_config("other.yaml"))
