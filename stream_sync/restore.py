"""Restore of assigned partitions from the compacted state topic (design §3).

Runs in a worker thread: reads each state partition from its beginning to the end offset seen
when the restore starts, like a Kafka Streams changelog restore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from stream_sync import metrics
from stream_sync.state import (
    BatchIntent,
    Person,
    decode_control,
    decode_intent,
    decode_person_into,
    decode_sync,
)

log = structlog.get_logger("stream_sync.restore")


@dataclass
class PartitionState:
    partition: int
    persons: dict[str, Person] = field(default_factory=dict)
    intents: dict[bytes, BatchIntent] = field(default_factory=dict)
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)  # "meta/<act>" → payload
    records: int = 0
    seconds: float = 0.0
    #: the state partition's end offset read up to (its high watermark when restored)
    end_offset: int = 0


def restore_partitions(
    consumer_conf: dict[str, Any], topic: str, partitions: list[int], timeout_s: float = 600.0
) -> dict[int, PartitionState]:
    """Read ``partitions`` of the state topic to their current end."""
    started = time.monotonic()
    result = {p: PartitionState(p) for p in partitions}
    if not partitions:
        return result
    consumer = Consumer(
        {
            **consumer_conf,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
        }
    )
    try:
        ends: dict[int, int] = {}
        to_read: list[TopicPartition] = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            result[p].end_offset = high
            if high > low:
                ends[p] = high
                to_read.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if to_read:
            consumer.assign(to_read)
        remaining = set(ends)
        # equal strings of the restored records become one object (a person's identifier in
        # its person and sync records, low-cardinality values across persons); the pool lives
        # for this restore only
        pool: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"state restore of {sorted(remaining)} did not finish")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"state restore failed: {err}")
                part: int = msg.partition()  # type: ignore[assignment]
                if part not in remaining:
                    continue
                _apply(result[part], msg.key(), msg.value(), pool)
                offset: int = msg.offset()  # type: ignore[assignment]
                if offset + 1 >= ends[part]:
                    remaining.discard(part)
    finally:
        consumer.close()
    elapsed = time.monotonic() - started
    total = 0
    for state in result.values():
        state.seconds = elapsed
        total += state.records
    metrics.STATE_RESTORED.inc(total)
    metrics.RESTORE_SECONDS.observe(elapsed)
    log.info("state_restored", partitions=partitions, records=total, seconds=round(elapsed, 3))
    return result


def _apply(
    state: PartitionState, key: bytes | None, value: bytes | None, pool: dict[str, str]
) -> None:
    if key is None:
        return
    state.records += 1
    kind, _, rest = key.partition(b"/")
    if kind == b"person":
        pid = rest.decode()
        person = state.persons.get(pid)
        if value is None:
            if person is not None:
                person.attrs = {}
                person.segments = frozenset()
            return
        if person is None:
            person = state.persons[pid] = Person(state.partition)
        decode_person_into(person, value, pool)
    elif kind == b"sync":
        activation, _, pid_bytes = rest.partition(b"/")
        pid = pid_bytes.decode()
        act = activation.decode()
        person = state.persons.get(pid)
        if value is None:
            if person is not None:
                person.drop_sync(act)
            return
        if person is None:
            person = state.persons[pid] = Person(state.partition)
        person.sync[act] = decode_sync(value, pool)
    elif kind == b"intent":
        if value is None:
            state.intents.pop(key, None)
        else:
            state.intents[key] = decode_intent(value)
    else:
        name = key.decode()
        if value is None:
            state.controls.pop(name, None)
        else:
            state.controls[name] = decode_control(value)
