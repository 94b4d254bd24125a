"""The embedded task and model: generated problems, splits, the character tokenizer and chat template."""

from __future__ import annotations

import random

import pytest
from conftest import EMBEDDED_CONFIG
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
        *steps, boxed = problem.meta["student_solution"].split("\n")
        assert boxed == f"\\boxed{{{problem.answer}}}"
        assert len(steps) == problem.meta["num_ops"] and problem.meta["bucket"] == f"ops={len(steps)}"
        assert steps[-1].endswith(f"={problem.answer}")
        # The concise reference: fewer lines than operations allow, each line's value right, same answer.
        *lines, reference_boxed = problem.solution.split("\n")
        assert reference_boxed == boxed and len(lines) <= max(1, len(steps) - 1)
        for line in lines:
            left, value = line.split(" = ")
            assert eval(left) == int(value)
        assert lines[-1].endswith(f" = {problem.answer}")


def test_steps_style_keeps_the_old_references_and_the_same_questions():
    spec, old = ArithmeticSpec(digits=1, min_ops=2, max_ops=6, operators="+-"), None
    concise = make_splits(spec, {"train": 50}, seed=3)["train"]
    old = make_splits(ArithmeticSpec(digits=1, min_ops=2, max_ops=6, operators="+-", reference_style="steps"),
                      {"train": 50}, seed=3)["train"]
    assert [p.question for p in concise] == [p.question for p in old]
    assert all(p.solution == p.meta["student_solution"] for p in old)
    assert all(p.solution != p.meta["student_solution"] for p in concise)


def test_values_style_shows_each_step_value_without_its_operation():
    spec = ArithmeticSpec(digits=1, min_ops=2, max_ops=6, operators="+-*", reference_style="values")
    for problem in make_splits(spec, {"train": 30}, seed=5)["train"]:
        *steps, boxed = problem.meta["student_solution"].split("\n")
        *lines, reference_boxed = problem.solution.split("\n")
        assert reference_boxed == boxed and lines == [f"= {step.split('=')[1]}" for step in steps]


def test_slipped_completion_hides_the_slip_from_the_loss():
    from atesd.experiments.warm_start import slipped_completion
    from atesd.models.tiny import build_char_tokenizer
    tokenizer = build_char_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    ids, weights = slipped_completion("7+2=9\n9+4=13\n\\boxed{13}", random.Random(0), encode, tokenizer.eos_token_id)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    head, last, boxed = text.split("\n")
    assert head == "7+2=9" and last.startswith("9+4=") and last != "9+4=13" and boxed == "\\boxed{13}"
    unscored = tokenizer.decode([i for i, w in zip(ids, weights) if w == 0])
    assert unscored == last.removeprefix("9+4=")


def test_the_strong_teachers_answer_examples_need_more_than_half_of_the_reference():
    from atesd.experiments.warm_start import answers_at

    assert all(answers_at(None, alpha, m) for alpha in (0.0, 0.5, 1.0) for m in range(2, 7))
    assert not any(answers_at(0.5, alpha, m) for alpha in (0.0, 0.25, 0.5) for m in range(2, 7))
    assert all(answers_at(0.5, 1.0, m) for m in range(2, 7))
    # at 0.75: floor(0.75 m) of m lines, more than half from 3 lines on (1 of 2 is not)
    assert [answers_at(0.5, 0.75, m) for m in range(2, 7)] == [False, True, True, True, True]


def test_a_new_warm_start_setting_left_unset_keeps_the_cached_models_keys():
    from atesd.config import load_config
    from atesd.experiments.warm_start import warm_start_key

    default = load_config(EMBEDDED_CONFIG, [])
    assert warm_start_key(default) == warm_start_key(load_config(EMBEDDED_CONFIG,
                                                                 ["model.embedded.teacher_answer_above=null"]))
    strong = load_config(EMBEDDED_CONFIG.parent / "strong-teacher" / "opsd.yaml", [])
    assert strong.model.embedded.teacher_answer_above == 0.5 and warm_start_key(strong) != warm_start_key(default)
    assert warm_start_key(default) == "9594147f6a4a7096"  # the key the default's base model of seed 0 was cached under
    low = load_config(EMBEDDED_CONFIG.parent / "low-exposure" / "opsd.yaml", [])
    assert low.model.embedded.teacher_leap_share == 1.0 and warm_start_key(low) not in (
        warm_start_key(default), warm_start_key(strong))
    assert warm_start_key(strong) == warm_start_key(load_config(
        EMBEDDED_CONFIG.parent / "strong-teacher" / "opsd.yaml", ["model.embedded.teacher_leap_share=0"]))


def test_a_leaping_chain_leaves_out_every_other_line_and_keeps_the_answer():
    from atesd.experiments.warm_start import leaping_chain
    assert leaping_chain("8+2=10\n10+1=11\n\\boxed{11}") == "10+1=11\n\\boxed{11}"
    assert leaping_chain("6+8=14\n14+8=22\n22+3=25\n25-2=23\n\\boxed{23}") == "14+8=22\n25-2=23\n\\boxed{23}"
    # an odd number of lines keeps the first: the leap is between the kept lines
    assert leaping_chain("25*3=75\n17+75=92\n92-8=84\n\\boxed{84}") == "25*3=75\n92-8=84\n\\boxed{84}"
    assert leaping_chain("3*4=12\n\\boxed{12}") == "3*4=12\n\\boxed{12}"  # one operation: nothing to leap over


def test_a_carried_slip_computes_on_from_the_slipped_value_and_hides_only_the_slip():
    from atesd.data.arithmetic import parse_expression
    from atesd.experiments.warm_start import carried_slip_completion
    tokenizer = build_char_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    question = "Compute 17+25*3-8."
    assert parse_expression(question) == ([17, 25, 3, 8], ["+", "*", "-"])
    assert solve_steps(*parse_expression(question), slip=(0, 2)) == (["25*3=77", "17+77=94", "94-8=86"], 86)
    for seed in range(20):
        ids, weights = carried_slip_completion(question, random.Random(seed), encode, tokenizer.eos_token_id)
        *lines, boxed = tokenizer.decode(ids, skip_special_tokens=True).split("\n")
        wrong = [i for i, line in enumerate(lines) if line != ["25*3=75", "17+75=92", "92-8=84"][i]]
        assert wrong and boxed == f"\\boxed{{{lines[-1].split('=')[1]}}}" != "\\boxed{84}"
        for line in lines[wrong[0] + 1:]:  # every line after the slip is right arithmetic on the slipped value
            left, value = line.split("=")
            assert eval(left) == int(value)
        unscored = tokenizer.decode([i for i, w in zip(ids, weights) if w == 0])
        assert unscored == lines[wrong[0]].split("=")[1]


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


def test_the_health_split_is_disjoint_and_leaves_the_other_splits_unchanged():
    from atesd.config import load_config
    from atesd.data.arithmetic import embedded_splits

    task = load_config(None).data.task.model_copy(update={"train_size": 100, "test_size": 20})
    without = embedded_splits(task, 8)
    with_health = embedded_splits(task, 8, health_size=16)
    assert all(without[name] == with_health[name] for name in ("train", "probe", "test"))
    seen = {p.question for name in ("train", "probe", "test") for p in without[name]}
    assert len(with_health["health"]) == 16 and not seen & {p.question for p in with_health["health"]}


def test_char_tokenizer_spells_typography_in_ascii_and_refuses_other_characters():
    tokenizer = build_char_tokenizer()
    ids = tokenizer("Caf\u00e9 \u2014 \u201cx\u201d 2\u00d73\r\n", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == 'Cafe - "x" 2*3\n'
    assert tokenizer.pad_token_id not in ids
    with pytest.raises(Exception, match="Missing \\[UNK\\]"):  # never the pad token in its place
        tokenizer("Compute \u4e2d.", add_special_tokens=False)
