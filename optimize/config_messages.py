"""The tool's own words for pydantic's validation errors on a config value.

`optimize.config` turns the first error of a failed validation into `FILE:LINE: key.path: MESSAGE`;
this module writes MESSAGE for the error types that need no schema knowledge (wrong type, bounds,
literal choices, lengths, a validator's own message). Pydantic's wording ("Input should be a valid
integer, unable to parse string as an integer", "Value error, ...") never reaches the user.
"""

from __future__ import annotations

import re
from typing import Any

from optimize.strict_bool import ERROR_TYPE as STRICT_BOOL

# what a value of the wrong type should have been, by pydantic error type
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_parsing_size": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "none_required": "null",
}
_BOUNDS = (("gt", "greater than"), ("ge", "at least"), ("lt", "less than"), ("le", "at most"))
# pydantic names a union member in an error's location by its type: ('shape', 0, 'int')
_UNION_TAG = re.compile(r"(int|float|str|bool|none|(literal|list|dict|function-\w+)\[.*\])")


def shown(value: Any) -> str:
    """A value as the user wrote it in YAML (true, null, 'text'), cut to a readable length."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _literal(ctx: dict[str, Any]) -> str:
    expected = str(ctx.get("expected", ""))
    choices = expected.replace(" or ", ", ")
    return f"must be {expected}" if choices == expected and "," not in expected else f"must be one of {choices}"


def _length(kind: str, ctx: dict[str, Any]) -> str:
    what = "characters" if ctx.get("field_type", "String") == "String" else "items"
    if kind.endswith("too_short"):
        n = ctx.get("min_length")
        return "must not be empty" if n == 1 else f"needs at least {n} {what} (got {ctx.get('actual_length', '?')})"
    return f"allows at most {ctx.get('max_length')} {what} (got {ctx.get('actual_length', '?')})"


def message(err: dict[str, Any]) -> str:
    """MESSAGE for one pydantic error dict (from `ValidationError.errors()`)."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown(err.get('input'))}"
    if kind == "literal_error":
        return _literal(ctx)
    if kind in ("value_error", "assertion_error") and ctx.get("error") is not None:
        return str(ctx["error"])  # a validator's own message, without pydantic's "Value error, "
    if kind == STRICT_BOOL:
        return str(err.get("msg"))
    if kind == "missing":
        return "required key missing"
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return _length(kind, ctx)
    for bound, word in _BOUNDS:
        if bound in ctx:
            return f"must be {word} {ctx[bound]} (got {shown(err.get('input'))})"
    # an error type this schema has not raised so far: keep pydantic's sentence, in our voice
    text = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return re.sub(r"^Input should be", "must be", text)


def union_group(errors: list[dict[str, Any]]) -> tuple[tuple[Any, ...], str] | None:
    """When the first error is one of a union's per-member errors (loc ends in a member tag such as
    'int' or 'str'), the value's location and one message naming every member; else None."""
    loc = tuple(errors[0]["loc"])
    if not loc or not isinstance(loc[-1], str) or not _UNION_TAG.fullmatch(loc[-1]):
        return None
    members = [e for e in errors if tuple(e["loc"])[:-1] == loc[:-1] and len(e["loc"]) == len(loc)]
    wanted = [_EXPECTED.get(str(e["type"])) or _literal(e.get("ctx") or {}).removeprefix("must be ") for e in members]
    unique = list(dict.fromkeys(wanted))
    return loc[:-1], f"expected {' or '.join(unique)}, got {shown(errors[0].get('input'))}"
