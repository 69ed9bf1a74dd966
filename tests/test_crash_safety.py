"""Design §5: after SIGKILLs with batches in flight, the destination ends as after a clean run.

The test destination holds a request (a batch in flight), signals it, the service is killed
with SIGKILL, and the held request is then applied or dropped — "may or may not have been
applied". The expected final state is computed here, independently, from the events.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.fakes.test_destination import TestDestination
from tests.harness import SyncEnv, wait_until
from tests.model import Model, describe_diff, random_events
from tests.model import mirror_config as model_mirror_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MAX_SIZE = 50


@pytest.fixture
def sync_partitions() -> int:
    return 3


def mirror_config(env: SyncEnv, dest: TestDestination) -> tuple[Path, int]:
    return model_mirror_config(env, dest.url("d"), MAX_SIZE)


def test_sigkill_with_batches_in_flight_converges(env: SyncEnv, dest: TestDestination) -> None:
    rng = random.Random(7)
    model = Model()
    config = mirror_config(env, dest)
    svc = env.start(config)
    kills = 0
    for wave in range(6):
        random_events(env, model, rng, persons=2000, count=3400, email_rate=0.9)
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
