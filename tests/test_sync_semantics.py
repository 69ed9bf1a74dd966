"""Design §4 through the whole service: real Kafka, `stream-sync run`, the test destination."""

from __future__ import annotations

import json
import time

import pytest

from tests.fakes.test_destination import TestDestination
from tests.harness import SyncEnv, activation, test_destination_config, wait_until
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.kafka


def three_modes(dest: TestDestination, **kw: object) -> list[dict[str, object]]:
    return [
        activation("up", "d-up", "upsert", **kw),  # type: ignore[arg-type]
        activation("mir", "d-mir", "mirror", **kw),  # type: ignore[arg-type]
        activation("upd", "d-upd", "update_only", **kw),  # type: ignore[arg-type]
    ]


def dests(dest: TestDestination) -> dict[str, object]:
    return {name: test_destination_config(dest.url(name)) for name in ("d-up", "d-mir", "d-upd")}


def settle(seconds: float = 1.0) -> None:
    """Let a batch window (200 ms) pass with margin, to assert that nothing more is sent."""
    time.sleep(seconds)


def test_enter_update_exit_reenter(env: SyncEnv, dest: TestDestination) -> None:
    svc = env.start(env.write_config(dests(dest), three_modes(dest)))
    env.attrs("p1", {"email": "Ann@X.io", "first_name": "Ann", "city": "Paris", "plan": "pro"})
    env.enter("p1", "vip")
    env.flush()

    # ENTER → one create-or-update with all mapped fields (upsert and mirror)
    for ns in ("d-up", "d-mir"):
        wait_until(lambda ns=ns: dest.ops(ns), what=f"{ns} upsert")
    settle()
    for ns in ("d-up", "d-mir"):
        ops = dest.ops(ns)
        assert len(ops) == 1
        assert ops[0]["op"] == "upsert" and ops[0]["full"] is True
        assert ops[0]["fields"] == {"first_name": "Ann", "city": "Paris", "plan": "pro"}
        assert ops[0]["clears"] == []
    # update_only + unknown to the destination → ignored (one attempt), counted
    upd = dest.ops("d-upd")
    assert [op["op"] for op in upd] == ["update"]
    assert dest.records("d-upd") == {}
    wait_until(
        lambda: (
            'stream_sync_operations_total{activation="upd",kind="create",outcome="ignored"} 1.0'
            in svc.metrics()
        ),
        what="ignored metric",
    )

    # an attribute change → only the changed fields
    dest.reset_ops()
    env.attrs("p1", {"city": "Lyon"})
    env.flush()
    wait_until(lambda: dest.ops("d-up"), what="update")
    settle()
    for ns in ("d-up", "d-mir"):
        assert [(op["op"], op["fields"], op["clears"]) for op in dest.ops(ns)] == [
            ("upsert", {"city": "Lyon"}, [])
        ]
    # an ignored person is tried again (full record) when one of its mapped values changes
    assert [(op["op"], op["full"]) for op in dest.ops("d-upd")] == [("update", True)]

    # EXIT: mirror deletes, the others make no call
    dest.reset_ops()
    env.exit("p1", "vip")
    env.flush()
    wait_until(lambda: dest.ops("d-mir"), what="delete")
    settle()
    assert [op["op"] for op in dest.ops("d-mir")] == ["delete"]
    assert dest.records("d-mir") == {}
    assert dest.ops("d-up") == []
    assert dest.records("d-up") == {
        "Ann@X.io": {"first_name": "Ann", "city": "Lyon", "plan": "pro"}
    }

    # re-ENTER after a reconciled EXIT → the full record again
    dest.reset_ops()
    env.enter("p1", "vip")
    env.flush()
    wait_until(lambda: dest.ops("d-up") and dest.ops("d-mir"), what="re-enter")
    settle()
    for ns in ("d-up", "d-mir"):
        ops = dest.ops(ns)
        assert len(ops) == 1 and ops[0]["full"] is True
        assert ops[0]["fields"] == {"first_name": "Ann", "city": "Lyon", "plan": "pro"}
    assert svc.terminate() == 0


def test_update_only_ignored_then_retried_on_change(env: SyncEnv, dest: TestDestination) -> None:
    svc = env.start(env.write_config(dests(dest), three_modes(dest)))
    env.attrs("p1", {"email": "a@x.io", "first_name": "A"})
    env.enter("p1", "vip")
    env.flush()
    wait_until(lambda: dest.ops("d-upd"), what="first update")
    settle()
    assert len(dest.ops("d-upd")) == 1
    # the person appears in the destination by other means; a changed value retries
    dest.ns("d-upd").records["a@x.io"] = {"_ref": "ext-1"}
    env.attrs("p1", {"first_name": "B"})
    env.flush()
    wait_until(lambda: len(dest.ops("d-upd")) == 2, what="retry after change")
    assert dest.records("d-upd") == {"a@x.io": {"first_name": "B"}}
    assert svc.terminate() == 0


def test_changes_inside_window_coalesce(env: SyncEnv, dest: TestDestination) -> None:
    acts = [activation("up", "d-up", "upsert", max_wait_ms=1500)]
    svc = env.start(env.write_config({"d-up": test_destination_config(dest.url("d-up"))}, acts))
    env.attrs("p2", {"email": "b@x.io", "first_name": "B0"})
    env.enter("p2", "vip")
    env.flush()
    wait_until(lambda: dest.ops("d-up"), what="create")
    dest.reset_ops()
    for i in range(1, 6):  # five changes inside one window
        env.attrs("p2", {"first_name": f"B{i}", "city": f"C{i}"})
    # an EXIT and a re-ENTER inside the window that end where they started
    env.exit("p2", "vip")
    env.enter("p2", "vip")
    env.flush()
    wait_until(lambda: dest.ops("d-up"), what="coalesced update")
    settle(2.0)
    ops = dest.ops("d-up")
    assert len(ops) == 1
    assert ops[0]["fields"] == {"first_name": "B5", "city": "C5"}
    assert svc.terminate() == 0


def test_pending_identifier_then_synced(env: SyncEnv, dest: TestDestination) -> None:
    acts = [activation("up", "d-up", "upsert")]
    svc = env.start(env.write_config({"d-up": test_destination_config(dest.url("d-up"))}, acts))
    env.enter("p3", "vip")
    env.attrs("p3", {"first_name": "C"})
    env.flush()
    wait_until(
        lambda: 'stream_sync_pending_identifier_persons{activation="up"} 1.0' in svc.metrics(),
        what="pending gauge",
    )
    assert dest.ops("d-up") == []
    env.attrs("p3", {"email": "c@x.io"})
    env.flush()
    wait_until(lambda: dest.ops("d-up"), what="sync once identified")
    assert dest.records("d-up") == {"c@x.io": {"first_name": "C"}}
    wait_until(
        lambda: 'stream_sync_pending_identifier_persons{activation="up"} 0.0' in svc.metrics(),
        what="pending gauge back to 0",
    )
    assert svc.terminate() == 0


def test_unset_attribute_is_cleared_and_tombstone_deletes(
    env: SyncEnv, dest: TestDestination
) -> None:
    svc = env.start(env.write_config(dests(dest), three_modes(dest)[:2]))
    env.attrs("p4", {"email": "d@x.io", "first_name": "D", "city": "Nice"})
    env.enter("p4", "vip")
    env.flush()
    wait_until(lambda: dest.records("d-up"), what="create")
    dest.reset_ops()
    env.attrs("p4", {"city": None})
    env.flush()
    wait_until(lambda: dest.ops("d-up"), what="clear")
    assert dest.ops("d-up")[0]["clears"] == ["city"]
    assert dest.records("d-up") == {"d@x.io": {"first_name": "D"}}
    # upstream deletion (tombstone on the attributes topic): leaves every segment
    env.delete_person("p4")
    env.flush()
    wait_until(lambda: dest.records("d-mir") == {}, what="mirror delete after tombstone")
    assert svc.terminate() == 0


def test_poison_messages_go_to_warnings(env: SyncEnv, dest: TestDestination) -> None:
    acts = [activation("up", "d-up", "upsert")]
    svc = env.start(env.write_config({"d-up": test_destination_config(dest.url("d-up"))}, acts))
    p = env.partition_of("p5")
    env.attrs("p5", {"email": "e@x.io"})
    env.raw("memberships", b"p5", b"{not json", partition=p)
    env.raw(
        "memberships",
        b"other",
        json.dumps({"person_id": "p5", "segment_id": "vip", "op": "ENTER", "ts": 1}).encode(),
        partition=p,
    )
    env.raw("memberships", b"p5", None, partition=p)
    env.enter("p5", "vip")
    env.flush()
    wait_until(lambda: dest.records("d-up"), what="valid events applied")
    warnings = wait_until(
        lambda: (
            (w := consume_all(env.bootstrap, env.topics["warnings"], timeout=5))
            and len(w) >= 3
            and w
        ),
        what="3 warnings",
    )
    reasons = sorted(json.loads(w.value)["reason"] for w in warnings)
    assert reasons == sorted(["invalid_json", "key_mismatch", "tombstone_not_allowed"])
    for w in warnings:
        body = json.loads(w.value)
        assert body["kind"] == "poison"
        assert body["topic"] == env.topics["memberships"]
        assert body["partition"] == p and isinstance(body["offset"], int)
    assert dest.records("d-up") == {"e@x.io": {}}
    assert svc.terminate() == 0


def test_rejected_person_goes_to_warnings_rest_of_batch_lands(
    env: SyncEnv, dest: TestDestination
) -> None:
    dest.reject("bad1", "invalid_email", "email refused")
    dest.reject_batch_with("bad2")  # a 400 that names no culprit: the batch is split
    acts = [activation("up", "d-up", "upsert", max_wait_ms=500)]
    svc = env.start(env.write_config({"d-up": test_destination_config(dest.url("d-up"))}, acts))
    people = [f"ok{i}" for i in range(6)] + ["bad1", "bad2"]
    for pid in people:
        env.attrs(pid, {"email": f"{pid}@x.io"})
        env.enter(pid, "vip")
    env.flush()
    wait_until(lambda: len(dest.records("d-up")) == 6, what="6 good persons")
    warnings = wait_until(
        lambda: (
            (w := consume_all(env.bootstrap, env.topics["warnings"], timeout=5))
            and len(w) >= 2
            and w
        ),
        what="2 rejection warnings",
    )
    by_person = {json.loads(w.value)["person_id"]: json.loads(w.value) for w in warnings}
    assert (
        by_person["bad1"]["kind"] == "rejected" and by_person["bad1"]["reason"] == "invalid_email"
    )
    assert by_person["bad2"]["kind"] == "rejected" and by_person["bad2"]["reason"] == "bad_batch"
    assert by_person["bad1"]["activation"] == "up" and by_person["bad1"]["destination"] == "d-up"
    # a rejected person is not resent on restart (recorded with the refused values)
    assert svc.terminate() == 0
    before = len(dest.ops("d-up"))
    svc2 = env.start(env.write_config({"d-up": test_destination_config(dest.url("d-up"))}, acts))
    settle(2)
    assert len(dest.ops("d-up")) == before
    assert svc2.terminate() == 0
