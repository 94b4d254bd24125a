"""The GPU check's models and data, made locally so that nothing is downloaded.

`QWEN3_1_7B` is Qwen3-1.7B's published architecture; `TINY` the same family at shapes a CPU runs in seconds
(the ``--tiny`` smoke test). `build_model_dir` writes a randomly initialised model of either shape with atesd's
character tokenizer as a ``from_pretrained`` directory (the model's vocabulary is larger than the tokenizer's: a
random model samples ids the tokenizer decodes to nothing, which is fine for timing). `write_problems` writes
generated arithmetic problems as the JSONL a user's data would be.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from atesd.data.arithmetic import ArithmeticSpec, make_splits
from atesd.models.tiny import build_char_tokenizer

QWEN3_1_7B = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
              "max_position_embeddings": 40960, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True}
TINY = {**QWEN3_1_7B, "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def add_shape_flags(parser: argparse.ArgumentParser) -> None:
    """``--tiny`` and ``--model-dir``, which every timed part of the check takes."""
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test); Qwen3-1.7B otherwise")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a model made by shapes.build_model_dir (made in a scratch folder otherwise)")


def device_shapes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[bool, str, dict, str]:
    """(CUDA?, label, architecture, dtype) for the parsed flags; full shapes without a GPU are an error."""
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        parser.error("no CUDA GPU: run with --tiny for the CPU smoke test")
    return (cuda, *shapes_for(args.tiny))


def shapes_for(tiny: bool) -> tuple[str, dict, str]:
    """(label, architecture, dtype): float32 at tiny shapes (CPUs are slow at bf16 matmuls), bf16 otherwise."""
    return ("tiny", TINY, "float32") if tiny else ("Qwen3-1.7B", QWEN3_1_7B, "bfloat16")


def build_model_dir(target: Path, shapes: dict, dtype: str) -> Path:
    """A random Qwen3 model with `shapes` and the character tokenizer, saved to `target` (kept if already there).

    The weights are initialised on the GPU when there is one: 1.7B parameters initialise in seconds there and
    in about a minute on a CPU."""
    if (target / "config.json").is_file():
        return target
    tokenizer = build_char_tokenizer()
    config = Qwen3Config(**shapes, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def write_problems(path: Path, count: int, *, with_answers: bool = False) -> Path:
    """`count` generated arithmetic problems as JSONL (`id`, `problem`, `solution`; and `answer` for a benchmark)."""
    problems = make_splits(ArithmeticSpec(digits=2, min_ops=3, max_ops=6, operators="+-*"), {"train": count},
                           seed=0)["train"]
    rows = [{"id": p.id, "problem": p.question, "solution": p.solution, **({"answer": p.answer} if with_answers
                                                                           else {})} for p in problems]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
