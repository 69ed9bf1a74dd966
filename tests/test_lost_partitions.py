"""Issue 6: partitions lost (group session expired, e.g. across a broker restart) and assigned
straight back keep their memory only when it is provably still right.

- kept without a restore when nobody else wrote the state meanwhile; restored when another
  member did;
- the decision rule (``known_state_end``) and the delivery tracking it reads
  (``_Producing.acked_run``) on a real state partition: another writer's record between two
  of ours breaks the run, so "our last acknowledged offset + 1 == the end" is not enough;
- end to end, a write of ours landing *after* another writer's on the lost partition (the
  outcome of a batch in flight during the loss): restored, not kept;
- end to end, a kept partition goes on from the later of its own position and the group's
  committed offset (input another member consumed and committed without writing state is not
  applied again: its poison records are not reported twice), and the input that arrived while
  it was lost is caught up before anything is sent (one operation per person, final values);
- the state topic the service creates carries the compaction settings; an existing one is
  left as it is.

The loss is real: the service process is stopped (SIGSTOP) for longer than its session
timeout, so the coordinator expires it, as it does when a broker restart outlasts the session.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_sync.config.loader import load_config
from stream_sync.kafka_setup import (
    STATE_TOPIC_CONFIG,
    admin_client,
    ensure_topics,
    inspect_topics,
    wait_for_cluster,
)
from stream_sync.service import known_state_end
from stream_sync.statewriter import StateWriter, producer_config
from tests.fakes.test_destination import TestDestination
from tests.harness import (
    ServiceProcess,
    SyncEnv,
    activation,
    log_events,
    metric,
    test_destination_config,
    wait_until,
)
from tests.kafka_helpers import TopicFactory, consume_all, end_offsets, topic_config

PERSONS = 30
SESSION_MS = 6000  # the broker's group.min.session.timeout.ms
FILLER = 3000  # input between two changes of every person, in a backlog


# --- the decision rule -------------------------------------------------------------------


def test_known_state_end() -> None:
    # nothing restored: nothing known, whatever we wrote
    assert known_state_end(None, None) is None
    assert known_state_end(None, (0, 9)) is None
    # restored to 10, nothing written since (or only before): exactly the restored part
    assert known_state_end(10, None) == 10
    assert known_state_end(10, (2, 5)) == 10
    # our run joins the restored end (or began before it and goes on past it)
    assert known_state_end(10, (10, 14)) == 15
    assert known_state_end(10, (3, 14)) == 15
    # our run began after a gap: records 10..11 are somebody else's, only 10 is known
    assert known_state_end(10, (12, 14)) == 10
    # an empty partition restored, then written by us from its start
    assert known_state_end(0, None) == 0
    assert known_state_end(0, (0, 3)) == 4


class _Report:
    """What a delivery report hands ``_on_delivery``: a message of partition 0."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def runs_of(offsets: list[int]) -> list[tuple[int, int]]:
    """The sorted disjoint runs of consecutive numbers in ``offsets``."""
    runs: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if runs and runs[-1][1] + 1 == offset:
            runs[-1] = (runs[-1][0], offset)
        else:
            runs.append((offset, offset))
    return runs


def test_delivery_reports_out_of_order_still_make_one_run() -> None:
    """Seen in the soak: the commit's flush and an activation's flush serve delivery reports
    in two threads at once, so a batch's reports (an intent, then person records) arrived
    after the next batch's. Taken in arrival order, the run broke at the first of them and the
    partition was restored although every record in it was ours."""
    writer = StateWriter(producer=None, topic="state")
    for offset in [*range(0, 100), *range(221, 300), *range(100, 221), *range(300, 310)]:
        writer._on_delivery(None, _Report(offset))
    assert writer.acked_run(0) == (0, 309)
    assert known_state_end(0, writer.acked_run(0)) == 310


@settings(max_examples=300, deadline=None)
@given(
    ours=st.lists(st.integers(0, 200), min_size=1, max_size=150, unique=True),
    seed=st.randoms(use_true_random=False),
)
def test_acked_runs_merge_reports_in_any_order(ours: list[int], seed: Any) -> None:
    """Whatever the order the reports arrive in, the latest run is exactly the run of
    consecutive offsets of ours that ends at the highest of them: never a foreign offset
    (a gap), and (while no run had to be forgotten) nothing less than what is ours."""
    arrival = list(ours)
    seed.shuffle(arrival)
    writer = StateWriter(producer=None, topic="state")
    for offset in arrival:
        writer._on_delivery(None, _Report(offset))
    first, last = runs_of(ours)[-1]
    run = writer.acked_run(0)
    assert run is not None and run[1] == last == writer.acked(0)
    if len(ours) <= 64:  # no run forgotten (at most 64 are kept): exactly the true run
        assert run == (first, last)
    else:  # a forgotten run only makes it shorter: never claims a foreign offset
        assert first <= run[0] <= last


@pytest.mark.kafka
def test_acked_runs_on_a_real_state_partition(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = make_topic(partitions=1, config={"cleanup.policy": "compact"})
    writer = StateWriter(Producer(producer_config(kafka_bootstrap, {})), topic)

    def end() -> int:
        return end_offsets(kafka_bootstrap, topic)[0]

    restored_end = end()  # an empty partition "restored"
    for i in range(3):
        writer.tombstone(0, f"person/p{i}".encode())
    writer.flush_blocking(30)
    assert writer.acked_run(0) == (0, 2) and writer.acked(0) == 2
    assert known_state_end(restored_end, writer.acked_run(0)) == end() == 3

    # another writer, then us again: our highest offset + 1 is the end, yet the partition
    # holds a record we never saw
    foreign = Producer({"bootstrap.servers": kafka_bootstrap})
    foreign.produce(topic, None, b"person/someone-else", 0)
    assert foreign.flush(30) == 0
    for i in range(2):
        writer.tombstone(0, f"person/q{i}".encode())
    writer.flush_blocking(30)
    assert writer.acked(0) + 1 == end() == 6  # the naive rule would keep the partition
    assert writer.acked_run(0) == (4, 5)
    # what is known: only what was restored (our first run is forgotten, conservatively)
    assert known_state_end(restored_end, writer.acked_run(0)) == restored_end != end()
    # restored again (reads everything to 6): ours again from there on
    writer.tombstone(0, b"person/r")
    writer.flush_blocking(30)
    assert known_state_end(6, writer.acked_run(0)) == end() == 7
    assert not writer.failed_partitions


# --- the state topic ---------------------------------------------------------------------


@pytest.mark.kafka
def test_created_state_topic_compacts_fast_and_an_existing_one_is_left_alone(
    env: SyncEnv,
) -> None:
    def ensure(state_topic: str) -> None:
        env.topics["state"] = state_topic
        env.topics["warnings"] = f"{state_topic}-warnings"
        path, _ = env.write_config(
            {"d": test_destination_config("http://127.0.0.1:9/d")}, [activation("a", "d")]
        )
        config = load_config(path)
        admin, errors = admin_client(config)
        metadata = wait_for_cluster(admin, 30, errors)
        ensure_topics(config, admin, metadata, inspect_topics(config, metadata))

    created = f"{env.topics['state']}-created"
    ensure(created)
    described = topic_config(env.bootstrap, created)  # AdminClient.describe_configs
    assert {name: described[name] for name in STATE_TOPIC_CONFIG} == STATE_TOPIC_CONFIG
    assert described["cleanup.policy"] == "compact"
    assert int(described["segment.ms"]) <= 3_600_000
    assert int(described["segment.bytes"]) <= 64 * 1024 * 1024
    assert float(described["min.cleanable.dirty.ratio"]) <= 0.1
    assert described["min.compaction.lag.ms"] == "0"
    assert described["delete.retention.ms"] == "86400000"

    existing = f"{env.topics['state']}-existing"
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    new = NewTopic(existing, env.partitions, 1, config={"cleanup.policy": "compact"})
    admin.create_topics([new])[existing].result(30)
    wait_until(lambda: existing in admin.list_topics(timeout=5).topics, 30, what="topic")
    before = topic_config(env.bootstrap, existing)
    ensure(existing)
    assert topic_config(env.bootstrap, existing) == before  # not altered
    assert before["segment.ms"] != STATE_TOPIC_CONFIG["segment.ms"]  # the broker's default


# --- end to end --------------------------------------------------------------------------


def start(env: SyncEnv, dest: TestDestination, max_wait_ms: int = 100) -> ServiceProcess:
    kafka = {
        "bootstrap_servers": env.bootstrap,
        "group_id": env.group,
        "commit_interval_ms": 300,
        "client": {"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 1000},
    }
    config = env.write_config(
        {"d": test_destination_config(dest.url("d"))},
        [activation("mir", "d", "mirror", max_wait_ms=max_wait_ms)],
        extra={"kafka": kafka},
    )
    return env.start(config)


def expected(plans: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {f"{pid}@x.io": {"plan": plan} for pid, plan in plans.items()}


def sync_initial(env: SyncEnv, dest: TestDestination) -> dict[str, str]:
    plans = {}
    for i in range(PERSONS):
        env.attrs(f"p{i}", {"email": f"p{i}@x.io", "plan": "free"})
        env.enter(f"p{i}", "vip")
        plans[f"p{i}"] = "free"
    env.flush()
    wait_until(lambda: dest.records("d") == expected(plans), 60, what="initial sync")
    return plans


def assignments(svc: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in log_events(svc) if e.get("event") == "assigned"]


def lose_session(env: SyncEnv, svc: ServiceProcess, while_expired: Callable[[], None]) -> None:
    """Stop the process until the coordinator has expired its session; ``while_expired``
    runs then (the group is empty), before the process goes on."""
    os.kill(svc.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(SESSION_MS / 1000 + 5)
        while_expired()
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
    wait_until(lambda: len(assignments(svc)) >= 2, 90, what="the assignment after the loss")
    assert any(e.get("event") == "partitions_lost" for e in log_events(svc)), svc.logs()[-3000:]


@pytest.mark.kafka
def test_a_late_write_of_ours_after_another_writer_does_not_hide_it(env: SyncEnv) -> None:
    """A batch is in flight when the session expires; meanwhile another writer writes the
    state partition; then the batch's outcome (ours) lands after that record. Our last
    acknowledged offset + 1 is the end of the partition, yet it holds a record we never saw:
    restored, not kept."""
    with TestDestination() as dest:
        svc = start(env, dest)
        plans = sync_initial(env, dest)
        p = env.partition_of("p0")
        state = env.topics["state"]
        dest.hold()
        env.attrs("p0", {"plan": "pro"})
        plans["p0"] = "pro"
        env.flush()
        assert dest.wait_held(30), "p0's update in flight"

        def another_writes_then_the_batch_ends() -> None:
            producer = Producer({"bootstrap.servers": env.bootstrap})
            producer.produce(state, None, b"person/someone-else", p)
            assert producer.flush(10) == 0
            dest.release(apply=True)  # answered; the process reads it once it runs again

        lose_session(env, svc, another_writes_then_the_batch_ends)
        wait_until(lambda: dest.records("d") == expected(plans), 60, what="p0 synced")
        again = assignments(svc)[-1]
        assert p not in again["kept_after_lost"], again
        assert p in again["restored"], again

        # the situation really was "ours after theirs": the outcome of p0's batch (a sync
        # record written by the service) lies after the foreign record
        records = [r for r in consume_all(env.bootstrap, state) if r.partition == p]
        foreign = next(r.offset for r in records if r.key == b"person/someone-else")
        assert any(r.offset > foreign and r.key == b"sync/mir/p0" for r in records), (
            f"no write of ours after offset {foreign}"
        )
        assert svc.terminate() == 0


@pytest.mark.kafka
def test_kept_partitions_go_on_from_the_group_commit_and_catch_up_before_emit(
    env: SyncEnv,
) -> None:
    """While the service is expired, another member consumes input that changes no state
    (poison records) and commits past it; then every person changes plan three times among
    filler traffic. The partitions come back and are kept (no restore); input goes on from the
    group's commit (the poison is not reported again), and the backlog is applied before
    anything is sent: one update per person, with its final plan."""
    with TestDestination() as dest:
        svc = start(env, dest, max_wait_ms=10)  # sends quickly: would send mid-backlog
        plans = sync_initial(env, dest)
        restored_before = metric(svc.metrics(), "stream_sync_state_records_restored_total")
        ops_before = len(dest.ops("d"))

        def another_member_then_a_backlog() -> None:
            for p in range(env.partitions):
                env.raw("memberships", b"junk", b"{not json", p)
                env.raw("attributes", b"junk", b"\x00\x01 not a value", p)
            env.flush()
            # as a member that owned the partitions meanwhile: it reported the poison and
            # committed past it, with nothing to write to the state topic
            offsets = [
                TopicPartition(env.topics[kind], p, end)
                for kind in ("memberships", "attributes")
                for p, end in end_offsets(env.bootstrap, env.topics[kind]).items()
            ]
            other = Consumer(
                {
                    "bootstrap.servers": env.bootstrap,
                    "group.id": env.group,
                    "enable.auto.commit": False,
                }
            )
            try:
                wait_until(lambda: commit(other, offsets), 20, 0.5, what="the other's commit")
            finally:
                other.close()
            for step in ("basic", "plus"):
                for i in range(PERSONS):
                    env.attrs(f"p{i}", {"plan": step})
                for i in range(FILLER):
                    env.attrs(f"x{i}", {"email": f"x{i}@x.io", "plan": step})  # not members
            change_every_plan(env, plans, "pro")

        lose_session(env, svc, another_member_then_a_backlog)
        text = synced_and_kept(env, svc, dest, plans, restored_before)
        assert metric(text, "stream_sync_poison_messages_total") == 0  # the other's input
        # one update per person, the final one: no intermediate plan, nothing twice
        time.sleep(1)
        new_ops = dest.ops("d")[ops_before:]
        assert len(new_ops) == PERSONS, new_ops
        assert all(op["fields"] == {"plan": "pro"} for op in new_ops), new_ops
        assert svc.terminate() == 0


def commit(consumer: Consumer, offsets: list[TopicPartition]) -> bool:
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException:
        return False  # the group not empty yet
    return True


def synced_and_kept(
    env: SyncEnv,
    svc: ServiceProcess,
    dest: TestDestination,
    plans: dict[str, str],
    restored_before: float,
) -> str:
    """Wait for the destination to hold ``plans``; check every partition came back kept,
    nothing restored. Returns the metrics text."""
    wait_until(lambda: dest.records("d") == expected(plans), 60, what="changes synced")
    again = assignments(svc)[-1]
    assert sorted(again["kept_after_lost"]) == list(range(env.partitions)), again
    assert again["restored"] == []
    text = svc.metrics()
    assert metric(text, "stream_sync_state_records_restored_total") == restored_before
    assert metric(text, "stream_sync_partitions_kept_after_lost_total") == env.partitions
    return text


def change_every_plan(env: SyncEnv, plans: dict[str, str], plan: str) -> None:
    for i in range(PERSONS):
        env.attrs(f"p{i}", {"plan": plan})
        plans[f"p{i}"] = plan
    env.flush()


@pytest.mark.kafka
def test_lost_partitions_assigned_back_are_kept_without_restore(env: SyncEnv) -> None:
    """Nobody else wrote the state while the session was expired: the memory is kept (no
    restore), and the changes made meanwhile are sent once each."""
    with TestDestination() as dest:
        svc = start(env, dest)
        plans = sync_initial(env, dest)
        restored_before = metric(svc.metrics(), "stream_sync_state_records_restored_total")
        ops_before = len(dest.ops("d"))

        lose_session(env, svc, lambda: change_every_plan(env, plans, "pro"))

        synced_and_kept(env, svc, dest, plans, restored_before)
        time.sleep(1)
        assert len(dest.ops("d")) - ops_before == PERSONS  # one update per person, none twice
        assert svc.terminate() == 0


@pytest.mark.kafka
def test_lost_partitions_written_by_another_are_restored(env: SyncEnv) -> None:
    """Another member wrote every state partition while the session was expired: nothing is
    kept, every partition is restored, and the changes made meanwhile are synced."""
    with TestDestination() as dest:
        svc = start(env, dest)
        plans = sync_initial(env, dest)
        restored_before = metric(svc.metrics(), "stream_sync_state_records_restored_total")

        def another_instance_writes() -> None:
            change_every_plan(env, plans, "pro")
            producer = Producer({"bootstrap.servers": env.bootstrap})
            for p in range(env.partitions):
                producer.produce(env.topics["state"], None, b"person/someone-else", p)
            assert producer.flush(10) == 0

        lose_session(env, svc, another_instance_writes)

        wait_until(lambda: dest.records("d") == expected(plans), 60, what="changes synced")
        again = assignments(svc)[-1]
        assert again["kept_after_lost"] == [], again
        assert sorted(again["restored"]) == list(range(env.partitions)), again
        assert metric(svc.metrics(), "stream_sync_state_records_restored_total") > restored_before
        assert svc.terminate() == 0
