"""Strict emulator of the Batch Profile API 2.x (``POST /{version}/profiles/update``).

Written from the contract page ``/work/shared/destinations/batch.md`` only. ``base_url`` is
the server root (the adapter appends the version). Checks, in order:

1. route: ``POST /{api_version}/profiles/update`` (404 ``ROUTE_NOT_FOUND``, 405
   ``METHOD_NOT_ALLOWED``);
2. ``Authorization: Bearer <rest key>`` and ``X-Batch-Project: <project key>`` (401
   ``AUTHENTICATION_INVALID``);
3. ``Content-Type: application/json`` and a JSON body (400 ``MALFORMED_JSON_BODY``);
4. the request shape, all-or-nothing (400 ``MALFORMED_REQUEST``, message naming the
   operation): an array of 1..200 operations, each ``{"identifiers": {"custom_id": str},
   "attributes": {...}}`` and nothing else, custom_id non-empty and under 1024 characters,
   at most 50 attributes;
5. the weighted rate limit: a token bucket of ``burst`` tokens refilled at
   ``rate_per_second``, one token per operation; not enough tokens → 429
   ``TOO_MANY_REQUESTS`` (nothing consumed; ``Retry-After`` only when ``retry_after`` is set);
6. each attribute: an invalid name or value is skipped and reported, the rest of the profile
   is applied → 202 ``{"code": "SUCCESS_WITH_PARTIAL_ERRORS", "errors": [{"category":
   "attribute", "bulk_index": i, "attribute": name, "reason": ...}]}``; otherwise 202
   ``{"code": "SUCCESS"}``.

Unknown custom_ids create the profile. Operations apply in array order. ``events`` (real in
Batch) are out of this project's scope and rejected as an unknown operation key.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit

from .base import Incoming, LoopbackEmulator, Reply, serve_until_interrupted

__all__ = ["BatchEmulator", "Profile"]

DEFAULT_REST_API_KEY = "emu_rest_4f9a1c2e7b5d8036a1e9c4b7d2f06a38"
DEFAULT_PROJECT_KEY = "project_7c1e5a9b3d2f4e6a8b0c1d2e3f4a5b6c"
ROUTE = "profiles/update"  # route name in the request log
MARKETING = frozenset({"subscribed", "unsubscribed"})

_CUSTOM_NAME = re.compile(r"^[a-z0-9_]{1,30}$")
_TYPED_NAME = re.compile(r"^(date|url)\((.*)\)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
_LANGUAGE = re.compile(r"^[a-z]{2}$")
_REGION = re.compile(r"^[A-Z]{2}$")
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_ERROR_CODES = {
    400: "MALFORMED_REQUEST",
    401: "AUTHENTICATION_INVALID",
    404: "ROUTE_NOT_FOUND",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@dataclass
class Profile:
    """A stored profile. Custom attributes are kept by bare name (``date(x)`` → ``x``, typed
    in ``types``); native ones keep their ``$`` name."""

    custom_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    types: dict[str, Literal["date", "url"]] = field(default_factory=dict)


class _Malformed(Exception):
    pass


def _string_error(value: Any, what: str = "a string") -> str | None:
    if not isinstance(value, str):
        return f"value must be {what}"
    if not value:
        return "string must not be empty"
    if len(value) > 300:
        return "string longer than 300 characters"
    return None


def _native_error(name: str, value: str) -> str | None:
    checks: dict[str, tuple[Callable[[str], bool], str]] = {
        "$email_address": (lambda v: bool(_EMAIL.fullmatch(v)), "invalid email address"),
        "$phone_number": (lambda v: bool(_E164.fullmatch(v)), "phone must be E.164 (+33...)"),
        "$language": (lambda v: bool(_LANGUAGE.fullmatch(v)), "language must be 2 lower letters"),
        "$region": (lambda v: bool(_REGION.fullmatch(v)), "region must be 2 upper-case letters"),
        "$timezone": (lambda v: v in _timezones(), "timezone must be an IANA name"),
        "$email_marketing": (lambda v: v in MARKETING, "must be subscribed or unsubscribed"),
        "$sms_marketing": (lambda v: v in MARKETING, "must be subscribed or unsubscribed"),
    }
    check = checks.get(name)
    if check is None:
        return "unknown native attribute"
    if not isinstance(value, str):
        return "value must be a string"
    return None if check[0](value) else check[1]


def _is_utc_iso8601(value: str) -> bool:
    if "T" not in value.upper():
        return False
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return False
    return moment.utcoffset() == timedelta(0)


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return bool(_URL_SCHEME.fullmatch(parts.scheme) and parts.netloc) and " " not in value


def _custom_error(value: Any) -> str | None:
    if isinstance(value, bool | int | float):
        return None
    if isinstance(value, list):
        if len(value) > 25:
            return "array longer than 25 items"
        for item in value:
            error = _string_error(item, "an array of strings")
            if error:
                return f"array item: {error}" if isinstance(item, str) else error
        return None
    if isinstance(value, str):
        return _string_error(value)
    return "unsupported value type (string, number, boolean, array of strings or null)"


def _check_attribute(name: str, value: Any) -> tuple[str, Literal["date", "url"] | None]:
    """Validate one attribute; returns (stored name, type) or raises ValueError(reason)."""
    if name.startswith("$"):
        error = None if value is None else _native_error(name, value)
        if error:
            raise ValueError(error)
        return name, None
    typed = _TYPED_NAME.fullmatch(name)
    bare = typed.group(2) if typed else name
    if not _CUSTOM_NAME.fullmatch(bare):
        raise ValueError("invalid attribute name: lower-case [a-z0-9_], at most 30 characters")
    if typed is None:
        error = None if value is None else _custom_error(value)
        if error:
            raise ValueError(error)
        return bare, None
    kind: Literal["date", "url"] = "date" if typed.group(1) == "date" else "url"
    if value is not None:
        if not isinstance(value, str):
            raise ValueError(f"{kind} value must be a string")
        if kind == "date" and not _is_utc_iso8601(value):
            raise ValueError("date must be an ISO-8601 UTC date-time (2024-01-31T12:00:00Z)")
        if kind == "url" and not _is_url(value):
            raise ValueError("invalid URL")
    return bare, kind


def _check_operation(index: int, operation: Any, max_attributes: int) -> None:
    where = f"operation {index}"
    if not isinstance(operation, dict):
        raise _Malformed(f"{where} must be an object")
    unknown = sorted(set(operation) - {"identifiers", "attributes"})
    if unknown:
        raise _Malformed(f"{where}: unknown key(s) {', '.join(unknown)}")
    identifiers = operation.get("identifiers")
    if not isinstance(identifiers, dict) or set(identifiers) != {"custom_id"}:
        raise _Malformed(f"{where}: identifiers must hold exactly one identifier, custom_id")
    custom_id = identifiers["custom_id"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) >= 1024:
        raise _Malformed(f"{where}: custom_id must be a non-empty string under 1024 characters")
    attributes = operation.get("attributes")
    if not isinstance(attributes, dict):
        raise _Malformed(f"{where}: attributes must be an object")
    if len(attributes) > max_attributes:
        raise _Malformed(f"{where}: {len(attributes)} attributes, at most {max_attributes}")


class BatchEmulator(LoopbackEmulator):
    """Batch Profile API on loopback; ``base_url`` is the root, ``endpoint`` the full URL."""

    def __init__(
        self,
        *,
        rest_api_key: str = DEFAULT_REST_API_KEY,
        project_key: str = DEFAULT_PROJECT_KEY,
        api_version: str = "2.11",
        rate_per_second: float | None = 300.0,
        burst: int = 1000,
        retry_after: float | Literal["auto"] | None = None,
        clock: Callable[[], float] | None = None,
        max_operations: int = 200,
        max_attributes: int = 50,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.rest_api_key = rest_api_key
        self.project_key = project_key
        self.api_version = api_version
        #: token refill per second; None disables the rate limit
        self.rate_per_second = rate_per_second
        self.burst = burst
        #: Retry-After on 429: None (no header), a number of seconds, or "auto" (time to refill)
        self.retry_after = retry_after
        #: monotonic seconds for the token bucket; tests inject a fake one
        self.clock: Callable[[], float] = clock or time.monotonic
        self.max_operations = max_operations
        self.max_attributes = max_attributes
        self._profiles: dict[str, Profile] = {}
        self._tokens = float(burst)
        self._refilled_at: float | None = None

    # ------------------------------------------------------------- inspection
    @property
    def endpoint(self) -> str:
        return f"{self.root_url}/{self.api_version}/profiles/update"

    @property
    def profiles(self) -> dict[str, Profile]:
        """A deep copy of the stored profiles, by custom_id."""
        with self._lock:
            return copy.deepcopy(self._profiles)

    def profile(self, custom_id: str) -> Profile | None:
        with self._lock:
            found = self._profiles.get(custom_id)
            return copy.deepcopy(found) if found else None

    @property
    def tokens(self) -> float:
        """Operations the bucket would accept now."""
        with self._lock:
            self._refill()
            return self._tokens

    # --------------------------------------------------------- vendor hooks
    def fault_body(self, status: int) -> Any:
        code = _ERROR_CODES.get(status, "ERROR")
        return {"error_code": code, "error_message": f"injected {status}"}

    def fault_headers(self, status: int) -> dict[str, str]:
        if status == 429 and isinstance(self.retry_after, int | float):
            return {"Retry-After": _seconds(self.retry_after)}
        return {}

    def handle(self, request: Incoming) -> Reply:
        route_path = f"/{self.api_version}/profiles/update"
        if request.path != route_path:
            return _error(404, "ROUTE_NOT_FOUND", f"no route {request.path}", "unknown")
        if request.method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", "only POST is allowed")
        headers = request.headers
        if headers.get("authorization") != f"Bearer {self.rest_api_key}":
            return _error(401, "AUTHENTICATION_INVALID", "missing or wrong REST API key")
        if headers.get("x-batch-project") != self.project_key:
            return _error(401, "AUTHENTICATION_INVALID", "missing or wrong X-Batch-Project")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(400, "MALFORMED_JSON_BODY", "Content-Type must be application/json")
        if request.json_error is not None or not request.raw_body:
            return _error(400, "MALFORMED_JSON_BODY", request.json_error or "empty body")
        operations = request.body
        try:
            self._check_shape(operations)
        except _Malformed as malformed:
            return _error(400, "MALFORMED_REQUEST", str(malformed))
        wait = self._take(len(operations))
        if wait is not None:
            reply = _error(429, "TOO_MANY_REQUESTS", "profile update rate limit exceeded")
            if self.retry_after == "auto":
                reply.headers["Retry-After"] = _seconds(math.ceil(wait))
            elif self.retry_after is not None:
                reply.headers["Retry-After"] = _seconds(self.retry_after)
            return reply
        errors = [error for index, op in enumerate(operations) for error in self._apply(index, op)]
        if errors:
            body = {"code": "SUCCESS_WITH_PARTIAL_ERRORS", "errors": errors}
            return Reply(202, body, route=ROUTE)
        return Reply(202, {"code": "SUCCESS"}, route=ROUTE)

    # -------------------------------------------------------------- internals
    def _check_shape(self, operations: Any) -> None:
        if not isinstance(operations, list):
            raise _Malformed("the body must be a JSON array of operations")
        if not 1 <= len(operations) <= self.max_operations:
            raise _Malformed(f"{len(operations)} operations: 1 to {self.max_operations} allowed")
        for index, operation in enumerate(operations):
            _check_operation(index, operation, self.max_attributes)

    def _refill(self) -> None:
        now = self.clock()
        if self._refilled_at is not None and self.rate_per_second:
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_second)
        self._refilled_at = now

    def _take(self, weight: int) -> float | None:
        """Consume ``weight`` tokens, or return the seconds until they would be available."""
        if not self.rate_per_second:
            return None
        self._refill()
        if weight <= self._tokens:
            self._tokens -= weight
            return None
        return (weight - self._tokens) / self.rate_per_second

    def _apply(self, index: int, operation: dict[str, Any]) -> list[dict[str, Any]]:
        custom_id: str = operation["identifiers"]["custom_id"]
        profile = self._profiles.setdefault(custom_id, Profile(custom_id))
        errors: list[dict[str, Any]] = []
        for name, value in operation["attributes"].items():
            try:
                stored, kind = _check_attribute(name, value)
            except ValueError as invalid:
                errors.append(
                    {
                        "category": "attribute",
                        "bulk_index": index,
                        "attribute": name,
                        "reason": str(invalid),
                    }
                )
                continue
            profile.types.pop(stored, None)
            if value is None:
                profile.attributes.pop(stored, None)
                continue
            profile.attributes[stored] = copy.deepcopy(value)
            if kind is not None:
                profile.types[stored] = kind
        return errors


def _error(status: int, code: str, message: str, route: str = ROUTE) -> Reply:
    return Reply(status, {"error_code": code, "error_message": message}, route=route)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.emulators.batch --port 8082``: serve for manual demos."""
    parser = argparse.ArgumentParser(description="Batch Profile API emulator (loopback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-version", default="2.11")
    args = parser.parse_args(argv)
    emulator = BatchEmulator(host=args.host, port=args.port, api_version=args.api_version)
    serve_until_interrupted(
        emulator,
        lambda: [
            f"base_url      {emulator.base_url}",
            f"api_version   {emulator.api_version}",
            f"endpoint      {emulator.endpoint}",
            f"rest_api_key  {emulator.rest_api_key}",
            f"project_key   {emulator.project_key}",
            "Ctrl-C to stop",
        ],
    )


if __name__ == "__main__":
    main()
