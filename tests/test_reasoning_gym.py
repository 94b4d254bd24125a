"""reasoning-gym as a data source: worked solutions that compute the answer, a benchmark held out of the training
questions, settings passed on to the task, and one-line errors."""

from __future__ import annotations

import pytest

from atesd.config import ConfigError, load_config
from atesd.data.problem import DataError
from atesd.data.reasoning_gym import benchmark_problems, training_problems
from atesd.eval.grading import grade
from atesd.eval.runner import benchmark_problems as benchmark_of_config
from atesd.train.problems import training_problems as training_of_config

CHAIN = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}


@pytest.mark.parametrize("task, settings", [("chain_sum", CHAIN), ("products", {"min_terms": 2, "max_terms": 3,
                                                                               "min_digits": 1, "max_digits": 1}),
                                            ("gsm_symbolic", {})])
def test_every_reference_is_a_worked_solution_ending_at_the_answer(task, settings):
    problems = training_problems(task, settings, size=20, seed=3)
    assert len({p.question for p in problems}) > 1 and [p.id for p in problems[:2]] == [f"{task}-train-0",
                                                                                     f"{task}-train-1"]
    for problem in problems:
        assert "####" not in problem.solution and problem.solution.strip()
        if task != "gsm_symbolic":  # one operation a line, the last one's value the answer
            lines = problem.solution.splitlines()
            assert lines[-1].rsplit("= ", 1)[1] == problem.answer
            assert all(eval(line.split(" = ")[0]) == int(line.split(" = ")[1]) for line in lines)
        assert grade(f"so \\boxed{{{problem.answer}}}", problem.answer).correct
    assert training_problems(task, settings, size=20, seed=3) == problems  # a function of the seed


def test_the_benchmark_is_held_out_of_the_training_questions():
    small = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}  # about 200 distinct questions
    train = training_problems("chain_sum", small, size=100, seed=0)
    test = benchmark_problems("chain_sum", small, train_size=100, test_size=50, seed=0)
    assert len(test) == 50 and not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in test}) == 50
    with pytest.raises(DataError, match="gave only .* questions outside the 1000 training problems"):
        benchmark_problems("chain_sum", small, train_size=1000, test_size=100, seed=0)


def test_configs_read_the_section():
    section = ("data.train=reasoning-gym", ("data.reasoning_gym={task: chain_sum, settings: {min_terms: 2, "
               "max_terms: 3, min_digits: 1, max_digits: 2}, train_size: 80, test_size: 10}"), "data.probe_size=8",
               "eval.benchmarks=[reasoning-gym]")
    config = load_config("configs/embedded/opsd.yaml", section)
    train, probe = training_of_config(config)
    assert (len(train), len(probe)) == (72, 8)
    assert len(benchmark_of_config(config, "reasoning-gym")) == 10
    with pytest.raises(ConfigError, match=r"data.train and eval.benchmarks name reasoning-gym: set data.reasoning_gym"):
        load_config("configs/embedded/opsd.yaml", ["data.train=reasoning-gym", "eval.benchmarks=[reasoning-gym]"])
    with pytest.raises(ConfigError, match="data.reasoning_gym.task"):
        load_config("configs/embedded/opsd.yaml", ["data.reasoning_gym={task: sudoku}"])
    bad = load_config("configs/embedded/opsd.yaml", ["data.train=reasoning-gym",
                                                     "data.reasoning_gym={task: chain_sum, settings: {colour: 3}}"])
    with pytest.raises(DataError, match=r"task 'chain_sum' refuses its settings \{'colour': 3\}"):
        training_of_config(bad)
