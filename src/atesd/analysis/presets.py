"""The defaults of `atesd sweep` and `atesd compare` and the comparison's method table, in one light module:
the CLI's parser reads them without importing torch or matplotlib."""

from __future__ import annotations

from dataclasses import dataclass

BASE_LABEL = "base"  # the pseudo-run that evaluates the starting model
DEFAULT_SEEDS = 3

# atesd sweep
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # docs/method.md#baselines
DEFAULT_MISMATCH_PROBLEMS = 64

# atesd compare
PAPER_BEST_ALPHA = 0.5  # the paper's best fixed exposure, used when neither --best-alpha nor --sweep is given
# --quick: sized to finish within 15 minutes on a 2-core CPU with the embedded recipes: 20 trained runs of
# 20 steps at about 1.2-1.7 s/step plus a 100-problem evaluation each, and room for the 4-minute warm start of
# the embedded base model when its cache is empty.
QUICK_SEEDS = 2
QUICK_STEPS = 20
QUICK_EVAL_PROBLEMS = 100


@dataclass(frozen=True)
class Method:
    recipe: str  # file name in the recipe directory
    overrides: tuple[str, ...] = ()


def alpha_label(alpha: float) -> str:
    """The label of the run at fixed exposure α (a sweep's, and a comparison's with ``--alphas``)."""
    return f"alpha-{alpha:g}"


def fixed_alpha_methods(alphas: tuple[float, ...]) -> dict[str, Method]:
    """``alpha-<α>`` at each fixed α of `alphas` but 1, which is OPSD (label ``opsd``)."""
    return {alpha_label(alpha): Method("opsd.yaml", ("exposure.policy=fixed", f"exposure.alpha={alpha:g}"))
            for alpha in alphas if alpha != 1}


def methods(best_alpha: float) -> dict[str, Method]:
    """The comparison's methods by label, with `best_alpha` the fixed exposure of ``fixed-best``."""
    return {
        BASE_LABEL: Method("opsd.yaml"),  # evaluated, never trained
        "sft": Method("sft.yaml"),
        "grpo": Method("grpo.yaml"),
        "opsd": Method("opsd.yaml"),
        "fixed-best": Method("opsd.yaml", ("exposure.policy=fixed", f"exposure.alpha={best_alpha:g}")),
        "random": Method("opsd.yaml", ("exposure.policy=random",)),
        "atesd": Method("atesd.yaml"),
        "atesd-immediate": Method("atesd.yaml", ("exposure.controller.lookahead=1", "exposure.controller.discount=0")),
        "atesd-lp-only": Method("atesd.yaml", ("exposure.controller.teacher_grounded_weight=0",)),
        # the paper's plain normalisation of the advantages, without our baseline against the reward's drift
        "atesd-no-drift-baseline": Method("atesd.yaml", ("exposure.controller.baseline=none",)),
        # beyond the paper: each problem its own α, credited by its own reference NLL (docs/method.md#exposure-per-problem)
        "atesd-per-problem": Method("atesd.yaml", ("exposure.per_problem=true",)),
        # ours: exposure per problem credited by each problem's alignment with the contrast probe, the one signal
        # with power (docs/controller.md#signals-with-power); and random exposure per problem, its control
        "atesd-alignment": Method("atesd.yaml", ("exposure.per_problem=true", "exposure.controller.credit=alignment")),
        "random-per-problem": Method("opsd.yaml", ("exposure.policy=random", "exposure.per_problem=true")),
        # the peers' rules in the same loop, at their papers' settings (docs/method.md#the-peers-rules)
        "adaback": Method("opsd.yaml", ("exposure.policy=adaback",)),
        "seele": Method("opsd.yaml", ("exposure.policy=seele",)),
        "paint": Method("opsd.yaml", ("exposure.policy=paint",)),
        "ar-opd": Method("opsd.yaml", ("teacher.anchored_residual={}",)),
    }


METHOD_NAMES = tuple(methods(PAPER_BEST_ALPHA))
