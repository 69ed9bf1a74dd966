"""StateWriter on a real broker: an intent is awaited alone, not with everything produced since
(``delivered``), and a refused intent fails the wait."""

from __future__ import annotations

import os

import anyio
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_sync.state import BatchIntent, IntendedOp, OpKind
from stream_sync.statewriter import StateWriteFailed, StateWriter, producer_config
from tests.kafka_helpers import TopicFactory, unique_name

pytestmark = pytest.mark.kafka


def _intent() -> BatchIntent:
    return BatchIntent("act", (IntendedOp("p1", OpKind.UPSERT, "p1@x.io", ("name",), ()),))


class _NoFlushProducer(Producer):
    """A real producer that fails the test if anything flushes it: waiting for one intent must
    not wait for every record the other activations and the commit produced meanwhile."""

    def flush(self, *args: object, **kwargs: object) -> int:
        raise AssertionError("delivered() flushed the whole producer")


def test_an_intent_is_durable_without_waiting_for_what_others_produce_meanwhile(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = make_topic(partitions=2, config={"cleanup.policy": "compact"})
    writer = StateWriter(_NoFlushProducer(producer_config(kafka_bootstrap, {})), topic)
    key, ack = writer.write_intent(1, "act", "b1", _intent())
    # other activations go on producing while this one waits for its intent
    for i in range(100_000):
        writer.tombstone(i % 2, f"sync/other/p{i}".encode())

    async def wait() -> None:
        await writer.delivered([ack])

    anyio.run(wait)
    assert ack.done and writer.error is None
    # how many of the others were still queued then depends on the machine's speed, so the
    # test checks the mechanism instead: no flush (above) and the intent written first
    Producer.flush(writer.producer, 60)
    assert len(writer.producer) == 0
    assert _first_key(kafka_bootstrap, topic, 1) == key  # written before the others


def _first_key(bootstrap: str, topic: str, partition: int) -> bytes | None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("first")})
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        msg = consumer.poll(15)
        assert msg is not None and msg.error() is None
        return msg.key()
    finally:
        consumer.close()


def test_a_refused_intent_fails_the_wait(kafka_bootstrap: str, make_topic: TopicFactory) -> None:
    """The broker refuses a record larger than the topic allows: the batch must not be sent."""
    topic = make_topic(partitions=1, config={"max.message.bytes": "1000"})
    writer = StateWriter(Producer(producer_config(kafka_bootstrap, {})), topic)
    big = BatchIntent(
        "act",
        tuple(
            IntendedOp(os.urandom(16).hex(), OpKind.UPSERT, os.urandom(16).hex(), ("name",), ())
            for _ in range(200)
        ),
    )
    _, ack = writer.write_intent(0, "act", "b2", big)

    async def wait() -> None:
        await writer.delivered([ack])

    with pytest.raises(StateWriteFailed):
        anyio.run(wait)
    assert ack.done and writer.error is not None and writer.error.startswith(f"{topic}[0]")
    assert writer.failed_partitions == {0}
