"""The defaults of `atesd sweep` and `atesd compare` and the comparison's method table (the exposure policies'
presets come from their registry, `atesd.exposure`)."""

from __future__ import annotations

from atesd.exposure import REGISTRY, Preset

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


def alpha_label(alpha: float) -> str:
    """The label of the run at fixed exposure α (a sweep's, and a comparison's with ``--alphas``)."""
    return f"alpha-{alpha:g}"


def fixed_alpha_methods(alphas: tuple[float, ...]) -> dict[str, Preset]:
    """``alpha-<α>`` at each fixed α of `alphas` but 1, which is OPSD (label ``opsd``)."""
    return {alpha_label(alpha): Preset("opsd.yaml", (f"exposure.alpha={alpha:g}",))
            for alpha in alphas if alpha != 1}


def methods(best_alpha: float) -> dict[str, Preset]:
    """The comparison's methods by label, with `best_alpha` the fixed exposure of ``fixed-best``: the starting
    model, the baselines, OPSD and the best fixed α, every registered exposure policy's presets (in the registry's
    order), and AR-OPD's teacher."""
    return {
        BASE_LABEL: Preset("opsd.yaml"),  # evaluated, never trained
        "sft": Preset("sft.yaml"),
        "grpo": Preset("grpo.yaml"),
        "opsd": Preset("opsd.yaml"),
        "fixed-best": Preset("opsd.yaml", (f"exposure.alpha={best_alpha:g}",)),
        **{label: preset for settings in REGISTRY.values() for label, preset in settings.presets.items()},
        "ar-opd": Preset("opsd.yaml", ("teacher.anchored_residual={}",)),
    }


METHOD_NAMES = tuple(methods(PAPER_BEST_ALPHA))
