"""The base of every settings model (the config's sections, and each exposure policy's settings): strict keys, values
checked on assignment too, finite numbers only, and no boolean where a number is expected (YAML reads on, off, yes,
no, true and false as booleans, and pydantic would take them as 1 and 0)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

# A section-level check names the field it is about: the message starts with this mark, the field's name and ": ",
# and the config's error line puts the field into the key (`atesd.config.describe_validation_error`).
FIELD_MARK = "field "


def takes_a_number_not_a_boolean(annotation: Any) -> bool:
    """Whether a field of type `annotation` takes an int or a float but not a bool."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
    else:
        options = (annotation,)
    return any(option in (int, float) for option in options) and bool not in options


class Section(BaseModel):
    # No setting takes NaN or infinity: train.lr=.inf used to pass and put NaN in every weight.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name, value in values.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field is not None and takes_a_number_not_a_boolean(field.annotation):
                    raise ValueError(f"{FIELD_MARK}{name}: a number is expected, not the boolean {str(value).lower()} "
                                     "(YAML reads on, off, yes, no, true and false as booleans)")
        return values
