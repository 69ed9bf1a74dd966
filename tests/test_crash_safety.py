"""Design §5: after SIGKILLs with batches in flight, the destination ends as after a clean run.

The test destination holds a request (a batch in flight), signals it, the service is killed
with SIGKILL, and the held request is then applied or dropped — "may or may not have been
applied". The expected final state is computed here, independently, from the events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.test_destination import TestDestination
from tests.harness import SyncEnv, activation, test_destination_config, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FIELDS = {"first_name": "first_name", "city": "city"}
CUSTOM = ["plan"]
MAX_SIZE = 50


@pytest.fixture
def env(kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SyncEnv]:
    sync_env = SyncEnv(
        kafka_bootstrap, tmp_path, request.node.name[:30].replace("_", "-"), partitions=3
    )
    yield sync_env
    sync_env.close()


@pytest.fixture
def dest() -> Iterator[TestDestination]:
    with TestDestination() as server:
        yield server


def mirror_config(env: SyncEnv, dest: TestDestination) -> tuple[Path, int]:
    return env.write_config(
        {"d": test_destination_config(dest.url("d"))},
        [
            activation(
                "mir",
                "d",
                "mirror",
                fields=FIELDS,
                custom=CUSTOM,
                max_size=MAX_SIZE,
                max_wait_ms=100,
                deletion_guard=False,  # the random churn deletes far more than 20 % an hour
            )
        ],
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
        out: dict[str, dict[str, Any]] = {}
        for pid, segments in self.segments.items():
            attrs = self.attrs.get(pid, {})
            if "vip" in segments and attrs.get("email") is not None:
                mapped = {dest: attrs[src] for src, dest in FIELDS.items() if src in attrs}
                mapped.update({name: attrs[name] for name in CUSTOM if name in attrs})
                out[attrs["email"]] = mapped
        return out


def describe_diff(actual: dict[str, Any], expected: dict[str, Any]) -> str:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    lines = [f"missing {len(missing)}, extra {len(extra)}, differing {len(differ)}"]
    lines += [f"missing {k}: {expected[k]}" for k in missing[:5]]
    lines += [f"extra {k}: {actual[k]}" for k in extra[:5]]
    lines += [f"differ {k}: {actual[k]} != {expected[k]}" for k in differ[:5]]
    return "\n".join(lines)


def random_events(env: SyncEnv, model: Model, rng: random.Random, persons: int, count: int) -> None:
    values = {
        "first_name": lambda: rng.choice(["Ann", "Bob", "Cid", "Dee", None]),
        "city": lambda: rng.choice(["Paris", "Lyon", "Nice", None]),
        "plan": lambda: rng.choice(["free", "pro", "team"]),
    }
    for _ in range(count):
        pid = f"p{rng.randrange(persons)}"
        if pid not in model.attrs and rng.random() < 0.9:
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


def test_sigkill_with_batches_in_flight_converges(env: SyncEnv, dest: TestDestination) -> None:
    rng = random.Random(7)
    model = Model()
    config = mirror_config(env, dest)
    svc = env.start(config)
    kills = 0
    for wave in range(6):
        random_events(env, model, rng, persons=2000, count=3400)
        dest.hold()
        assert dest.wait_held(60), "no batch reached the destination"
        svc.kill()
        kills += 1
        dest.release(apply=wave % 2 == 0)
        svc = env.start(config)
    expected = model.expected()
    try:
        wait_until(lambda: dest.records("d") == expected, 180, interval=0.5, what="convergence")
    except AssertionError:
        actual = dest.records("d")
        detail = describe_diff(actual, expected)
        for key in [k for k in expected if actual.get(k) != expected[k]][:3]:
            pid = key.split("@")[0]
            detail += f"\nops of {pid}: " + repr(
                [
                    (o["op"], o["fields"], o["clears"], o["full"])
                    for o in dest.ops("d")
                    if o["person_id"] == pid
                ]
            )
        raise AssertionError(detail) from None
    noops = dest.ns("d").noops
    assert kills >= 5
    # redundant writes stay within the batches in flight at each kill
    assert noops <= kills * MAX_SIZE, (noops, kills)
    assert svc.terminate() == 0


def test_create_in_flight_then_person_leaves_is_deleted(
    env: SyncEnv, dest: TestDestination
) -> None:
    model = Model()
    config = mirror_config(env, dest)
    svc = env.start(config)
    dest.hold()
    model.set(env, "p1", {"email": "p1@x.io", "plan": "pro"})
    model.enter(env, "p1")
    env.flush()
    assert dest.wait_held(30)
    svc.kill()
    dest.release(apply=True)  # the create went through, its outcome was never recorded
    wait_until(lambda: dest.records("d"), 10, what="held create applied")
    model.exit(env, "p1")
    env.flush()
    svc = env.start(config)
    wait_until(
        lambda: dest.records("d") == {} and dest.ops("d")[-1]["op"] == "delete", 60, what="delete"
    )
    assert svc.terminate() == 0


@pytest.mark.parametrize("applied", [True, False], ids=["delete-applied", "delete-lost"])
def test_delete_in_flight_then_person_reenters_is_sent_in_full(
    env: SyncEnv, dest: TestDestination, applied: bool
) -> None:
    model = Model()
    config = mirror_config(env, dest)
    svc = env.start(config)
    model.set(env, "p1", {"email": "p1@x.io", "plan": "pro", "city": "Paris"})
    model.enter(env, "p1")
    env.flush()
    wait_until(lambda: dest.records("d"), 30, what="create")
    dest.hold()
    model.exit(env, "p1")
    env.flush()
    assert dest.wait_held(30)
    svc.kill()
    dest.release(apply=applied)
    if applied:
        wait_until(lambda: dest.records("d") == {}, 10, what="held delete applied")
    model.set(env, "p1", {"city": None})  # whichever way it went, city must not survive
    model.enter(env, "p1")
    env.flush()
    svc = env.start(config)
    wait_until(lambda: dest.records("d") == model.expected(), 60, what="full record again")
    assert dest.records("d") == {"p1@x.io": {"plan": "pro"}}
    assert svc.terminate() == 0


def test_first_value_in_flight_then_unset_is_cleared(env: SyncEnv, dest: TestDestination) -> None:
    model = Model()
    config = mirror_config(env, dest)
    svc = env.start(config)
    model.set(env, "p1", {"email": "p1@x.io", "plan": "pro"})
    model.enter(env, "p1")
    env.flush()
    wait_until(lambda: dest.records("d"), 30, what="create")
    dest.hold()
    model.set(env, "p1", {"city": "Paris"})
    env.flush()
    assert dest.wait_held(30)
    svc.kill()
    dest.release(apply=True)  # city was set, the outcome never recorded
    wait_until(lambda: dest.records("d") == {"p1@x.io": {"plan": "pro", "city": "Paris"}}, 10)
    model.set(env, "p1", {"city": None})
    env.flush()
    svc = env.start(config)
    wait_until(lambda: dest.records("d") == {"p1@x.io": {"plan": "pro"}}, 60, what="city cleared")
    assert svc.terminate() == 0
