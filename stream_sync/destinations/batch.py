"""``type: batch``: Batch CEP profiles through the Profile API 2.x (upsert only).

Contract: ``/work/shared/destinations/batch.md``. One endpoint,
``POST {base_url}/{api_version}/profiles/update``, takes a JSON array of at most 200
operations ``{"identifiers": {"custom_id": ...}, "attributes": {...}}``; an unknown custom_id
creates the profile. Batch counts its limit (300/s, burst 1000) per operation, so every request
acquires ``len(operations)`` from the weighted limiter of :mod:`stream_sync.http`.

Wire mapping of an :class:`~stream_sync.destinations.base.Operation`:

* ``identifier`` → ``identifiers.custom_id``, exactly as given (Batch is case- and
  whitespace-sensitive): no trimming, no case change;
* native fields (``$email_address`` …) and custom attributes → ``attributes``; a custom
  attribute declared ``date`` or ``url`` in the activation's ``attribute_types`` is sent under
  the key ``date(name)`` / ``url(name)`` (the field keeps its own name everywhere else);
* ``clears`` → ``name: null`` (bare name, whatever the type: ``null`` removes the attribute);
* more than 50 attributes → several operations for the same custom_id, next to each other in
  the array (Batch applies them in order);
* more than 200 wire operations → several requests, a person's operations kept together
  whenever they fit.

Answers: 202 ``SUCCESS`` acknowledges everything; 202 ``SUCCESS_WITH_PARTIAL_ERRORS`` maps
each error's ``bulk_index`` back to its person (an attribute problem on an applied outcome;
an error naming no attribute rejects the person); 400 or another 4xx → ``BatchRejected`` (the
engine splits the batch); 401/403 → fatal with a message naming the keys; 404/405 → fatal
(``base_url`` / ``api_version`` wrong); 429/5xx are retried by the HTTP layer.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from stream_sync.config.destinations import BatchDestination
from stream_sync.destinations.base import (
    Adapter,
    AttributeProblem,
    BatchRejected,
    CheckRow,
    FatalDestinationError,
    Operation,
    Outcome,
    OutcomeKind,
    Unidentifiable,
    canonical,
)
from stream_sync.events import Value
from stream_sync.http import DestinationHttp, Verdict, default_classify
from stream_sync.state import OpKind

log = structlog.get_logger("stream_sync.destinations.batch")

MAX_OPERATIONS = 200
"""Operations in one request."""
MAX_ATTRIBUTES = 50
"""Attributes in one operation (larger updates are split)."""
MAX_STRING = 300
MAX_ARRAY = 25
CUSTOM_ID_LIMIT = 1024
"""A custom_id of this many characters or more is refused."""

_TYPED_KEY = re.compile(r"^(?:date|url)\((.*)\)$")
_PHONE_SEPARATORS = re.compile(r"[\s.\-/()]")
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_TWO_LETTERS = re.compile(r"^[A-Za-z]{2}$")
_LOCALE_SPLIT = re.compile(r"[-_]")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_MARKETING = frozenset({"subscribed", "unsubscribed"})
_CREDENTIALS = "Batch refused the credentials ({detail}); check rest_api_key and project_key"
_ROUTE = "POST {path} answered {detail}; check base_url and api_version"

WireOperation = dict[str, Any]


# --- native attributes -----------------------------------------------------------------


def _text(field_name: str, value: Value, what: str) -> str:
    if not isinstance(value, str):
        raise AttributeProblem(field_name, "not_a_string", f"must be a string ({what})")
    text = value.strip()
    if not text:
        raise AttributeProblem(field_name, "empty_value", f"{field_name} is empty")
    return text


def _email(value: Value) -> str:
    name = "$email_address"
    text = _text(name, value, "an e-mail address")
    local, _, domain = text.rpartition("@")
    labels = domain.split(".")
    if (
        not local
        or "@" in local
        or len(labels) < 2
        or not all(labels)
        or any(ch.isspace() for ch in text)
    ):
        raise AttributeProblem(name, "invalid_email", "not a valid e-mail address")
    return f"{local}@{domain.lower()}"


def _phone(value: Value) -> str:
    name = "$phone_number"
    text = _text(name, value, "an international number such as +33612345678")
    compact = _PHONE_SEPARATORS.sub("", text.replace("(0)", ""))
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _E164.fullmatch(compact):
        raise AttributeProblem(
            name,
            "invalid_phone_number",
            "not an international phone number: E.164 needs '+' (or '00'), the country code "
            "and at most 15 digits",
        )
    return compact


def _language(value: Value) -> str:
    name = "$language"
    text = _text(name, value, "a 2-letter language code")
    primary = _LOCALE_SPLIT.split(text)[0]
    if not _TWO_LETTERS.fullmatch(primary):
        raise AttributeProblem(name, "invalid_language", "not a 2-letter language code (ISO 639-1)")
    return primary.lower()


def _region(value: Value) -> str:
    name = "$region"
    text = _text(name, value, "a 2-letter region code")
    parts = _LOCALE_SPLIT.split(text)
    candidate = parts[0] if len(parts) == 1 else parts[-1]  # "fr-FR" / "fr_FR" → "FR"
    if not _TWO_LETTERS.fullmatch(candidate):
        raise AttributeProblem(name, "invalid_region", "not a 2-letter region code (ISO 3166)")
    return candidate.upper()


@cache
def _timezones() -> dict[str, str]:
    """IANA names by their lower-case spelling."""
    return {tz.lower(): tz for tz in zoneinfo.available_timezones()}


def _timezone(value: Value) -> str:
    name = "$timezone"
    text = _text(name, value, "an IANA time zone such as Europe/Paris")
    found = _timezones().get(text.lower())
    if found is None:
        raise AttributeProblem(name, "invalid_timezone", "not an IANA time zone (Europe/Paris)")
    return found


def _marketing(name: str) -> Callable[[Value], str]:
    def normalise(value: Value) -> str:
        if isinstance(value, bool):
            return "subscribed" if value else "unsubscribed"
        if isinstance(value, str) and value.strip().lower() in _MARKETING:
            return value.strip().lower()
        raise AttributeProblem(
            name, "invalid_subscription", "must be a boolean, 'subscribed' or 'unsubscribed'"
        )

    return normalise


NATIVE: dict[str, Callable[[Value], str]] = {
    "$email_address": _email,
    "$phone_number": _phone,
    "$language": _language,
    "$region": _region,
    "$timezone": _timezone,
    "$email_marketing": _marketing("$email_marketing"),
    "$sms_marketing": _marketing("$sms_marketing"),
}
"""Normalisers of the native attributes (the names config accepts: ``BATCH_NATIVE_ATTRIBUTES``)."""


# --- custom attributes -----------------------------------------------------------------


def _string(name: str, value: str) -> str:
    if not value:
        raise AttributeProblem(name, "empty_string", f"'{name}' is empty (Batch refuses it)")
    if len(value) > MAX_STRING:
        raise AttributeProblem(
            name,
            "string_too_long",
            f"'{name}' has {len(value)} characters; Batch accepts at most {MAX_STRING}",
        )
    return value


def _number(name: str, value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise AttributeProblem(name, "not_a_finite_number", f"'{name}' is not a finite number")
    result = canonical(value)
    assert isinstance(result, int | float)
    return result


def _array(name: str, value: list[str]) -> list[str]:
    if len(value) > MAX_ARRAY:
        raise AttributeProblem(
            name,
            "array_too_long",
            f"'{name}' has {len(value)} items; Batch accepts at most {MAX_ARRAY}",
        )
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_STRING:
            raise AttributeProblem(
                name,
                "invalid_array_item",
                f"every item of '{name}' must be a non-empty string of at most {MAX_STRING} "
                "characters",
            )
    return list(value)


def _date(name: str, value: Value) -> str:
    """ISO-8601 UTC: strings (a time without a zone is UTC) or epoch milliseconds."""
    moment: datetime | None = None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            moment = None
    if moment is None:
        raise AttributeProblem(
            name,
            "invalid_date",
            f"'{name}' is declared a date: expected an ISO-8601 date or date-time, or epoch "
            "milliseconds",
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    spec = "milliseconds" if utc.microsecond else "seconds"
    return utc.isoformat(timespec=spec) + "Z"


def _url(name: str, value: Value) -> str:
    text = value.strip() if isinstance(value, str) else ""
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if (
        parts is None
        or not _URL_SCHEME.fullmatch(parts.scheme)
        or not parts.netloc
        or any(ch.isspace() for ch in text)
    ):
        raise AttributeProblem(name, "invalid_url", f"'{name}' is declared a url: not an URL")
    scheme = text[: len(parts.scheme)]
    return scheme.lower() + text[len(scheme) :]


def _custom(name: str, value: Value) -> Value:
    """Batch types other custom values by their JSON form: no declared type is needed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _number(name, value)
    if isinstance(value, str):
        return _string(name, value)
    if isinstance(value, list):
        return _array(name, value)
    raise AttributeProblem(name, "unsupported_value", f"'{name}' has a value Batch cannot store")


# --- the adapter -----------------------------------------------------------------------


class BatchAdapter(Adapter):
    type_name = "batch"
    supports_reference = False  # custom_id is the only reference: it cannot be renamed

    def __init__(self, name: str, dest: BatchDestination, http: DestinationHttp) -> None:
        super().__init__(name)
        self.http = http
        self.path = f"/{dest.api_version}/profiles/update"
        self._rest_api_key = dest.rest_api_key
        self._project_key = dest.project_key
        #: custom attribute → "date" | "url", learnt from the declared types ``format_field``
        #: receives (always called for a value before that value is sent)
        self._wire_types: dict[str, str] = {}

    @property
    def endpoint(self) -> str:
        return self.http.url(self.path)

    # --- values --------------------------------------------------------------------------

    def format_identifier(self, value: Value) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise Unidentifiable(
                "identifier_not_scalar", "the custom_id must be a string or a number"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise Unidentifiable("identifier_not_scalar", "the custom_id is not a finite number")
        text = value if isinstance(value, str) else str(canonical(value))
        if not text:
            raise Unidentifiable("identifier_empty", "the custom_id is empty")
        if len(text) >= CUSTOM_ID_LIMIT:
            raise Unidentifiable(
                "identifier_too_long",
                f"the custom_id has {len(text)} characters; Batch accepts fewer than "
                f"{CUSTOM_ID_LIMIT}",
            )
        return text

    def format_field(
        self, field_name: str, value: Value, attr_type: str | None, custom: bool
    ) -> Value:
        if not custom:
            normalise = NATIVE.get(field_name)
            if normalise is None:
                raise AttributeProblem(
                    field_name, "unknown_native_attribute", f"{field_name} is not a Batch field"
                )
            return normalise(value)
        if attr_type == "date":
            self._learn_type(field_name, attr_type)
            return _date(field_name, value)
        if attr_type == "url":
            self._learn_type(field_name, attr_type)
            return _url(field_name, value)
        return _custom(field_name, value)

    def _learn_type(self, field_name: str, attr_type: str) -> None:
        """Batch keeps one type per attribute: the first date/url declaration seen stays."""
        known = self._wire_types.setdefault(field_name, attr_type)
        if known != attr_type:
            log.warning(
                "batch_attribute_type_conflict",
                destination=self.name,
                attribute=field_name,
                kept=known,
                declared=attr_type,
            )

    def wire_key(self, field_name: str, custom: bool) -> str:
        kind = self._wire_types.get(field_name) if custom else None
        return f"{kind}({field_name})" if kind else field_name

    # --- wire format ---------------------------------------------------------------------

    def wire_operations(self, op: Operation) -> list[WireOperation]:
        """Batch operations for one person: ≤ 50 attributes each, same custom_id."""
        items: list[tuple[str, Value]] = [
            (self.wire_key(name, name in op.custom), value) for name, value in op.fields.items()
        ]
        items += [(name, None) for name in op.clears if name not in op.fields]
        identifiers = {"custom_id": op.identifier}
        if not items:
            return [{"identifiers": dict(identifiers), "attributes": {}}]
        return [
            {"identifiers": dict(identifiers), "attributes": dict(items[i : i + MAX_ATTRIBUTES])}
            for i in range(0, len(items), MAX_ATTRIBUTES)
        ]

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._rest_api_key.get_secret_value()}",
            "X-Batch-Project": self._project_key.get_secret_value(),
        }

    def preview_request(self, op: Operation) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": self.endpoint,
            "body": self.wire_operations(op)[:MAX_OPERATIONS],
        }

    # --- sending -------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Operation]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        persons: list[list[WireOperation]] = []
        for op in ops:
            if op.kind is not OpKind.UPSERT:
                outcomes.append(
                    Outcome.rejected(
                        "operation_not_supported",
                        f"Batch supports upsert only, not {op.kind.value.lower()}",
                    )
                )
                persons.append([])
                continue
            outcomes.append(Outcome.applied())
            persons.append(self.wire_operations(op))
        for request in _requests(persons):
            await self._send(request, outcomes)
        return outcomes

    async def _send(
        self, request: list[tuple[int, WireOperation]], outcomes: list[Outcome]
    ) -> None:
        body = [wire for _, wire in request]
        response = await self.http.request(
            "POST",
            self.path,
            json=body,
            weight=len(body),
            classify=_classify,
            headers=self._headers(),
        )
        status = response.status_code
        answer = _json(response)
        if 200 <= status < 300:
            self._read_success(answer, request, outcomes)
            return
        code = str(answer.get("error_code") or f"HTTP_{status}")
        vendor = str(answer.get("error_message") or "").strip()
        detail = f"{status} {code}" + (f": {vendor}" if vendor else "")
        fatal = FATAL_ANSWERS.get(status)
        if fatal is not None:
            reason, text = fatal
            raise FatalDestinationError(
                reason, f"{self.name}: " + text.format(detail=detail, path=self.path)
            )
        if 400 <= status < 500:
            raise BatchRejected(
                code.lower(), f"Batch refused the request of {len(body)} operation(s) ({detail})"
            )
        raise FatalDestinationError(
            f"http_{status}", f"{self.name}: unexpected answer {detail} to POST {self.path}"
        )

    def _read_success(
        self,
        answer: dict[str, Any],
        request: list[tuple[int, WireOperation]],
        outcomes: list[Outcome],
    ) -> None:
        if answer.get("code") != "SUCCESS_WITH_PARTIAL_ERRORS":
            return
        errors = answer.get("errors")
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, dict):
                continue
            position = error.get("bulk_index")
            if (
                not isinstance(position, int)
                or isinstance(position, bool)
                or not 0 <= position < len(request)
            ):
                log.warning(
                    "batch_partial_error_unmapped",
                    destination=self.name,
                    bulk_index=position,
                    operations=len(request),
                )
                continue
            index = request[position][0]
            vendor = str(error.get("reason") or "invalid value")
            attribute = error.get("attribute")
            if isinstance(attribute, str) and attribute:
                field_name = _field_of(attribute)
                outcomes[index].attribute_problems.append(
                    AttributeProblem(
                        field_name,
                        "invalid_attribute",
                        f"Batch refused attribute '{attribute}': {vendor}",
                    )
                )
            elif outcomes[index].kind is OutcomeKind.APPLIED:
                category = str(error.get("category") or "operation")
                problems = outcomes[index].attribute_problems
                outcomes[index] = Outcome.rejected(
                    f"{_slug(category)}_refused", f"Batch refused the profile: {vendor}"
                )
                outcomes[index].attribute_problems = problems

    # --- check and close -----------------------------------------------------------------

    async def check(self) -> list[CheckRow]:
        return [
            CheckRow(
                f"destination {self.name}",
                True,
                f"configuration valid (POST {self.endpoint}); Batch has no read-only endpoint, "
                "so the REST API key and project key are verified at the first send",
            ),
            CheckRow(
                f"destination {self.name}: attributes",
                True,
                "native attributes are built in; custom attributes are created by Batch on "
                "first write (names checked at start-up)",
            ),
        ]

    async def aclose(self) -> None:
        await self.http.aclose()


FATAL_ANSWERS: dict[int, tuple[str, str]] = {
    401: ("invalid_credentials", _CREDENTIALS),
    403: ("invalid_credentials", _CREDENTIALS),
    404: ("route_not_found", _ROUTE),
    405: ("route_not_found", _ROUTE),
}
"""Answers that stop the activation: (reason, message). Other 4xx split the batch (the
request names no culprit); 2xx are read by ``_read_success``; 429/5xx never get here."""


def _classify(response: httpx.Response) -> Verdict:
    """Default policy, but 401/403 come back here so the message can name the keys."""
    if response.status_code in (401, 403):
        return Verdict.OK
    return default_classify(response)


def _requests(persons: list[list[WireOperation]]) -> list[list[tuple[int, WireOperation]]]:
    """Pack persons' operations into requests of ≤ 200, keeping each person's together."""
    requests: list[list[tuple[int, WireOperation]]] = []
    current: list[tuple[int, WireOperation]] = []
    for index, wires in enumerate(persons):
        if not wires:
            continue
        if current and len(current) + len(wires) > MAX_OPERATIONS:
            requests.append(current)
            current = []
        for wire in wires:
            if len(current) == MAX_OPERATIONS:  # one person beyond 200 operations
                requests.append(current)
                current = []
            current.append((index, wire))
    if current:
        requests.append(current)
    return requests


def _field_of(attribute: str) -> str:
    """The field name behind a wire key: ``date(signup)`` → ``signup``."""
    typed = _TYPED_KEY.fullmatch(attribute)
    return typed.group(1) if typed else attribute


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "operation"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
