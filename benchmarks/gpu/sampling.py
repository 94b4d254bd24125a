"""The HF engine's samplers side by side on a GPU at Qwen3-1.7B shapes: transformers' generate, atesd's decode
loop (`atesd.rollout.decode`, the default) and the loop with its decode step compiled (``rollout.loop.compile``).

A randomly initialised model (`shapes.build_model_dir`, or ``--model-dir``) in bf16, plain or with the recipe's
LoRA (``--lora``: r 64 on every projection, through atesd's own loader), samples ``--max-new-tokens`` tokens after
prompts of 40–80 random token ids at each ``--batch-sizes``, at the recipe's sampling settings (temperature 1.0,
top-p 0.95). Each variant's first round is untimed (CUDA set-up, and compiling); the second is timed, with the
GPU synchronised. A random model almost never samples EOS, so a round is ``--max-new-tokens`` decode steps: the
report gives milliseconds per decode step, generated tokens/s, and whether each variant sampled generate's tokens
(in bf16 a kernel that rounds differently can change a token, and every later one of its row).

    python benchmarks/gpu/sampling.py --out gpu_sampling.json   # on a CUDA GPU
    python benchmarks/gpu/sampling.py --tiny                    # tiny shapes in float32: a CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from shapes import add_shape_flags, build_model_dir, device_shapes

from atesd.config import load_config
from atesd.rollout import DecodeOptions, HFGenerateEngine, SamplingParams
from atesd.train.base_model import load_model

VARIANTS = {"generate": ("generate", DecodeOptions()), "loop": ("loop", DecodeOptions()),
            "loop-compiled": ("loop", DecodeOptions(compile=True))}


def timed_round(engine: HFGenerateEngine, prompts: list[list[int]], sampling: SamplingParams) -> tuple[list, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = engine.generate(prompts, sampling, torch.Generator().manual_seed(0))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out.completion_ids, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_flags(parser)
    parser.add_argument("--lora", action="store_true", help="the recipe's LoRA adapters on every projection")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 96])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("gpu_sampling.json"))
    args = parser.parse_args(argv)
    cuda, label, shapes, dtype = device_shapes(parser, args)
    lora = ("{r: 8, alpha: 16}" if args.tiny else "{r: 64, alpha: 128}") if args.lora else "null"
    sampling = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=args.max_new_tokens)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or build_model_dir(Path(scratch) / "model", shapes, dtype)
        config = load_config(None, [f"model.name_or_path={model_dir}", f"model.dtype={dtype}", f"model.lora={lora}"])
        model, tokenizer = load_model(config)
        model.eval()
        if cuda:
            model.cuda()
        random = torch.Generator().manual_seed(0)
        for batch_size in args.batch_sizes:
            lengths = torch.randint(40, 81, (batch_size,), generator=random).tolist()
            prompts = [torch.randint(3, 100, (n,), generator=random).tolist() for n in lengths]
            reference = None
            for name in args.variants:
                sampler, options = VARIANTS[name]
                engine = HFGenerateEngine(model, pad_token_id=tokenizer.pad_token_id,
                                          eos_token_id=tokenizer.eos_token_id, batch_size=batch_size,
                                          sampler=sampler, decode_options=options)
                _, first = timed_round(engine, prompts, sampling)
                tokens, seconds = timed_round(engine, prompts, sampling)
                reference = reference if reference is not None else tokens
                generated = sum(map(len, tokens))
                rows.append({"batch_size": batch_size, "variant": name, "first_round_s": first, "seconds": seconds,
                             "generated_tokens": generated, "tokens_per_s": generated / seconds,
                             "ms_per_decode_step": 1000 * seconds / max(map(len, tokens)),
                             "same_tokens_as_first_variant": tokens == reference,
                             "sampler_used": engine.sampler})
                print(json.dumps(rows[-1]), flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if cuda else "cpu", "shapes": label, "dtype": dtype,
              "lora": args.lora, "max_new_tokens": args.max_new_tokens, "torch": torch.__version__, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
