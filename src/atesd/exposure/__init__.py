"""Exposure policies: who decides how much of the reference solution the teacher sees at each step.

Each policy is one module that registers its settings (`atesd.exposure.base`); importing it here is what makes its
``exposure.policy`` name known to configs, ``atesd compare`` and ``atesd diagnose``: one line per policy, in the
order ``atesd compare`` lists their methods.
"""

# isort: off
from atesd.exposure import fixed  # noqa: F401  (registry)
from atesd.exposure import random  # noqa: F401  (registry)
from atesd.exposure import schedule  # noqa: F401  (registry)
from atesd.exposure import controller  # noqa: F401  (registry)
from atesd.exposure import adaback  # noqa: F401  (registry)
from atesd.exposure import seele  # noqa: F401  (registry)
from atesd.exposure import paint  # noqa: F401  (registry)
from atesd.exposure import confidence_gate  # noqa: F401  (registry)
from atesd.exposure import agreement_gate  # noqa: F401  (registry)
from atesd.exposure import entropy_gate  # noqa: F401  (registry)
from atesd.exposure import mismatch_ladder  # noqa: F401  (registry)
# isort: on
from atesd.exposure.base import (
    REGISTRY,
    DecisionReading,
    ExposurePolicy,
    ExposureSettings,
    Preset,
    ProblemView,
    build_exposure_policy,
    default_policy,
)

__all__ = ["REGISTRY", "DecisionReading", "ExposurePolicy", "ExposureSettings", "Preset", "ProblemView",
           "build_exposure_policy", "default_policy"]
