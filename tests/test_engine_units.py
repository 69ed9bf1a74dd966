"""Pure parts of the engine: reconciliation rules, intent folding, guard, backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_sync.destinations.base import Adapter, Outcome
from stream_sync.guard import DeletionGuard
from stream_sync.http import backoff_delay, parse_retry_after
from stream_sync.reconcile import ActivationPlan, DecisionKind, reconcile, record_after
from stream_sync.state import (
    IntendedOp,
    OpKind,
    Person,
    SyncRecord,
    SyncStatus,
    decode_sync,
    encode_sync,
    fold_intent,
)


class _Plain(Adapter):
    type_name = "plain"

    async def apply(self, ops):  # type: ignore[no-untyped-def]
        return [Outcome.applied() for _ in ops]

    def preview_request(self, op):  # type: ignore[no-untyped-def]
        return {}


def plan(mode: str = "upsert") -> ActivationPlan:
    adapter = _Plain("d")
    return ActivationPlan(
        id="a",
        segment="vip",
        mode=mode,
        identifier_attr="email",
        fields=(("first_name", "name", None, False), ("plan", "plan", None, True)),
        format_identifier=adapter.format_identifier,
        format_field=adapter.format_field,
    )


def person(attrs: dict[str, object], member: bool = True, sync: SyncRecord | None = None) -> Person:
    p = Person(0)
    p.attrs = dict(attrs)  # type: ignore[arg-type]
    if member:
        p.segments = frozenset({"vip"})
    if sync is not None:
        p.sync["a"] = sync
    return p


def synced(values: dict[str, object], ident: str = "a@x.io") -> SyncRecord:
    return SyncRecord(SyncStatus.SYNCED, dict(values), ident)  # type: ignore[arg-type]


def test_new_member_gets_full_record_without_clears() -> None:
    d = reconcile(plan(), "p", person({"email": "a@x.io", "first_name": "A", "plan": 1.0}))
    assert d.kind is DecisionKind.SEND and d.op is not None
    assert d.op.full and d.op.kind is OpKind.UPSERT
    assert d.op.fields == {"name": "A", "plan": 1} and d.op.clears == ()


def test_synced_member_gets_only_changed_fields_and_clears() -> None:
    p = person({"email": "a@x.io", "plan": 2}, sync=synced({"name": "A", "plan": 1.0}))
    d = reconcile(plan(), "p", p)
    assert d.op is not None and not d.op.full
    assert d.op.fields == {"plan": 2} and d.op.clears == ("name",)


def test_nothing_differs_nothing_sent() -> None:
    p = person({"email": "a@x.io", "plan": 1.0}, sync=synced({"plan": 1}))
    assert reconcile(plan(), "p", p).kind is DecisionKind.NONE


def test_exit_mirror_deletes_other_modes_record_left() -> None:
    p = person({"email": "a@x.io"}, member=False, sync=synced({"plan": 1}))
    d = reconcile(plan("mirror"), "p", p)
    assert d.op is not None and d.op.kind is OpKind.DELETE
    d = reconcile(plan("upsert"), "p", p)
    assert d.kind is DecisionKind.RECORD and d.record is not None
    assert d.record.status is SyncStatus.LEFT and d.record.values == {"plan": 1}


def test_reenter_after_left_sends_full_record_plus_clears() -> None:
    left = SyncRecord(SyncStatus.LEFT, {"name": "A", "plan": 1}, "a@x.io")
    d = reconcile(plan(), "p", person({"email": "a@x.io", "plan": 1}, sync=left))
    assert d.op is not None and d.op.full
    assert d.op.fields == {"plan": 1} and d.op.clears == ("name",)


def test_update_only_uses_update_and_pending_identifier() -> None:
    d = reconcile(plan("update_only"), "p", person({"email": "a@x.io"}))
    assert d.op is not None and d.op.kind is OpKind.UPDATE
    assert reconcile(plan(), "p", person({"plan": 1})).kind is DecisionKind.PENDING


def test_ignored_retried_only_when_values_change() -> None:
    ignored = SyncRecord(SyncStatus.IGNORED, {"plan": 1}, "a@x.io")
    same = person({"email": "a@x.io", "plan": 1}, sync=ignored)
    assert reconcile(plan("update_only"), "p", same).kind is DecisionKind.NONE
    changed = person({"email": "a@x.io", "plan": 2}, sync=ignored)
    assert reconcile(plan("update_only"), "p", changed).kind is DecisionKind.SEND


@pytest.mark.parametrize(
    ("kind", "before", "member", "expect"),
    [
        # create in flight, then the person leaves: mirror must still delete
        (OpKind.UPSERT, None, False, OpKind.DELETE),
        # delete in flight, then the person re-enters: full record
        (OpKind.DELETE, synced({"plan": 1}), True, OpKind.UPSERT),
    ],
)
def test_folded_intents_are_right_either_way(
    kind: OpKind, before: SyncRecord | None, member: bool, expect: OpKind
) -> None:
    p = person({"email": "a@x.io", "plan": 1}, member=member, sync=before)
    fold_intent(p, "a", IntendedOp("p", kind, "a@x.io", ("plan",), ()))
    d = reconcile(plan("mirror"), "p", p)
    assert d.op is not None and d.op.kind is expect
    if expect is OpKind.UPSERT:
        assert d.op.full and d.op.fields == {"plan": 1}


def test_delete_in_flight_maybe_unapplied_then_reenter_clears_old_fields() -> None:
    p = person({"email": "a@x.io", "plan": 1}, sync=synced({"plan": 1, "name": "A"}))
    fold_intent(p, "a", IntendedOp("p", OpKind.DELETE, "a@x.io", (), ()))
    d = reconcile(plan("mirror"), "p", p)
    assert d.op is not None and d.op.full
    assert d.op.fields == {"plan": 1} and d.op.clears == ("name",)


def test_value_set_in_flight_then_unset_is_cleared() -> None:
    p = person({"email": "a@x.io"}, sync=synced({}))
    fold_intent(p, "a", IntendedOp("p", OpKind.UPSERT, "a@x.io", ("plan",), ()))
    d = reconcile(plan(), "p", p)
    assert d.op is not None and d.op.clears == ("plan",)


def test_record_after_partial_update_merges() -> None:
    p = person({"email": "a@x.io", "plan": 2}, sync=synced({"name": "A", "plan": 1}))
    d = reconcile(plan(), "p", p)
    assert d.op is not None
    rec = record_after(p.sync["a"], d.op, d.desired, Outcome.applied("r1"), None)
    assert rec is not None and rec.values == {"plan": 2} and rec.ref == "r1"
    assert decode_sync(encode_sync(rec)) == rec


def test_guard_window_and_allowance() -> None:
    now = [0.0]
    guard = DeletionGuard(0.2, 10, clock=lambda: now[0])
    assert guard.allows(2, 0, 20)
    guard.note_deleted(2)
    assert guard.allows(2, 0, 20)  # 4 of 20 = 20 %: allowed
    guard.note_deleted(2)
    assert not guard.allows(1, 0, 20) and guard.held
    guard.release(1)
    assert guard.allows(1, 0, 20)
    guard.note_deleted(1)  # approved: not counted
    assert guard.deleted_in_window() == 0
    now[0] += 3601
    assert guard.allows(4, 0, 20)
    assert DeletionGuard(0.2, 100).allows(50, 0, 60)  # below min_members


@given(st.integers(min_value=0, max_value=60), st.floats(min_value=0.1, max_value=120))
def test_backoff_is_bounded_full_jitter(attempt: int, cap: float) -> None:
    delay = backoff_delay(attempt, None, max_backoff_s=cap)
    assert 0 <= delay <= cap
    assert backoff_delay(attempt, 7.0, max_backoff_s=cap) == 7.0


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    date = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(date, now) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_sync_record_values_are_compact_and_copied_out() -> None:
    from stream_sync.state import SyncRecord, SyncStatus

    a = SyncRecord(SyncStatus.SYNCED, {"city": "Paris", "plan": "pro"}, "a@x.io")
    b = SyncRecord(SyncStatus.SYNCED, {"city": "Lyon", "plan": "free"}, "b@x.io")
    assert a.values == {"city": "Paris", "plan": "pro"}
    assert a._names is b._names  # one shared tuple of field names
    assert type(a._vals) is tuple
    view = a.values
    view["city"] = "Lyon"  # a copy: the record is unchanged
    assert a.values["city"] == "Paris"
    a.values = {"plan": "team"}
    assert a.values == {"plan": "team"} and a.get("plan") == "team" and a.get("city") is None
    assert dict(a.items()) == {"plan": "team"}
    assert a == SyncRecord(SyncStatus.SYNCED, {"plan": "team"}, "a@x.io")
    assert a != SyncRecord(SyncStatus.SYNCED, {"plan": "pro"}, "a@x.io")


def test_sync_record_share_points_equal_values_at_the_source_objects() -> None:
    from stream_sync.state import SyncRecord, SyncStatus

    source = {"city": "".join(["Par", "is"]), "ltv": 12.5, "orders": 3}
    rec = SyncRecord(SyncStatus.SYNCED, {"city": "Paris", "ltv": 12.5, "orders": 3.0})
    assert rec.values["city"] is not source["city"]
    rec.share(source)
    assert rec.values["city"] is source["city"]
    assert rec.values["ltv"] is source["ltv"]
    assert type(rec.values["orders"]) is float  # 3.0 and 3 are equal but not the same value


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 2) | st.text(max_size=2)),
    st.lists(
        st.tuples(
            st.dictionaries(
                st.sampled_from("abcd"), st.none() | st.integers(0, 2) | st.floats(0, 2)
            ),
            st.lists(st.sampled_from("abcd"), max_size=2),
        ),
        max_size=5,
    ),
)
def test_apply_attributes_changed_agrees_with_apply_attributes(
    start: dict[str, Any], events: list[tuple[dict[str, Any], list[str]]]
) -> None:
    from stream_sync.events import AttributeChange
    from stream_sync.state import Person, apply_attributes, apply_attributes_changed

    one, two = Person(0), Person(0)
    one.attrs, two.attrs = dict(start), dict(start)
    for values, unset in events:
        event = AttributeChange("p", values, tuple(unset), 0)
        names = apply_attributes(one, event)
        assert apply_attributes_changed(two, event) == bool(names)
        assert one.attrs == two.attrs
        assert all(type(one.attrs[k]) is type(two.attrs[k]) for k in one.attrs)


def test_destination_requests_leave_no_reference_cycles() -> None:
    """httpx binds a response's stream to the response (a cycle holding both bodies until a
    full collection; the soak's RSS grew with it): the HTTP layer breaks it."""
    import gc

    import anyio

    from stream_sync.http import DestinationHttp
    from tests.fakes.test_destination import TOKEN, TestDestination

    async def run(url: str) -> int:
        http = DestinationHttp("d", url, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            for _ in range(10):
                response = await http.request("GET", "/check")
                assert response.status_code == 200
                del response
            gc.collect()
            return len(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            await http.aclose()

    with TestDestination() as dest:
        assert anyio.run(run, dest.url("d")) == 0


@pytest.mark.parametrize("path", ["apply_attributes", "apply_attributes_changed"])
@pytest.mark.parametrize("width", [4, 10])
def test_attributes_churned_by_unsets_stay_at_their_fresh_size(path: str, width: int) -> None:
    """A deleted key leaves a dummy slot; without a rebuild, the next insertion that finds no
    free slot resizes the dict for three times its entries, and the person keeps the bigger
    table for good (memory per tracked person grew with the run's age, and RSS crept)."""
    import random
    import sys

    from stream_sync import state
    from stream_sync.events import AttributeChange

    apply = getattr(state, path)
    names = [f"attr{i}" for i in range(width)]
    rng = random.Random(7)
    p = Person(0)
    apply(p, AttributeChange("p", dict.fromkeys(names, "v0"), (), 0))
    for i in range(500):
        name = rng.choice(names)
        if rng.random() < 0.3:
            event = AttributeChange("p", {}, (name,), i)
        else:
            event = AttributeChange("p", {name: f"v{i}"}, (), i)
        apply(p, event)
        fresh = {k: v for k, v in p.attrs.items()}  # what the same entries need
        assert sys.getsizeof(p.attrs) == sys.getsizeof(fresh), (i, len(p.attrs))
    assert sys.getsizeof(p.attrs) <= sys.getsizeof({name: None for name in names})


def _worker(store: Any, activation: str = "a") -> Any:
    """An activation worker on ``store`` without Kafka or a destination behind it."""
    from dataclasses import replace

    from stream_sync.engine import ActivationWorker
    from stream_sync.statewriter import StateWriter, WarningSink

    return ActivationWorker(
        replace(plan(), id=activation),
        "d",
        _Plain("d"),
        max_size=100,
        max_wait_ms=200,
        store=store,
        writer=StateWriter(None, "state"),
        warnings=WarningSink(None, "warnings"),
        dry_run=None,
        on_stopped=lambda _: None,
    )


def test_a_person_leaving_and_coming_back_keeps_a_compact_sync_dict() -> None:
    """The engine drops a sync record (mirror delete acknowledged) and sets it again on the
    next ENTER, over and over: the person's sync dict stays at its fresh size."""
    import sys

    from stream_sync.engine import Store

    store = Store()
    p = store.get_or_create("p", 0)
    p.sync["other"] = synced({"name": "Ann"})
    workers = [_worker(store, "act0"), _worker(store, "act1")]
    for _ in range(50):
        for w in workers:
            w._set_record("p", p, synced({"name": "Ann"}), persist=False)
        for w in workers:
            w._set_record("p", p, None, persist=False)
        assert sys.getsizeof(p.sync) == sys.getsizeof({k: v for k, v in p.sync.items()})
    assert list(p.sync) == ["other"]


def test_persons_marked_dirty_in_one_poll_share_its_timestamp() -> None:
    """A backlog costs its person ids, not a float per person: every mark of one poll holds
    the loop's clock, and the batch window counts from there."""
    from stream_sync.engine import Store

    store = Store()
    w = _worker(store)
    store.now = 1000.25
    for i in range(500):
        w.mark(f"p{i}")
    store.now = 1000.5
    w.mark("p0")  # already dirty: keeps its first mark
    w.mark("late")
    assert {id(t) for pid, t in w.dirty.items() if pid != "late"} == {id(w.dirty["p0"])}
    assert w.dirty["p0"] == 1000.25
    assert w.dirty["late"] == 1000.5


def test_a_restore_through_sync_tombstones_keeps_a_compact_sync_dict() -> None:
    """Restoring a state partition not compacted yet replays a person's sync records and
    their tombstones (left, came back, ...): the restored sync dict is at its fresh size."""
    import sys

    from stream_sync.restore import PartitionState, _apply

    state = PartitionState(0)
    pool: dict[str, str] = {}
    record = encode_sync(synced({"name": "Ann"}))
    _apply(state, b"sync/keep/p", record, pool)
    for _ in range(20):
        for act in ("a", "b", "c"):
            _apply(state, f"sync/{act}/p".encode(), record, pool)
        for act in ("a", "b", "c"):
            _apply(state, f"sync/{act}/p".encode(), None, pool)
    sync = state.persons["p"].sync
    assert list(sync) == ["keep"]
    assert sys.getsizeof(sync) == sys.getsizeof({k: v for k, v in sync.items()})


def test_ready_count_leaves_out_persons_dirty_again_while_in_flight() -> None:
    """With two lanes a batch is in flight while the next is taken: the persons it holds that
    were marked again wait for it (counted over the batch in flight, not the whole backlog)."""
    from stream_sync.engine import Store

    store = Store()
    w = _worker(store)
    for i in range(10):
        w.mark(f"p{i}")
    assert w._ready_count() == 10
    w.in_flight.update({"p1", "p2", "gone"})  # p1, p2 dirty again; "gone" is not dirty
    assert w._ready_count() == 8
    w.in_flight.clear()
    assert w._ready_count() == 10
