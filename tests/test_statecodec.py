"""The hand-written state codec against fastavro: identical bytes, round trips, any valid
Avro encoding accepted, malformed data rejected with ValueError (and nothing else)."""

from __future__ import annotations

import io
import json
import math
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, cast

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_sync import statecodec
from stream_sync.statecodec import (
    OP_KINDS,
    SYNC_STATUSES,
    decode_intent,
    decode_person,
    decode_sync,
    encode_intent,
    encode_person,
    encode_sync,
)

VERSION = b"\x01"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

PROPS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _load_schema(name: str) -> Any:
    text = resources.files("stream_sync").joinpath("schemas", name).read_text(encoding="utf-8")
    return fastavro.parse_schema(json.loads(text))


PERSON_SCHEMA = _load_schema("person_state.avsc")
SYNC_SCHEMA = _load_schema("sync_state.avsc")
INTENT_SCHEMA = _load_schema("batch_intent.avsc")


def fa_write(schema: Any, record: Mapping[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(VERSION)
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def fa_read(schema: Any, data: bytes) -> Any:
    """fastavro's reading of a whole record; raises if it does not end exactly at the end."""
    assert data[:1] == VERSION
    buf = io.BytesIO(data)
    buf.seek(1)
    record = fastavro.schemaless_reader(buf, schema, None)
    if buf.tell() != len(data):
        raise ValueError("trailing bytes")
    return record


def fa_person(attrs: Mapping[str, Any], segments: Iterable[str]) -> bytes:
    return fa_write(PERSON_SCHEMA, {"attrs": attrs, "segments": sorted(segments)})


def fa_sync(
    status: str,
    identifier: str | None,
    ref: str | None,
    values: Mapping[str, Any],
    resync: str | None,
) -> bytes:
    record = {
        "status": status,
        "identifier": identifier,
        "ref": ref,
        "values": values,
        "resync": resync,
    }
    return fa_write(SYNC_SCHEMA, record)


Op = tuple[str, str, str | None, Sequence[str], Sequence[str]]


def fa_intent(activation: str, ops: Sequence[Op]) -> bytes:
    return fa_write(
        INTENT_SCHEMA,
        {
            "activation": activation,
            "ops": [
                {
                    "person_id": person_id,
                    "kind": kind,
                    "identifier": identifier,
                    "fields": list(fields),
                    "clears": list(clears),
                }
                for person_id, kind, identifier, fields, clears in ops
            ],
        },
    )


def typed(value: Any) -> Any:
    """A comparable form that tells bool / int / float apart, -0.0 from 0.0, and NaN."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


# --------------------------------------------------------------------------------------------
# Strategies

short_texts = st.text(max_size=10)
# long enough for multi-byte length prefixes (64+ UTF-8 bytes), including astral characters
texts = st.one_of(short_texts, short_texts, st.text(min_size=30, max_size=90))
int64 = st.one_of(
    st.integers(-64, 63),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, -65, 64, 8191, 8192, -8193, 2**35, 1717171717000]),
)
doubles = st.one_of(
    st.floats(),  # NaN and infinities included (bytes compared, never values)
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 2.0**63]),
)
values = st.one_of(
    st.none(),
    st.booleans(),
    int64,
    doubles,
    texts,
    st.lists(texts, max_size=5),
)
value_maps = st.dictionaries(texts, values, max_size=8)
segment_ids = st.one_of(st.frozensets(texts, max_size=5), st.sets(texts, max_size=5))
optional_texts = st.one_of(st.none(), texts)
statuses = st.sampled_from(SYNC_STATUSES)
ops = st.lists(
    st.tuples(
        texts,
        st.sampled_from(OP_KINDS),
        optional_texts,
        st.lists(texts, max_size=4).map(tuple),
        st.lists(texts, max_size=4),
    ),
    max_size=5,
)


# --------------------------------------------------------------------------------------------
# Identical bytes, round trips


@PROPS
@given(value_maps, segment_ids)
def test_person_bytes_identical_to_fastavro_and_round_trip(
    attrs: dict[str, Any], segments: frozenset[str] | set[str]
) -> None:
    data = encode_person(attrs, segments)
    assert data == fa_person(attrs, segments)
    decoded_attrs, decoded_segments = decode_person(data)
    assert typed(decoded_attrs) == typed(attrs)
    assert list(decoded_attrs) == list(attrs)  # map order kept
    assert decoded_segments == set(segments)
    assert encode_person(decoded_attrs, decoded_segments) == data
    # fastavro reads ours (the bytes are the same, but say it)
    record = fa_read(PERSON_SCHEMA, data)
    assert typed(record["attrs"]) == typed(attrs)


@PROPS
@given(statuses, optional_texts, optional_texts, value_maps, optional_texts)
def test_sync_bytes_identical_to_fastavro_and_round_trip(
    status: str,
    identifier: str | None,
    ref: str | None,
    values: dict[str, Any],
    resync: str | None,
) -> None:
    data = encode_sync(status, identifier, ref, values, resync)
    assert data == fa_sync(status, identifier, ref, values, resync)
    got = decode_sync(data)
    assert got[0] == status
    assert got[1:3] == (identifier, ref)
    assert typed(got[3]) == typed(values)
    assert got[4] == resync
    assert encode_sync(*got) == data


@PROPS
@given(texts, ops)
def test_intent_bytes_identical_to_fastavro_and_round_trip(activation: str, ops: list[Op]) -> None:
    data = encode_intent(activation, ops)
    assert data == fa_intent(activation, ops)
    got_activation, got_ops = decode_intent(data)
    assert got_activation == activation
    assert got_ops == [(p, k, i, tuple(f), tuple(c)) for p, k, i, f, c in ops]
    assert encode_intent(got_activation, got_ops) == data


@PROPS
@given(value_maps, segment_ids, statuses, optional_texts, texts, ops)
def test_fastavro_bytes_decode(
    attrs: dict[str, Any],
    segments: set[str],
    status: str,
    identifier: str | None,
    activation: str,
    ops: list[Op],
) -> None:
    """Records fastavro wrote (the state topic's existing records) read as fastavro reads them."""
    data = fa_person(attrs, segments)
    record = fa_read(PERSON_SCHEMA, data)
    got_attrs, got_segments = decode_person(data)
    assert typed(got_attrs) == typed(record["attrs"])
    assert got_segments == set(record["segments"])

    data = fa_sync(status, identifier, None, attrs, identifier)
    record = fa_read(SYNC_SCHEMA, data)
    got = decode_sync(data)
    assert (got[0], got[1], got[2], got[4]) == (
        record["status"],
        record["identifier"],
        record["ref"],
        record["resync"],
    )
    assert typed(got[3]) == typed(record["values"])

    data = fa_intent(activation, ops)
    record = fa_read(INTENT_SCHEMA, data)
    assert decode_intent(data) == (
        record["activation"],
        [
            (
                op["person_id"],
                op["kind"],
                op["identifier"],
                tuple(op["fields"]),
                tuple(op["clears"]),
            )
            for op in record["ops"]
        ],
    )


def test_multi_byte_counts_and_lengths() -> None:
    attrs: dict[str, Any] = {f"attribute-{i}": i * 1000 for i in range(100)}
    attrs["long list"] = [f"item {i}" for i in range(200)]
    attrs["long text"] = "é" * 5000
    attrs[""] = ""
    segments = frozenset(f"segment-{i}" for i in range(70))
    data = encode_person(attrs, segments)
    assert data == fa_person(attrs, segments)
    assert decode_person(data) == (attrs, segments)
    ops = [(f"p{i}", "UPDATE", None, tuple(attrs)[:80], ()) for i in range(70)]
    data = encode_intent("a" * 100, ops)
    assert data == fa_intent("a" * 100, ops)
    assert decode_intent(data) == ("a" * 100, ops)


def test_union_branch_choice_like_fastavro() -> None:
    """bool before int; an int beyond 64 bits is a double (fastavro's first fitting branch)."""
    attrs: dict[str, Any] = {
        "t": True,
        "f": False,
        "one": 1,
        "one.0": 1.0,
        "min": INT64_MIN,
        "max": INT64_MAX,
        "past max": INT64_MAX + 1,
        "past min": INT64_MIN - 1,
        "huge": 10**300,
        "empty list": [],
        "none": None,
    }
    data = encode_person(attrs, [])
    assert data == fa_person(attrs, [])
    decoded, _ = decode_person(data)
    assert typed(decoded["past max"]) == typed(float(INT64_MAX + 1))
    assert typed(decoded["huge"]) == typed(1e300)
    assert decoded["t"] is True and decoded["f"] is False


def test_subclasses_encode_like_their_base_types() -> None:
    from enum import IntEnum, StrEnum

    class Color(StrEnum):
        RED = "red"

    class Size(IntEnum):
        BIG = 300

    class Floaty(float):
        pass

    class Names(list[str]):
        pass

    attrs: dict[str, Any] = {
        Color.RED: Color.RED,
        "size": Size.BIG,
        "ratio": Floaty(0.5),
        "names": ["a", Color.RED],
    }
    data = encode_person(attrs, [Color.RED])
    assert data == fa_person(attrs, [Color.RED])
    expected: dict[str, Any] = {"red": "red", "size": 300, "ratio": 0.5, "names": ["a", "red"]}
    assert decode_person(data) == (expected, frozenset({"red"}))
    assert encode_sync(_status("MAYBE"), None, None, {}, None) == fa_sync(
        "MAYBE", None, None, {}, None
    )
    # fastavro refuses a list subclass ("Expected list"); it is an array here
    assert encode_person({"names": Names(["a"])}, []) == encode_person({"names": ["a"]}, [])


def _status(symbol: str) -> str:
    from stream_sync.state import SyncStatus

    return SyncStatus(symbol)


def test_tuple_value_is_an_array() -> None:
    """Deliberate difference: fastavro would read a tuple as its "(branch, value)" notation."""
    pair: Any = ("x", "y")
    assert encode_person({"a": pair}, []) == encode_person({"a": ["x", "y"]}, [])


def test_empty_records() -> None:
    assert encode_person({}, []) == fa_person({}, []) == b"\x01\x00\x00"
    assert decode_person(b"\x01\x00\x00") == ({}, frozenset())
    assert encode_sync("SYNCED", None, None, {}, None) == b"\x01\x00\x00\x00\x00\x00"
    assert encode_intent("", []) == fa_intent("", []) == b"\x01\x00\x00"
    assert decode_intent(b"\x01\x00\x00") == ("", [])


def test_decoders_accept_bytes_like() -> None:
    data = encode_person({"a": 1}, ["s"])
    expected: tuple[dict[str, Any], frozenset[str]] = ({"a": 1}, frozenset({"s"}))
    assert decode_person(cast(bytes, bytearray(data))) == expected
    assert decode_person(cast(bytes, memoryview(data))) == expected


def test_decoded_names_are_interned() -> None:
    # names built at run time, so that only interning can make them identical objects
    name = "".join(["attr", "ibute", "-", str(12345)])
    segment = "".join(["seg", "ment", "-", str(678)])
    field = "".join(["fie", "ld", "-", str(9)])
    attrs, segments = decode_person(encode_person({name: 1}, [segment]))
    (key,) = attrs
    assert key is sys.intern(name)
    assert next(iter(segments)) is sys.intern(segment)
    status, _, _, values, _ = decode_sync(encode_sync("REJECTED", None, None, {name: 2}, None))
    assert status is sys.intern("REJECTED")
    assert next(iter(values)) is sys.intern(name)
    activation, decoded_ops = decode_intent(
        encode_intent(name, [("p", "DELETE", None, [field], [name])])
    )
    assert activation is sys.intern(name)
    (_, kind, _, fields, clears) = decoded_ops[0]
    assert kind is sys.intern("DELETE")
    assert fields[0] is sys.intern(field) and clears[0] is sys.intern(name)


# --------------------------------------------------------------------------------------------
# Any valid encoding: several blocks, negative counts with byte sizes, over-long varints


class WeirdWriter:
    """Writes valid Avro that fastavro never produces, with choices drawn from Hypothesis."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def long(self, n: int) -> bytes:
        raw = (n << 1) ^ (n >> 63)
        out = bytearray()
        while raw > 0x7F:
            out.append((raw & 0x7F) | 0x80)
            raw >>= 7
        out.append(raw)
        # pad to a longer (still at most 10-byte) varint: 0x80 continuation groups of zero
        padding = self.draw(st.integers(0, 10 - len(out))) if self.draw(st.booleans()) else 0
        if padding:
            out[-1] |= 0x80
            out += b"\x80" * (padding - 1) + b"\x00"
        return bytes(out)

    def string(self, text: str) -> bytes:
        raw = text.encode()
        return self.long(len(raw)) + raw

    def blocks(self, items: Sequence[bytes]) -> bytes:
        """Items in random blocks, some with a negative count and a byte size, then 0."""
        out = bytearray()
        rest = list(items)
        while rest:
            size = self.draw(st.integers(1, len(rest)))
            chunk, rest = rest[:size], rest[size:]
            body = b"".join(chunk)
            if self.draw(st.booleans()):
                out += self.long(-len(chunk)) + self.long(len(body))
            else:
                out += self.long(len(chunk))
            out += body
        return bytes(out + self.long(0))

    def value(self, value: Any) -> bytes:
        if value is None:
            return self.long(0)
        if isinstance(value, bool):
            return self.long(1) + (b"\x01" if value else b"\x00")
        if isinstance(value, int):
            return self.long(2) + self.long(value)
        if isinstance(value, float):
            return self.long(3) + struct.pack("<d", value)
        if isinstance(value, str):
            return self.long(4) + self.string(value)
        return self.long(5) + self.blocks([self.string(s) for s in value])

    def value_map(self, values: Mapping[str, Any]) -> bytes:
        return self.blocks([self.string(k) + self.value(v) for k, v in values.items()])

    def optional(self, text: str | None) -> bytes:
        return self.long(0) if text is None else self.long(1) + self.string(text)


@PROPS
@given(st.data(), value_maps, segment_ids)
def test_person_any_valid_encoding(
    data: st.DataObject, attrs: dict[str, Any], segments: set[str]
) -> None:
    w = WeirdWriter(data.draw)
    raw = VERSION + w.value_map(attrs) + w.blocks([w.string(s) for s in sorted(segments)])
    record = fa_read(PERSON_SCHEMA, raw)  # the test's encoding is valid: fastavro agrees
    got_attrs, got_segments = decode_person(raw)
    assert typed(got_attrs) == typed(attrs) == typed(record["attrs"])
    assert got_segments == set(segments)


@PROPS
@given(st.data(), st.integers(0, 4), optional_texts, optional_texts, value_maps, optional_texts)
def test_sync_any_valid_encoding(
    data: st.DataObject,
    status: int,
    identifier: str | None,
    ref: str | None,
    values: dict[str, Any],
    resync: str | None,
) -> None:
    w = WeirdWriter(data.draw)
    raw = (
        VERSION
        + w.long(status)
        + w.optional(identifier)
        + w.optional(ref)
        + w.value_map(values)
        + w.optional(resync)
    )
    fa_read(SYNC_SCHEMA, raw)
    got = decode_sync(raw)
    assert got[0] == SYNC_STATUSES[status]
    assert (got[1], got[2], got[4]) == (identifier, ref, resync)
    assert typed(got[3]) == typed(values)


@PROPS
@given(st.data(), texts, ops)
def test_intent_any_valid_encoding(data: st.DataObject, activation: str, ops: list[Op]) -> None:
    w = WeirdWriter(data.draw)
    items = [
        w.string(p)
        + w.long(OP_KINDS.index(k))
        + w.optional(i)
        + w.blocks([w.string(s) for s in f])
        + w.blocks([w.string(s) for s in c])
        for p, k, i, f, c in ops
    ]
    raw = VERSION + w.string(activation) + w.blocks(items)
    fa_read(INTENT_SCHEMA, raw)
    assert decode_intent(raw) == (
        activation,
        [(p, k, i, tuple(f), tuple(c)) for p, k, i, f, c in ops],
    )


# --------------------------------------------------------------------------------------------
# Malformed data: ValueError, never another exception, never a wrong result

DECODERS: list[tuple[Callable[[bytes], Any], Any]] = [
    (decode_person, PERSON_SCHEMA),
    (decode_sync, SYNC_SCHEMA),
    (decode_intent, INTENT_SCHEMA),
]


def _fastavro_view(schema: Any, record: Any) -> Any:
    """fastavro's record in the shape of our decoder's result."""
    if schema is PERSON_SCHEMA:
        return typed(record["attrs"]), set(record["segments"])
    if schema is SYNC_SCHEMA:
        return (
            record["status"],
            record["identifier"],
            record["ref"],
            typed(record["values"]),
            record["resync"],
        )
    return record["activation"], [
        (op["person_id"], op["kind"], op["identifier"], tuple(op["fields"]), tuple(op["clears"]))
        for op in record["ops"]
    ]


def _our_view(schema: Any, got: Any) -> Any:
    if schema is PERSON_SCHEMA:
        return typed(got[0]), set(got[1])
    if schema is SYNC_SCHEMA:
        return got[0], got[1], got[2], typed(got[3]), got[4]
    return got


def _valid_record(draw: Callable[[st.SearchStrategy[Any]], Any], which: int) -> bytes:
    if which == 0:
        return encode_person(draw(value_maps), draw(segment_ids))
    if which == 1:
        return encode_sync(
            draw(statuses), draw(optional_texts), draw(optional_texts), draw(value_maps), None
        )
    return encode_intent(draw(texts), draw(ops))


@PROPS
@given(st.data(), st.integers(0, 2))
def test_truncated_and_trailing_bytes_raise(data: st.DataObject, which: int) -> None:
    decode, _ = DECODERS[which]
    raw = _valid_record(data.draw, which)
    for end in range(len(raw)):
        with pytest.raises(ValueError):
            decode(raw[:end])
    with pytest.raises(ValueError):
        decode(raw + data.draw(st.binary(min_size=1, max_size=3)))


@PROPS
@given(st.data(), st.integers(0, 2))
def test_mutated_records_raise_valueerror_or_agree_with_fastavro(
    data: st.DataObject, which: int
) -> None:
    """Random byte edits: our decoder raises ValueError or returns what fastavro reads (it is
    stricter than fastavro on boolean bytes and varint lengths, never more lenient)."""
    decode, schema = DECODERS[which]
    raw = bytearray(_valid_record(data.draw, which))
    for _ in range(data.draw(st.integers(1, 3))):
        edit = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = data.draw(st.integers(1, max(1, len(raw) - 1)))
        byte = data.draw(st.integers(0, 255))
        if edit == "replace" and pos < len(raw):
            raw[pos] = byte
        elif edit == "insert":
            raw.insert(pos, byte)
        elif pos < len(raw):
            del raw[pos]
    mutated = bytes(raw)
    try:
        got = decode(mutated)
    except ValueError:
        return
    record = fa_read(schema, mutated)
    assert _our_view(schema, got) == _fastavro_view(schema, record)


def _varint(n: int) -> bytes:
    raw = (n << 1) ^ (n >> 63)
    out = bytearray()
    while raw > 0x7F:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


@pytest.mark.parametrize(
    ("decode", "data"),
    [
        # version byte
        (decode_person, b""),
        (decode_person, b"\x00\x00\x00"),
        (decode_person, b"\x02\x00\x00"),
        (decode_sync, b"{}"),
        (decode_intent, b"\x00"),
        # union index out of range (7 = zig-zag -4; 12 = 6; 0x7f = -64)
        (decode_person, b"\x01\x02\x02a\x0c\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x07\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x7f\x00\x00"),
        (decode_sync, b"\x01\x00\x04\x00\x00\x00\x00"),
        (decode_sync, b"\x01\x00\x00\x00\x00\x03"),
        # enum index out of range / negative
        (decode_sync, b"\x01\x0a\x00\x00\x00\x00"),
        (decode_sync, b"\x01\x01\x00\x00\x00\x00"),
        (decode_intent, b"\x01\x00\x02\x00\x06\x00\x00\x00\x00"),
        # boolean byte other than 0 / 1 (after a one-byte and an over-long union index)
        (decode_person, b"\x01\x02\x02a\x02\x02\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x82\x00\x02\x00\x00"),
        # negative string length (key, value, segment, person id)
        (decode_person, b"\x01\x02\x03a\x00\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x08\x01\x00\x00"),
        (decode_person, b"\x01\x00\x02\x01\x00"),
        (decode_intent, b"\x01\x00\x02\x01\x00\x00\x00\x00\x00"),
        # invalid UTF-8 (key, value, segment, list item)
        (decode_person, b"\x01\x02\x02\xff\x00\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x08\x02\xc3\x00\x00"),
        (decode_person, b"\x01\x00\x02\x04\xed\xa0\x00"),
        (decode_person, b"\x01\x02\x02a\x0a\x02\x02\xff\x00\x00\x00"),
        # varint longer than 10 bytes / above 64 bits
        (decode_person, b"\x01\x02\x02a\x04" + b"\xff" * 10 + b"\x01\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x04" + b"\xff" * 9 + b"\x7f\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x04" + b"\xff" * 9 + b"\x02\x00\x00"),
        (decode_person, b"\x01\x02\x02a\x04" + b"\x80" * 10 + b"\x00\x00\x00"),
        # a block count larger than the data / a negative block byte size
        (decode_person, b"\x01" + _varint(1000) + b"\x02a\x00\x00\x00"),
        (decode_person, b"\x01" + _varint(-1) + _varint(-3) + b"\x02a\x00\x00\x00"),
        # a double cut short
        (decode_person, b"\x01\x02\x02a\x06\x00\x00\x00"),
        # a string longer than the data
        (decode_person, b"\x01\x02\x02a\x08\x7e" + b"x" * 10),
        (decode_person, b"\x01\x02" + _varint(100) + b"a\x00\x00\x00"),
        # trailing bytes
        (decode_person, b"\x01\x00\x00\x00"),
        (decode_sync, b"\x01\x00\x00\x00\x00\x00\x00"),
        (decode_intent, b"\x01\x00\x00\x00"),
    ],
)
def test_malformed_raise_valueerror(decode: Callable[[bytes], Any], data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_person({"a": {"nested": 1}}, []),  # type: ignore[dict-item]
        lambda: encode_person({"a": b"bytes"}, []),  # type: ignore[dict-item]
        lambda: encode_person({"a": ["x", 1]}, []),  # type: ignore[list-item]
        lambda: encode_person({"a": 10**400}, []),
        lambda: encode_person({1: "x"}, []),  # type: ignore[dict-item]
        lambda: encode_person({}, [1, 2]),  # type: ignore[list-item]
        lambda: encode_person({}, frozenset({b"x"})),  # type: ignore[arg-type]
        lambda: encode_person(["a"], []),  # type: ignore[arg-type]
        lambda: encode_sync("UNKNOWN", None, None, {}, None),
        lambda: encode_sync("SYNCED", 5, None, {}, None),  # type: ignore[arg-type]
        lambda: encode_sync("SYNCED", None, None, {"a": object()}, None),  # type: ignore[dict-item]
        lambda: encode_intent("a", [("p", "MERGE", None, [], [])]),
        lambda: encode_intent("a", [("p", "UPSERT", None, [3], [])]),  # type: ignore[list-item]
        lambda: encode_intent(None, []),  # type: ignore[arg-type]
    ],
)
def test_unencodable_raise_valueerror(call: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        call()


def test_nan_and_infinities_round_trip_bitwise() -> None:
    attrs = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "-0": -0.0}
    data = encode_person(attrs, [])
    assert data == fa_person(attrs, [])
    assert typed(decode_person(data)[0]) == typed(attrs)


def test_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statecodec, "_CACHE_LIMIT", len(statecodec._NAMES) + 2)
    monkeypatch.setattr(statecodec, "_ARRAY_CACHE_LIMIT", len(statecodec._SEGMENT_SETS) + 1)
    names = statecodec._NAMES
    before = len(names)
    for i in range(20):
        attrs: dict[str, Any] = {f"bounded-{i}-{j}": j for j in range(3)}
        segments = frozenset({f"bounded-segment-{i}"})
        assert decode_person(encode_person(attrs, segments)) == (attrs, segments)
    assert len(names) <= before + 2


def test_value_encoding_cache_is_bounded_and_changes_no_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = statecodec._ENCODED_VALUES
    monkeypatch.setattr(statecodec, "_CACHE_LIMIT", len(cache) + 3)
    before = len(cache)
    for i in range(10):
        attrs: dict[str, Any] = {"city": f"city-{i}", "long": "x" * 40 + str(i)}
        first = encode_person(attrs, frozenset())
        again = encode_person(attrs, frozenset())  # from the cache when the value was cached
        assert first == again == fa_person(attrs, [])
        assert decode_person(first) == (attrs, frozenset())
    assert len(cache) <= before + 3
    assert all(len(k.encode()) <= statecodec._VALUE_CACHE_MAX_BYTES for k in cache)


def test_pool_makes_equal_strings_one_object() -> None:
    email = "someone.with.a.long.address@example.com"
    attrs: dict[str, Any] = {"email": "".join(email), "city": "Lisbon-" + "x" * 30}
    person = encode_person(attrs, frozenset({"vip"}))
    sync = encode_sync("SYNCED", email, "ref-1", {"email": email, "town": attrs["city"]}, None)

    pool: dict[str, str] = {}
    restored, _ = decode_person(person, pool)
    _, identifier, ref, values, _ = decode_sync(sync, pool)
    assert identifier is restored["email"] and values["email"] is restored["email"]
    assert values["town"] is restored["city"]
    assert ref == "ref-1"

    # without a pool each record decodes its own strings
    alone, _ = decode_person(person)
    _, identifier2, _, values2, _ = decode_sync(sync)
    assert identifier2 == alone["email"] and identifier2 is not alone["email"]
    assert values2["town"] is not alone["city"]
