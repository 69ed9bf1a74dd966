"""The expected destination state, computed from the events independently of the service.

Shared by the crash, fault and scale-out tests: they produce random churn through
:func:`random_events` and compare the test destination with :meth:`Model.expected`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tests.harness import SyncEnv, activation, test_destination_config

FIELDS = {"first_name": "first_name", "city": "city"}
CUSTOM = ["plan"]


def mirror_config(
    env: SyncEnv,
    url: str,
    max_size: int,
    filename: str = "config.yaml",
    *,
    max_wait_ms: int = 100,
    **destination: Any,
) -> tuple[Any, int]:
    """One mirror activation of the mapped fields on the test destination at ``url``
    (``destination``: more keys of the destination's config, such as ``retry``)."""
    return env.write_config(
        {"d": test_destination_config(url, **destination)},
        [
            activation(
                "mir",
                "d",
                "mirror",
                fields=FIELDS,
                custom=CUSTOM,
                max_size=max_size,
                max_wait_ms=max_wait_ms,
                deletion_guard=False,  # the random churn deletes far more than 20 % an hour
            )
        ],
        filename=filename,
    )


class Model:
    """The expected source view, computed from the events as design §2 and §4 define."""

    def __init__(self) -> None:
        self.attrs: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, set[str]] = {}

    def enter(self, env: SyncEnv, pid: str) -> None:
        self.segments.setdefault(pid, set()).add("vip")
        env.enter(pid, "vip")

    def exit(self, env: SyncEnv, pid: str) -> None:
        self.segments.setdefault(pid, set()).discard("vip")
        env.exit(pid, "vip")

    def set(self, env: SyncEnv, pid: str, values: dict[str, Any]) -> None:
        attrs = self.attrs.setdefault(pid, {})
        for name, value in values.items():
            if value is None:
                attrs.pop(name, None)
            else:
                attrs[name] = value
        env.attrs(pid, values)

    def expected(self) -> dict[str, dict[str, Any]]:
        """What a mirror activation must leave in the destination: identifier → fields."""
        out: dict[str, dict[str, Any]] = {}
        for pid, segments in self.segments.items():
            attrs = self.attrs.get(pid, {})
            if "vip" in segments and attrs.get("email") is not None:
                mapped = {dest: attrs[src] for src, dest in FIELDS.items() if src in attrs}
                mapped.update({name: attrs[name] for name in CUSTOM if name in attrs})
                out[attrs["email"]] = mapped
        return out


def random_events(
    env: SyncEnv,
    model: Model,
    rng: random.Random,
    persons: int,
    count: int,
    *,
    prefix: str = "p",
    email_rate: float = 1.0,
) -> None:
    """Churn: 30 % membership flips, 70 % changes of 1-3 mapped attributes (some unsets).

    A person gets its e-mail at first sight with probability ``email_rate`` (the others wait
    for their identifier, pending)."""
    values: dict[str, Callable[[], Any]] = {
        "first_name": lambda: rng.choice(["Ann", "Bob", "Cid", "Dee", None]),
        "city": lambda: rng.choice(["Paris", "Lyon", "Nice", None]),
        "plan": lambda: rng.choice(["free", "pro", "team"]),
    }
    for _ in range(count):
        pid = f"{prefix}{rng.randrange(persons)}"
        if pid not in model.attrs and (email_rate >= 1.0 or rng.random() < email_rate):
            model.set(env, pid, {"email": f"{pid}@x.io"})
        if rng.random() < 0.3:
            if "vip" in model.segments.get(pid, set()):
                model.exit(env, pid)
            else:
                model.enter(env, pid)
        else:
            names = rng.sample(sorted(values), rng.randint(1, 3))
            model.set(env, pid, {name: values[name]() for name in names})
    env.flush()


def describe_diff(actual: dict[str, Any], expected: dict[str, Any]) -> str:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    lines = [f"missing {len(missing)}, extra {len(extra)}, differing {len(differ)}"]
    lines += [f"missing {k}: {expected[k]}" for k in missing[:5]]
    lines += [f"extra {k}: {actual[k]}" for k in extra[:5]]
    lines += [f"differ {k}: {actual[k]} != {expected[k]}" for k in differ[:5]]
    return "\n".join(lines)
