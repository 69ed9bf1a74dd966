"""Proof that the test broker is a real Apache Kafka 4.x: group offsets, compaction config,
protocol versions — the broker features the service's contract relies on (design §3, §5)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_helpers import (
    TopicFactory,
    broker_api_versions,
    committed_offsets,
    consume_all,
    end_offsets,
    produce,
    topic_config,
    topic_partition_count,
    unique_name,
)

pytestmark = pytest.mark.kafka

N_RECORDS = 10
COMMIT_AT = 6  # "next offset to read" committed by the first consumer


def _consumer(bootstrap: str, group: str, protocol: str) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": protocol,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    if protocol == "classic":
        conf["session.timeout.ms"] = 6000
    return Consumer(conf)


def _poll_values(consumer: Consumer, count: int, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """(offset, value) of the next `count` records, failing on errors or a timeout."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)}/{count} records in {timeout}s"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append((msg.offset(), msg.value()))
    return got


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_group_resumes_from_manually_committed_offset(
    kafka_bootstrap: str, make_topic: TopicFactory, protocol: str
) -> None:
    topic = make_topic(partitions=1)
    group = unique_name(f"resume-{protocol}")
    delivered = produce(kafka_bootstrap, topic, [(f"p{i}", f"v{i}", 0) for i in range(N_RECORDS)])
    assert delivered == [(0, i) for i in range(N_RECORDS)]
    assert end_offsets(kafka_bootstrap, topic) == {0: N_RECORDS}

    first = _consumer(kafka_bootstrap, group, protocol)
    try:
        first.subscribe([topic])
        seen = _poll_values(first, N_RECORDS)
        assert seen == [(i, f"v{i}".encode()) for i in range(N_RECORDS)]
        committed = first.commit(offsets=[TopicPartition(topic, 0, COMMIT_AT)], asynchronous=False)
        assert committed is not None
        assert [(tp.partition, tp.offset, tp.error) for tp in committed] == [(0, COMMIT_AT, None)]
    finally:
        first.close()

    assert committed_offsets(kafka_bootstrap, group, topic) == {0: COMMIT_AT}

    second = _consumer(kafka_bootstrap, group, protocol)
    try:
        second.subscribe([topic])
        resumed = _poll_values(second, N_RECORDS - COMMIT_AT)
        assert resumed == [(i, f"v{i}".encode()) for i in range(COMMIT_AT, N_RECORDS)]
        assert second.poll(1.0) is None  # nothing after the end
    finally:
        second.close()
    # the second consumer committed nothing: the group still points at the manual commit
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: COMMIT_AT}


def test_compacted_topic_config_reads_back(kafka_bootstrap: str, make_topic: TopicFactory) -> None:
    topic = make_topic(partitions=3, config={"cleanup.policy": "compact"})
    config = topic_config(kafka_bootstrap, topic)
    assert config["cleanup.policy"] == "compact"
    assert topic_partition_count(kafka_bootstrap, topic) == 3
    plain = make_topic()
    assert topic_config(kafka_bootstrap, plain)["cleanup.policy"] == "delete"


def test_consume_all_reads_every_partition_to_its_end(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = make_topic(partitions=3)
    records = [("k0", {"n": 0}, 0), ("k1", None, 1), ("k2", b"\x00raw", 2), ("k3", "text", 0)]
    produce(kafka_bootstrap, topic, records)
    got = consume_all(kafka_bootstrap, topic, timeout=20)
    assert [(r.partition, r.offset, r.key_str) for r in got] == [
        (0, 0, "k0"),
        (0, 1, "k3"),
        (1, 0, "k1"),
        (2, 0, "k2"),
    ]
    assert got[0].json() == {"n": 0}
    assert got[2].value is None
    assert got[3].value == b"\x00raw"
    assert consume_all(kafka_bootstrap, make_topic(partitions=2), timeout=5) == []


def test_broker_is_kraft_apache_kafka_4(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    cluster = admin.describe_cluster(request_timeout=10).result(timeout=15)
    assert cluster.cluster_id
    assert cluster.nodes, "no broker in the cluster description"

    versions = broker_api_versions(kafka_bootstrap)
    # Kafka 4.0 removed Fetch v0-v3 and ListOffsets v0 (KIP-896); 3.x still accepts them.
    assert versions[1][0] >= 4, f"Fetch versions {versions[1]}: broker older than 4.0"
    assert versions[2][0] >= 1, f"ListOffsets versions {versions[2]}: broker older than 4.0"
    # the KIP-848 consumer group protocol (ConsumerGroupHeartbeat, api key 68) is served
    assert 68 in versions, "no ConsumerGroupHeartbeat: not a Kafka 4.x broker"
    # KRaft only: ZooKeeper-era inter-broker APIs (LeaderAndIsr 4, StopReplica 5,
    # UpdateMetadata 6, ControlledShutdown 7) are gone from 4.x brokers
    assert not {4, 5, 6, 7} & versions.keys(), "ZooKeeper-era APIs advertised"
