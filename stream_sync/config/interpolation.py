"""`${NAME}` interpolation of string scalars, after YAML parsing (design §7).

Rules: `${NAME}` is the environment variable (unset → problem); `${NAME:-default}` uses the
default when NAME is unset or empty; `$${` is a literal `${`. Anything else, a lone `$`
included, is kept as written. Nested references (`${A:-${B}}`) are not supported.
Values are substituted after parsing, so a secret holding `: # ' "` cannot break the YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._base import Problem, join_path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Interpolated:
    data: Any
    problems: list[Problem] = field(default_factory=list)
    substituted: set[str] = field(default_factory=set)
    """Paths of the strings that took a value from the environment (never echoed)."""


def interpolate(data: Any, env: Mapping[str, str]) -> Interpolated:
    """Interpolate every string scalar of `data`, collecting problems.

    A string with a problem is kept as written, so validation can go on around it.
    Mapping keys are not interpolated.
    """
    result = Interpolated(None)
    result.data = _walk(data, env, "", result)
    return result


def _walk(data: Any, env: Mapping[str, str], path: str, result: Interpolated) -> Any:
    if isinstance(data, str):
        value, messages = interpolate_string(data, env)
        result.problems += [(path, message) for message in messages]
        if messages:
            return data
        if value != data or "${" in data:
            result.substituted.add(path)
        return value
    if isinstance(data, dict):
        return {
            key: _walk(item, env, join_path(path, str(key)), result) for key, item in data.items()
        }
    if isinstance(data, list):
        return [_walk(item, env, join_path(path, index), result) for index, item in enumerate(data)]
    return data


def interpolate_string(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Interpolate one string: (result, problem messages)."""
    if "$" not in text:
        return text, []
    out: list[str] = []
    messages: list[str] = []
    position = 0
    while position < len(text):
        if text.startswith("$${", position):
            out.append("${")
            position += 3
            continue
        if not text.startswith("${", position):
            out.append(text[position])
            position += 1
            continue
        end = text.find("}", position + 2)
        if end < 0:
            messages.append("unterminated '${' (write '$${' for a literal '${')")
            break
        expression = text[position + 2 : end]
        name, has_default, default = expression.partition(":-")
        position = end + 1
        if not _NAME.fullmatch(name):
            messages.append(
                f"invalid environment variable reference: name {name!r}"
                " (write '$${' for a literal '${')"
            )
            continue
        if "${" in default:
            messages.append(f"nested reference in the default of ${{{name}}} is not supported")
            continue
        value = env.get(name)
        if has_default and not value:
            value = default
        if value is None:
            messages.append(f"environment variable {name} is not set")
            continue
        out.append(value)
    return "".join(out), messages
