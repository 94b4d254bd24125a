"""The embedded task and model: generated problems, splits, the character tokenizer and chat template."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from atesd.data.arithmetic import ArithmeticSpec, make_problem, make_splits, solve_steps
from atesd.models.tiny import build_char_tokenizer


def test_solution_lines_follow_operator_precedence():
    lines, answer = solve_steps([17, 25, 3, 8], ["+", "*", "-"])
    assert lines == ["25*3=75", "17+75=92", "92-8=84"]
    assert answer == 84


def test_problem_text_and_answer_agree_with_python():
    rng = random.Random(0)
    spec = ArithmeticSpec(digits=2, min_ops=1, max_ops=4, operators="+-*")
    for index in range(200):
        problem = make_problem(rng, 1 + index % 4, spec, f"p{index}")
        expression = problem.question.removeprefix("Compute ").removesuffix(".")
        assert int(problem.answer) == eval(expression)
        *steps, boxed = problem.solution.split("\n")
        assert boxed == f"\\boxed{{{problem.answer}}}"
        assert len(steps) == problem.meta["num_ops"] and problem.meta["bucket"] == f"ops={len(steps)}"
        assert steps[-1].endswith(f"={problem.answer}")


def test_splits_are_seeded_disjoint_and_balanced():
    spec = ArithmeticSpec(digits=1, min_ops=2, max_ops=5, operators="+-")
    sizes = {"train": 400, "probe": 16, "test": 80}
    first, again = make_splits(spec, sizes, seed=7), make_splits(spec, sizes, seed=7)
    assert [p.question for p in first["test"]] == [p.question for p in again["test"]]
    assert [p.question for p in make_splits(spec, sizes, seed=8)["test"]] != [p.question for p in first["test"]]
    questions = {name: {p.question for p in problems} for name, problems in first.items()}
    assert {name: len(q) for name, q in questions.items()} == sizes
    assert not questions["train"] & questions["test"] and not questions["train"] & questions["probe"]
    assert not questions["probe"] & questions["test"]
    buckets = [p.meta["bucket"] for p in first["test"]]
    assert {b: buckets.count(b) for b in set(buckets)} == {f"ops={k}": 20 for k in range(2, 6)}


def test_bad_task_knobs_and_exhausted_space_are_errors():
    with pytest.raises(ValueError, match="operators"):
        ArithmeticSpec(operators="+/")
    with pytest.raises(ValueError, match="min_ops"):
        ArithmeticSpec(min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="distinct"):
        make_splits(ArithmeticSpec(digits=1, min_ops=1, max_ops=1, operators="+"), {"train": 100}, seed=0)


def test_char_tokenizer_round_trips_and_chat_template_follows_qwen3(tmp_path):
    tokenizer = build_char_tokenizer()
    text = "Compute 3+4.\n\\boxed{7}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    messages = [{"role": "user", "content": "Hi"}]
    plain = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    no_think = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                          enable_thinking=False)
    assert no_think == plain + "<think>\n\n</think>\n\n"
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                      enable_thinking=True) == plain
    assert loaded.convert_ids_to_tokens(loaded(no_think, add_special_tokens=False)["input_ids"])[0] == "<|im_start|>"
