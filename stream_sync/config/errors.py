"""The one exception of the configuration layer."""

from __future__ import annotations

from collections.abc import Iterable

from ._base import Problem


class ConfigError(Exception):
    """Invalid configuration: every problem found, each as (path, message).

    `render()` gives one line per problem, `path: message` (design §7); the CLI prints it
    and exits 2. Messages never contain secret values.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        unique: list[Problem] = []
        for problem in problems:
            if problem not in unique:
                unique.append(problem)
        self.problems: list[Problem] = unique
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(
            f"{path}: {message}" if path else message for path, message in self.problems
        )

    def __str__(self) -> str:
        return self.render()
