"""The base of every settings model (the config's sections, and each exposure policy's settings): strict keys, values
checked on assignment too, finite numbers only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # No setting takes NaN or infinity: train.lr=.inf used to pass and put NaN in every weight.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
