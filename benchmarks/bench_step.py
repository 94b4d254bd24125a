"""One training step on the embedded default for each method, and where its time goes.

Each method trains from the same cached base model and seed with its own recipe (``configs/embedded/<method>.yaml``
as shipped; ATESD and OPSD measure the probe NLL every step, GRPO samples its group of rollouts per prompt).
Every variant's trainer is built first, then the steps run in turn, one step of each variant after the other, so
that a machine that gets busier or quieter during the run weighs on all of them. After `--warmup` untimed steps,
`--repeats` steps are timed from the trainer's own per-step record:

- ``rollout_time`` (sampling, with grading), ``teacher_time`` (teacher forwards: the distillation targets and the
  reference scoring g_t), ``update_time`` (student forward, backward, optimizer), ``probe_time`` (probe NLL),
  ``step_time``; ``generated_tokens`` and ``forward_tokens`` (tokens through scoring forwards).

A key the trainer does not write (yet) shows as None. Throughput is generated tokens per second of each part
(rollout: sampled; teacher and update: scored), and forward tokens per second of teacher + update; the share of
each part is its time over the step's. Variants with ``+bf16`` set ``train.bf16_autocast``: their first step
uses the same rollouts as the float32 run (same seed, same weights, and sampling is never autocast), so the
difference of the step-0 loss and mean KL is the numerical effect of autocast alone. Variants with ``+generate``
sample with transformers' generate (``rollout.sampler=generate``, the sampler before issue 27) instead of atesd's
decode loop: the same tokens, so the same steps, at another sampling cost. ``cpu_step_s`` is the step's CPU time
in this process (steadier than wall time on a shared machine). ``--quick``: every variant on the tiny embedded
model (harness.quick_overrides), one untimed step and at most three timed.

    python benchmarks/bench_step.py --out runs/bench/step.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import add_common_flags, apply_threads, markdown_table, quick_overrides, write_results

from atesd.config import load_config
from atesd.train.recipe import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "embedded"
TIME_KEYS = ["rollout_time", "teacher_time", "update_time", "probe_time"]
VARIANTS = {
    "opsd": ("opsd.yaml", []),
    "atesd": ("atesd.yaml", []),
    "grpo": ("grpo.yaml", []),
    "opsd+bf16": ("opsd.yaml", ["train.bf16_autocast=true"]),
    "opsd+generate": ("opsd.yaml", ["rollout.sampler=generate"]),
    "atesd+generate": ("atesd.yaml", ["rollout.sampler=generate"]),
    "grpo+generate": ("grpo.yaml", ["rollout.sampler=generate"]),
}


def build_trainer(name: str, args: argparse.Namespace, output_dir: str) -> Trainer | dict:
    """The variant's trainer, ready for its first step, or a row with the reason it cannot run."""
    config_file, overrides = VARIANTS[name]
    if not (CONFIGS / config_file).is_file():
        return {"variant": name, "error": f"configs/embedded/{config_file} does not exist on this branch"}
    steps = args.warmup + args.repeats
    config = load_config(CONFIGS / config_file, [
        *quick_overrides(args.quick), *overrides, f"run.output_dir={output_dir}", f"run.name={name}",
        f"train.steps={steps}", f"run.seed={args.seed}", f"train.checkpoint_every={steps}"])
    trainer = Trainer(config)
    trainer.last_probe_nll = trainer.probe_nll()  # what train() does before its first step
    return trainer


def timed_step(trainer: Trainer, runs: dict) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    runs["records"].append(trainer.train_step())
    runs["wall"].append(time.perf_counter() - started)
    runs["cpu"].append(time.process_time() - cpu)


def summarise(name: str, trainer: Trainer, runs: dict, args: argparse.Namespace) -> dict:
    records, wall = runs["records"], runs["wall"]
    config = trainer.config
    timed = records[args.warmup:]

    def mean(key: str) -> float | None:
        values = [r.get(key) for r in timed]
        return None if any(v is None for v in values) else statistics.mean(values)

    row = {"variant": name, "method": config.method, "steps_timed": len(timed),
           "step_s": statistics.mean(wall[args.warmup:]),
           "step_s_std": statistics.stdev(wall[args.warmup:]) if len(timed) > 1 else 0.0,
           "cpu_step_s": statistics.mean(runs["cpu"][args.warmup:]),
           "step_time": mean("step_time"), "generated_tokens": mean("generated_tokens"),
           "forward_tokens": mean("forward_tokens"), "first_loss": records[0].get("loss"),
           "first_kl_mean": records[0].get("kl_mean"),
           **{key: mean(key) for key in TIME_KEYS}}
    step = row["step_time"] or row["step_s"]
    for key in TIME_KEYS:
        part = row[key]
        row[key.replace("_time", "_share")] = None if part is None else part / step
        tokens = row["generated_tokens"]
        row[key.replace("_time", "_tok_s")] = None if part in (None, 0) or tokens is None else tokens / part
    scoring = [row["teacher_time"], row["update_time"]]
    row["forward_tok_s"] = (row["forward_tokens"] / sum(scoring)
                            if row["forward_tokens"] is not None and None not in scoring else None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, repeats=20)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (run.seed) of every run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats = 1, min(args.repeats, 3)
    apply_threads(args.threads)

    results = []
    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {name: build_trainer(name, args, output_dir) for name in args.variants}
        runs = {name: {"records": [], "wall": [], "cpu": []} for name in trainers}
        for _ in range(args.warmup + args.repeats):
            for name, trainer in trainers.items():
                if isinstance(trainer, Trainer):
                    timed_step(trainer, runs[name])
        for name, trainer in trainers.items():
            results.append(summarise(name, trainer, runs[name], args) if isinstance(trainer, Trainer) else trainer)
            row = results[-1]
            print(f"{name}: " + (row["error"] if "error" in row else f"{row['step_s'] * 1000:.0f} ms/step"),
                  flush=True)
    ok = {r["variant"]: r for r in results if "error" not in r}
    for row in ok.values():
        row["vs_opsd"] = row["step_s"] / ok["opsd"]["step_s"] if "opsd" in ok else None
    if "opsd" in ok and "opsd+bf16" in ok:
        # Same rollouts at step 0 (see the module docstring): the relative change is autocast's alone.
        for key in ("first_loss", "first_kl_mean"):
            base, other = ok["opsd"][key], ok["opsd+bf16"][key]
            ok["opsd+bf16"][f"{key}_rel_diff"] = abs(other - base) / abs(base) if base else None
    header = ["variant", "step ms", "CPU ms", "× opsd", "rollout share", "teacher share", "update share", "probe share",
              "rollout tok/s", "teacher tok/s", "update tok/s", "forward tok/s"]
    print(markdown_table(header, [
        [r["variant"], r["step_s"] * 1000, r["cpu_step_s"] * 1000, r["vs_opsd"], r["rollout_share"], r["teacher_share"],
         r["update_share"], r["probe_share"], r["rollout_tok_s"], r["teacher_tok_s"], r["update_tok_s"],
         r["forward_tok_s"]]
        for r in ok.values()]))
    write_results(args.out, "step", args, results)


if __name__ == "__main__":
    main()
