"""Rollout engines: sample completions for a batch of prompts behind one small interface."""

from atesd.rollout.base import Completions, RolloutEngine, SamplingParams
from atesd.rollout.hf import HFGenerateEngine

__all__ = ["Completions", "HFGenerateEngine", "RolloutEngine", "SamplingParams"]
