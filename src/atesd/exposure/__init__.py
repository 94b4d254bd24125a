"""Exposure policies: who decides how much of the reference solution the teacher sees at each step."""

from atesd.exposure.base import ExposurePolicy, FixedExposure, build_exposure_policy

__all__ = ["ExposurePolicy", "FixedExposure", "build_exposure_policy"]
