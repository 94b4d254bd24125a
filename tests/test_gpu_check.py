"""The GPU check script runs end to end at tiny shapes on CPU and writes its report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_tiny_runs_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "report.json"
    gpu_check.main(["--tiny", "--steps", "2", "--batch-size", "2", "--micro-batch-size", "1",
                    "--max-new-tokens", "12", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["shapes"] == "tiny" and report["peak_gpu_memory_gib"] is None
    assert [s["step"] for s in report["steps"]] == [1, 2]
    # a random model never stops early: every rollout runs to max_new_tokens
    assert all(s["generated_tokens"] == 2 * 12 for s in report["steps"])
    assert report["rollout_tokens_per_s"] > 0 and report["training_tokens_per_s"] > 0
    assert 0 < report["trainable_parameters"] < report["parameters"]  # LoRA


def test_full_shapes_are_qwen3_1_7b():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    from transformers import Qwen3Config

    config = Qwen3Config(**gpu_check.QWEN3_1_7B)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (151936, 2048, 28)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (16, 8, 6144)
