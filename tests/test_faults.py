"""Design §5 and §6 under destination faults, through the whole service.

Real Kafka, `stream-sync run` subprocesses and the fault-injecting test destination. Every
test computes the expected destination state itself from the events it produces (a mirror
activation, so the final state does not depend on timing) and compares it with the records the
destination acknowledged.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from tests.fakes.test_destination import TOKEN, TestDestination
from tests.harness import (
    SyncEnv,
    activation,
    log_events,
    metric,
    test_destination_config,
    wait_until,
)
from tests.kafka_helpers import committed_offsets, consume_all, end_offsets
from tests.model import CUSTOM, FIELDS, Model, describe_diff, random_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Short backoff ceiling: with the default (60 s) a few consecutive failures could make one
# retry wait close to a minute, which only slows the suite down; the policy is the same.
FAST_RETRY = {"max_backoff_s": 1.0}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def sync_partitions() -> int:
    return 3


@pytest.fixture
def other_dest() -> Iterator[TestDestination]:
    """A second server: `down()` closes a whole server, so an outage needs its own."""
    with TestDestination() as server:
        yield server


# --------------------------------------------------------------------------- helpers


def wait_converged(
    dest: TestDestination, ns: str, expected: dict[str, Any], timeout: float = 180, what: str = ""
) -> None:
    try:
        wait_until(
            lambda: dest.records(ns) == expected,
            timeout,
            interval=0.3,
            what=what or f"{ns} converged",
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{describe_diff(dest.records(ns), expected)}") from None


def offsets_committed_to_end(env: SyncEnv) -> bool:
    for kind in ("memberships", "attributes"):
        topic = env.topics[kind]
        ends = {p: off for p, off in end_offsets(env.bootstrap, topic).items() if off > 0}
        committed = committed_offsets(env.bootstrap, env.group, topic)
        if any(committed.get(p, -1) < off for p, off in ends.items()):
            return False
    return True


def mirror(id_: str, destination: str, **kw: Any) -> dict[str, Any]:
    """A mirror activation; its deletion guard is off: the random churn of these tests deletes
    far more than 20 % of the members within the hour, on purpose."""
    kw.setdefault("max_size", 20)
    kw.setdefault("max_wait_ms", 100)
    kw.setdefault("deletion_guard", False)
    return activation(id_, destination, "mirror", fields=FIELDS, custom=CUSTOM, **kw)


# --------------------------------------------------------------------------- 5xx / 429


def test_half_of_requests_failing_converges_with_retries_and_throttles(
    env: SyncEnv, dest: TestDestination
) -> None:
    """~50 % of the answers are 429 (Retry-After: 0) or 500/503 for the whole test: every
    operation is retried until it lands, nothing is lost or applied twice, the metrics count
    the retries and the throttles, and Retry-After is read in both of its forms."""
    rng = random.Random(11)
    model = Model()
    # the first answers: a 429 with Retry-After in seconds, a 503 with an HTTP-date one
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    dest.inject(429, headers={"Retry-After": "1"})
    dest.inject(503, headers={"Retry-After": soon})
    dest.fail_rate(0.5, statuses=(429, 500, 503), seed=5)
    config = env.write_config(
        {"d": test_destination_config(dest.url("d"), retry=FAST_RETRY)}, [mirror("mir", "d")]
    )
    svc = env.start(config)

    random_events(env, model, rng, persons=300, count=900)
    wait_converged(dest, "d", model.expected(), what="convergence under failures (wave 1)")
    random_events(env, model, rng, persons=300, count=900)
    wait_converged(dest, "d", model.expected(), what="convergence under failures (wave 2)")

    faults = dest.calls(route="fault")
    throttles = [call for call in faults if call.status == 429]
    assert len(faults) >= 10 and throttles, "the destination barely failed: test is too weak"
    # every refused request was sent again, and only those: retries == refusals
    wait_until(
        lambda: (
            metric(svc.metrics(), "stream_sync_retries_total", destination="d") == len(faults)
            and metric(svc.metrics(), "stream_sync_throttled_total", destination="d")
            == len(throttles)
        ),
        30,
        what="retry and throttle metrics",
    )
    text = svc.metrics()
    assert metric(text, "stream_sync_api_calls_total", destination="d", status="429") == len(
        throttles
    )
    assert metric(text, "stream_sync_api_calls_total", destination="d", status="500") > 0
    # a refused request was not applied: nothing was written twice
    assert dest.ns("d").noops == 0
    # Retry-After honoured in both forms (seconds, HTTP-date); the timing itself is not asserted
    retries = [e for e in log_events(svc) if e.get("event") == "destination_retry"]
    assert any(e["status"] == 429 and e["retry_after"] == 1.0 for e in retries), retries[:5]
    assert any(e["status"] == 503 and e["retry_after"] is not None for e in retries), retries[:5]

    # the faults end: nothing is pending, nothing more is sent
    dest.fail_rate(0)
    sent = len(dest.ops("d"))
    time.sleep(1.5)
    assert len(dest.ops("d")) == sent
    assert dest.records("d") == model.expected()
    assert svc.terminate() == 0
    assert TOKEN not in svc.logs()


# --------------------------------------------------------------------------- 401


def authorize_again(dest: TestDestination, namespace: str) -> None:
    """Undo `unauthorized(namespace)` — the credentials were fixed (the fake has no method)."""
    with dest._lock:
        dest._unauthorized.discard(namespace)


def test_401_stops_one_activation_others_and_commits_go_on(
    env: SyncEnv, dest: TestDestination
) -> None:
    rng = random.Random(21)
    model = Model()
    config = env.write_config(
        {
            "d-ok": test_destination_config(dest.url("ok"), retry=FAST_RETRY),
            "d-bad": test_destination_config(dest.url("bad"), retry=FAST_RETRY),
        },
        [mirror("a-ok", "d-ok"), mirror("a-bad", "d-bad")],
    )
    svc = env.start(config)
    random_events(env, model, rng, persons=200, count=600)
    wait_converged(dest, "ok", model.expected(), what="ok synced before the 401")
    wait_converged(dest, "bad", model.expected(), what="bad synced before the 401")
    synced_before = model.expected()
    ops_before = len(dest.ops("bad"))

    # the credentials of d-bad are revoked: every request answers 401
    dest.unauthorized("bad")
    random_events(env, model, rng, persons=200, count=600)

    # the activation stops with a clear error: a log line ...
    stopped = wait_until(
        lambda: [e for e in log_events(svc) if e.get("event") == "activation_stopped"],
        60,
        what="activation_stopped log line",
    )
    assert len(stopped) == 1, stopped
    line = stopped[0]
    assert line["level"] == "error"
    assert line["activation"] == "a-bad" and line["destination"] == "d-bad"
    assert line["reason"] == "http_401" and "401" in line["error"]
    # ... a metric ...
    wait_until(
        lambda: (
            'stream_sync_activation_running{activation="a-bad"} 0.0' in (m := svc.metrics())
            and 'stream_sync_activation_running{activation="a-ok"} 1.0' in m
        ),
        30,
        what="activation_running gauges",
    )
    # ... and a warning
    warnings = wait_until(
        lambda: [
            w
            for w in consume_all(env.bootstrap, env.topics["warnings"], timeout=10)
            if w.json()["kind"] == "activation_stopped"
        ],
        30,
        what="activation_stopped warning",
    )
    assert len(warnings) == 1
    warning = warnings[0].json()
    assert warnings[0].key is None
    assert warning["reason"] == "http_401" and "401" in warning["message"]
    assert warning["activation"] == "a-bad" and warning["destination"] == "d-bad"
    assert warning["person_id"] is None and warning["offset"] is None

    # the other activation keeps syncing new events, and the input keeps being committed
    random_events(env, model, rng, persons=260, count=600)
    wait_converged(dest, "ok", model.expected(), what="ok keeps syncing after the 401")
    wait_until(lambda: offsets_committed_to_end(env), 60, what="committed offsets reach the end")
    assert svc.proc.poll() is None, "the service must keep running"
    health = svc.get("/healthz")
    assert health is not None and health.status_code == 200
    # the stopped activation sent nothing more
    assert len(dest.ops("bad")) == ops_before
    assert dest.records("bad") == synced_before
    assert TOKEN not in svc.logs()
    assert svc.terminate() == 0

    # its backlog stayed in state: once the credentials work again, a restart catches it up
    authorize_again(dest, "bad")
    ok_ops = len(dest.ops("ok"))
    svc = env.start(config)
    wait_converged(dest, "bad", model.expected(), what="bad caught up after restart")
    assert dest.records("ok") == model.expected()
    assert len(dest.ops("ok")) == ok_ops, "nothing changed for a-ok: no call"
    assert svc.terminate() == 0


def test_401_on_the_only_activation_exits_1(env: SyncEnv, dest: TestDestination) -> None:
    dest.unauthorized("solo")
    config = env.write_config(
        {"d": test_destination_config(dest.url("solo"))}, [mirror("only", "d")]
    )
    svc = env.start(config)
    model = Model()
    random_events(env, model, random.Random(3), persons=20, count=40)
    code = svc.wait(120)
    assert code == 1, svc.logs()
    events = log_events(svc)
    stops = [e for e in events if e.get("event") == "activation_stopped"]
    assert [(e["activation"], e["reason"]) for e in stops] == [("only", "http_401")]
    assert any(e.get("event") == "no_activation_left" for e in events)
    assert dest.ops("solo") == [] and dest.records("solo") == {}
    warnings = [w.json() for w in consume_all(env.bootstrap, env.topics["warnings"])]
    assert [(w["kind"], w["activation"]) for w in warnings] == [("activation_stopped", "only")]
    assert TOKEN not in svc.logs()


# --------------------------------------------------------------------------- outage


def test_destination_down_others_unaffected_then_catches_up_from_state(
    env: SyncEnv, dest: TestDestination, other_dest: TestDestination
) -> None:
    """One destination unreachable (connection refused) for ~20 s — the issue says "a minute";
    20 s keeps the suite short and the mechanism is the same: the other activation keeps up
    with new events meanwhile, offsets are committed, a restart in the middle of the outage
    loses nothing, and once the destination is back it catches up from state."""
    rng = random.Random(31)
    model = Model()
    down = other_dest
    config = env.write_config(
        {
            "d-a": test_destination_config(dest.url("a"), retry=FAST_RETRY),
            "d-b": test_destination_config(down.url("b"), retry=FAST_RETRY),
        },
        [mirror("a", "d-a"), mirror("b", "d-b")],
        extra={"shutdown_grace_s": 3},
    )
    svc = env.start(config)
    random_events(env, model, rng, persons=200, count=500)
    wait_converged(dest, "a", model.expected(), what="a before the outage")
    wait_converged(down, "b", model.expected(), what="b before the outage")
    b_before = down.records("b")

    down.down()
    outage_started = time.monotonic()
    waves = 0
    while time.monotonic() - outage_started < 12 or waves < 3:
        random_events(env, model, rng, persons=250, count=250)
        waves += 1
        wait_converged(dest, "a", model.expected(), 90, what=f"a during the outage (wave {waves})")
    assert down.records("b") == b_before, "nothing can reach a destination that is down"
    wait_until(lambda: offsets_committed_to_end(env), 60, what="commits during the outage")
    text = svc.metrics()
    assert metric(text, "stream_sync_retries_total", destination="d-b") > 0
    assert metric(text, "stream_sync_api_calls_total", destination="d-b", status="error") > 0
    assert metric(text, "stream_sync_retries_total", destination="d-a") == 0

    # a restart while it is still down: what b owes is in state, not in the process
    assert svc.terminate() == 0
    a_ops = len(dest.ops("a"))
    svc = env.start(config)
    random_events(env, model, rng, persons=250, count=200)
    wait_converged(dest, "a", model.expected(), 90, what="a after the restart")
    assert down.records("b") == b_before
    while time.monotonic() - outage_started < 20:
        time.sleep(0.5)

    down.up()
    wait_converged(down, "b", model.expected(), 180, what="b caught up after the outage")
    assert dest.records("a") == model.expected()
    assert len(dest.ops("a")) > a_ops
    assert svc.terminate() == 0


def test_backlog_of_a_down_destination_is_visible_in_metrics(
    env: SyncEnv, dest: TestDestination
) -> None:
    """Design §5: the backlog of a down destination is visible in metrics — persons marked
    while its worker is stuck retrying one batch count too, not only those seen when that
    batch was taken (before 75ba8b4 the gauge stayed at 0 here)."""
    model = Model()
    config = env.write_config(
        {"d": test_destination_config(dest.url("d"), retry=FAST_RETRY)}, [mirror("mir", "d")]
    )
    svc = env.start(config)
    dest.down()
    for i in range(5):  # one small batch: taken, then stuck retrying
        model.set(env, f"first{i}", {"email": f"first{i}@x.io", "plan": "pro"})
        model.enter(env, f"first{i}")
    env.flush()
    wait_until(
        lambda: metric(svc.metrics(), "stream_sync_retries_total", destination="d") > 0,
        60,
        what="the first batch retrying",
    )
    for i in range(60):  # then 60 more members the destination owes
        model.set(env, f"later{i}", {"email": f"later{i}@x.io", "plan": "pro"})
        model.enter(env, f"later{i}")
    env.flush()
    wait_until(lambda: offsets_committed_to_end(env), 60, what="the new events applied")

    def backlog() -> float:
        return metric(svc.metrics(), "stream_sync_backlog_persons", activation="mir")

    try:
        wait_until(lambda: backlog() >= 60, 10, what="backlog gauge during the outage")
    except AssertionError:
        raise AssertionError(f"backlog gauge at {backlog()} while 65 persons are owed") from None
    finally:
        dest.up()
    wait_converged(dest, "d", model.expected(), what="caught up after the outage")
    assert svc.terminate() == 0
