"""Exposure policies: who decides how much of the reference solution the teacher sees at each step."""

from atesd.exposure.adaback import AdaBackExposure
from atesd.exposure.base import (
    RULES,
    AnyExposurePolicy,
    ExposurePolicy,
    ProblemExposurePolicy,
    build_exposure_policy,
)
from atesd.exposure.controller import ControllerExposure
from atesd.exposure.paint import PaintExposure
from atesd.exposure.per_problem import PerProblemExposure, ProblemView
from atesd.exposure.seele import SeeleExposure
from atesd.exposure.simple import (
    FixedExposure,
    LinearScheduleExposure,
    RandomExposure,
    RandomPerProblemExposure,
)

__all__ = ["RULES", "AdaBackExposure", "AnyExposurePolicy", "ControllerExposure", "ExposurePolicy", "FixedExposure",
           "LinearScheduleExposure", "PaintExposure", "PerProblemExposure", "ProblemExposurePolicy", "ProblemView",
           "RandomExposure", "RandomPerProblemExposure", "SeeleExposure", "build_exposure_policy"]
