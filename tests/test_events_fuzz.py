"""Property tests of input decoding: round trips, and no input ever escapes as anything but a
valid event or a PoisonMessage with a documented reason."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label
from hypothesis import strategies as st

from stream_sync.events import (
    ATTRIBUTE_HEADER,
    ATTRIBUTE_SCHEMA,
    MEMBERSHIP_HEADER,
    MEMBERSHIP_SCHEMA,
    AttributeChange,
    Decoder,
    MembershipChange,
    PersonDeleted,
    PoisonMessage,
    Reason,
    encode_confluent,
    encode_json,
    encode_key,
    encode_single_object,
)
from tests.schema_registry_stub import SchemaRegistryStub

MEMBERSHIP_ID = 1
ATTRIBUTE_ID = 2
REASONS = frozenset(reason.value for reason in Reason)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------------------------
# Strategies

int64 = st.integers(INT64_MIN, INT64_MAX)
texts = st.text(max_size=12)
values = st.one_of(
    st.none(),
    st.booleans(),
    int64,
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.lists(texts, max_size=4),
)
memberships = st.builds(MembershipChange, texts, texts, st.sampled_from(["ENTER", "EXIT"]), int64)
attributes = st.builds(
    AttributeChange,
    texts,
    st.dictionaries(texts, values, max_size=6),
    st.lists(texts, max_size=4).map(tuple),
    int64,
)
events = st.one_of(memberships, attributes)
encodings = st.sampled_from(["json", "single_object", "confluent"])


def encode(event: MembershipChange | AttributeChange, encoding: str) -> bytes:
    if encoding == "json":
        return encode_json(event)
    if encoding == "single_object":
        return encode_single_object(event)
    schema_id = MEMBERSHIP_ID if isinstance(event, MembershipChange) else ATTRIBUTE_ID
    return encode_confluent(event, schema_id)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Bit flips, byte changes, truncations, insertions and deletions of ``data``."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete"]))
        if not out:
            kind = "insert"
        if kind == "insert":
            at = draw(st.integers(0, len(out)))
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
            continue
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            out[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del out[at:]
        else:
            del out[at : at + draw(st.integers(1, 4))]
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Helpers


def typed(obj: Any) -> Any:
    """A comparable form that tells 1, 1.0 and True apart."""
    if isinstance(obj, MembershipChange | AttributeChange | PersonDeleted):
        return (type(obj).__name__, *(typed(getattr(obj, f)) for f in obj.__slots__))
    if isinstance(obj, dict):
        return {k: typed(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return (type(obj).__name__, [typed(v) for v in obj])
    if isinstance(obj, float):
        return ("float", obj.hex())
    return (type(obj).__name__, obj)


def utf8(text: Any) -> bool:
    if type(text) is not str:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_valid(event: Any, key: bytes, decoder: Decoder) -> None:
    """``event`` is a well-formed event for ``key`` that survives a re-encoding."""
    assert utf8(event.person_id) and event.person_id.encode("utf-8") == key
    if isinstance(event, MembershipChange):
        assert utf8(event.segment_id)
        assert event.op in ("ENTER", "EXIT")
    else:
        assert isinstance(event, AttributeChange)
        assert type(event.set) is dict
        for name, value in event.set.items():
            assert utf8(name)
            if type(value) is int:
                assert INT64_MIN <= value <= INT64_MAX
            elif type(value) is float:
                assert math.isfinite(value)
            elif type(value) is list:
                assert all(utf8(item) for item in value)
            else:
                assert value is None or type(value) is bool or utf8(value)
        assert type(event.unset) is tuple and all(utf8(name) for name in event.unset)
    assert type(event.ts) is int and INT64_MIN <= event.ts <= INT64_MAX
    decode = (
        decoder.decode_membership
        if isinstance(event, MembershipChange)
        else decoder.decode_attribute
    )
    for encoding in ("json", "single_object"):
        assert typed(decode(key, encode(event, encoding))) == typed(event)


def decode_or_poison(decoder: Decoder, topic: str, key: bytes | None, value: bytes | None) -> None:
    """Decoding yields a valid event or a PoisonMessage with a listed reason; nothing else."""
    decode = decoder.decode_membership if topic == "memberships" else decoder.decode_attribute
    try:
        event = decode(key, value)
    except PoisonMessage as exc:
        assert exc.reason in REASONS, exc.reason
        assert isinstance(exc.message, str) and exc.message
        label(f"{topic}: poison {exc.reason}")
        return
    label(f"{topic}: valid")
    assert key is not None
    if isinstance(event, PersonDeleted):
        assert value is None and topic == "attributes"
        assert event.person_id.encode("utf-8") == key
        return
    if topic == "memberships":
        assert isinstance(event, MembershipChange)
    else:
        assert isinstance(event, AttributeChange)
    check_valid(event, key, decoder)


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def registry() -> Iterator[SchemaRegistryStub]:
    with SchemaRegistryStub() as stub:
        stub.register(MEMBERSHIP_ID, MEMBERSHIP_SCHEMA)
        stub.register(ATTRIBUTE_ID, ATTRIBUTE_SCHEMA)
        yield stub


@pytest.fixture(scope="module")
def decoder(registry: SchemaRegistryStub) -> Decoder:
    # Failures are remembered so mutated schema ids cost one registry request each.
    return Decoder(registry.url, {"max.retries": "0"}, registry_failure_ttl_s=3600)


# --------------------------------------------------------------------------------------------
# Round trips


@FUZZ
@given(event=events, encoding=encodings)
def test_round_trip(
    decoder: Decoder, event: MembershipChange | AttributeChange, encoding: str
) -> None:
    value = encode(event, encoding)
    if isinstance(event, MembershipChange):
        got: Any = decoder.decode_membership(encode_key(event), value)
    else:
        got = decoder.decode_attribute(encode_key(event), value)
    assert typed(got) == typed(event)


@FUZZ
@given(event=events, prefix=st.sampled_from(["", "\ufeff"]), space=st.text(" \t\r\n", max_size=4))
def test_json_round_trip_with_bom_and_whitespace(
    decoder: Decoder, event: MembershipChange | AttributeChange, prefix: str, space: str
) -> None:
    value = (prefix + space).encode("utf-8") + encode_json(event)
    if isinstance(event, MembershipChange):
        got: Any = decoder.decode_membership(encode_key(event), value)
    else:
        got = decoder.decode_attribute(encode_key(event), value)
    assert typed(got) == typed(event)


offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@FUZZ
@given(moment=st.datetimes(), zone=st.one_of(st.none(), st.just(UTC), offsets))
def test_iso_timestamps(decoder: Decoder, moment: datetime, zone: timezone | None) -> None:
    text = moment.replace(tzinfo=zone).isoformat()
    aware = moment.replace(tzinfo=zone or UTC)  # no zone = UTC
    expected = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    value = json.dumps({"person_id": "p", "segment_id": "s", "op": "EXIT", "ts": text})
    assert decoder.decode_membership(b"p", value.encode()).ts == expected


# --------------------------------------------------------------------------------------------
# Nothing escapes


@FUZZ
@given(event=events, encoding=encodings, data=st.data())
def test_mutated_encodings(
    decoder: Decoder, event: MembershipChange | AttributeChange, encoding: str, data: st.DataObject
) -> None:
    value = data.draw(mutations(encode(event, encoding)))
    key = encode_key(event)
    decode_or_poison(decoder, "memberships", key, value)
    decode_or_poison(decoder, "attributes", key, value)


prefixes = st.sampled_from(
    [
        b"",
        MEMBERSHIP_HEADER,
        ATTRIBUTE_HEADER,
        b"\xc3\x01",
        b"\x00\x00\x00\x00\x01",
        b"\x00\x00\x00\x00\x02",
        b"\x00",
        b"{",
        b"\xef\xbb\xbf",
    ]
)
keys = st.one_of(st.none(), st.binary(max_size=6), texts.map(lambda t: t.encode("utf-8")))


@FUZZ
@given(key=keys, prefix=prefixes, body=st.binary(max_size=64))
def test_random_bytes(decoder: Decoder, key: bytes | None, prefix: bytes, body: bytes) -> None:
    decode_or_poison(decoder, "memberships", key, prefix + body)
    decode_or_poison(decoder, "attributes", key, prefix + body)


@FUZZ
@given(key=keys)
def test_tombstones(decoder: Decoder, key: bytes | None) -> None:
    decode_or_poison(decoder, "memberships", key, None)
    decode_or_poison(decoder, "attributes", key, None)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        texts,
        st.sampled_from(["ENTER", "EXIT", "2024-01-01T00:00:00Z", "p"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(texts, children, max_size=3)
    ),
    max_leaves=8,
)
timestamps = st.one_of(
    int64,
    st.datetimes().map(datetime.isoformat),
    st.integers(-(2**70), 2**70),
    st.floats(),
    texts,
)
# Each field mostly well-typed, sometimes anything, sometimes absent.
json_objects = st.fixed_dictionaries(
    {},
    optional={
        "person_id": st.one_of(st.just("p"), json_values),
        "segment_id": st.one_of(texts, json_values),
        "op": st.one_of(st.sampled_from(["ENTER", "EXIT"]), json_values),
        "ts": timestamps,
        "set": st.one_of(st.dictionaries(texts, st.one_of(values, json_values)), json_values),
        "unset": st.one_of(st.lists(texts, max_size=3), json_values),
        "extra": json_values,
    },
)


@FUZZ
@given(obj=json_objects)
def test_random_json_objects(decoder: Decoder, obj: dict[str, Any]) -> None:
    value = json.dumps(obj).encode("utf-8")  # Infinity literals included: invalid JSON
    decode_or_poison(decoder, "memberships", b"p", value)
    decode_or_poison(decoder, "attributes", b"p", value)


# --------------------------------------------------------------------------------------------
# The dedicated Avro decoders agree with fastavro


def _stripped(text: str) -> Any:
    schema = json.loads(text)
    for field in schema["fields"]:
        if field["name"] == "ts":
            field["type"] = "long"
    return parse_schema(schema)


FASTAVRO_SCHEMAS = {
    "memberships": _stripped(MEMBERSHIP_SCHEMA),
    "attributes": _stripped(ATTRIBUTE_SCHEMA),
}
STRICTER = {Reason.INVALID_AVRO, Reason.INVALID_ATTRIBUTE_VALUE}


@FUZZ
@given(event=events, data=st.data())
def test_avro_decoder_agrees_with_fastavro(
    decoder: Decoder, event: MembershipChange | AttributeChange, data: st.DataObject
) -> None:
    encoded = encode_single_object(event)
    header, body = encoded[:10], data.draw(mutations(encoded[10:]))
    topic = "memberships" if isinstance(event, MembershipChange) else "attributes"
    decode = decoder.decode_membership if topic == "memberships" else decoder.decode_attribute
    stream = BytesIO(body)
    record: Any
    try:
        record = schemaless_reader(stream, FASTAVRO_SCHEMAS[topic])
        complete = stream.tell() == len(body)
    except Exception:
        record, complete = None, False
    if not complete:
        label("fastavro cannot read it")
        # fastavro cannot read it: neither can we.
        with pytest.raises(PoisonMessage) as info:
            decode(b"k", header + body)
        assert info.value.reason in REASONS
        return
    assert record is not None
    key = record["person_id"].encode("utf-8")
    try:
        got = decode(key, header + body)
    except PoisonMessage as exc:
        # Stricter than fastavro only on overlong varints, negative union / enum indexes,
        # boolean bytes other than 0/1, and non-finite doubles.
        assert exc.reason in STRICTER, exc
        label(f"only fastavro reads it ({exc.reason})")
        return
    label("both read it")
    if topic == "memberships":
        expected: Any = MembershipChange(**record)
    else:
        expected = AttributeChange(
            record["person_id"], record["set"], tuple(record["unset"]), record["ts"]
        )
    assert typed(got) == typed(expected)
