"""The sync guard against the real vLLM engine: the log-probability gap between vLLM and the training model after a
correct weight sync, after a skipped one, and (LoRA served as a request) with the adapter dropped.

A real run trains (`atesd.train.recipe.Trainer`, ``rollout.engine=vllm``) for ``--steps`` updates. After each
update, before the next sync, the guard's gap is measured on a fixed student prompt (the first training problem's):
vLLM then still holds the weights of the update before, which is exactly what a skipped sync would leave (``skipped``).
The next step syncs and its guard logs the gap after a correct sync (``synced``, metrics.jsonl's ``sync_gap``).
With ``rollout.vllm.lora=request`` the gap of vLLM's base weights without the request is measured too (``dropped``:
an adapter that never arrived). ``rollout.vllm.sync_check_tolerance`` is set from these
(docs/scaling.md#the-sync-guard).

Runs in the real-vLLM environment (``make test-vllm`` builds it). ``--quick`` (a smoke run): 2 updates; an embedded
config on the tiny model (harness.quick_overrides)::

    .venv-vllm/bin/python benchmarks/bench_vllm_sync.py configs/embedded/opsd.yaml --out runs/bench/sync-embedded.json
    .venv-vllm/bin/python benchmarks/bench_vllm_sync.py configs/smollm2-135m/opsd.yaml \\
        --out runs/bench/sync-smollm2.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from harness import add_common_flags, apply_threads, load_bench_config, markdown_table, write_results

from atesd.rollout.vllm import served_logprobs
from atesd.train.recipe import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a training config (its rollouts go through vLLM here)")
    parser.add_argument("overrides", nargs="*", default=(), metavar="key=value")
    parser.add_argument("--steps", type=int, default=10, help="updates (default %(default)s)")
    add_common_flags(parser, repeats=1)
    args = parser.parse_args()
    apply_threads(args.threads)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    steps = 2 if args.quick else args.steps
    with tempfile.TemporaryDirectory(prefix="atesd-sync-") as runs:
        config = load_bench_config(args.config, [*args.overrides, "rollout.engine=vllm", f"train.steps={steps}",
                                                 f"run.output_dir={runs}", "eval.every=0"], args.quick, vllm=True)
        trainer = Trainer(config)
        engine = trainer.sampler.engine
        check = engine.sync_check
        prompt = trainer.prompts.student(trainer.train_problems[0])
        rows = []
        for _ in range(steps):
            record = trainer.train_step()
            row = {"step": record["step"], "synced": record["sync_gap"],
                   "skipped": check.gap(lambda ids: served_logprobs(engine.vllm, engine.llm, ids, engine.lora_request),
                                        trainer.unwrapped, prompt)}
            if engine.lora_request is not None:
                row["dropped"] = check.gap(lambda ids: served_logprobs(engine.vllm, engine.llm, ids, None),
                                           trainer.unwrapped, prompt)
            rows.append(row)
            print(row, flush=True)
        trainer.release()
    kinds = [kind for kind in ("synced", "skipped", "dropped") if kind in rows[0]]
    summary = {kind: {"min": min(r[kind] for r in rows), "median": statistics.median(r[kind] for r in rows),
                      "max": max(r[kind] for r in rows)} for kind in kinds}
    print(markdown_table(["gap (nats/token)", "min", "median", "max"],
                         [[kind, *(f"{summary[kind][s]:.2e}" for s in ("min", "median", "max"))] for kind in kinds]))
    write_results(args.out, "vllm_sync", args, {
        "config": str(args.config), "overrides": list(args.overrides), "steps": steps, "tokens": check.tokens,
        "lora": config.rollout.vllm.lora if config.model.lora else None, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
