"""Where AR-OPD's teacher changes the targets: the full teacher against the anchor, and against AR-OPD's q, on
the boxed answer and on the chain before it.

The base model samples one student rollout per training problem; the teacher (the same model) scores it after
the full reference (α = 1, OPSD's teacher) and after the anchor's (``anchor_alpha``), and q is AR-OPD's
anchored-residual teacher made of the two (``atesd.train.forwards.anchored_residual``, the trainer's
own). Per completion token, and averaged over the tokens of each region — ``answer``: from ``\\boxed{`` on;
``chain``: every token before it — it reports KL(p_full ‖ p_anchor) (how much the full reference changes the
targets), KL(p_full ‖ q) (how much of that AR-OPD takes back) and the full teacher's probability mass on
vocabulary entries where the clip binds. On the strong-teacher regime the full teacher's answer is the one it
read, not the chain's (docs/method.md#the-strong-teacher-regime); this shows where AR-OPD differs from it.

    python benchmarks/ar_opd_targets.py --config configs/embedded/strong-teacher/opsd.yaml model.embedded.seed=0

``--quick`` (a smoke run): 8 problems on the tiny embedded model (harness.quick_overrides; key=value overrides still
apply after it). A region without tokens (the tiny model seldom boxes an answer) shows dashes.

Not a test: nothing is asserted; it prints the two regions and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from harness import quick_overrides

from atesd.config import load_config
from atesd.config.peers import AnchoredResidualConfig
from atesd.experiments.mismatch import sample_base_rollouts
from atesd.models.sequences import completion_hidden_states, output_head, pack_sequences
from atesd.train.forwards import anchored_residual

BOX = "\\boxed{"


def regions(pieces: list[str]) -> list[str]:
    """``answer`` for each decoded token from the one that completes ``\\boxed{`` on, ``chain`` before it."""
    text, found, labels = "", False, []
    for piece in pieces:
        text += piece
        labels.append("answer" if found else "chain")
        found = found or BOX in text
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--config", default="configs/embedded/opsd.yaml",
                        help="the recipe whose model and task are read; its teacher.anchored_residual's weight, clip "
                        "and anchor are used, AR-OPD's defaults when it has none")
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of problems and their rollouts (not "
                        "the base model: that is model.embedded.seed)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 problems on the tiny embedded model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.problems = min(args.problems, 8)
    config = load_config(args.config, [*quick_overrides(args.quick), *args.overrides])
    residual = config.teacher.anchored_residual or AnchoredResidualConfig()
    model, tokenizer, prompts, problems, completions = sample_base_rollouts(config, args.problems, args.seed)
    micro = config.train.micro_batch_size
    with torch.no_grad():
        head, bias = output_head(model)

        def logits(alpha: float, span: slice) -> torch.Tensor:
            batch = pack_sequences([prompts.teacher(p, alpha) for p in problems[span]], completions[span],
                                   tokenizer.pad_token_id)
            return torch.nn.functional.linear(completion_hidden_states(model, batch), head, bias).float()

        per_region: dict[str, list[tuple[float, float, float]]] = {"answer": [], "chain": []}
        for start in range(0, len(problems), micro):
            span = slice(start, start + micro)
            full, anchor = logits(1.0, span).log_softmax(-1), logits(residual.anchor_alpha, span).log_softmax(-1)
            q = anchored_residual(anchor, full, residual.residual_weight, residual.residual_clip)
            p_full = full.exp()
            kl_anchor = (p_full * (full - anchor)).sum(-1)
            kl_q = (p_full * (full - q)).sum(-1)
            clipped = (p_full * ((full - anchor).abs() > residual.residual_clip)).sum(-1)
            labels = [label for completion in completions[span]
                      for label in regions([tokenizer.decode([token]) for token in completion])]
            for label, *values in zip(labels, kl_anchor.tolist(), kl_q.tolist(), clipped.tolist()):
                per_region[label].append(tuple(values))

    rows = {region: {"tokens": len(values), **{name: float(np.mean([v[i] for v in values])) if values else None
                                               for i, name in enumerate(("kl_full_anchor", "kl_full_q",
                                                                         "clipped_mass"))}}
            for region, values in per_region.items()}
    print(f"anchor α = {residual.anchor_alpha:g}, λ = {residual.residual_weight:g}, clip = {residual.residual_clip:g}; "
          f"{len(problems)} problems; overrides: {' '.join(args.overrides) or '(none)'}")
    print(f"{'region':8s} {'tokens':>7s} {'KL(full‖anchor)':>16s} {'KL(full‖q)':>11s} {'clipped mass':>13s}")
    columns = (("kl_full_anchor", 16, 4), ("kl_full_q", 11, 4), ("clipped_mass", 13, 5))
    for region, row in rows.items():
        figures = [("–" if row[key] is None else f"{row[key]:.{digits}f}").rjust(width)
                   for key, width, digits in columns]
        print(f"{region:8s} {row['tokens']:7d} {' '.join(figures)}")
    if args.out:
        args.out.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
