"""pydantic ValidationError → (path, message) problems a person can act on.

No pydantic boilerplate, no documentation URLs, and no input values except the offending
word of a choice (`mode`, `type`, ...), which is never a credential.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Collection
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ._base import Problem
from .spec import DESTINATION_TYPES

Loc = tuple[str | int, ...]

_FIXED_MESSAGES = {
    "missing": "required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
}


def translate_validation_error(
    error: ValidationError, root: type[BaseModel], hide_input_at: Collection[str] = ()
) -> list[Problem]:
    """One problem per pydantic error, located in the YAML document validated as `root`.

    Values at `hide_input_at` paths (taken from the environment) are never quoted.
    """
    return [_translate(item, root, hide_input_at) for item in error.errors(include_url=False)]


def _translate(item: ErrorDetails, root: type[BaseModel], hide: Collection[str]) -> Problem:
    raw_loc: Loc = tuple(item["loc"])
    loc = _strip_tags(raw_loc)
    kind = item["type"]
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-1]

    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = ", ".join(sorted(DESTINATION_TYPES))
        if kind == "union_tag_not_found":
            return _path((*loc, "type")), f"required (one of {expected})"
        tag = item.get("ctx", {}).get("tag")
        return _path((*loc, "type")), f"unknown destination type {tag!r} (one of {expected})"

    if kind == "extra_forbidden":
        return _path(loc), _unknown_key_message(raw_loc, root)

    message = _FIXED_MESSAGES.get(kind) or _rephrase(item)
    if kind == "literal_error" and not _is_secret_area(loc) and _path(loc) not in hide:
        value = item.get("input")
        if isinstance(value, str | int | float | bool) and len(repr(value)) <= 40:
            message += f" (got {value!r})"
    if is_key:
        message = f"name {message}"
    return _path(loc), message


def _rephrase(item: ErrorDetails) -> str:
    ctx = item.get("ctx", {})
    if item["type"] in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    message = item["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    for old, new in (
        ("Input should be ", "must be "),
        ("String should ", "must "),
        ("Value should ", "must "),
        ("List should ", "must "),
    ):
        if message.startswith(old):
            message = new + message[len(old) :]
    return message


def _strip_tags(loc: Loc) -> Loc:
    """Drop the discriminator tag pydantic puts after `destinations.<name>`."""
    if len(loc) >= 3 and loc[0] == "destinations" and loc[2] in DESTINATION_TYPES:
        return loc[:2] + loc[3:]
    return loc


def _is_secret_area(loc: Loc) -> bool:
    return loc[:2] == ("kafka", "client")


def _path(loc: Loc) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _unknown_key_message(raw_loc: Loc, root: type[BaseModel]) -> str:
    parent = _model_at(raw_loc[:-1], root)
    if parent is None:
        return "unknown key"
    allowed = list(parent.model_fields)
    if allowed == ["type", "dry_run_path"]:
        return "unknown key (a log destination takes only type and dry_run_path)"
    close = difflib.get_close_matches(str(raw_loc[-1]), allowed, n=1, cutoff=0.6)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class validating the mapping at `loc` (with pydantic's tags), if known."""
    current: Any = root
    for part in loc:
        current = _step(_unwrap(current), part)
        if current is None:
            return None
    current = _unwrap(current)
    return current if _is_model(current) else None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _step(annotation: Any, part: str | int) -> Any:
    if _is_model(annotation):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin = get_origin(annotation)
    if origin is dict:
        return get_args(annotation)[1]
    if origin in (list, tuple):
        return get_args(annotation)[0]
    if origin in (Union, types.UnionType):  # a discriminated union: `part` is the tag
        for member in map(_unwrap, get_args(annotation)):
            type_field = member.model_fields.get("type") if _is_model(member) else None
            if (
                type_field is not None
                and get_origin(type_field.annotation) is Literal
                and part in get_args(type_field.annotation)
            ):
                return member
    return None
