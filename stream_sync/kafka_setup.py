"""Kafka clients and topic checks shared by ``run``, ``check`` and ``replay``."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic


class StartupError(Exception):
    """A condition that stops the service at start; ``exit_code`` per design §8."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


#: librdkafka's own log lines go through this logger (JSON, like every other line)
KAFKA_LOG = logging.getLogger("stream_sync.kafka")

#: errors that retrying cannot fix: wrong credentials, untrusted certificate
_FATAL_CODES = {KafkaError._AUTHENTICATION, KafkaError._SSL}


class ClientErrors:
    """librdkafka's ``error_cb``: keeps the last error so messages can name the real cause."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last: KafkaError | None = None
        self.fatal: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        with self._lock:
            self.last = error
            if error.code() in _FATAL_CODES or error.fatal():
                self.fatal = error

    def describe(self) -> str:
        error = self.fatal or self.last
        if error is None:
            return ""
        return f"{_kind(error)}: {error.str()}"


def _kind(error: KafkaError) -> str:
    code = error.code()
    if code == KafkaError._AUTHENTICATION:
        return "SASL authentication failed"
    if code == KafkaError._SSL:
        return "SSL/TLS failure (certificate or handshake)"
    return str(error.name())


def client_config(config: Any, errors: ClientErrors | None = None) -> dict[str, Any]:
    """librdkafka properties every client gets: bootstrap plus ``kafka.client`` extras."""
    extras: dict[str, Any] = {}
    for key, value in dict(config.kafka.client).items():
        secret = getattr(value, "get_secret_value", None)
        extras[key] = secret() if callable(secret) else value
    conf = {**extras, "bootstrap.servers": config.kafka.bootstrap_servers, "logger": KAFKA_LOG}
    if errors is not None:
        conf["error_cb"] = errors
    return conf


def admin_client(config: Any) -> tuple[AdminClient, ClientErrors]:
    errors = ClientErrors()
    return AdminClient(client_config(config, errors)), errors


def consumer_config(config: Any) -> dict[str, Any]:
    base = client_config(config)
    return {
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 600_000,
        "fetch.wait.max.ms": 20,  # the broker holds an empty fetch this long: latency
        # pre-fetched input kept by librdkafka (default 64 MiB): a lag after an outage filled
        # it and RSS jumped by ~30 MB; 16 MiB is still seconds of input at 100,000 events/s
        "queued.max.messages.kbytes": 16_384,
        **base,
        "group.id": config.kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
    }


@dataclass(frozen=True)
class TopicLayout:
    partitions: int
    state_exists: bool
    warnings_exists: bool


def wait_for_cluster(
    admin: AdminClient, timeout_s: float, errors: ClientErrors | None = None
) -> Any:
    """Cluster metadata; a clear StartupError when Kafka cannot be reached or refuses us."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            return admin.list_topics(timeout=min(2.0, max(timeout_s, 0.5)))
        except KafkaException as err:
            last = err
        admin.poll(0.1)  # serves error_cb
        if errors is not None and errors.fatal is not None:
            raise StartupError(f"Kafka refused the connection: {errors.describe()}", 1)
        if time.monotonic() >= deadline:
            cause = errors.describe() if errors is not None else ""
            detail = cause or (last.args[0].str() if last and last.args else str(last))
            raise StartupError(f"Kafka is unreachable after {timeout_s:g}s: {detail}", 1)
        time.sleep(0.2)


def inspect_topics(config: Any, metadata: Any) -> TopicLayout:
    """Input topics exist and are co-partitioned (exit 2 otherwise, design §2)."""
    topics = config.topics
    found = metadata.topics
    missing = [t for t in (topics.memberships, topics.attributes) if t not in found]
    if missing:
        raise StartupError(
            "input topic(s) missing: "
            + ", ".join(repr(t) for t in missing)
            + " (the service reads them; create them with the same partition count)",
            1,
        )
    counts = {t: len(found[t].partitions) for t in (topics.memberships, topics.attributes)}
    if counts[topics.memberships] != counts[topics.attributes]:
        raise StartupError(
            f"input topics are not co-partitioned: '{topics.memberships}' has "
            f"{counts[topics.memberships]} partitions, '{topics.attributes}' has "
            f"{counts[topics.attributes]}",
            2,
        )
    n = counts[topics.memberships]
    if topics.state in found and len(found[topics.state].partitions) != n:
        raise StartupError(
            f"state topic '{topics.state}' has {len(found[topics.state].partitions)} partitions, "
            f"the input topics {n}: they must match",
            1,
        )
    return TopicLayout(n, topics.state in found, topics.warnings in found)


def topic_config(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    result = admin.describe_configs([resource])[resource].result(timeout=15)
    return {name: entry.value for name, entry in result.items()}


#: the state topic as the service creates it. Compaction only cleans closed segments, and the
#: broker defaults (1 GiB or 7-day segments, cleaning at 50 % dirty) would let a restore read
#: every write made in days; with segments closed hourly (or at 64 MiB) and cleaning from
#: 10 % dirty, a restore after a restart or a rebalance reads about one record per key.
STATE_TOPIC_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "0",
    "segment.ms": str(3_600_000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(86_400_000),  # tombstones kept a day for restoring readers
}


def ensure_topics(config: Any, admin: AdminClient, metadata: Any, layout: TopicLayout) -> None:
    """Create the state (compacted) and warnings topics when missing; check the state topic."""
    brokers = max(len(metadata.brokers), 1)
    replication = min(3, brokers)
    topics = config.topics
    new = []
    if not layout.state_exists:
        new.append(
            NewTopic(
                topics.state,
                num_partitions=layout.partitions,
                replication_factor=replication,
                config=STATE_TOPIC_CONFIG,
            )
        )
    if not layout.warnings_exists:
        new.append(
            NewTopic(
                topics.warnings, num_partitions=layout.partitions, replication_factor=replication
            )
        )
    if new:
        for topic, future in admin.create_topics(new, operation_timeout=30).items():
            try:
                future.result(timeout=30)
            except KafkaException as err:
                if "TOPIC_ALREADY_EXISTS" not in str(err):
                    raise StartupError(f"cannot create topic '{topic}': {err}", 1) from err
        _wait_for_topics(admin, [t.topic for t in new])
    if layout.state_exists:
        policy = topic_config(admin, topics.state).get("cleanup.policy", "")
        if "compact" not in policy:
            raise StartupError(
                f"state topic '{topics.state}' has cleanup.policy={policy}; it must be compact", 1
            )


def _wait_for_topics(admin: AdminClient, names: list[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        if all(n in md.topics and md.topics[n].partitions for n in names):
            return
        time.sleep(0.1)
    raise StartupError(f"topics {names} did not appear in metadata", 1)
