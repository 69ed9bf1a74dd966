"""Issue 6 (soak: a broker restart): partitions lost when the group session expires, and
assigned straight back.

The service process is stopped (SIGSTOP) for longer than its session timeout, so the group
coordinator expires it for real; when it runs again its consumer reports the assignment lost,
rejoins and gets the same partitions. When nobody else wrote their state meanwhile, the
service keeps its memory (no second restore); when somebody did, it restores.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from stream_sync.kafka_setup import STATE_TOPIC_CONFIG
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
from tests.kafka_helpers import topic_config

PERSONS = 40
SESSION_MS = 6000  # the broker's group.min.session.timeout.ms


def start(env: SyncEnv, dest: TestDestination) -> ServiceProcess:
    kafka = {
        "bootstrap_servers": env.bootstrap,
        "group_id": env.group,
        "commit_interval_ms": 300,
        "client": {"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 1000},
    }
    config = env.write_config(
        {"d": test_destination_config(dest.url("d"))},
        [activation("mir", "d", "mirror", max_wait_ms=100)],
        extra={"kafka": kafka},
    )
    return env.start(config)


def expected(plans: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {f"p{i}@x.io": {"plan": plans[f"p{i}"]} for i in range(PERSONS)}


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


def lose_session(env: SyncEnv, svc: ServiceProcess, plans: dict[str, str], during: Any) -> None:
    """Stop the process past its session timeout; change every person meanwhile."""
    os.kill(svc.proc.pid, signal.SIGSTOP)
    try:
        for i in range(PERSONS):
            env.attrs(f"p{i}", {"plan": "pro"})
            plans[f"p{i}"] = "pro"
        env.flush()
        during()
        time.sleep(SESSION_MS / 1000 + 6)  # expired by the coordinator
    finally:
        os.kill(svc.proc.pid, signal.SIGCONT)
    wait_until(lambda: len(assignments(svc)) >= 2, 90, what="the assignment after the loss")


@pytest.mark.kafka
def test_lost_partitions_assigned_back_are_kept_without_restore(env: SyncEnv) -> None:
    with TestDestination() as dest:
        svc = start(env, dest)
        # the state topic the service created compacts closed hourly segments from 10 % dirty
        config = topic_config(env.bootstrap, env.topics["state"])
        assert {k: config[k] for k in STATE_TOPIC_CONFIG} == STATE_TOPIC_CONFIG
        plans = sync_initial(env, dest)
        restored_before = metric(svc.metrics(), "stream_sync_state_records_restored_total")
        ops_before = len(dest.ops("d"))

        lose_session(env, svc, plans, lambda: None)

        wait_until(lambda: dest.records("d") == expected(plans), 60, what="changes synced")
        again = assignments(svc)[-1]
        assert sorted(again["kept_after_lost"]) == list(range(env.partitions)), again
        assert again["restored"] == []
        text = svc.metrics()
        assert metric(text, "stream_sync_state_records_restored_total") == restored_before
        assert metric(text, "stream_sync_partitions_kept_after_lost_total") == env.partitions
        # one update per person, nothing sent twice
        assert len(dest.ops("d")) - ops_before == PERSONS
        assert svc.terminate() == 0


@pytest.mark.kafka
def test_lost_partitions_written_by_another_are_restored(env: SyncEnv) -> None:
    with TestDestination() as dest:
        svc = start(env, dest)
        plans = sync_initial(env, dest)
        restored_before = metric(svc.metrics(), "stream_sync_state_records_restored_total")

        def another_instance_writes() -> None:
            # as a member that owned the partition meanwhile would: a state write on each
            producer = Producer({"bootstrap.servers": env.bootstrap})
            for p in range(env.partitions):
                producer.produce(env.topics["state"], None, b"person/someone-else", p)
            assert producer.flush(10) == 0

        lose_session(env, svc, plans, another_instance_writes)

        wait_until(lambda: dest.records("d") == expected(plans), 60, what="changes synced")
        again = assignments(svc)[-1]
        assert again["kept_after_lost"] == []
        assert sorted(again["restored"]) == list(range(env.partitions)), again
        assert metric(svc.metrics(), "stream_sync_state_records_restored_total") > restored_before
        assert svc.terminate() == 0
