"""Small, synchronous helpers for tests that talk to the real Apache Kafka broker.

Everything here takes the bootstrap string explicitly (the `kafka_bootstrap` fixture of
`tests/conftest.py` provides it), so the helpers work from fixtures, tests and subprocess
drivers alike. They favour loud failures: a delivery error, a topic that never shows up in
metadata or a read that does not reach the end offsets raises instead of returning less.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

__all__ = [
    "ConsumedRecord",
    "TopicFactory",
    "admin_client",
    "broker_api_versions",
    "committed_offsets",
    "consume_all",
    "create_topic",
    "delete_topics",
    "end_offsets",
    "produce",
    "topic_config",
    "topic_partition_count",
    "unique_name",
    "wait_for_broker",
    "wait_for_topic",
    "wait_until",
]

_counter = itertools.count()

#: anything `produce` accepts as a key or value: raw bytes, UTF-8 text, None, or a JSON-able
#: object (dict / list / number / bool), which is serialised with `json.dumps`.
Payload = bytes | str | None | Mapping[str, Any] | Sequence[Any] | int | float | bool
Record = tuple[Payload, Payload] | tuple[Payload, Payload, int | None]


def unique_name(prefix: str = "t") -> str:
    """A topic / group name unique across sessions and xdist workers: `<prefix>-<hex>-<n>`.

    The broker is reused between sessions (scripts/kafka keeps running), so names must never
    repeat; Kafka allows [a-zA-Z0-9._-] up to 249 characters.
    """
    return f"{prefix}-{uuid.uuid4().hex[:10]}-{next(_counter)}"


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def admin_client(bootstrap: str, **extra: Any) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, **extra})


def wait_for_broker(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until the cluster answers a metadata request (raises TimeoutError otherwise)."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout}s: {last}")


# --------------------------------------------------------------------------- topics


def _topic_ready(admin: AdminClient, topic: str, partitions: int | None) -> bool:
    try:
        md = admin.list_topics(topic=topic, timeout=5)
    except KafkaException:
        return False
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        return False
    if partitions is not None and len(tmd.partitions) != partitions:
        return False
    return all(p.error is None and p.leader >= 0 for p in tmd.partitions.values())


def wait_for_topic(
    bootstrap: str, topic: str, partitions: int | None = None, timeout: float = 30.0
) -> None:
    """Wait until metadata shows `topic` (with `partitions` partitions, each with a leader)."""
    admin = admin_client(bootstrap)
    wait_until(
        lambda: _topic_ready(admin, topic, partitions),
        timeout=timeout,
        interval=0.1,
        what=f"topic {topic!r} in metadata",
    )


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> str:
    """Create `name` and wait until every partition has a leader. Raises if it exists."""
    admin = admin_client(bootstrap)
    new = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config={k: str(v) for k, v in (config or {}).items()},
    )
    futures = admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)
    futures[name].result(timeout=timeout)
    wait_until(
        lambda: _topic_ready(admin, name, partitions),
        timeout=timeout,
        interval=0.1,
        what=f"new topic {name!r} in metadata",
    )
    return name


def delete_topics(bootstrap: str, topics: Iterable[str], timeout: float = 30.0) -> list[str]:
    """Delete topics, best effort; returns the names that could not be deleted."""
    names = list(dict.fromkeys(topics))
    if not names:
        return []
    admin = admin_client(bootstrap)
    failed: list[str] = []
    try:
        futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    except KafkaException:
        return names
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout)
        except Exception as exc:  # best effort: a topic already gone is fine
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                failed.append(name)
    return failed


@dataclass
class TopicFactory:
    """Callable behind the `make_topic` fixture: creates topics and remembers them for cleanup.

    `make_topic()` -> a fresh unique name; `make_topic("orders")` -> exactly "orders" (fails if
    it already exists — pass `unique_name("orders")` for a unique variant).
    """

    bootstrap: str
    prefix: str = "test"
    created: list[str] = field(default_factory=list)

    def __call__(
        self,
        name: str | None = None,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> str:
        topic = name if name is not None else unique_name(self.prefix)
        create_topic(self.bootstrap, topic, partitions=partitions, config=config)
        self.created.append(topic)
        return topic

    def cleanup(self) -> list[str]:
        failed = delete_topics(self.bootstrap, self.created)
        self.created.clear()
        return failed


def topic_partition_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    md = admin_client(bootstrap).list_topics(topic=topic, timeout=timeout)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        raise LookupError(f"topic {topic!r} not found: {tmd.error if tmd else 'no metadata'}")
    return len(tmd.partitions)


def topic_config(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[str, str]:
    """The topic's effective configuration (`describe_configs`), name -> value."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    admin = admin_client(bootstrap)  # keep a reference: futures die with their client
    futures = admin.describe_configs([resource], request_timeout=timeout)
    entries = futures[resource].result(timeout=timeout)
    return {name: entry.value for name, entry in entries.items()}


# --------------------------------------------------------------------------- produce


def _encode(payload: Payload) -> bytes | None:
    if payload is None or isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    headers: Sequence[tuple[str, bytes]] | None = None,
    timeout: float = 30.0,
) -> list[tuple[int, int]]:
    """Produce `(key, value[, partition])` records in order, flush, and check every delivery.

    Keys and values may be bytes, str (UTF-8), None, or JSON-able objects. A partition of
    None lets librdkafka's partitioner choose. Returns `(partition, offset)` per record, in
    input order; raises AssertionError naming the first failed delivery.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    results: list[tuple[int, int] | None] = []
    errors: list[str] = []

    def on_delivery(index: int) -> Callable[[KafkaError | None, Any], None]:
        def callback(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                errors.append(f"record #{index}: {err}")
            else:
                results[index] = (msg.partition(), msg.offset())

        return callback

    for index, record in enumerate(records):
        key, value = record[0], record[1]
        partition = record[2] if len(record) > 2 else None
        results.append(None)
        kwargs: dict[str, Any] = {
            "key": _encode(key),
            "value": _encode(value),
            "on_delivery": on_delivery(index),
        }
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} record(s) to {topic} not delivered within {timeout}s"
    assert not errors, f"delivery to {topic} failed: {errors[0]}"
    missing = [i for i, r in enumerate(results) if r is None]
    assert not missing, f"no delivery report for record(s) {missing} to {topic}"
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------- offsets


def _partitions(bootstrap: str, topic: str) -> list[int]:
    md = admin_client(bootstrap).list_topics(topic=topic, timeout=10)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        raise LookupError(f"topic {topic!r} not found: {tmd.error if tmd else 'no metadata'}")
    return sorted(tmd.partitions)


def end_offsets(
    bootstrap: str, topic: str, read_committed: bool = True, timeout: float = 10.0
) -> dict[int, int]:
    """Partition -> end offset (the last stable offset when `read_committed`, else the high
    watermark): the offset the next record written to that partition will get."""
    parts = _partitions(bootstrap, topic)
    level = IsolationLevel.READ_COMMITTED if read_committed else IsolationLevel.READ_UNCOMMITTED
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in parts}
    admin = admin_client(bootstrap)
    futures = admin.list_offsets(request, isolation_level=level, request_timeout=timeout)
    return {tp.partition: fut.result(timeout=timeout).offset for tp, fut in futures.items()}


def committed_offsets(
    bootstrap: str, group: str, topic: str, timeout: float = 10.0
) -> dict[int, int]:
    """Partition -> offset committed by `group` for `topic` (the next offset to read).

    Partitions without a committed offset are left out, so `{}` means nothing committed.
    """
    parts = _partitions(bootstrap, topic)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])
    admin = admin_client(bootstrap)
    futures = admin.list_consumer_group_offsets([request], request_timeout=timeout)
    answer = futures[group].result(timeout=timeout)
    out: dict[int, int] = {}
    for tp in answer.topic_partitions:
        if tp.error is not None:
            raise KafkaException(tp.error)
        if tp.offset >= 0:
            out[tp.partition] = tp.offset
    return out


# --------------------------------------------------------------------------- consume


@dataclass(frozen=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int

    def json(self) -> Any:
        """The value decoded as JSON (e.g. a warnings-topic record)."""
        return None if self.value is None else json.loads(self.value)

    @property
    def key_str(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8")


def consume_all(
    bootstrap: str, topic: str, timeout: float = 15.0, read_committed: bool = True
) -> list[ConsumedRecord]:
    """Every record of `topic` from the beginning up to the end offsets at call time.

    Uses manual assignment (no group membership, nothing committed). Records come back sorted
    by (partition, offset). Raises TimeoutError if the end is not reached within `timeout`.
    """
    targets = end_offsets(bootstrap, topic, read_committed=read_committed)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("consume-all"),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    records: list[ConsumedRecord] = []
    try:
        pending = {p: end for p, end in targets.items() if end > 0}
        if not pending:
            return []
        # OFFSET_BEGINNING, not 0: the first offsets may be gone (retention, compaction)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"consume_all({topic!r}): end offsets {targets} not reached in {timeout}s; "
                    f"still pending {pending}, got {len(records)} record(s)"
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= pending.get(msg.partition(), 0):
                        pending.pop(msg.partition(), None)
                    continue
                raise KafkaException(err)
            p, off = msg.partition(), msg.offset()
            if p in pending and off < pending[p]:
                _ts_type, ts = msg.timestamp()
                records.append(
                    ConsumedRecord(
                        topic=msg.topic(),
                        partition=p,
                        offset=off,
                        key=msg.key(),
                        value=msg.value(),
                        headers=tuple(msg.headers() or ()),
                        timestamp_ms=ts,
                    )
                )
            if p in pending and off + 1 >= pending[p]:
                pending.pop(p)
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


# --------------------------------------------------------------------------- broker version


def broker_api_versions(bootstrap: str, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
    """api_key -> (min_version, max_version) as the first bootstrap broker advertises them.

    One ApiVersions v0 request over a plain socket (PLAINTEXT listeners only): librdkafka
    negotiates these versions but does not expose them, and they are the most direct way to
    tell a broker's release line apart (Kafka 4.0 removed Produce v0-v2, KIP-896).
    """
    first = bootstrap.split(",")[0].strip()
    first = first.split("://", 1)[-1]
    host, _, port = first.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    client_id = f"stream-sync-tests-{os.getpid()}".encode()
    correlation_id = 7
    # request header v1: api_key, api_version, correlation_id, client_id (int16-length string)
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    got_correlation, error_code, count = struct.unpack_from(">ihi", payload, 0)
    if got_correlation != correlation_id:
        raise ValueError(f"ApiVersions: correlation id {got_correlation} != {correlation_id}")
    if error_code != 0:
        raise ValueError(f"ApiVersions: error code {error_code}")
    versions: dict[int, tuple[int, int]] = {}
    for i in range(count):
        key, lo, hi = struct.unpack_from(">hhh", payload, 10 + 6 * i)
        versions[key] = (lo, hi)
    return versions


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)
