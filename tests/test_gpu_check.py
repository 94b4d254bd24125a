"""The one-command GPU check (benchmarks/gpu/run.sh) runs end to end at tiny shapes on CPU, wheel install
included, and writes its report; its full shapes are Qwen3-1.7B's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_run_sh_tiny_installs_the_wheels_and_runs_every_part(tmp_path):
    wheels = load("wheels").main(["--dest", str(tmp_path / "wheels"),
                                  "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"])
    assert {path.name.split("-")[0] for path in wheels.glob("*.whl")} >= {"atesd", "math_verify", "pydantic"}
    site = tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "ATESD_GPU_WHEELS": str(wheels), "ATESD_GPU_SITE": str(site),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(GPU / "run.sh"), str(tmp_path / "out"), "--tiny"], check=False, env=env,
                          capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["all_ok"] and list(report["parts"]) == ["agreement", "eval", "fsdp", "sampling", "lora"]
    # atesd and what a GPU machine lacks came from the scratch install, not from this environment
    packages = report["environment"]["packages"]
    for name in ("atesd", "math_verify", "pydantic"):
        assert packages[name]["from"].startswith(str(site)), packages[name]
    parts = {name: part["result"] for name, part in report["parts"].items()}
    assert parts["agreement"]["agree"] and parts["agreement"]["worst_rel_diff"] == 0.0  # CPU against CPU
    assert parts["eval"]["generated_tokens"] == 4 * 2 * 16  # a random model never stops early
    assert parts["lora"]["training"] == "LoRA" and parts["lora"]["trainable_parameters"] < parts["lora"]["parameters"]
    assert parts["fsdp"]["training"] == "full, FSDP2" and parts["fsdp"]["sharded_processes"] == 1
    # the samplers on a LoRA model: atesd's decode loop draws exactly generate's tokens
    rows = parts["sampling"]["rows"]
    assert [(r["variant"], r["sampler_used"]) for r in rows] == [("generate", "generate"), ("loop", "loop")]
    assert all(r["same_tokens_as_first_variant"] and r["generated_tokens"] == 2 * 8 for r in rows)
    for part in ("lora", "fsdp"):
        assert set(parts[part]["median_seconds"]) == {"rollout", "teacher", "update", "probe", "exposure", "step"}
        assert parts[part]["rollout_tokens_per_s"] > 0 and parts[part]["training_tokens_per_s"] > 0
    for name in report["parts"]:
        assert (tmp_path / "out" / f"{name}.log").is_file()


def test_run_sh_without_wheels_says_what_to_do(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "ATESD_GPU_WHEELS": str(tmp_path / "none")}
    done = subprocess.run(["bash", str(GPU / "run.sh"), str(tmp_path / "out"), "--tiny"], check=False, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "make gpu-wheels" in done.stderr
    assert not (tmp_path / "out").exists()


def test_run_sh_refuses_wheels_built_from_other_sources(tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "atesd-0.1.0-py3-none-any.whl").write_bytes(b"")
    (stale / "atesd-source.sha256").write_text("0" * 64)
    env = {**os.environ, "PYTHON": sys.executable, "ATESD_GPU_WHEELS": str(stale)}
    done = subprocess.run(["bash", str(GPU / "run.sh"), str(tmp_path / "out"), "--tiny"], check=False, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "make gpu-wheels" in done.stderr and "other sources" in done.stderr


def test_full_shapes_are_qwen3_1_7b():
    from transformers import Qwen3Config

    config = Qwen3Config(**load("shapes").QWEN3_1_7B)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (151936, 2048, 28)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (16, 8, 6144)


def test_agreement_compares_every_gradient():
    import torch

    agreement = load("agreement")
    cpu = {"probe_nll": torch.tensor(2.0)}
    for alpha in agreement.ALPHAS:
        cpu |= {f"{alpha}/loss": torch.tensor(1.0), f"{alpha}/g_t": torch.tensor(-3.0),
                f"{alpha}/grad/a": torch.tensor([3.0, 4.0]), f"{alpha}/grad/b": torch.tensor([0.0])}
    other = dict(cpu) | {"1.0/grad/b": torch.tensor([0.05])}  # one gradient off by 0.05 against a norm of 5
    report = agreement.compare(cpu, other)
    assert report["0.5"]["grad_rel_diff"] == 0.0
    assert report["1.0"]["grad_rel_diff"] == pytest.approx(0.01)
    assert not report["agree"] and report["worst_rel_diff"] == pytest.approx(0.01)
    assert agreement.compare(cpu, dict(cpu))["agree"]


def test_a_misspelled_part_is_an_error_naming_it():
    """--parts with a part that does not exist used to run nothing and say nothing."""
    done = subprocess.run([sys.executable, str(GPU / "check.py"), "--out", "unused", "--tiny", "--parts", "agrement"],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice: 'agrement'" in done.stderr
