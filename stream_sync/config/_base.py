"""Shared building blocks of the configuration models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Mode = Literal["upsert", "update_only", "mirror"]
"""Sync mode of an activation (design §1)."""

MODES: tuple[Mode, ...] = ("upsert", "update_only", "mirror")

AttributeType = Literal["number", "boolean", "string", "date", "url", "list"]
"""Declared type of a source attribute, used where a destination needs one."""

NonEmptyStr = Annotated[str, Field(min_length=1)]
Secret = Annotated[SecretStr, Field(min_length=1)]
"""A credential: never shown by repr/str, and never empty."""


class ConfigModel(BaseModel):
    """Base of every configuration model: immutable, and unknown keys are errors.

    Numbers are accepted where strings are expected (a YAML `website_id: 12345` or an
    all-digit key is a string to us), because YAML users do not quote such values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


Problem = tuple[str, str]
"""One configuration problem: (path such as `activations[0].mode`, message)."""


def join_path(base: str, key: str | int) -> str:
    """Extend a problem path: `a` + `b` → `a.b`, `a` + 0 → `a[0]`."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else key


_SECTION_ORDER = ("kafka", "topics", "destinations", "activations", "http", "shutdown_grace_s")


def order_problems(problems: list[Problem], destination_names: Sequence[str] = ()) -> list[Problem]:
    """Problems in document order: by section, then destination (as in
    `destination_names`, else first seen) or activation index; stable within one item."""

    def section(path: str) -> str:
        return path.split(".", 1)[0].split("[", 1)[0]

    def item(path: str) -> str | int:
        head = section(path)
        if head == "activations":
            digits = path[len("activations[") :].split("]", 1)[0]
            return int(digits) if digits.isdigit() else -1
        if head == "destinations":
            return path[len("destinations.") :].split(".", 1)[0]
        return ""

    first_seen: dict[str | int, int] = {name: i for i, name in enumerate(destination_names)}
    for position, (path, _) in enumerate(problems):
        first_seen.setdefault(item(path), len(destination_names) + position)

    def key(problem: Problem) -> tuple[int, int]:
        path = problem[0]
        head = section(path)
        rank = _SECTION_ORDER.index(head) if head in _SECTION_ORDER else len(_SECTION_ORDER)
        name = item(path)
        return rank, name if isinstance(name, int) else first_seen[name]

    return sorted(problems, key=key)
