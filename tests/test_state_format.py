"""Person and sync records in the state topic: version 2 (JSON through orjson) written,
version 1 (Avro) still read, malformed records rejected with ValueError."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_sync import statecodec
from stream_sync.state import (
    FORMAT_JSON,
    FORMAT_PERSON_JSON,
    BatchIntent,
    IntendedOp,
    OpKind,
    Person,
    SyncRecord,
    SyncStatus,
    decode_intent,
    decode_person_into,
    decode_sync,
    encode_intent,
    encode_person,
    encode_sync,
    segment_set,
)

NAMES = st.text(min_size=1, max_size=12)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.lists(st.text(max_size=8), max_size=4),
)


def person(attrs: dict[str, Any], segments: list[str]) -> Person:
    p = Person(0)
    p.attrs = attrs
    p.segments = segment_set(segments)
    return p


def decoded(data: bytes, pool: dict[str, str] | None = None) -> Person:
    p = Person(0)
    decode_person_into(p, data, pool)
    return p


def same(a: Any, b: Any) -> bool:
    """Equal with the same types (1, 1.0 and True are not the same value), -0.0 kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=12), st.lists(st.text(max_size=10), max_size=4))
def test_round_trip_keeps_values_and_types(attrs: dict[str, Any], segments: list[str]) -> None:
    data = encode_person(person(attrs, segments))
    assert data[:1] == FORMAT_PERSON_JSON
    back = decoded(data)
    assert back.attrs.keys() == attrs.keys()
    assert all(same(back.attrs[k], v) for k, v in attrs.items())
    assert back.segments == frozenset(segments)


def test_version_1_avro_records_are_still_read() -> None:
    attrs = {"email": "a@x.io", "ltv": 12.5, "orders": 3, "opt_in": True, "tags": ["a"]}
    data = statecodec.encode_person(attrs, ["vip"])
    assert data[:1] == b"\x01"
    back = decoded(data)
    assert back.attrs == attrs and back.segments == frozenset({"vip"})


def test_names_interned_and_strings_pooled() -> None:
    city = "".join(["Lis", "bon"])
    data_a = encode_person(person({"city": city, "email": "a@x.io"}, []))
    data_b = encode_person(person({"city": "Lisbon", "email": "b@x.io"}, []))
    pool: dict[str, str] = {}
    a, b = decoded(data_a, pool), decoded(data_b, pool)
    assert a.attrs["city"] is b.attrs["city"]
    assert next(iter(a.attrs)) is next(iter(b.attrs))  # one interned key for all persons


def test_unencodable_value_raises_valueerror() -> None:
    # orjson refuses it, then the Avro codec does: a clear error, not a corrupt record
    with pytest.raises(ValueError, match="not an attribute value type"):
        encode_person(person({"odd": object()}, []))


@pytest.mark.parametrize(
    "data",
    [
        b"\x02",
        b"\x02{",
        b"\x02{}",
        b"\x02[{}]",
        b'\x02[[], ["vip"]]',
        b'\x02[{"a": {"nested": 1}}, []]',
        b'\x02[{"a": [1, 2]}, []]',
        b'\x02[{"a": 1}, [1]]',
        b"\x03anything",
    ],
)
def test_malformed_records_raise_valueerror(data: bytes) -> None:
    with pytest.raises(ValueError):
        decoded(data)


SYNC_VALUES = st.dictionaries(st.text(min_size=1, max_size=8), VALUES, max_size=6)
OPTIONAL = st.none() | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(SyncStatus)), SYNC_VALUES, OPTIONAL, OPTIONAL, OPTIONAL)
def test_sync_round_trip(
    status: SyncStatus,
    values: dict[str, Any],
    identifier: str | None,
    ref: str | None,
    resync: str | None,
) -> None:
    rec = SyncRecord(status, values, identifier, ref, resync)
    data = encode_sync(rec)
    assert data[:1] == FORMAT_JSON
    back = decode_sync(data)
    assert back == rec
    assert all(same(back.values[k], v) for k, v in values.items())


def test_sync_version_1_still_read_and_pool_shares() -> None:
    old = statecodec.encode_sync("SYNCED", "a@x.io", "r1", {"city": "Paris"}, None)
    assert decode_sync(old) == SyncRecord(SyncStatus.SYNCED, {"city": "Paris"}, "a@x.io", "r1")
    pool: dict[str, str] = {}
    one = decode_sync(encode_sync(SyncRecord(SyncStatus.SYNCED, {"c": "Lyon"}, "x@y.io")), pool)
    two = decode_sync(encode_sync(SyncRecord(SyncStatus.LEFT, {"c": "Lyon"}, "x@y.io")), pool)
    assert one.values["c"] is two.values["c"] and one.identifier is two.identifier
    assert one._names is two._names


@pytest.mark.parametrize(
    "data",
    [
        b"\x02[]",
        b'\x02["NOPE", null, null, [], [], null]',
        b'\x02["SYNCED", 1, null, [], [], null]',
        b'\x02["SYNCED", null, null, ["a"], [], null]',
        b'\x02["SYNCED", null, null, [1], [1], null]',
        b'\x02["SYNCED", null, null, ["a"], [{"x": 1}], null]',
        b'\x02["SYNCED", null, null, ["a"], [[1]], null]',
        b"\x02not json",
    ],
)
def test_malformed_sync_records_raise_valueerror(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_sync(data)


def test_intent_round_trip_and_version_1() -> None:
    intent = BatchIntent(
        "act",
        (
            IntendedOp("p1", OpKind.UPSERT, "a@x.io", ("city", "plan"), ("old",)),
            IntendedOp("p2", OpKind.DELETE, None, (), ()),
        ),
    )
    data = encode_intent(intent)
    assert data[:1] == FORMAT_JSON
    assert decode_intent(data) == intent
    old = statecodec.encode_intent(
        "act",
        [("p1", "UPSERT", "a@x.io", ("city", "plan"), ("old",)), ("p2", "DELETE", None, (), ())],
    )
    assert old[:1] == b"\x01" and decode_intent(old) == intent


@pytest.mark.parametrize(
    "data",
    [
        b"\x02[]",
        b'\x02["act", {}]',
        b'\x02["act", [["p1", "NOPE", null, [], []]]]',
        b'\x02["act", [["p1", "UPSERT", 5, [], []]]]',
        b'\x02["act", [["p1", "UPSERT", null, [1], []]]]',
        b'\x02["act", [["p1", "UPSERT", null, []]]]',
    ],
)
def test_malformed_intent_records_raise_valueerror(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_intent(data)


def test_segments_of_any_iterable_are_written_sorted() -> None:
    from stream_sync.state import encode_person_parts

    a = encode_person_parts({"a": 1}, {"z", "b"})
    b = encode_person_parts({"a": 1}, frozenset({"b", "z"}))
    assert a == b and a.endswith(b'["b","z"]]')
