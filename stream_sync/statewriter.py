"""Writes to the state topic (coalesced per key) and to the warnings topic."""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from stream_sync import metrics
from stream_sync.state import (
    BatchIntent,
    IntentRow,
    Person,
    SyncRecord,
    control_key,
    encode_control,
    encode_intent,
    encode_intent_rows,
    encode_person_parts,
    encode_sync,
    intent_key,
    sync_key,
)

log = structlog.get_logger("stream_sync.state")

_PERSON_WRITES = metrics.STATE_WRITES.labels("person")
_SYNC_WRITES = metrics.STATE_WRITES.labels("sync")
_INTENT_WRITES = metrics.STATE_WRITES.labels("intent")


class StateWriteFailed(RuntimeError):
    """Kafka refused a state or warnings write: offsets must not be committed."""


def producer_config(bootstrap: str, client: dict[str, Any]) -> dict[str, Any]:
    return {
        **client,
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }


#: runs of acknowledged offsets kept per partition (see ``_Producing._runs``)
_MAX_RUNS = 64


def _merge_offset(runs: list[list[int]], offset: int) -> None:
    """Add ``offset`` (below the end of the latest run) to sorted disjoint ``runs``, merging
    the runs it joins."""
    i = bisect.bisect_right(runs, offset, key=lambda run: run[0]) - 1  # runs[i][0] <= offset
    if i >= 0 and offset <= runs[i][1]:
        return  # already known
    after = runs[i + 1]  # exists: offset is below the end of the latest run
    joins_before = i >= 0 and runs[i][1] + 1 == offset
    joins_after = offset + 1 == after[0]
    if joins_before and joins_after:
        runs[i][1] = after[1]
        del runs[i + 1]
    elif joins_before:
        runs[i][1] = offset
    elif joins_after:
        after[0] = offset
    else:
        runs.insert(i + 1, [offset, offset])


class _Ack:
    """Whether librdkafka has served the delivery report of one record (a failure is in
    ``_Producing.error`` and ``failed_partitions``, like any write's)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


#: how long one poll for awaited delivery reports blocks a worker thread
_ACK_POLL_S = 0.01


class _Producing:
    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.error: str | None = None
        #: partition -> the offsets of this process's acknowledged writes to the topic, as
        #: sorted disjoint runs ``[first, last]`` (the most recent few). Every record in a run
        #: is ours: a record of another writer between two of ours leaves them in two runs, so
        #: a partition ending at ``last + 1`` of a run was written by nobody else since its
        #: ``first``. Delivery reports come in order per partition from librdkafka, but they
        #: are served by whichever thread polls: the commit's flush and an activation's flush
        #: (intents before a send) run at once in two worker threads, and their callbacks
        #: interleave. Runs are therefore merged whatever the order the reports arrive in.
        self._runs: dict[int, list[list[int]]] = {}
        #: partitions where a write of ours failed: what they hold is in doubt
        self.failed_partitions: set[int] = set()

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed_partitions.add(msg.partition())
            if self.error is None:
                self.error = f"{msg.topic()}[{msg.partition()}]: {err}"
            return
        # once per record written: the common case (the next offset of the latest run) first
        partition = msg.partition()
        offset = msg.offset()
        runs = self._runs.get(partition)
        if runs is None:
            self._runs[partition] = [[offset, offset]]
            return
        last = runs[-1]
        if offset == last[1] + 1:
            last[1] = offset
        elif offset > last[1]:  # a gap: somebody else's records (or ours, reported later)
            runs.append([offset, offset])
            if len(runs) > _MAX_RUNS:
                del runs[0]  # forgotten: only ever makes the partition look less known
        else:
            _merge_offset(runs, offset)

    def acked_run(self, partition: int) -> tuple[int, int] | None:
        """The run of our acknowledged writes that holds the highest offset acknowledged to
        this process in ``partition`` (None: none). Read after a flush: every report is in."""
        runs = self._runs.get(partition)
        if not runs:
            return None
        first, last = runs[-1]
        return first, last

    def acked(self, partition: int) -> int:
        """The highest offset of ``partition`` acknowledged to this process (-1: none)."""
        run = self.acked_run(partition)
        return -1 if run is None else run[1]

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {
            "key": key,
            "value": value,
            "on_delivery": on_delivery or self._on_delivery,
        }
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

    def produce_acked(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int
    ) -> _Ack:
        """Produce one record whose delivery :meth:`delivered` can wait for alone."""
        ack = _Ack()

        def report(err: Any, msg: Any) -> None:
            self._on_delivery(err, msg)
            ack.done = True

        self.produce(topic, key, value, partition, report)
        return ack

    async def delivered(self, acks: Iterable[_Ack]) -> None:
        """Wait until these records are acknowledged (raise StateWriteFailed if one, or any
        write before, failed). Unlike :meth:`flush`, records produced meanwhile by other
        tasks are not waited for: a flush under steady production lasts as long as the
        production does."""
        pending = [ack for ack in acks if not ack.done]
        while pending:
            await anyio.to_thread.run_sync(self.producer.poll, _ACK_POLL_S)
            pending = [ack for ack in pending if not ack.done]
        if self.error is not None:
            raise StateWriteFailed(self.error)

    async def flush(self) -> None:
        while True:
            remaining = await anyio.to_thread.run_sync(self.producer.flush, 5.0)
            if remaining == 0:
                break
        if self.error is not None:
            raise StateWriteFailed(self.error)

    def flush_blocking(self, timeout: float) -> None:
        if self.producer.flush(timeout) != 0:
            raise StateWriteFailed("state writes not acknowledged in time")
        if self.error is not None:
            raise StateWriteFailed(self.error)


class StateWriter(_Producing):
    """The state topic: person records coalesced until the next commit, the rest at once."""

    def __init__(self, producer: Any, topic: str) -> None:
        super().__init__(producer)
        self.topic = topic
        self.pending_persons: dict[str, Person] = {}
        #: sync records produced since the metric was last brought up to date (a counter
        #: increment per operation cost more than the record's encoding)
        self._sync_unpublished = 0

    def person_changed(self, partition: int, person_id: str, person: Person) -> None:
        self.pending_persons[person_id] = person

    def flush_persons(self, partitions: Iterable[int] | None = None) -> int:
        """Produce the coalesced person records (of ``partitions``, or all)."""
        wanted = None if partitions is None else set(partitions)
        produced = 0
        keep: dict[str, Person] = {}
        # the hot path of a commit (once per changed person): positional produce() without a
        # wrapper call (about 0.5 µs less per record than keyword arguments)
        topic = self.topic
        produce = self.producer.produce
        on_delivery = self._on_delivery
        encode = encode_person_parts
        for pid, person in self.pending_persons.items():
            partition = person.partition
            if wanted is not None and partition not in wanted:
                keep[pid] = person
                continue
            attrs, segments = person.attrs, person.segments
            value = encode(attrs, segments) if attrs or segments else None
            key = b"person/" + pid.encode()
            try:
                produce(topic, value, key, partition, on_delivery)
            except BufferError:
                self.produce(topic, key, value, partition)  # waits for room
            produced += 1
        self.pending_persons = keep
        _PERSON_WRITES.inc(produced)
        self.publish_counts()
        self.producer.poll(0)
        return produced

    def drop_pending(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self.pending_persons = {
            pid: p for pid, p in self.pending_persons.items() if p.partition not in gone
        }

    def write_sync(
        self, partition: int, activation: str, person_id: str, record: SyncRecord | None
    ) -> None:
        value = None if record is None else encode_sync(record)
        key = sync_key(activation, person_id)
        try:  # positional, without the wrapper: once per operation
            self.producer.produce(self.topic, value, key, partition, self._on_delivery)
        except BufferError:
            self.produce(self.topic, key, value, partition)  # waits for room
        self._sync_unpublished += 1

    def publish_counts(self) -> None:
        """Bring ``stream_sync_state_writes_total{kind="sync"}`` up to date."""
        if self._sync_unpublished:
            _SYNC_WRITES.inc(self._sync_unpublished)
            self._sync_unpublished = 0

    def write_intent(
        self, partition: int, activation: str, batch_id: str, intent: BatchIntent
    ) -> tuple[bytes, _Ack]:
        """The batch's intended operations of ``partition``; await :meth:`delivered` on the
        returned acknowledgement before sending."""
        return self._write_intent(partition, activation, batch_id, encode_intent(intent))

    def write_intent_rows(
        self, partition: int, activation: str, batch_id: str, rows: Sequence[IntentRow]
    ) -> tuple[bytes, _Ack]:
        """:meth:`write_intent` of rows (see :func:`~stream_sync.state.encode_intent_rows`)."""
        return self._write_intent(
            partition, activation, batch_id, encode_intent_rows(activation, rows)
        )

    def _write_intent(
        self, partition: int, activation: str, batch_id: str, value: bytes
    ) -> tuple[bytes, _Ack]:
        key = intent_key(activation, batch_id)
        ack = self.produce_acked(self.topic, key, value, partition)
        _INTENT_WRITES.inc()
        return key, ack

    def tombstone(self, partition: int, key: bytes) -> None:
        self.produce(self.topic, key, None, partition)

    def write_control(
        self, partition: int, kind: str, activation: str, payload: dict[str, Any] | None
    ) -> None:
        value = None if payload is None else encode_control(payload)
        self.produce(self.topic, control_key(kind, activation), value, partition)


class WarningSink(_Producing):
    """One JSON record per occurrence on the warnings topic (design §8)."""

    def __init__(self, producer: Any, topic: str) -> None:
        super().__init__(producer)
        self.topic = topic

    def emit(
        self,
        kind: str,
        reason: str,
        message: str,
        *,
        activation: str | None = None,
        destination: str | None = None,
        person_id: str | None = None,
        attribute: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        record = {
            "kind": kind,
            "reason": reason,
            "message": message,
            "activation": activation,
            "destination": destination,
            "person_id": person_id,
            "attribute": attribute,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        key = person_id.encode() if person_id is not None else None
        self.produce(self.topic, key, json.dumps(record).encode(), None)
        metrics.WARNINGS.labels(kind, reason).inc()
        log.warning(
            "warning",
            kind=kind,
            reason=reason,
            activation=activation,
            destination=destination,
            person_id=person_id,
            attribute=attribute,
            topic=topic,
            partition=partition,
            offset=offset,
        )
