"""The command line's arguments: overrides before or after the options, and usage lines that say so."""

from __future__ import annotations

import pytest

from atesd.cli import build_parser, parse_args


@pytest.mark.parametrize("argv", [["train", "run.yaml", "--resume", "train.steps=50", "eval.num_samples=2"],
                                  ["train", "run.yaml", "train.steps=50", "--resume", "eval.num_samples=2"],
                                  ["train", "--resume", "run.yaml", "train.steps=50", "eval.num_samples=2"]])
def test_overrides_may_follow_resume(argv):
    args = parse_args(argv)
    assert args.command == "train" and args.config == "run.yaml" and args.resume
    assert list(args.overrides) == ["train.steps=50", "eval.num_samples=2"]


def test_eval_overrides_around_its_options():
    args = parse_args(["eval", "run.yaml", "--model", "m", "eval.max_problems=3", "--teacher-alpha", "0.5",
                       "eval.num_samples=2"])
    assert args.model == "m" and args.teacher_alpha == 0.5
    assert list(args.overrides) == ["eval.max_problems=3", "eval.num_samples=2"]


def test_usage_lines_name_the_config_and_the_overrides(capsys):
    usage = build_parser().commands["train"].format_usage()
    assert "CONFIG [key=value ...]" in usage
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["train"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "required: CONFIG" in err and "key=value" not in err.splitlines()[-1]
