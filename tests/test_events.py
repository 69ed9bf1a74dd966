"""Input decoding (design §2): formats, leniencies and one test per poison reason."""

from __future__ import annotations

import importlib.resources
import json
import math
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from stream_sync import events
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
TS = 1_700_000_000_000

M = MembershipChange("p1", "vip", "ENTER", TS)
A = AttributeChange(
    "p1",
    {"email": "a@b.c", "age": 42, "ltv": 12.5, "vip": True, "tags": ["x", "y"], "gone": None},
    ("old",),
    TS,
)

# The two input schemas exactly as design §2 (field order included).
DESIGN_MEMBERSHIP = {
    "type": "record",
    "name": "MembershipChange",
    "namespace": "stream_sync.events",
    "fields": [
        {"name": "person_id", "type": "string"},
        {"name": "segment_id", "type": "string"},
        {
            "name": "op",
            "type": {"type": "enum", "name": "MembershipOp", "symbols": ["ENTER", "EXIT"]},
        },
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
DESIGN_ATTRIBUTE = {
    "type": "record",
    "name": "AttributeChange",
    "namespace": "stream_sync.events",
    "fields": [
        {"name": "person_id", "type": "string"},
        {
            "name": "set",
            "type": {
                "type": "map",
                "values": [
                    "null",
                    "boolean",
                    "long",
                    "double",
                    "string",
                    {"type": "array", "items": "string"},
                ],
            },
            "default": {},
        },
        {"name": "unset", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


@pytest.fixture(scope="module")
def registry() -> Iterator[SchemaRegistryStub]:
    with SchemaRegistryStub() as stub:
        stub.register(MEMBERSHIP_ID, MEMBERSHIP_SCHEMA)
        stub.register(ATTRIBUTE_ID, ATTRIBUTE_SCHEMA)
        yield stub


@pytest.fixture(scope="module")
def decoder(registry: SchemaRegistryStub) -> Decoder:
    return Decoder(registry.url, {"max.retries": "0"})


def poison(call: Any, *args: Any) -> PoisonMessage:
    with pytest.raises(PoisonMessage) as info:
        call(*args)
    return info.value


def membership_reason(decoder: Decoder, value: bytes | None, key: bytes | None = b"p1") -> str:
    return poison(decoder.decode_membership, key, value).reason


def attribute_reason(decoder: Decoder, value: bytes | None, key: bytes | None = b"p1") -> str:
    return poison(decoder.decode_attribute, key, value).reason


def jbytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def membership_json(**changes: Any) -> bytes:
    obj: dict[str, Any] = {"person_id": "p1", "segment_id": "vip", "op": "ENTER", "ts": TS}
    obj.update(changes)
    return jbytes({k: v for k, v in obj.items() if v is not DROP})


def attribute_json(**changes: Any) -> bytes:
    obj: dict[str, Any] = {"person_id": "p1", "set": {"a": 1}, "unset": ["b"], "ts": TS}
    obj.update(changes)
    return jbytes({k: v for k, v in obj.items() if v is not DROP})


DROP = object()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Schemas


def test_schema_files_are_the_design_schemas() -> None:
    directory = importlib.resources.files("stream_sync") / "schemas"
    assert json.loads((directory / "membership_change.avsc").read_text()) == DESIGN_MEMBERSHIP
    assert json.loads((directory / "attribute_change.avsc").read_text()) == DESIGN_ATTRIBUTE
    # Field order is part of the contract (dict equality above ignores key order only).
    assert [f["name"] for f in json.loads(MEMBERSHIP_SCHEMA)["fields"]] == [
        "person_id",
        "segment_id",
        "op",
        "ts",
    ]
    assert [f["name"] for f in json.loads(ATTRIBUTE_SCHEMA)["fields"]] == [
        "person_id",
        "set",
        "unset",
        "ts",
    ]


@pytest.mark.parametrize(
    ("text", "header"),
    [
        (MEMBERSHIP_SCHEMA, "C3 01 C9 84 B0 03 E9 F9 17 1D"),
        (ATTRIBUTE_SCHEMA, "C3 01 91 2E 3D FF A5 04 D9 34"),
    ],
)
def test_single_object_headers(text: str, header: str) -> None:
    canonical = to_parsing_canonical_form(parse_schema(json.loads(text)))
    computed = b"\xc3\x01" + bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    assert computed == bytes.fromhex(header)
    # An independent CRC-64-AVRO (Avro specification), written little-endian.
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (0xC15D213AA4D7A795 & -(fp & 1))
        table.append(fp)
    fp = 0xC15D213AA4D7A795
    for byte in canonical.encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    assert b"\xc3\x01" + fp.to_bytes(8, "little") == bytes.fromhex(header)


def test_header_constants() -> None:
    assert bytes.fromhex("C3 01 C9 84 B0 03 E9 F9 17 1D") == MEMBERSHIP_HEADER
    assert bytes.fromhex("C3 01 91 2E 3D FF A5 04 D9 34") == ATTRIBUTE_HEADER
    assert encode_single_object(M).startswith(MEMBERSHIP_HEADER)
    assert encode_single_object(A).startswith(ATTRIBUTE_HEADER)


# --------------------------------------------------------------------------------------------
# Valid input


@pytest.mark.parametrize("encoding", ["json", "single_object", "confluent"])
def test_round_trip(decoder: Decoder, encoding: str) -> None:
    if encoding == "json":
        m, a = encode_json(M), encode_json(A)
    elif encoding == "single_object":
        m, a = encode_single_object(M), encode_single_object(A)
    else:
        m, a = encode_confluent(M, MEMBERSHIP_ID), encode_confluent(A, ATTRIBUTE_ID)
    got_m = decoder.decode_membership(encode_key(M), m)
    got_a = decoder.decode_attribute(encode_key(A), a)
    assert got_m == M
    assert got_a == A
    assert isinstance(got_a, AttributeChange)
    assert type(got_m.ts) is int and type(got_a.ts) is int  # not a datetime
    assert got_a.set["gone"] is None  # null kept: the state layer folds it into unset
    assert type(got_a.set["age"]) is int
    assert type(got_a.set["ltv"]) is float
    assert got_a.set["vip"] is True
    assert got_a.set["tags"] == ["x", "y"] and type(got_a.set["tags"]) is list
    assert type(got_a.unset) is tuple


def test_attribute_tombstone_is_person_deleted(decoder: Decoder) -> None:
    assert decoder.decode_attribute(b"p\xc3\xa9", None) == PersonDeleted("pé")


def test_exit_and_unicode(decoder: Decoder) -> None:
    event = MembershipChange("pé 🙂", "ségment", "EXIT", -5)
    for value in (encode_json(event), encode_single_object(event)):
        assert decoder.decode_membership(encode_key(event), value) == event


def test_avro_with_several_blocks_and_long_strings(decoder: Decoder) -> None:
    long_text = "x" * 300  # two-byte length varint
    event = AttributeChange("p" * 100, {long_text: long_text, "l": [long_text]}, (), 2**62)
    assert decoder.decode_attribute(encode_key(event), encode_single_object(event)) == event
    # A map written as two blocks, the second with a negative count and a byte size.
    body = (
        b"\x04p1"  # person_id
        + b"\x02" + b"\x02a" + b"\x04\x02"  # block of 1: a -> long 1
        + b"\x01" + b"\x08" + b"\x02b" + b"\x08\x02z"  # block of -1 (size 4): b -> "z"
        + b"\x00"  # end of map
        + b"\x00"  # unset: empty
        + b"\x02"  # ts 1
    )  # fmt: skip
    got = decoder.decode_attribute(b"p1", ATTRIBUTE_HEADER + body)
    assert got == AttributeChange("p1", {"a": 1, "b": "z"}, (), 1)


# --------------------------------------------------------------------------------------------
# JSON leniencies


@pytest.mark.parametrize(
    "prefix", [b"\xef\xbb\xbf", b"  \n\t\r", b"\xef\xbb\xbf \n", b" \xef\xbb\xbf"]
)
def test_json_bom_and_leading_whitespace(decoder: Decoder, prefix: bytes) -> None:
    assert decoder.decode_membership(b"p1", prefix + encode_json(M)) == M
    assert decoder.decode_attribute(b"p1", prefix + encode_json(A)) == A


def test_json_trailing_whitespace(decoder: Decoder) -> None:
    assert decoder.decode_membership(b"p1", encode_json(M) + b" \n") == M


@pytest.mark.parametrize(
    ("ts", "millis"),
    [
        ("2023-11-14T22:13:20Z", TS),
        ("2023-11-14T22:13:20+00:00", TS),
        ("2023-11-14T23:13:20+01:00", TS),
        ("2023-11-14T22:13:20", TS),  # no zone: UTC
        ("2023-11-14 22:13:20", TS),
        ("2023-11-14T22:13:20.123", TS + 123),
        ("2023-11-14T22:13:20.123456Z", TS + 123),
        ("1970-01-01", 0),
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_json_iso_timestamps(decoder: Decoder, ts: str, millis: int) -> None:
    assert decoder.decode_membership(b"p1", membership_json(ts=ts)).ts == millis
    got = decoder.decode_attribute(b"p1", attribute_json(ts=ts))
    assert isinstance(got, AttributeChange) and got.ts == millis


def test_json_numbers_long_or_double(decoder: Decoder) -> None:
    value = b'{"person_id":"p1","set":{"i":1,"f":1.0,"e":1e3,"E":2E-1,"n":-0,"b":true},"ts":1}'
    got = decoder.decode_attribute(b"p1", value)
    assert isinstance(got, AttributeChange)
    assert type(got.set["i"]) is int and got.set["i"] == 1
    assert type(got.set["f"]) is float and got.set["f"] == 1.0
    assert type(got.set["e"]) is float and got.set["e"] == 1000.0
    assert type(got.set["E"]) is float and got.set["E"] == 0.2
    assert type(got.set["n"]) is int
    assert got.set["b"] is True  # a JSON boolean stays a boolean, never 1


def test_json_extra_fields_ignored_and_missing_set_unset(decoder: Decoder) -> None:
    value = jbytes({"person_id": "p1", "ts": 5, "extra": {"deep": [1, 2]}, "source": "crm"})
    assert decoder.decode_attribute(b"p1", value) == AttributeChange("p1", {}, (), 5)
    value = jbytes({"person_id": "p1", "set": None, "unset": None, "ts": 5})
    assert decoder.decode_attribute(b"p1", value) == AttributeChange("p1", {}, (), 5)
    value = membership_json(version=3, headers={"a": "b"})
    assert decoder.decode_membership(b"p1", value) == M


def test_json_arrays_and_nulls(decoder: Decoder) -> None:
    value = attribute_json(set={"tags": [], "more": ["a", "b"], "gone": None})
    got = decoder.decode_attribute(b"p1", value)
    assert isinstance(got, AttributeChange)
    assert got.set == {"tags": [], "more": ["a", "b"], "gone": None}


def test_json_escaped_surrogate_pair_is_fine(decoder: Decoder) -> None:
    value = b'{"person_id":"p1","set":{"e":"\\ud83d\\ude42"},"ts":1}'
    got = decoder.decode_attribute(b"p1", value)
    assert isinstance(got, AttributeChange) and got.set["e"] == "🙂"


# --------------------------------------------------------------------------------------------
# Poison: one test per reason


def test_null_key(decoder: Decoder) -> None:
    assert membership_reason(decoder, encode_json(M), key=None) == Reason.NULL_KEY
    assert attribute_reason(decoder, encode_json(A), key=None) == "null_key"
    assert attribute_reason(decoder, None, key=None) == "null_key"  # tombstone without key


def test_invalid_key_utf8(decoder: Decoder) -> None:
    assert membership_reason(decoder, encode_json(M), key=b"p\xff") == "invalid_key_utf8"
    assert attribute_reason(decoder, None, key=b"\xc3") == "invalid_key_utf8"


@pytest.mark.parametrize("encoding", ["json", "single_object", "confluent"])
def test_key_mismatch(decoder: Decoder, encoding: str) -> None:
    def encode(event: MembershipChange | AttributeChange) -> bytes:
        if encoding == "json":
            return encode_json(event)
        if encoding == "single_object":
            return encode_single_object(event)
        schema_id = MEMBERSHIP_ID if isinstance(event, MembershipChange) else ATTRIBUTE_ID
        return encode_confluent(event, schema_id)

    exc = poison(decoder.decode_membership, b"p2", encode(M))
    assert exc.reason == "key_mismatch"
    assert exc.person_id == "p2"
    assert attribute_reason(decoder, encode(A), key=b"P1") == "key_mismatch"


def test_tombstone_not_allowed(decoder: Decoder) -> None:
    assert membership_reason(decoder, None) == "tombstone_not_allowed"


def test_empty_value(decoder: Decoder) -> None:
    assert membership_reason(decoder, b"") == "empty_value"
    assert attribute_reason(decoder, b"") == "empty_value"


def test_invalid_utf8(decoder: Decoder) -> None:
    assert membership_reason(decoder, b'{"person_id": "p\xff"}') == "invalid_utf8"
    body = b"\x04p1\x04\xff\xfe\x00\x00"  # segment_id is not UTF-8
    assert membership_reason(decoder, MEMBERSHIP_HEADER + body) == "invalid_utf8"


@pytest.mark.parametrize(
    "value",
    [
        b"{",
        b"{'person_id': 'p1'}",
        encode_json(M) + b"garbage",
        encode_json(M) + b"{}",
        b'{"person_id":"p1","segment_id":"vip","op":"ENTER","ts":NaN}',
        b'{"person_id":"p1","segment_id":"vip","op":"ENTER","ts":Infinity}',
        b'{"person_id":"p1\\ud800","segment_id":"vip","op":"ENTER","ts":1}',
        b" \t",
        b"\xef\xbb\xbf",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"person_id":"p1","segment_id":"vip","op":"ENTER","ts":' + b"9" * 5000 + b"}",
    ],
)
def test_invalid_json(decoder: Decoder, value: bytes) -> None:
    assert membership_reason(decoder, value) == "invalid_json"


@pytest.mark.parametrize("value", [b"[]", b'"p1"', b"42", b"null", b"true", b"[{}]"])
def test_not_an_object(decoder: Decoder, value: bytes) -> None:
    assert membership_reason(decoder, value) == "not_an_object"
    assert attribute_reason(decoder, value) == "not_an_object"


@pytest.mark.parametrize("field", ["person_id", "segment_id", "op", "ts"])
def test_missing_field(decoder: Decoder, field: str) -> None:
    exc = poison(decoder.decode_membership, b"p1", membership_json(**{field: DROP}))
    assert exc.reason == "missing_field"
    assert field in exc.message


@pytest.mark.parametrize("field", ["person_id", "ts"])
def test_missing_field_attribute(decoder: Decoder, field: str) -> None:
    assert attribute_reason(decoder, attribute_json(**{field: DROP})) == "missing_field"


@pytest.mark.parametrize(
    "changes",
    [{"person_id": 1}, {"person_id": None}, {"segment_id": ["vip"]}, {"op": 0}, {"op": None}],
)
def test_invalid_field_type(decoder: Decoder, changes: dict[str, Any]) -> None:
    assert membership_reason(decoder, membership_json(**changes)) == "invalid_field_type"


@pytest.mark.parametrize(
    "changes",
    [
        {"person_id": True},
        {"set": []},
        {"set": "a=1"},
        {"unset": "b"},
        {"unset": {"b": 1}},
        {"unset": ["b", 1]},
        {"unset": [None]},
    ],
)
def test_invalid_field_type_attribute(decoder: Decoder, changes: dict[str, Any]) -> None:
    assert attribute_reason(decoder, attribute_json(**changes)) == "invalid_field_type"


@pytest.mark.parametrize("op", ["enter", "JOIN", "", "EXIT "])
def test_unknown_op(decoder: Decoder, op: str) -> None:
    assert membership_reason(decoder, membership_json(op=op)) == "unknown_op"


@pytest.mark.parametrize(
    "ts",
    [True, False, None, 1.5, 1.7e12, "yesterday", "2023-13-01", "", [1], {"ms": 1}, 2**63],
)
def test_invalid_timestamp(decoder: Decoder, ts: Any) -> None:
    assert membership_reason(decoder, membership_json(ts=ts)) == "invalid_timestamp"
    assert attribute_reason(decoder, attribute_json(ts=ts)) == "invalid_timestamp"


def test_timestamp_64_bit_bounds(decoder: Decoder) -> None:
    assert decoder.decode_membership(b"p1", membership_json(ts=-(2**63))).ts == -(2**63)
    assert decoder.decode_membership(b"p1", membership_json(ts=2**63 - 1)).ts == 2**63 - 1
    assert membership_reason(decoder, membership_json(ts=-(2**63) - 1)) == "invalid_timestamp"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"x": 1}',
        b'["a", 1]',
        b"[1, 2]",
        b'["a", null]',
        b"[[]]",
        b"1e400",
        b"-1e400",
        b"9223372036854775808",
        b"-9223372036854775809",
    ],
)
def test_invalid_attribute_value(decoder: Decoder, raw: bytes) -> None:
    value = b'{"person_id":"p1","set":{"ok":1,"bad":' + raw + b'},"ts":1}'
    exc = poison(decoder.decode_attribute, b"p1", value)
    assert exc.reason == "invalid_attribute_value"
    assert "bad" in exc.message


def test_invalid_attribute_value_avro_non_finite(decoder: Decoder) -> None:
    for number in (math.inf, -math.inf, math.nan):
        body = b"\x04p1" + b"\x02\x02d\x06" + struct.pack("<d", number) + b"\x00\x00\x02"
        assert attribute_reason(decoder, ATTRIBUTE_HEADER + body) == "invalid_attribute_value"


def test_truncated_avro(decoder: Decoder) -> None:
    for encoded in (encode_single_object(M), encode_confluent(M, MEMBERSHIP_ID)):
        for end in range(len(encoded) - 1, 1, -1):
            assert membership_reason(decoder, encoded[:end]) == "truncated_avro", end
    for encoded in (encode_single_object(A), encode_confluent(A, ATTRIBUTE_ID)):
        for end in range(len(encoded) - 1, 1, -1):
            assert attribute_reason(decoder, encoded[:end]) == "truncated_avro", end
    assert membership_reason(decoder, b"\x00") == "truncated_avro"


@pytest.mark.parametrize(
    "body",
    [
        b"\x04p1\x06vip\x04\x02",  # enum index 2 of a 2-symbol enum
        b"\x04p1\x06vip\x01\x02",  # enum index -1
        b"\x04p1\x05vip\x00\x02",  # negative string length (-3)
        b"\x04p1\x01\x00\x02",  # negative string length (-1), valid if read as 0
        b"\x04p1\x06vip\x00" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
        b"\x04p1\x06vip\x00" + b"\x80" * 10 + b"\x00",  # overlong varint of 0
        b"\x04p1\x06vip\x00" + b"\xfe" + b"\xff" * 8 + b"\x03",  # varint above 64 bits
    ],
)
def test_invalid_avro_membership(decoder: Decoder, body: bytes) -> None:
    assert membership_reason(decoder, MEMBERSHIP_HEADER + body) == "invalid_avro"


@pytest.mark.parametrize(
    "body",
    [
        b"\x04p1\x02\x02a\x0c\x00\x00\x02",  # union branch 6 of 6 branches
        b"\x04p1\x02\x02a\x01\x00\x00\x02",  # union branch -1
        b"\x04p1\x02\x02a\x02\x02\x00\x00\x02",  # boolean byte 2
        b"\x04p1\x02\x02a\x02\x07\x00\x00\x02",  # boolean byte 7
    ],
)
def test_invalid_avro_attribute(decoder: Decoder, body: bytes) -> None:
    assert attribute_reason(decoder, ATTRIBUTE_HEADER + body) == "invalid_avro"


def test_trailing_bytes(decoder: Decoder) -> None:
    assert membership_reason(decoder, encode_single_object(M) + b"\x00") == "trailing_bytes"
    assert attribute_reason(decoder, encode_confluent(A, ATTRIBUTE_ID) + b"xx") == "trailing_bytes"


def test_unknown_fingerprint(decoder: Decoder) -> None:
    value = b"\xc3\x01" + bytes(8) + encode_single_object(M)[10:]
    assert membership_reason(decoder, value) == "unknown_fingerprint"
    assert attribute_reason(decoder, value) == "unknown_fingerprint"


def test_wrong_schema_for_topic(decoder: Decoder) -> None:
    assert membership_reason(decoder, encode_single_object(A)) == "wrong_schema_for_topic"
    assert attribute_reason(decoder, encode_single_object(M)) == "wrong_schema_for_topic"
    wrong_id = encode_confluent(A, MEMBERSHIP_ID)
    assert attribute_reason(decoder, wrong_id) == "wrong_schema_for_topic"
    assert membership_reason(decoder, encode_confluent(A, ATTRIBUTE_ID)) == (
        "wrong_schema_for_topic"
    )


def test_other_shipped_schema_is_wrong_for_both_topics(decoder: Decoder) -> None:
    directory = importlib.resources.files("stream_sync") / "schemas"
    others = [
        entry
        for entry in directory.iterdir()
        if entry.name.endswith(".avsc")
        and entry.name not in ("membership_change.avsc", "attribute_change.avsc")
    ]
    if not others:
        pytest.skip("no other schema shipped")
    for entry in others:
        canonical = to_parsing_canonical_form(parse_schema(json.loads(entry.read_text())))
        value = b"\xc3\x01" + bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")) + b"\x00"
        assert membership_reason(decoder, value) == "wrong_schema_for_topic", entry.name
        assert attribute_reason(decoder, value) == "wrong_schema_for_topic", entry.name


def test_incompatible_schema(registry: SchemaRegistryStub, decoder: Decoder) -> None:
    changed = json.loads(MEMBERSHIP_SCHEMA)
    changed["fields"][1]["type"] = "long"  # segment_id: a long cannot be read as a string
    registry.register(10, json.dumps(changed))
    registry.register(11, '{"type": "record", "name": "stream_sync.events.Membership')
    registry.register(12, 'syntax = "proto3"; message MembershipChange {}', "PROTOBUF")
    registry.register(13, MEMBERSHIP_SCHEMA, "JSON")  # a JSON Schema that looks like Avro
    body = b"\x04p1\x06vip\x00\x02"
    for schema_id in (10, 11, 12, 13):
        value = b"\x00" + schema_id.to_bytes(4, "big") + body
        assert membership_reason(decoder, value) == "incompatible_schema", schema_id


def test_schema_registry_not_configured() -> None:
    exc = poison(Decoder().decode_membership, b"p1", encode_confluent(M, MEMBERSHIP_ID))
    assert exc.reason == "schema_registry_not_configured"
    # The other formats work without a registry.
    assert Decoder().decode_membership(b"p1", encode_single_object(M)) == M


def test_schema_registry_unavailable_unreachable() -> None:
    url = f"http://user:s3cret@127.0.0.1:{closed_port()}"
    decoder = Decoder(url, {"max.retries": "0", "timeout": "2"})
    exc = poison(decoder.decode_membership, b"p1", encode_confluent(M, MEMBERSHIP_ID))
    assert exc.reason == "schema_registry_unavailable"
    assert "s3cret" not in str(exc) and "user" not in str(exc)


def test_schema_registry_unavailable_server_error() -> None:
    with SchemaRegistryStub() as stub:
        stub.register(MEMBERSHIP_ID, MEMBERSHIP_SCHEMA)
        stub.fail_with = 500
        decoder = Decoder(stub.url, {"max.retries": 0}, registry_failure_ttl_s=0)
        value = encode_confluent(M, MEMBERSHIP_ID)
        assert membership_reason(decoder, value) == "schema_registry_unavailable"
        stub.fail_with = None  # recovers: failures are not remembered past the TTL
        assert decoder.decode_membership(b"p1", value) == M


def test_registry_failures_are_remembered_for_the_ttl() -> None:
    with SchemaRegistryStub() as stub:
        decoder = Decoder(stub.url, {"max.retries": "0"}, registry_failure_ttl_s=60)
        value = encode_confluent(M, 77)
        for _ in range(3):
            assert membership_reason(decoder, value) == "unknown_schema_id"
        assert stub.requests["/schemas/ids/77"] == 1


def test_unknown_schema_id(registry: SchemaRegistryStub, decoder: Decoder) -> None:
    assert membership_reason(decoder, encode_confluent(M, 4040)) == "unknown_schema_id"
    assert attribute_reason(decoder, encode_confluent(A, 4041)) == "unknown_schema_id"


def test_every_reason_is_documented() -> None:
    doc = events.__doc__ or ""
    for reason in Reason:
        assert f"``{reason.value}``" in doc, reason


# --------------------------------------------------------------------------------------------
# Registry details


def test_registry_schema_fetched_once_per_id(registry: SchemaRegistryStub) -> None:
    registry.register(30, MEMBERSHIP_SCHEMA)
    decoder = Decoder(registry.url)
    value = encode_confluent(M, 30)
    for _ in range(5):
        assert decoder.decode_membership(b"p1", value) == M
    assert registry.requests["/schemas/ids/30"] == 1


def test_registry_writer_schema_resolution(registry: SchemaRegistryStub) -> None:
    # A producer's v2 schema: an extra field, and ts in micros. Read with schema resolution.
    writer = json.loads(MEMBERSHIP_SCHEMA)
    writer["fields"].insert(2, {"name": "source", "type": "string", "default": ""})
    writer["fields"][4]["type"]["logicalType"] = "timestamp-micros"
    registry.register(31, json.dumps(writer))
    body = b"\x04p1\x06vip\x06crm\x00" + _zigzag(TS * 1000 + 999)
    got = Decoder(registry.url).decode_membership(b"p1", b"\x00" + (31).to_bytes(4, "big") + body)
    assert got == M


def test_registry_same_canonical_form_uses_fast_path(registry: SchemaRegistryStub) -> None:
    pretty = json.dumps(json.loads(ATTRIBUTE_SCHEMA), indent=2)  # same canonical form
    registry.register(32, pretty)
    got = Decoder(registry.url).decode_attribute(b"p1", encode_confluent(A, 32))
    assert got == A


def test_registry_conf_is_validated_at_construction() -> None:
    with pytest.raises(ValueError):
        Decoder("http://127.0.0.1:1", {"no.such.property": "x"})


def _zigzag(number: int) -> bytes:
    raw = (number << 1) ^ (number >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Encoders and exceptions


def test_encoders_reject_person_deleted() -> None:
    with pytest.raises(TypeError):
        encode_json(PersonDeleted("p1"))  # type: ignore[arg-type]
    assert encode_key(PersonDeleted("pé")) == "pé".encode()


def test_encode_confluent_framing() -> None:
    value = encode_confluent(M, 258)
    assert value[:5] == b"\x00\x00\x00\x01\x02"
    assert value[5:] == encode_single_object(M)[10:]


def test_poison_message_fields() -> None:
    exc = PoisonMessage(Reason.EMPTY_VALUE, "the value is empty")
    assert exc.reason == "empty_value" and isinstance(exc.reason, str)
    assert str(exc) == "empty_value: the value is empty"
    assert exc.person_id is None
    assert isinstance(exc, Exception)


def test_poison_carries_person_id_from_key(decoder: Decoder) -> None:
    assert poison(decoder.decode_membership, b"p9", b"{").person_id == "p9"
    assert poison(decoder.decode_membership, None, b"{").person_id is None
