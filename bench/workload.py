"""The engine benchmark's workload: persons, input events, and the expected destination state.

Everything here is computed independently of the service (no ``stream_sync`` reconciliation
code): the :class:`Model` applies the events as design §2 and §4 define them and says what the
test destination must hold at the end. Only the *encoders* of ``stream_sync`` are used, to put
the events (Avro single-object encoding) and state records on the wire.

Workload (issue 3, "Benchmarks"):

* persons with uniformly random keys (16 hex digits from a seeded RNG) and 10 attributes each
  (``email`` — the identifier of every activation — plus 9 attributes that are all mapped by at
  least one activation; strings, a double, two longs and a boolean);
* 3 segments, 3 activations (one ``mirror``, two ``upsert``), initial memberships 50 / 50 / 30 %;
* churn: 70 % attribute changes touching 1-3 mapped attributes (5 % of the values are ``null``,
  i.e. an unset), 30 % membership flips (ENTER if not a member of a random segment, else EXIT),
  each on a person drawn uniformly at random.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import Producer

from stream_sync.events import AttributeChange, MembershipChange, encode_single_object

SEGMENTS = ("seg-a", "seg-b", "seg-c")
MEMBERSHIP_RATE = {"seg-a": 0.5, "seg-b": 0.5, "seg-c": 0.3}
IDENTIFIER = "email"
MAPPED = ("first_name", "last_name", "city", "country", "plan", "ltv", "orders", "score", "opt_in")
ATTRIBUTES = (IDENTIFIER, *MAPPED)  # 10 per person
UNSET_RATE = 0.05

FIRST = ["Ada", "Ben", "Chloé", "Dan", "Eve", "Farid", "Gina", "Hugo", "Inès", "Jon", "Kim", "Léa"]
LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy"]
CITIES = ["Paris", "Lyon", "Berlin", "Madrid", "Lisbon", "Milan", "Ghent", "Nantes", "Porto"]
COUNTRIES = ["FR", "DE", "ES", "PT", "IT", "BE", "NL", "IE", "AT", "PL"]
PLANS = ["free", "starter", "pro", "team", "enterprise"]

Value = Any


@dataclass(frozen=True)
class ActivationSpec:
    id: str
    segment: str
    mode: str
    fields: tuple[tuple[str, str], ...]  # source attribute -> destination field
    custom: tuple[str, ...]  # custom attributes (same name in the destination)

    @property
    def namespace(self) -> str:
        """The test destination's namespace (first path segment of the base URL)."""
        return self.id

    def mapping(self, extra_custom: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        return [*self.fields, *((name, name) for name in (*self.custom, *extra_custom))]

    def config(
        self, destination: str, max_size: int, max_wait_ms: int, extra_custom: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "segment": self.segment,
            "destination": destination,
            "mode": self.mode,
            "identifier": IDENTIFIER,
            "fields": dict(self.fields),
            "custom_attributes": [*self.custom, *extra_custom],
            "batch": {"max_size": max_size, "max_wait_ms": max_wait_ms},
        }


ACTIVATIONS = (
    ActivationSpec(
        "act-a",
        "seg-a",
        "mirror",
        (("first_name", "first_name"), ("city", "city")),
        ("plan", "ltv"),
    ),
    ActivationSpec(
        "act-b",
        "seg-b",
        "upsert",
        (("last_name", "last_name"), ("country", "country")),
        ("orders", "opt_in"),
    ),
    ActivationSpec(
        "act-c",
        "seg-c",
        "upsert",
        (("first_name", "given_name"), ("score", "score")),
        ("plan", "city"),
    ),
)


def canonical(value: Value) -> Value:
    """What the destination receives for a value (an integral double is sent as a long)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def partition_of(person_id: str, partitions: int) -> int:
    """The upstream producer's partitioner (both input topics use it, design §9)."""
    return zlib.crc32(person_id.encode()) % partitions


def now_ms() -> int:
    return int(time.time() * 1000)


class Model:
    """The source view computed from the events, and the destination state it implies."""

    def __init__(self) -> None:
        self.attrs: dict[str, dict[str, Value]] = {}
        self.segments: dict[str, set[str]] = {}

    def set(self, pid: str, values: dict[str, Value]) -> None:
        attrs = self.attrs.setdefault(pid, {})
        for name, value in values.items():
            if value is None:
                attrs.pop(name, None)
            else:
                attrs[name] = value

    def flip(self, pid: str, segment: str) -> Literal["ENTER", "EXIT"]:
        segments = self.segments.setdefault(pid, set())
        if segment in segments:
            segments.discard(segment)
            return "EXIT"
        segments.add(segment)
        return "ENTER"

    def desired(
        self, act: ActivationSpec, pid: str, extra_custom: tuple[str, ...] = ()
    ) -> tuple[str, dict[str, Value]] | None:
        """(identifier, fields) the destination holds for a member with an identifier."""
        if act.segment not in self.segments.get(pid, ()):
            return None
        attrs = self.attrs.get(pid, {})
        ident = attrs.get(IDENTIFIER)
        if ident is None:
            return None
        fields = {
            dest: canonical(attrs[src])
            for src, dest in act.mapping(extra_custom)
            if attrs.get(src) is not None
        }
        return str(ident), fields

    def expected(
        self, act: ActivationSpec, extra_custom: tuple[str, ...] = ()
    ) -> dict[str, dict[str, Value]]:
        """Records of a run whose only reconcile happens after every event was applied.

        Catch-up before emit (design §4) makes that the case for pre-loaded events; the
        benchmark's live phases flip no membership, so it holds for them too.
        """
        out: dict[str, dict[str, Value]] = {}
        for pid in self.segments:
            found = self.desired(act, pid, extra_custom)
            if found is not None:
                out[found[0]] = found[1]
        return out

    def members(self, act: ActivationSpec) -> list[str]:
        return [pid for pid, segs in self.segments.items() if act.segment in segs]


class Workload:
    """Generates the events of one benchmark run (seeded, reproducible)."""

    def __init__(self, persons: int, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        ids: set[str] = set()
        while len(ids) < persons:
            ids.add(f"{self.rng.getrandbits(64):016x}")
        self.person_ids = sorted(ids)
        self.rng.shuffle(self.person_ids)
        self.model = Model()

    # --- values ------------------------------------------------------------------------

    def value(self, name: str) -> Value:
        rng = self.rng
        if name == "first_name":
            return rng.choice(FIRST)
        if name == "last_name":
            return rng.choice(LAST)
        if name == "city":
            return rng.choice(CITIES)
        if name == "country":
            return rng.choice(COUNTRIES)
        if name == "plan":
            return rng.choice(PLANS)
        if name == "ltv":
            return round(rng.uniform(0, 10_000), 2)
        if name == "orders":
            return rng.randrange(10_000)
        if name == "score":
            return rng.randrange(1_000_000)
        if name == "opt_in":
            return rng.random() < 0.5
        raise KeyError(name)

    def fresh_value(self, name: str, avoid: Value) -> Value:
        """A value differing from ``avoid`` (type included)."""
        while True:
            value = self.value(name)
            if value != avoid or type(value) is not type(avoid):
                return value

    # --- events ------------------------------------------------------------------------
    # Each generator yields ("m" | "a", person_id, event) and updates the model.

    def initial(self) -> Iterator[tuple[str, str, MembershipChange | AttributeChange]]:
        """One attribute record (10 attributes) per person, then its segment ENTERs."""
        rng, model, ts = self.rng, self.model, now_ms()
        for pid in self.person_ids:
            values: dict[str, Value] = {IDENTIFIER: f"{pid}@example.com"}
            for name in MAPPED:
                values[name] = self.value(name)
            model.set(pid, values)
            yield "a", pid, AttributeChange(pid, values, (), ts)
            model.segments.setdefault(pid, set())
            for seg in SEGMENTS:
                if rng.random() < MEMBERSHIP_RATE[seg]:
                    model.flip(pid, seg)
                    yield "m", pid, MembershipChange(pid, seg, "ENTER", ts)

    def churn(self, count: int) -> Iterator[tuple[str, str, MembershipChange | AttributeChange]]:
        """70 % attribute changes (1-3 mapped attributes), 30 % membership flips."""
        rng, model, ids = self.rng, self.model, self.person_ids
        ts = now_ms()
        for _ in range(count):
            pid = ids[rng.randrange(len(ids))]
            if rng.random() < 0.3:
                seg = SEGMENTS[rng.randrange(3)]
                op = model.flip(pid, seg)
                yield "m", pid, MembershipChange(pid, seg, op, ts)
            else:
                values = {
                    name: None if rng.random() < UNSET_RATE else self.value(name)
                    for name in rng.sample(MAPPED, rng.randint(1, 3))
                }
                model.set(pid, values)
                yield "a", pid, AttributeChange(pid, values, (), ts)

    def bursts(
        self, persons: Iterable[str], max_events: int = 5
    ) -> Iterator[tuple[str, str, AttributeChange]]:
        """1..max_events attribute changes per person, back to back, each on 1-3 attributes.

        Every value set differs from the person's value before the burst, so each changed
        attribute ends different from what the destination holds (a net change).
        """
        rng, model, ts = self.rng, self.model, now_ms()
        for pid in persons:
            before = dict(model.attrs.get(pid, {}))
            for _ in range(rng.randint(1, max_events)):
                values = {
                    name: self.fresh_value(name, before.get(name))
                    for name in rng.sample(MAPPED, rng.randint(1, 3))
                }
                model.set(pid, values)
                yield "a", pid, AttributeChange(pid, values, (), ts)


class EventProducer:
    """Produces encoded events with the explicit partitioner, counting records per topic."""

    def __init__(self, bootstrap: str, topics: dict[str, str], partitions: int, **conf: Any):
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 20,
                "compression.type": "lz4",
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 2_000_000,
                "queue.buffering.max.kbytes": 2_097_152,
                **conf,
            }
        )
        self.topics = {"m": topics["memberships"], "a": topics["attributes"]}
        self.partitions = partitions
        self.sent = 0

    def send(self, kind: str, pid: str, event: MembershipChange | AttributeChange) -> None:
        self.send_raw(kind, pid, encode_single_object(event))

    def send_raw(self, kind: str, pid: str, value: bytes | None) -> None:
        topic = self.topics[kind]
        partition = partition_of(pid, self.partitions)
        key = pid.encode()
        while True:
            try:
                self.producer.produce(topic, value, key, partition)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1
        if self.sent % 5000 == 0:
            self.producer.poll(0)

    def send_all(self, events: Iterable[tuple[str, str, Any]]) -> int:
        before = self.sent
        for kind, pid, event in events:
            self.send(kind, pid, event)
        return self.sent - before

    def flush(self, timeout: float = 120) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            raise RuntimeError(f"{remaining} events not acknowledged by Kafka")
