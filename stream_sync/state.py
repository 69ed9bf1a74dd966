"""State kept by the service: the source view (person records) and the sync view.

Both live in one compacted Kafka topic (design §3). Keys:

- ``person/<person_id>``          → :class:`Person` attributes and segments (the source view);
- ``sync/<activation>/<person_id>`` → :class:`SyncRecord`, what the destination acknowledged;
- ``intent/<activation>/<batch>``   → :class:`BatchIntent`, operations sent and not yet resolved
  (one record per batch and partition; a tombstone once the outcome is recorded);
- ``meta/<activation>``           → the activation's defining triple (segment, destination,
  identifier), to refuse a redefinition under the same id;
- ``resync/<activation>``         → the token of a requested full resync;
- ``hold/<activation>``           → a deletion-guard hold.

Values start with a one-byte format version. Person and sync records are written as version
2, compact JSON through orjson (the hot writes: see ``FORMAT_JSON``), and so are intents;
version 1, Avro (schemas in ``stream_sync/schemas``, encoded by :mod:`stream_sync.statecodec`,
byte-identical to fastavro), is still read, and written when orjson refuses a value. Control
records are JSON. The format is internal: only this module reads and writes it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias, TypeVar

import orjson

from stream_sync import statecodec
from stream_sync.events import AttributeChange, MembershipChange, Value

FORMAT_V1 = b"\x01"


class SyncStatus(StrEnum):
    """Where the destination stands for one person in one activation."""

    SYNCED = "SYNCED"  # the destination holds ``values`` (acknowledged)
    LEFT = "LEFT"  # the person left the segment (no call); ``values`` kept for a re-ENTER
    MAYBE = "MAYBE"  # an operation was in flight at a crash: may or may not exist
    IGNORED = "IGNORED"  # update_only and unknown to the destination; ``values`` were refused
    REJECTED = "REJECTED"  # the destination refused ``values``


class OpKind(StrEnum):
    UPSERT = "UPSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class Person:
    """One person of the source view, with its sync records by activation id."""

    __slots__ = ("attrs", "partition", "segments", "sync")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.attrs: dict[str, Value] = {}
        #: a pooled frozenset (see :func:`segment_set`): persons share their segment sets
        self.segments: frozenset[str] = _NO_SEGMENTS
        self.sync: dict[str, SyncRecord] = {}

    def is_empty(self) -> bool:
        return not self.attrs and not self.segments

    def forgettable(self) -> bool:
        return self.is_empty() and not self.sync

    def drop_sync(self, activation: str) -> None:
        """Forget this activation's sync record, if any. The dict is rebuilt at its size (see
        :func:`compacted`): a person leaving and coming back."""
        if self.sync.pop(activation, None) is not None:
            self.sync = compacted(self.sync)


class SyncRecord:
    """What the destination acknowledged for one person in one activation.

    ``values`` reads as a new ``dict`` (destination field → value) and is stored as two
    tuples: the field names (pooled, see :func:`field_names`: all records of an activation
    share a few) and the values. Memory per tracked person: a 4-entry dict costs 184 bytes,
    a 4-tuple 72. Assign ``values`` to change them; mutating the returned dict changes
    nothing.
    """

    __slots__ = ("_names", "_vals", "identifier", "ref", "resync", "status")

    def __init__(
        self,
        status: SyncStatus,
        values: Mapping[str, Value],
        identifier: str | None = None,
        ref: str | None = None,
        resync: str | None = None,
    ) -> None:
        self.status = status
        self._names = field_names(tuple(values))
        self._vals = tuple(values.values())
        self.identifier = identifier
        self.ref = ref
        self.resync = resync

    @property
    def values(self) -> dict[str, Value]:
        return dict(zip(self._names, self._vals, strict=True))

    @values.setter
    def values(self, values: Mapping[str, Value]) -> None:
        self._names = field_names(tuple(values))
        self._vals = tuple(values.values())

    def items(self) -> zip[tuple[str, Value]]:
        """``(field, value)`` pairs without building a dict."""
        return zip(self._names, self._vals, strict=True)

    def get(self, name: str) -> Value:
        """The value of one field (``None`` when absent)."""
        names = self._names
        if name in names:
            return self._vals[names.index(name)]
        return None

    def share(self, sources: Mapping[str, Value]) -> None:
        """Point each value equal to ``sources[field]`` (same type) at that object: values
        restored from state are decoded apart from the person's attributes (memory)."""
        vals = self._vals
        shared: list[Value] | None = None
        for i, name in enumerate(self._names):
            source = sources.get(name)
            value = vals[i]
            if (
                source is not None
                and source is not value
                and type(source) is type(value)
                and source == value
            ):
                if shared is None:
                    shared = list(vals)
                shared[i] = source
        if shared is not None:
            self._vals = tuple(shared)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncRecord) and (
            self.status,
            self.values,
            self.identifier,
            self.ref,
            self.resync,
        ) == (other.status, other.values, other.identifier, other.ref, other.resync)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SyncRecord({self.status.value}, {self.values!r}, identifier={self.identifier!r}, "
            f"ref={self.ref!r}, resync={self.resync!r})"
        )


_FIELD_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {(): ()}


def field_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """The shared tuple equal to ``names`` (the fields of a sync record): an activation's
    records hold a few combinations of its mapped fields, so they share them."""
    pooled = _FIELD_NAMES.get(names)
    if pooled is None:
        if len(_FIELD_NAMES) > 10_000:  # pathological: many distinct combinations
            return names
        pooled = _FIELD_NAMES[names] = tuple(sys.intern(n) for n in names)
    return pooled


@dataclass(slots=True)  # not frozen: one per operation sent (frozen init is 3x slower)
class IntendedOp:
    person_id: str
    kind: OpKind
    identifier: str | None
    fields: tuple[str, ...]
    clears: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BatchIntent:
    activation: str
    ops: tuple[IntendedOp, ...] = field(default_factory=tuple)


# --- applying input events to the source view ------------------------------------------


_K = TypeVar("_K")
_V = TypeVar("_V")

_NO_SEGMENTS: frozenset[str] = frozenset()
_SEGMENT_SETS: dict[frozenset[str], frozenset[str]] = {_NO_SEGMENTS: _NO_SEGMENTS}


def segment_set(segments: Iterable[str]) -> frozenset[str]:
    """The shared frozenset equal to ``segments``: a few distinct combinations exist, so
    persons share them instead of holding a set each (memory per tracked person)."""
    key = frozenset(segments)
    pooled = _SEGMENT_SETS.get(key)
    if pooled is None:
        if len(_SEGMENT_SETS) > 100_000:  # pathological: many distinct combinations
            return key
        pooled = _SEGMENT_SETS[key] = frozenset(sys.intern(s) for s in key)
    return pooled


def compacted(d: dict[_K, _V]) -> dict[_K, _V]:
    """``d`` rebuilt at the size its entries need, after a deletion.

    A deleted key leaves a dummy slot until the dict is rebuilt, and an insertion that finds
    no free slot rebuilds it for three times its entries: a person's attributes churned by
    unsets and sets grew from 272 to 464 bytes (10 attributes), 184 to 272 (4), for good.
    Rebuilt from its items, the dict is sized for what it holds (``dict(d)`` and ``d.copy()``
    may keep the bigger table).
    """
    return dict(d.items())


def apply_membership(person: Person, event: MembershipChange) -> bool:
    """Apply an ENTER/EXIT; return whether membership changed."""
    segments = person.segments
    if event.op == "ENTER":
        if event.segment_id in segments:
            return False
        person.segments = segment_set((*segments, event.segment_id))
        return True
    if event.segment_id not in segments:
        return False
    person.segments = segment_set(s for s in segments if s != event.segment_id)
    return True


def apply_attributes(person: Person, event: AttributeChange) -> set[str]:
    """Apply ``set`` then ``unset`` (a null in ``set`` unsets); return the changed names."""
    changed: set[str] = set()
    attrs = person.attrs
    removed = False
    for name, value in event.set.items():
        if value is None:
            if name in attrs:
                del attrs[name]
                changed.add(name)
                removed = True
        else:
            old = attrs.get(name, _MISSING)
            if old is _MISSING:
                attrs[sys.intern(name)] = value  # names are few: one string for all persons
                changed.add(name)
            elif old != value or type(old) is not type(value):
                attrs[name] = value
                changed.add(name)
    for name in event.unset:
        if name in attrs:
            del attrs[name]
            changed.add(name)
            removed = True
    if removed:
        person.attrs = compacted(attrs)
    return changed


def apply_attributes_changed(person: Person, event: AttributeChange) -> bool:
    """:func:`apply_attributes` returning only whether anything changed (no set of names):
    the consume loop's path while a partition catches up, when nothing is marked dirty."""
    changed = removed = False
    attrs = person.attrs
    for name, value in event.set.items():
        if value is None:
            if name in attrs:
                del attrs[name]
                changed = removed = True
        else:
            old = attrs.get(name, _MISSING)
            if old is _MISSING:
                attrs[sys.intern(name)] = value
                changed = True
            elif old != value or type(old) is not type(value):
                attrs[name] = value
                changed = True
    for name in event.unset:
        if name in attrs:
            del attrs[name]
            changed = removed = True
    if removed:
        person.attrs = compacted(attrs)
    return changed


def apply_deleted(person: Person) -> bool:
    """Upstream deletion: the person leaves every segment and its attributes are dropped."""
    changed = bool(person.attrs or person.segments)
    person.attrs = {}
    person.segments = _NO_SEGMENTS
    return changed


_MISSING: Any = object()


# --- keys ----------------------------------------------------------------------------------


def person_key(person_id: str) -> bytes:
    return b"person/" + person_id.encode()


def sync_key(activation: str, person_id: str) -> bytes:
    return f"sync/{activation}/{person_id}".encode()


def intent_key(activation: str, batch_id: str) -> bytes:
    return f"intent/{activation}/{batch_id}".encode()


def control_key(kind: str, activation: str) -> bytes:
    return f"{kind}/{activation}".encode()


# --- codec -----------------------------------------------------------------------------------


# Person and sync records are written as JSON (orjson) behind the version byte 2: a person
# record is written again whenever any of its attributes changes (the hottest state write),
# a sync record once per operation, and orjson encodes a 10-attribute record in 0.5 µs where
# the Avro codec takes 3.4 µs (decoding 2.4 µs vs 4.9 µs). Version 1 (Avro) records are still
# read. Intent records (one per batch and partition) too.
FORMAT_JSON = FORMAT_PERSON_JSON = b"\x02"
_SEGMENT_TUPLES: dict[frozenset[str], tuple[str, ...]] = {}


def encode_person(person: Person) -> bytes:
    return encode_person_parts(person.attrs, person.segments)


def encode_person_parts(attrs: dict[str, Value], segments: Iterable[str]) -> bytes:
    """``[attrs, sorted segments]`` as JSON after the version byte (Avro when orjson cannot
    encode a value: not expected, every value passed the input decoder's checks)."""
    if type(segments) is frozenset:
        listed = _SEGMENT_TUPLES.get(segments)
        if listed is None:
            listed = tuple(sorted(segments))
            if len(_SEGMENT_TUPLES) < 4096:
                _SEGMENT_TUPLES[segments] = listed
    else:
        listed = tuple(sorted(segments))
    try:
        return FORMAT_PERSON_JSON + orjson.dumps((attrs, listed))
    except TypeError:
        return statecodec.encode_person(attrs, segments)


def decode_person_into(person: Person, data: bytes, pool: dict[str, str] | None = None) -> None:
    """Decode a person record (version 1 Avro or 2 JSON) into ``person``; ``pool`` shares
    equal strings (see :func:`statecodec.decode_sync`). Raises ValueError when malformed."""
    if data[:1] == FORMAT_PERSON_JSON:
        attrs, segments = _decode_person_json(data, pool)
    else:
        attrs, segments = statecodec.decode_person(data, pool)
    person.attrs = attrs
    person.segments = segment_set(segments)


def _decode_person_json(
    data: bytes, pool: dict[str, str] | None
) -> tuple[dict[str, Value], Iterable[str]]:
    try:
        record = orjson.loads(memoryview(data)[1:])
    except orjson.JSONDecodeError as err:
        raise ValueError(f"person record: {err}") from None
    if type(record) is not list or len(record) != 2:
        raise ValueError("person record: not [attributes, segments]")
    raw, segments = record
    if type(raw) is not dict or type(segments) is not list:
        raise ValueError("person record: not [attributes, segments]")
    attrs: dict[str, Value] = {}
    intern = sys.intern
    for name, value in raw.items():
        kind = type(value)
        if kind is str:
            if pool is not None:
                value = pool.setdefault(value, value)
        elif kind is list:
            if any(type(item) is not str for item in value):
                raise ValueError(f"person record: attribute {name!r} is not a list of strings")
        elif value is not None and kind is not int and kind is not float and kind is not bool:
            raise ValueError(f"person record: attribute {name!r} has a {kind.__name__}")
        attrs[intern(name)] = value
    if any(type(segment) is not str for segment in segments):
        raise ValueError("person record: a segment id is not a string")
    return attrs, segments


def encode_sync(rec: SyncRecord) -> bytes:
    """``[status, identifier, ref, field names, values, resync]`` as JSON after the version
    byte 2 (written once per operation: 0.4 µs where the Avro codec takes 2 µs); Avro when
    orjson cannot encode a value."""
    try:
        return FORMAT_PERSON_JSON + orjson.dumps(  # orjson writes the status as its value
            (rec.status, rec.identifier, rec.ref, rec._names, rec._vals, rec.resync)
        )
    except TypeError:
        return statecodec.encode_sync(
            rec.status.value, rec.identifier, rec.ref, rec.values, rec.resync
        )


_STATUSES = {status.value: status for status in SyncStatus}
_KINDS = {kind.value: kind for kind in OpKind}


def decode_sync(data: bytes, pool: dict[str, str] | None = None) -> SyncRecord:
    """A sync record (version 1 Avro or 2 JSON); ``pool`` shares equal strings (see
    :func:`statecodec.decode_sync`). Raises ValueError when malformed."""
    if data[:1] != FORMAT_PERSON_JSON:
        status, identifier, ref, values, resync = statecodec.decode_sync(data, pool)
        return SyncRecord(_STATUSES[status], values, identifier, ref, resync)
    try:
        record = orjson.loads(memoryview(data)[1:])
    except orjson.JSONDecodeError as err:
        raise ValueError(f"sync record: {err}") from None
    if type(record) is not list or len(record) != 6:
        raise ValueError("sync record: not [status, identifier, ref, names, values, resync]")
    status, identifier, ref, names, vals, resync = record
    found = _STATUSES.get(status) if type(status) is str else None
    if found is None:
        raise ValueError(f"sync record: unknown status {status!r}")
    for text in (identifier, ref, resync):
        if text is not None and type(text) is not str:
            raise ValueError("sync record: identifier, ref and resync are strings or null")
    if type(names) is not list or type(vals) is not list or len(names) != len(vals):
        raise ValueError("sync record: field names and values do not match")
    if any(type(name) is not str for name in names):
        raise ValueError("sync record: a field name is not a string")
    if pool is not None:
        if identifier is not None:
            identifier = pool.setdefault(identifier, identifier)
        vals = [pool.setdefault(v, v) if type(v) is str else v for v in vals]
    for value in vals:
        kind = type(value)
        if kind is list:
            if any(type(item) is not str for item in value):
                raise ValueError("sync record: a value is a list of non-strings")
        elif (
            value is not None
            and kind is not str
            and kind is not int
            and kind is not float
            and kind is not bool
        ):
            raise ValueError(f"sync record: a value has a {kind.__name__}")
    rec = SyncRecord.__new__(SyncRecord)
    rec.status = found
    rec._names = field_names(tuple(names))
    rec._vals = tuple(vals)
    rec.identifier = identifier
    rec.ref = ref
    rec.resync = resync
    return rec


#: one intended operation as :func:`encode_intent_rows` takes it:
#: ``(person_id, kind, identifier, fields, clears)``
IntentRow: TypeAlias = tuple[str, OpKind, str | None, tuple[str, ...], tuple[str, ...]]


def encode_intent(intent: BatchIntent) -> bytes:
    """``[activation, [[person_id, kind, identifier, fields, clears], ...]]`` as JSON after
    the version byte 2 (Avro when orjson cannot encode a value)."""
    return encode_intent_rows(
        intent.activation,
        [(op.person_id, op.kind, op.identifier, op.fields, op.clears) for op in intent.ops],
    )


def encode_intent_rows(activation: str, rows: Sequence[IntentRow]) -> bytes:
    """:func:`encode_intent` of rows built without an :class:`IntendedOp` each (the engine
    writes one row per operation sent). orjson writes an ``OpKind`` as its value."""
    try:
        return FORMAT_JSON + orjson.dumps((activation, rows))
    except TypeError:
        return statecodec.encode_intent(activation, rows)


def decode_intent(data: bytes) -> BatchIntent:
    """An intent record (version 1 Avro or 2 JSON). Raises ValueError when malformed."""
    if data[:1] != FORMAT_JSON:
        activation, ops = statecodec.decode_intent(data)
        return BatchIntent(
            activation,
            tuple(
                IntendedOp(pid, _KINDS[kind], identifier, tuple(fields), tuple(clears))
                for pid, kind, identifier, fields, clears in ops
            ),
        )
    try:
        record = orjson.loads(memoryview(data)[1:])
    except orjson.JSONDecodeError as err:
        raise ValueError(f"intent record: {err}") from None
    if type(record) is not list or len(record) != 2 or type(record[0]) is not str:
        raise ValueError("intent record: not [activation, operations]")
    activation, raw_ops = record
    if type(raw_ops) is not list:
        raise ValueError("intent record: operations are not a list")
    decoded: list[IntendedOp] = []
    for raw in raw_ops:
        if type(raw) is not list or len(raw) != 5:
            raise ValueError("intent record: an operation is not a 5-item list")
        pid, kind, identifier, fields, clears = raw
        found = _KINDS.get(kind) if type(kind) is str else None
        if type(pid) is not str or found is None:
            raise ValueError("intent record: an operation has no person id or kind")
        if identifier is not None and type(identifier) is not str:
            raise ValueError("intent record: an identifier is not a string")
        if (
            type(fields) is not list
            or type(clears) is not list
            or any(type(name) is not str for name in (*fields, *clears))
        ):
            raise ValueError("intent record: fields and clears are lists of names")
        decoded.append(
            IntendedOp(pid, found, identifier, field_names(tuple(fields)), tuple(clears))
        )
    return BatchIntent(activation, tuple(decoded))


def encode_control(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(payload), sort_keys=True).encode()


def decode_control(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("control record is not an object")
    return value


def fold_intent(person: Person, activation: str, op: IntendedOp) -> SyncRecord:
    """Make a sync record right either way for an operation whose outcome is unknown.

    An unresolved intent means the batch may or may not have been applied. Fields it set or
    cleared become unknown (``None`` never equals a real value, so they are sent again, or
    cleared if now absent); a create or delete in flight makes existence unknown (``MAYBE``:
    a member gets its full record, a leaver in mirror mode is deleted, accepting 404).
    """
    current = person.sync.get(activation)
    if op.kind is OpKind.DELETE:
        # deleted or not: if the person comes back, its full record is sent, and every field
        # the old record may still hold is cleared unless it has a value again
        values: dict[str, Value] = {}
        if current is not None:
            values = {name: None for name in current.values}
        rec = SyncRecord(SyncStatus.MAYBE, values, op.identifier, None, None)
    elif current is not None and current.status is SyncStatus.SYNCED:
        values = dict(current.values)
        for name in (*op.fields, *op.clears):
            values[name] = None
        rec = SyncRecord(SyncStatus.SYNCED, values, current.identifier, current.ref, current.resync)
        if op.identifier is not None and op.identifier != current.identifier:
            rec.status = SyncStatus.MAYBE
    else:
        values = dict(current.values) if current is not None else {}
        for name in (*op.fields, *op.clears):
            values[name] = None
        ref = current.ref if current is not None else None
        rec = SyncRecord(SyncStatus.MAYBE, values, op.identifier, ref, None)
    person.sync[activation] = rec
    return rec


def iter_ops_by_partition(
    ops: Iterable[tuple[int, IntendedOp]],
) -> dict[int, list[IntendedOp]]:
    grouped: dict[int, list[IntendedOp]] = {}
    for partition, op in ops:
        grouped.setdefault(partition, []).append(op)
    return grouped
