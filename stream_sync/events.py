"""Decoding and validation of the two input topics (design §2, "Input contract").

Every record of ``segment-memberships`` becomes a :class:`MembershipChange`; every record of
``person-attributes`` becomes an :class:`AttributeChange`, or a :class:`PersonDeleted` for a
tombstone. Anything that cannot be decoded or validated raises :class:`PoisonMessage` — never
another exception type — carrying a short snake_case ``reason`` (one of :class:`Reason`) and a
human ``message`` (no secrets: no registry URL or credentials, no attribute values).

The value encoding is detected per message from its first bytes:

* ``C3 01`` — Avro single-object encoding: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint
  (little-endian) + body. The writer schema is looked up by fingerprint among the ``.avsc``
  files shipped in the ``stream_sync/schemas`` package data, and the body is read with it.
* ``00`` — Confluent Schema Registry framing: ``00`` + 4-byte big-endian schema id + body. The
  writer schema is fetched from the registry once per id (needs ``schema_registry_url``).
* anything else — a JSON object, UTF-8, optionally preceded by a BOM and whitespace.

Avro ``timestamp-millis`` values are returned as ``int`` milliseconds (schemas are read with
their logical types removed). ``set`` values are kept as decoded — a ``null`` stays ``None``;
folding it into ``unset`` is the state layer's job — with arrays normalised to ``list[str]``.
Doubles must be finite (a NaN or an infinity cannot be sent to any destination).

Reason codes (:class:`Reason`; the value is the snake_case string):

Key and framing
  ``null_key``: the record has no key (input records are keyed by person_id).
  ``invalid_key_utf8``: the key is not valid UTF-8.
  ``key_mismatch``: the key differs from the value's ``person_id``.
  ``tombstone_not_allowed``: a tombstone (null value) on the memberships topic.
  ``empty_value``: a zero-length value.

JSON
  ``invalid_utf8``: the JSON text (or a string in an Avro body) is not valid UTF-8.
  ``invalid_json``: not parseable as JSON: syntax, trailing data, ``NaN`` / ``Infinity``
  literals, a lone surrogate escape, an integer too long to parse, a blank value.
  ``not_an_object``: JSON that is not an object (an array, a string, a number, null).
  ``missing_field``: ``person_id``, ``segment_id``, ``op`` or ``ts`` is absent.
  ``invalid_field_type``: a field of the wrong JSON type (``person_id`` / ``segment_id`` /
  ``op`` not a string, ``set`` not an object, ``unset`` not an array of strings).

Content (any format)
  ``unknown_op``: ``op`` is a string other than ``ENTER`` / ``EXIT`` (case-sensitive).
  ``invalid_timestamp``: ``ts`` is neither a 64-bit integer of milliseconds nor an
  ISO-8601 string (booleans, JSON doubles and null are rejected).
  ``invalid_attribute_value``: a ``set`` value is not null / boolean / long / double /
  string / array of strings: an object, a mixed array, a non-finite double, an integer
  outside 64 bits. The whole record is rejected.

Avro
  ``truncated_avro``: the header or the body ends before the record does.
  ``invalid_avro``: any other malformed body: union or enum index out of range, negative
  length, varint longer than 10 bytes or above 64 bits, boolean byte other than 0 / 1.
  ``trailing_bytes``: bytes left after a complete record.
  ``unknown_fingerprint``: a single-object fingerprint of no shipped schema.
  ``wrong_schema_for_topic``: the writer schema is not this topic's record (e.g. an
  AttributeChange, or a state schema, on the memberships topic).
  ``incompatible_schema``: a writer schema named like this topic's record that cannot be
  read as it: not Avro, unparseable (e.g. it needs schema references), or schema
  resolution fails.

Schema registry (Confluent framing)
  ``schema_registry_not_configured``: no ``schema_registry_url``.
  ``schema_registry_unavailable``: the registry could not be reached or answered an error
  other than 404.
  ``unknown_schema_id``: the registry does not know the schema id (404).

Encoders (:func:`encode_json`, :func:`encode_single_object`, :func:`encode_confluent`,
:func:`encode_key`) are provided for tests, benchmarks and the demo generator.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from io import BytesIO
from typing import Any, Final, Literal, TypeAlias, TypeVar, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

__all__ = [
    "ATTRIBUTE_HEADER",
    "ATTRIBUTE_SCHEMA",
    "MEMBERSHIP_HEADER",
    "MEMBERSHIP_SCHEMA",
    "AttributeChange",
    "Decoder",
    "MembershipChange",
    "PersonDeleted",
    "PoisonMessage",
    "Reason",
    "Value",
    "encode_confluent",
    "encode_json",
    "encode_key",
    "encode_single_object",
]


class Reason(StrEnum):
    """Why a record is poison (see the module docstring)."""

    NULL_KEY = "null_key"
    INVALID_KEY_UTF8 = "invalid_key_utf8"
    KEY_MISMATCH = "key_mismatch"
    TOMBSTONE_NOT_ALLOWED = "tombstone_not_allowed"
    EMPTY_VALUE = "empty_value"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD_TYPE = "invalid_field_type"
    UNKNOWN_OP = "unknown_op"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_ATTRIBUTE_VALUE = "invalid_attribute_value"
    TRUNCATED_AVRO = "truncated_avro"
    INVALID_AVRO = "invalid_avro"
    TRAILING_BYTES = "trailing_bytes"
    UNKNOWN_FINGERPRINT = "unknown_fingerprint"
    WRONG_SCHEMA_FOR_TOPIC = "wrong_schema_for_topic"
    INCOMPATIBLE_SCHEMA = "incompatible_schema"
    SCHEMA_REGISTRY_NOT_CONFIGURED = "schema_registry_not_configured"
    SCHEMA_REGISTRY_UNAVAILABLE = "schema_registry_unavailable"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"


class PoisonMessage(Exception):
    """An input record that cannot be decoded or validated.

    ``reason`` is a :class:`Reason` (a ``str``), ``message`` the human explanation;
    ``person_id`` is the record's key when it is valid UTF-8, else ``None``.
    """

    reason: str
    message: str
    person_id: str | None

    def __init__(self, reason: str, message: str, person_id: str | None = None) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message
        self.person_id = person_id

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


Value: TypeAlias = bool | int | float | str | list[str] | None
Op: TypeAlias = Literal["ENTER", "EXIT"]


# Decoded events are plain slotted dataclasses, not frozen ones: a frozen dataclass sets each
# field through ``object.__setattr__`` and its construction measured 3x slower (0.65 µs vs
# 0.2 µs), once per input event. Treat them as immutable all the same.


@dataclass(slots=True)
class MembershipChange:
    """The person entered or left the segment; ``ts`` in milliseconds since the epoch."""

    person_id: str
    segment_id: str
    op: Op
    ts: int


@dataclass(slots=True)
class AttributeChange:
    """Attribute values set (``None`` values kept as is) and attribute names removed."""

    person_id: str
    set: Mapping[str, Value]
    unset: tuple[str, ...]
    ts: int


@dataclass(slots=True)
class PersonDeleted:
    """A tombstone on the attributes topic: the person was deleted upstream."""

    person_id: str


Event: TypeAlias = MembershipChange | AttributeChange
_E = TypeVar("_E", MembershipChange, AttributeChange)

# ---------------------------------------------------------------------------------------------
# Schemas (package data, found through importlib.resources)

MEMBERSHIP_FULLNAME: Final = "stream_sync.events.MembershipChange"
ATTRIBUTE_FULLNAME: Final = "stream_sync.events.AttributeChange"


def _read_schema_text(filename: str) -> str:
    return (importlib.resources.files("stream_sync") / "schemas" / filename).read_text("utf-8")


MEMBERSHIP_SCHEMA: Final[str] = _read_schema_text("membership_change.avsc")
"""Text of ``membership_change.avsc`` (what a producer registers in a schema registry)."""
ATTRIBUTE_SCHEMA: Final[str] = _read_schema_text("attribute_change.avsc")
"""Text of ``attribute_change.avsc``."""


def _strip_logical_types(schema: Any) -> Any:
    """A copy of a JSON schema without ``logicalType`` (so timestamps stay ``int``)."""
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(v) for v in schema]
    return schema


def _fingerprint(raw_schema: Any) -> bytes:
    """CRC-64-AVRO fingerprint of the parsing canonical form, little-endian bytes."""
    canonical = to_parsing_canonical_form(raw_schema)
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


@dataclass(frozen=True, slots=True)
class _Writer:
    """A writer schema: its record full name (None if not a record), parsed form, scale."""

    fullname: str | None
    parsed: Any
    canonical: str
    ts_divisor: int


_TS_DIVISORS: Final = {
    "timestamp-micros": 1000,
    "local-timestamp-micros": 1000,
    "timestamp-nanos": 1_000_000,
    "local-timestamp-nanos": 1_000_000,
}


def _make_writer(raw: Any) -> _Writer:
    """Parse a writer schema (raises on an invalid schema)."""
    stripped = _strip_logical_types(raw)
    parsed = parse_schema(stripped)
    fullname: str | None = None
    ts_divisor = 1
    if isinstance(parsed, dict) and parsed.get("type") == "record":
        fullname = cast(str, parsed.get("name"))
        if isinstance(raw, dict):
            for field in raw.get("fields", ()):
                if isinstance(field, dict) and field.get("name") == "ts":
                    ftype = field.get("type")
                    if isinstance(ftype, dict):
                        ts_divisor = _TS_DIVISORS.get(str(ftype.get("logicalType")), 1)
    return _Writer(fullname, parsed, to_parsing_canonical_form(parsed), ts_divisor)


_MEMBERSHIP_WRITER: Final = _make_writer(json.loads(MEMBERSHIP_SCHEMA))
_ATTRIBUTE_WRITER: Final = _make_writer(json.loads(ATTRIBUTE_SCHEMA))

MEMBERSHIP_HEADER: Final[bytes] = b"\xc3\x01" + _fingerprint(json.loads(MEMBERSHIP_SCHEMA))
"""Single-object header of MembershipChange (``C3 01 C9 84 B0 03 E9 F9 17 1D``)."""
ATTRIBUTE_HEADER: Final[bytes] = b"\xc3\x01" + _fingerprint(json.loads(ATTRIBUTE_SCHEMA))
"""Single-object header of AttributeChange (``C3 01 91 2E 3D FF A5 04 D9 34``)."""

_shipped_writers: dict[bytes, _Writer] | None = None


def _shipped_schemas() -> dict[bytes, _Writer]:
    """Every parseable ``.avsc`` shipped in the package, by fingerprint (loaded once)."""
    global _shipped_writers
    if _shipped_writers is None:
        found: dict[bytes, _Writer] = {}
        directory = importlib.resources.files("stream_sync") / "schemas"
        for entry in directory.iterdir():
            if not entry.name.endswith(".avsc"):
                continue
            try:
                raw = json.loads(entry.read_text("utf-8"))
                found[_fingerprint(raw)] = _make_writer(raw)
            except Exception:  # a schema we cannot parse cannot have written anything we read
                continue
        found[MEMBERSHIP_HEADER[2:]] = _MEMBERSHIP_WRITER
        found[ATTRIBUTE_HEADER[2:]] = _ATTRIBUTE_WRITER
        _shipped_writers = found
    return _shipped_writers


class _AvroReader:
    """How to read one writer schema as one topic's record.

    ``own`` means the writer schema is the topic's own schema (same parsing canonical form):
    the body is then read by the dedicated decoders below. Any other writer schema is read by
    fastavro with schema resolution against the topic's own schema.
    """

    __slots__ = ("own", "reader", "ts_divisor", "writer")

    def __init__(self, own: bool, writer: Any, reader: Any, ts_divisor: int) -> None:
        self.own = own
        self.writer = writer
        self.reader = reader
        self.ts_divisor = ts_divisor


_MEMBERSHIP: Final = 0
_ATTRIBUTE: Final = 1
_OWN_WRITERS: Final = (_MEMBERSHIP_WRITER, _ATTRIBUTE_WRITER)


def _reader_for(kind: int, writer: _Writer, where: str) -> _AvroReader:
    """Resolve ``writer`` against the topic's own schema, or raise a poison."""
    own = _OWN_WRITERS[kind]
    if writer.fullname != own.fullname:
        raise PoisonMessage(
            Reason.WRONG_SCHEMA_FOR_TOPIC,
            f"{where}: writer schema is {writer.fullname or 'not a record'}, "
            f"this topic carries {own.fullname}",
        )
    if writer.canonical == own.canonical:
        return _AvroReader(True, own.parsed, None, writer.ts_divisor)
    return _AvroReader(False, writer.parsed, own.parsed, writer.ts_divisor)


# ---------------------------------------------------------------------------------------------
# Dedicated binary decoders for the two input schemas.
#
# fastavro's generic reader goes through a file object and dispatches on the schema for every
# value; reading the bytes directly makes a whole decode (key check and event included) about
# 30-40 % faster. Records of any other writer schema go through fastavro (schema resolution).
# The decoders are exact for the two schemas, and stricter than the Avro specification
# requires on two points only: a varint longer than 10 bytes or above 64 bits, and a boolean
# byte other than 0 / 1, are malformed. tests/test_events_fuzz.py checks them against
# fastavro on mutated input.


class _Truncated(Exception):
    """The Avro body ends before the record does."""


class _Malformed(Exception):
    """The Avro body cannot be a record of the schema."""


_unpack_double: Final = struct.Struct("<d").unpack_from


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos`` -> (value, next position). IndexError past the end."""
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos
    raw = byte & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise _Malformed("a varint is longer than 10 bytes")
    if raw >> 64:
        raise _Malformed("a varint exceeds 64 bits")
    return (raw >> 1) ^ -(raw & 1), pos


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    byte = data[pos]
    if byte < 0x80 and not byte & 1:  # the usual one-byte length
        pos += 1
        end = pos + (byte >> 1)
    else:
        length, pos = _read_long(data, pos)
        if length < 0:
            raise _Malformed("a string has a negative length")
        end = pos + length
    if end > len(data):
        raise _Truncated
    return data[pos:end].decode("utf-8"), end


def _block_count(data: bytes, pos: int) -> tuple[int, int]:
    """Item count of the next array / map block (0 = end), skipping the optional byte size."""
    count, pos = _read_long(data, pos)
    if count < 0:
        count = -count
        _, pos = _read_long(data, pos)
    if count > len(data) - pos:  # every item takes at least one byte
        raise _Truncated
    return count, pos


def _read_strings(data: bytes, pos: int) -> tuple[list[str], int]:
    items: list[str] = []
    count, pos = _block_count(data, pos)
    while count:
        for _ in range(count):
            item, pos = _read_string(data, pos)
            items.append(item)
        count, pos = _block_count(data, pos)
    return items, pos


def _read_membership(data: bytes, pos: int) -> MembershipChange:
    person_id, pos = _read_string(data, pos)
    segment_id, pos = _read_string(data, pos)
    symbol = data[pos]
    op: Op
    if symbol == 0:
        op = "ENTER"
    elif symbol == 2:
        op = "EXIT"
    else:
        raise _Malformed("op is not an index of MembershipOp")
    ts, pos = _read_long(data, pos + 1)
    if pos != len(data):
        raise _TrailingBytes(len(data) - pos)
    return MembershipChange(person_id, segment_id, op, ts)


def _read_attribute(data: bytes, pos: int) -> AttributeChange:
    size = len(data)
    person_id, pos = _read_string(data, pos)
    values: dict[str, Value] = {}
    count, pos = _block_count(data, pos)
    while count:
        for _ in range(count):
            # _read_string inlined for the usual one-byte lengths (about a third faster)
            byte = data[pos]
            if byte < 0x80 and not byte & 1:
                end = pos + 1 + (byte >> 1)
                if end > size:
                    raise _Truncated
                name = data[pos + 1 : end].decode("utf-8")
                pos = end
            else:
                name, pos = _read_string(data, pos)
            branch = data[pos]
            pos += 1
            if branch == 8:  # string
                byte = data[pos]
                if byte < 0x80 and not byte & 1:
                    end = pos + 1 + (byte >> 1)
                    if end > size:
                        raise _Truncated
                    values[name] = data[pos + 1 : end].decode("utf-8")
                    pos = end
                else:
                    values[name], pos = _read_string(data, pos)
            elif branch == 0:  # null
                values[name] = None
            elif branch == 4:  # long
                values[name], pos = _read_long(data, pos)
            elif branch == 6:  # double
                if pos + 8 > size:
                    raise _Truncated
                number = _unpack_double(data, pos)[0]
                if not math.isfinite(number):
                    raise _NonFinite(name)
                values[name] = number
                pos += 8
            elif branch == 2:  # boolean
                flag = data[pos]
                pos += 1
                if flag > 1:
                    raise _Malformed("a boolean byte is neither 0 nor 1")
                values[name] = flag == 1
            elif branch == 10:  # array of strings
                values[name], pos = _read_strings(data, pos)
            else:
                raise _Malformed("a set value has no branch of the value union")
        count, pos = _block_count(data, pos)
    unset, pos = _read_strings(data, pos)
    ts, pos = _read_long(data, pos)
    if pos != size:
        raise _TrailingBytes(size - pos)
    return AttributeChange(person_id, values, tuple(unset), ts)


class _TrailingBytes(Exception):
    """Bytes left after the record."""


class _NonFinite(Exception):
    """A NaN or infinite double in ``set`` (the attribute name is the argument)."""


# ---------------------------------------------------------------------------------------------
# Helpers

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_LEADING: Final = "\ufeff \t\r\n"
_MISSING: Final = object()


def _short(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_json_decoder: Final = json.JSONDecoder(parse_constant=_reject_constant)
_json_decode: Final[Callable[[str], Any]] = _json_decoder.decode


def _timestamp(raw: Any, where: str) -> int:
    """A JSON ``ts``: a 64-bit integer of millis, or an ISO-8601 string (UTC if no zone)."""
    if type(raw) is int:
        if _INT64_MIN <= raw <= _INT64_MAX:
            return raw
        raise PoisonMessage(Reason.INVALID_TIMESTAMP, f"{where}: ts out of the 64-bit range")
    if type(raw) is str:
        try:
            moment = datetime.fromisoformat(raw)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return (moment - _EPOCH) // _ONE_MS
        except (ValueError, OverflowError, TypeError):
            raise PoisonMessage(
                Reason.INVALID_TIMESTAMP, f"{where}: ts {_short(raw)} is not an ISO-8601 time"
            ) from None
    raise PoisonMessage(
        Reason.INVALID_TIMESTAMP,
        f"{where}: ts must be an integer of milliseconds or an ISO-8601 string, "
        f"not {_json_type(raw)}",
    )


def _json_type(raw: object) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "boolean"
    if isinstance(raw, int):
        return "integer"
    if isinstance(raw, float):
        return "number"
    if isinstance(raw, str):
        return "string"
    if isinstance(raw, list):
        return "array"
    return "object"


def _check_set_values(values: Mapping[str, Any], where: str) -> None:
    """Validate decoded ``set`` values in place (arrays are already lists)."""
    for name, item in values.items():
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is int:
            if _INT64_MIN <= item <= _INT64_MAX:
                continue
            problem = "an integer outside the 64-bit range"
        elif kind is float:
            if math.isfinite(item):
                continue
            problem = "a non-finite number"
        elif kind is list:
            if all(type(element) is str for element in item):
                continue
            problem = "an array whose items are not all strings"
        else:
            problem = f"an {_json_type(item)}" if kind is dict else f"a {_json_type(item)}"
        raise PoisonMessage(
            Reason.INVALID_ATTRIBUTE_VALUE,
            f"{where}: set[{_short(name)}] is {problem}; allowed: null, boolean, long, "
            "double, string, array of strings",
        )


def _required_str(obj: dict[str, Any], field: str, where: str) -> str:
    raw = obj.get(field, _MISSING)
    if type(raw) is str:
        return raw
    if raw is _MISSING:
        raise PoisonMessage(Reason.MISSING_FIELD, f"{where}: field {field!r} is missing")
    raise PoisonMessage(
        Reason.INVALID_FIELD_TYPE, f"{where}: {field} must be a string, not {_json_type(raw)}"
    )


def _avro_error(exc: Exception, where: str) -> PoisonMessage:
    if isinstance(exc, EOFError):
        return PoisonMessage(Reason.TRUNCATED_AVRO, f"{where}: body ends before the record does")
    if isinstance(exc, UnicodeDecodeError):
        return PoisonMessage(Reason.INVALID_UTF8, f"{where}: a string is not valid UTF-8")
    if isinstance(exc, SchemaResolutionError):
        return PoisonMessage(
            Reason.INCOMPATIBLE_SCHEMA, f"{where}: writer schema cannot be read as this topic's"
        )
    return PoisonMessage(Reason.INVALID_AVRO, f"{where}: malformed body ({type(exc).__name__})")


_SINGLE_OBJECT: Final = "single-object Avro"
_CONFLUENT: Final = "Confluent-framed Avro"
_JSON: Final = "JSON"

_REGISTRY_NUMERIC_KEYS: Final = frozenset(
    {
        "timeout",
        "cache.capacity",
        "cache.latest.ttl.sec",
        "max.retries",
        "retries.wait.ms",
        "retries.max.wait.ms",
    }
)


def _registry_conf(url: str, conf: Mapping[str, str | int | float] | None) -> dict[str, Any]:
    """Client configuration; numeric properties given as strings become numbers."""
    out: dict[str, Any] = {}
    for name, raw in (conf or {}).items():
        if name in _REGISTRY_NUMERIC_KEYS and isinstance(raw, str):
            number = float(raw)
            out[name] = int(number) if number.is_integer() else number
        else:
            out[name] = raw
    out["url"] = url
    return out


# ---------------------------------------------------------------------------------------------
# Decoder


class Decoder:
    """Decodes input records; one instance per consumer (not thread-safe).

    ``schema_registry_url`` enables Confluent framing; ``registry_conf`` holds extra
    ``SchemaRegistryClient`` properties (``basic.auth.user.info``, ``ssl.*``, ``timeout``,
    ``max.retries``, ...; numeric ones may be given as strings). A schema id that could not be
    fetched is not asked again for ``registry_failure_ttl_s`` seconds (its records are poison
    meanwhile), so a registry outage does not stall the partition.
    """

    def __init__(
        self,
        schema_registry_url: str | None = None,
        registry_conf: Mapping[str, str | int | float] | None = None,
        *,
        registry_failure_ttl_s: float = 5.0,
    ) -> None:
        self._so_readers: tuple[dict[bytes, _AvroReader], dict[bytes, _AvroReader]] = (
            {MEMBERSHIP_HEADER[2:]: _AvroReader(True, _MEMBERSHIP_WRITER.parsed, None, 1)},
            {ATTRIBUTE_HEADER[2:]: _AvroReader(True, _ATTRIBUTE_WRITER.parsed, None, 1)},
        )
        self._cf_readers: tuple[dict[int, _AvroReader], dict[int, _AvroReader]] = ({}, {})
        self._registry_writers: dict[int, _Writer] = {}
        self._registry_failures: dict[int, tuple[float, PoisonMessage]] = {}
        self._failure_ttl = registry_failure_ttl_s
        self._registry: Any = None
        if schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._registry = SchemaRegistryClient(
                _registry_conf(schema_registry_url, registry_conf)
            )

    # -- public ----------------------------------------------------------------------------

    def decode_membership(self, key: bytes | None, value: bytes | None) -> MembershipChange:
        """Decode a record of the memberships topic, or raise :class:`PoisonMessage`."""
        person = _key(key)
        try:
            if value is None:
                raise PoisonMessage(
                    Reason.TOMBSTONE_NOT_ALLOWED,
                    "a tombstone (null value) is not allowed on the memberships topic",
                )
            first = value[:1]
            if first == b"{":
                event = self._membership_json(value)
            elif first == b"\xc3" and value[1:2] == b"\x01":
                event = self._membership_avro(
                    value, self._single_object(_MEMBERSHIP, value), 10, _SINGLE_OBJECT
                )
            elif first == b"\x00":
                event = self._membership_avro(
                    value, self._confluent(_MEMBERSHIP, value), 5, _CONFLUENT
                )
            elif not value:
                raise PoisonMessage(Reason.EMPTY_VALUE, "the value is empty")
            else:
                event = self._membership_json(value)
            if event.person_id != person:
                raise _mismatch(person, event.person_id)
            return event
        except PoisonMessage as exc:
            exc.person_id = person
            raise

    def decode_attribute(
        self, key: bytes | None, value: bytes | None
    ) -> AttributeChange | PersonDeleted:
        """Decode a record of the attributes topic, or raise :class:`PoisonMessage`."""
        person = _key(key)
        if value is None:
            return PersonDeleted(person)
        try:
            first = value[:1]
            if first == b"{":
                event = self._attribute_json(value)
            elif first == b"\xc3" and value[1:2] == b"\x01":
                event = self._attribute_avro(
                    value, self._single_object(_ATTRIBUTE, value), 10, _SINGLE_OBJECT
                )
            elif first == b"\x00":
                event = self._attribute_avro(
                    value, self._confluent(_ATTRIBUTE, value), 5, _CONFLUENT
                )
            elif not value:
                raise PoisonMessage(Reason.EMPTY_VALUE, "the value is empty")
            else:
                event = self._attribute_json(value)
            if event.person_id != person:
                raise _mismatch(person, event.person_id)
            return event
        except PoisonMessage as exc:
            exc.person_id = person
            raise

    # -- Avro ------------------------------------------------------------------------------

    def _single_object(self, kind: int, value: bytes) -> _AvroReader:
        if len(value) < 10:
            raise PoisonMessage(
                Reason.TRUNCATED_AVRO, f"{_SINGLE_OBJECT}: header shorter than 10 bytes"
            )
        fp = value[2:10]
        reader = self._so_readers[kind].get(fp)
        if reader is None:
            writer = _shipped_schemas().get(fp)
            if writer is None:
                raise PoisonMessage(
                    Reason.UNKNOWN_FINGERPRINT,
                    f"{_SINGLE_OBJECT}: fingerprint {fp.hex()} is not one of a shipped schema",
                )
            reader = _reader_for(kind, writer, _SINGLE_OBJECT)
            self._so_readers[kind][fp] = reader
        return reader

    def _confluent(self, kind: int, value: bytes) -> _AvroReader:
        if len(value) < 5:
            raise PoisonMessage(Reason.TRUNCATED_AVRO, f"{_CONFLUENT}: header shorter than 5 bytes")
        schema_id = int.from_bytes(value[1:5], "big")
        reader = self._cf_readers[kind].get(schema_id)
        if reader is None:
            writer = self._registry_writer(schema_id)
            reader = _reader_for(kind, writer, f"{_CONFLUENT} (schema id {schema_id})")
            self._cf_readers[kind][schema_id] = reader
        return reader

    def _registry_writer(self, schema_id: int) -> _Writer:
        if self._registry is None:
            raise PoisonMessage(
                Reason.SCHEMA_REGISTRY_NOT_CONFIGURED,
                f"{_CONFLUENT} (schema id {schema_id}) but kafka.schema_registry_url is not set",
            )
        where = f"{_CONFLUENT} (schema id {schema_id})"
        writer = self._registry_writers.get(schema_id)
        if writer is None:
            writer = self._fetch_writer(schema_id, where)
        if writer.parsed is None:
            raise PoisonMessage(
                Reason.INCOMPATIBLE_SCHEMA, f"{where}: not a usable Avro record schema"
            )
        return writer

    def _fetch_writer(self, schema_id: int, where: str) -> _Writer:
        failure = self._registry_failures.get(schema_id)
        now = time.monotonic()
        if failure is not None and now < failure[0]:
            raise PoisonMessage(failure[1].reason, failure[1].message)
        try:
            schema = self._registry.get_schema(schema_id)
        except Exception as exc:
            status = getattr(exc, "http_status_code", None)
            if status == 404:
                poison = PoisonMessage(
                    Reason.UNKNOWN_SCHEMA_ID, f"{where}: the schema registry does not know it"
                )
            else:
                detail = f"HTTP {status}" if isinstance(status, int) else type(exc).__name__
                poison = PoisonMessage(
                    Reason.SCHEMA_REGISTRY_UNAVAILABLE,
                    f"{where}: could not fetch the schema ({detail})",
                )
            self._registry_failures[schema_id] = (now + self._failure_ttl, poison)
            raise PoisonMessage(poison.reason, poison.message) from None
        self._registry_failures.pop(schema_id, None)
        try:
            if (getattr(schema, "schema_type", None) or "AVRO") != "AVRO":
                raise ValueError("not an Avro schema")
            writer = _make_writer(json.loads(schema.schema_str))
        except Exception:
            # Cached: a registered schema never changes.
            writer = _Writer("<unusable registry schema>", None, "", 1)
        self._registry_writers[schema_id] = writer
        return writer

    @staticmethod
    def _read_own(value: bytes, read: Callable[[bytes, int], _E], offset: int, where: str) -> _E:
        try:
            return read(value, offset)
        except (IndexError, _Truncated):
            raise PoisonMessage(
                Reason.TRUNCATED_AVRO, f"{where}: body ends before the record does"
            ) from None
        except _Malformed as exc:
            raise PoisonMessage(Reason.INVALID_AVRO, f"{where}: malformed body ({exc})") from None
        except UnicodeDecodeError:
            raise PoisonMessage(
                Reason.INVALID_UTF8, f"{where}: a string is not valid UTF-8"
            ) from None
        except _TrailingBytes as exc:
            raise PoisonMessage(
                Reason.TRAILING_BYTES, f"{where}: {exc.args[0]} bytes after the end of the record"
            ) from None
        except _NonFinite as exc:
            raise PoisonMessage(
                Reason.INVALID_ATTRIBUTE_VALUE,
                f"{where}: set[{_short(exc.args[0])}] is a non-finite number",
            ) from None

    @staticmethod
    def _read_avro(value: bytes, reader: _AvroReader, offset: int, where: str) -> Any:
        stream = BytesIO(value)
        stream.seek(offset)
        try:
            record = schemaless_reader(stream, reader.writer, reader.reader)
        except Exception as exc:
            raise _avro_error(exc, where) from None
        if stream.tell() != len(value):
            raise PoisonMessage(
                Reason.TRAILING_BYTES,
                f"{where}: {len(value) - stream.tell()} bytes after the end of the record",
            )
        return record

    def _membership_avro(
        self, value: bytes, reader: _AvroReader, offset: int, where: str
    ) -> MembershipChange:
        if reader.own:
            event = self._read_own(value, _read_membership, offset, where)
            if reader.ts_divisor == 1:
                return event
            return MembershipChange(
                event.person_id, event.segment_id, event.op, event.ts // reader.ts_divisor
            )
        record = self._read_avro(value, reader, offset, where)
        ts = record["ts"]
        if reader.ts_divisor != 1:
            ts //= reader.ts_divisor
        return MembershipChange(record["person_id"], record["segment_id"], record["op"], ts)

    def _attribute_avro(
        self, value: bytes, reader: _AvroReader, offset: int, where: str
    ) -> AttributeChange:
        if reader.own:
            event = self._read_own(value, _read_attribute, offset, where)
            if reader.ts_divisor == 1:
                return event
            return AttributeChange(
                event.person_id, event.set, event.unset, event.ts // reader.ts_divisor
            )
        record = self._read_avro(value, reader, offset, where)
        values = record["set"]
        for item in values.values():
            if type(item) is float and not math.isfinite(item):
                _check_set_values(values, where)
        ts = record["ts"]
        if reader.ts_divisor != 1:
            ts //= reader.ts_divisor
        return AttributeChange(record["person_id"], values, tuple(record["unset"]), ts)

    # -- JSON ------------------------------------------------------------------------------

    @staticmethod
    def _json_object(value: bytes) -> dict[str, Any]:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise PoisonMessage(Reason.INVALID_UTF8, "JSON value is not valid UTF-8") from None
        if text[0] in _JSON_LEADING:
            text = text.lstrip(_JSON_LEADING)
            if not text:
                raise PoisonMessage(Reason.INVALID_JSON, "JSON value is blank")
        try:
            obj = _json_decode(text)
        except (ValueError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "unparseable"
            raise PoisonMessage(Reason.INVALID_JSON, f"JSON: {detail}") from None
        if type(obj) is not dict:
            raise PoisonMessage(
                Reason.NOT_AN_OBJECT, f"JSON value is {_json_type(obj)}, not an object"
            )
        if _SURROGATE_ESCAPE.search(value) is not None:
            try:
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise PoisonMessage(
                    Reason.INVALID_JSON, "JSON: a string holds a lone surrogate escape"
                ) from None
        return obj

    def _membership_json(self, value: bytes) -> MembershipChange:
        obj = self._json_object(value)
        person_id = _required_str(obj, "person_id", _JSON)
        segment_id = _required_str(obj, "segment_id", _JSON)
        op = _required_str(obj, "op", _JSON)
        if op != "ENTER" and op != "EXIT":
            raise PoisonMessage(
                Reason.UNKNOWN_OP, f"JSON: op {_short(op)} is neither 'ENTER' nor 'EXIT'"
            )
        raw_ts = obj.get("ts", _MISSING)
        if raw_ts is _MISSING:
            raise PoisonMessage(Reason.MISSING_FIELD, "JSON: field 'ts' is missing")
        return MembershipChange(person_id, segment_id, cast(Op, op), _timestamp(raw_ts, _JSON))

    def _attribute_json(self, value: bytes) -> AttributeChange:
        obj = self._json_object(value)
        person_id = _required_str(obj, "person_id", _JSON)
        values = obj.get("set")
        if values is None:
            values = {}
        elif type(values) is not dict:
            raise PoisonMessage(
                Reason.INVALID_FIELD_TYPE, f"JSON: set must be an object, not {_json_type(values)}"
            )
        else:
            _check_set_values(values, _JSON)
        names = obj.get("unset")
        if names is None:
            unset: tuple[str, ...] = ()
        elif type(names) is list and all(type(name) is str for name in names):
            unset = tuple(names)
        else:
            raise PoisonMessage(
                Reason.INVALID_FIELD_TYPE, "JSON: unset must be an array of strings"
            )
        raw_ts = obj.get("ts", _MISSING)
        if raw_ts is _MISSING:
            raise PoisonMessage(Reason.MISSING_FIELD, "JSON: field 'ts' is missing")
        return AttributeChange(person_id, values, unset, _timestamp(raw_ts, _JSON))


def _key(key: bytes | None) -> str:
    if key is None:
        raise PoisonMessage(Reason.NULL_KEY, "the record has no key (expected the person_id)")
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise PoisonMessage(Reason.INVALID_KEY_UTF8, "the key is not valid UTF-8") from None


def _mismatch(key: str, person_id: str) -> PoisonMessage:
    return PoisonMessage(
        Reason.KEY_MISMATCH, f"key {_short(key)} differs from person_id {_short(person_id)}"
    )


# ---------------------------------------------------------------------------------------------
# Encoders (tests, benchmarks, demo generator)


def _record(event: Event) -> dict[str, Any]:
    if isinstance(event, MembershipChange):
        return {
            "person_id": event.person_id,
            "segment_id": event.segment_id,
            "op": event.op,
            "ts": event.ts,
        }
    if isinstance(event, AttributeChange):
        return {
            "person_id": event.person_id,
            "set": dict(event.set),
            "unset": list(event.unset),
            "ts": event.ts,
        }
    raise TypeError(
        f"cannot encode {type(event).__name__}: a PersonDeleted is a tombstone (value None)"
    )


def encode_key(event: MembershipChange | AttributeChange | PersonDeleted) -> bytes:
    """The record key: the person_id in UTF-8."""
    return event.person_id.encode("utf-8")


def encode_json(event: Event) -> bytes:
    """Compact UTF-8 JSON, as a ``kcat`` user would produce it."""
    return json.dumps(
        _record(event), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


def _avro_body(event: Event) -> bytes:
    record = _record(event)
    schema = (
        _MEMBERSHIP_WRITER.parsed
        if isinstance(event, MembershipChange)
        else _ATTRIBUTE_WRITER.parsed
    )
    out = BytesIO()
    schemaless_writer(out, schema, record)
    return out.getvalue()


def encode_single_object(event: Event) -> bytes:
    """Avro single-object encoding: header (C3 01 + fingerprint) + body."""
    header = MEMBERSHIP_HEADER if isinstance(event, MembershipChange) else ATTRIBUTE_HEADER
    return header + _avro_body(event)


def encode_confluent(event: Event, schema_id: int) -> bytes:
    """Confluent Schema Registry framing: 00 + 4-byte big-endian schema id + Avro body."""
    return b"\x00" + schema_id.to_bytes(4, "big") + _avro_body(event)
