"""The base of every section of the config: strict (an unknown key is an error), validated on assignment, and no
setting takes NaN or infinity."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # No setting takes NaN or infinity: train.lr=.inf used to pass and put NaN in every weight.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
