"""Exposure policies: who decides how much of the reference solution the teacher sees at each step."""

from atesd.exposure.base import ExposurePolicy, build_exposure_policy
from atesd.exposure.controller import ControllerExposure
from atesd.exposure.per_problem import PerProblemExposure, ProblemView
from atesd.exposure.simple import (
           FixedExposure,
           LinearScheduleExposure,
           RandomExposure,
           RandomPerProblemExposure,
)

__all__ = ["ControllerExposure", "ExposurePolicy", "FixedExposure", "LinearScheduleExposure", "PerProblemExposure",
           "ProblemView", "RandomExposure", "RandomPerProblemExposure", "build_exposure_policy"]
