"""Strict booleans for config fields: only YAML's true/false, never "yes", "true", 1 or "on";
and no true/false where a number is expected.

Pydantic's lax mode reads the string "yes" (and 1, "on", "t") as True, so a quoted `per_channel:
"yes"` or a typo'd `amp: 1` would be accepted silently. `check_bool_field` is the before-validator
the config base classes (`optimize.config.Section`, `optimize.pass_api.PassConfig`) run on every
field: where the annotation takes a bool, anything else that the annotation does not name
(None, a Literal choice such as 'auto') is refused in the tool's own words, and so is a bool for an
int or float field (pydantic would read true as 1).
"""

from __future__ import annotations

import functools
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

ERROR_TYPE = "strict_bool"


@functools.cache
def _bool_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The non-bool values a bool-taking annotation also accepts (None, Literal choices), or None
    when the field does not take a bool or also takes other scalars (then pydantic decides)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    takes_bool = False
    others: list[Any] = []
    for member in members:
        if member is bool:
            takes_bool = True
        elif member is type(None):
            others.append(None)
        elif get_origin(member) is Literal:
            for value in get_args(member):
                if isinstance(value, bool):
                    takes_bool = True
                else:
                    others.append(value)
        else:
            return None  # e.g. `int | bool`: a number is a valid value there
    return tuple(others) if takes_bool else None


@functools.cache
def _number_only(annotation: Any) -> bool:
    """True for `int`, `float` and their optional forms: pydantic would read true there as 1."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    numbers = [m for m in members if m is not type(None)]
    return bool(numbers) and all(m in (int, float) for m in numbers)


def _describe(choices: tuple[Any, ...]) -> str:
    names = ["true", "false"] + [repr(c) for c in choices if c is not None]
    return " or ".join(names) if len(names) == 2 else ", ".join(names[:-1]) + " or " + names[-1]


def check_bool_field(cls: Any, value: Any, info: ValidationInfo) -> Any:
    """Before-validator body: refuse a non-bool value for a bool field (see the module docstring)."""
    field = cls.model_fields.get(info.field_name) if info.field_name else None
    choices = _bool_choices(field.annotation) if field is not None else None
    if choices is None:
        if isinstance(value, bool) and field is not None and _number_only(field.annotation):
            raise PydanticCustomError(ERROR_TYPE, "expected a number, got {got}", {"got": str(value).lower()})
        return value
    if isinstance(value, bool):
        return value
    if any(value == c and type(value) is type(c) for c in choices):
        return value
    raise PydanticCustomError(
        ERROR_TYPE, "expected {expected}, got {got}", {"expected": _describe(choices), "got": repr(value)}
    )
