"""Strict emulator of the Crisp REST API v1 (people profiles and people data).

Written from the contract page ``/work/shared/destinations/crisp.md`` only. Every answer is
the envelope ``{"error": bool, "reason": str, "data": ...}`` (HEAD: headers only). Checks, in
order: Basic ``identifier:key`` + ``X-Crisp-Tier`` (401 ``invalid_session``), the daily
quota (429 ``rate_limited``), the route and website (404 ``route_not_found``, 405
``method_not_allowed``, 403 ``not_allowed``), the JSON body (400 ``invalid_data``), then the
route itself.

Decisions on points the contract leaves open (documented for adapter authors):

* duplicate email on create or email change → **409** ``people_exists``;
* create answers **201** ``added`` with ``data.people_id``; updates 200 ``updated``; delete
  200 ``deleted``; reads 200 ``resolved``; ``batch/*`` **202** ``processing``;
* ``batch/data`` with any unknown people_id (emails are not accepted there) → 404
  ``people_not_found`` listing them in ``data.unknown``, and nothing is applied;
  ``batch/remove`` ignores unknown ids (deletion is idempotent);
* ``person.nickname`` is required on create/PUT and cannot be emptied (``require_nickname``);
* the path segment is decoded like a form value, so an unencoded ``+`` reads as a space:
  emails must be URL-encoded;
* the quota counts every authenticated request (whatever its answer) per UTC day; injected
  faults are answered before auth and are not counted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from .base import Incoming, LoopbackEmulator, Reply, serve_until_interrupted

__all__ = ["DAILY_QUOTA_BY_TIER", "CrispEmulator", "Person"]

Tier = Literal["website", "plugin"]
DataValue = str | int | float | bool
_Handler = Callable[[str, str, Any], Reply]

DEFAULT_WEBSITE_ID = "8c842203-7ed8-4e29-a608-7cf78a7d2fcc"
DEFAULT_IDENTIFIER = "3f1c9c52-6a1e-4b8e-9d0a-52b7e1d4c9a1"
DEFAULT_KEY = "9b1f0e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f"
DAILY_QUOTA_BY_TIER: dict[str, int] = {"website": 10_000, "plugin": 5_000}
PAGE_SIZE = 20

_DATA_KEY = re.compile(r"^[a-z0-9_-]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PROFILE_FIELDS = frozenset({"email", "person", "company", "segments", "notepad"})
_PERSON_TEXT = frozenset(
    {"nickname", "avatar", "gender", "phone", "address", "description", "website"}
)
_PERSON_FIELDS = _PERSON_TEXT | {"timezone", "locales", "employment", "geolocation"}
_FAULT_REASONS = {
    400: "invalid_data",
    401: "invalid_session",
    403: "not_allowed",
    404: "not_found",
    420: "rate_limited",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}


@dataclass
class Person:
    """A stored person: ``profile`` holds the standard fields other than ``email``."""

    people_id: str
    email: str
    profile: dict[str, Any] = field(default_factory=dict)
    data: dict[str, DataValue] = field(default_factory=dict)

    def card(self) -> dict[str, Any]:
        return {"people_id": self.people_id, "email": self.email, **copy.deepcopy(self.profile)}


class _Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.data = status, reason, message, data


def _invalid(message: str) -> _Rejected:
    return _Rejected(400, "invalid_data", message)


def _envelope(status: int, reason: str, data: Any, route: str) -> Reply:
    return Reply(status, {"error": status >= 400, "reason": reason, "data": data}, route=route)


def _check_email(value: Any) -> str:
    if not isinstance(value, str) or not _EMAIL.fullmatch(value):
        raise _invalid(f"email must be a valid address without spaces, got {value!r}")
    return value


def _check_strings(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid(f"{name} must be an array of strings")


def _check_person(person: Any, *, full: bool, require_nickname: bool) -> None:
    if not isinstance(person, dict):
        raise _invalid("person must be an object")
    unknown = sorted(set(person) - _PERSON_FIELDS)
    if unknown:
        raise _invalid(f"unknown person field(s): {', '.join(unknown)}")
    for name in _PERSON_TEXT & set(person):
        if not isinstance(person[name], str):
            raise _invalid(f"person.{name} must be a string")
    if "nickname" in person and not person["nickname"].strip():
        raise _invalid("person.nickname cannot be empty")
    if full and require_nickname and "nickname" not in person:
        raise _invalid("person.nickname is required")
    timezone = person.get("timezone")
    if timezone is not None and (
        isinstance(timezone, bool) or not isinstance(timezone, int | float | str)
    ):
        raise _invalid("person.timezone must be a number or a string")
    if "locales" in person:
        _check_strings("person.locales", person["locales"])
    for name in ("employment", "geolocation"):
        if name in person and not isinstance(person[name], dict):
            raise _invalid(f"person.{name} must be an object")


def _check_profile(body: Any, *, full: bool, require_nickname: bool) -> None:
    """Validate a profile body; ``full`` for create and PUT (email and person required)."""
    if not isinstance(body, dict):
        raise _invalid("the profile must be a JSON object")
    if "data" in body:
        raise _invalid("profile routes do not accept data: use PATCH people/data")
    unknown = sorted(set(body) - _PROFILE_FIELDS)
    if unknown:
        raise _invalid(f"unknown profile field(s): {', '.join(unknown)}")
    if full or "email" in body:
        _check_email(body.get("email"))
    if "person" in body:
        _check_person(body["person"], full=full, require_nickname=require_nickname)
    elif full and require_nickname:
        raise _invalid("person.nickname is required")
    if "company" in body and not isinstance(body["company"], dict):
        raise _invalid("company must be an object")
    if "segments" in body:
        _check_strings("segments", body["segments"])
    if "notepad" in body and not isinstance(body["notepad"], str):
        raise _invalid("notepad must be a string")


def _check_data(value: Any) -> dict[str, DataValue]:
    if not isinstance(value, dict):
        raise _invalid("data must be an object")
    for key, item in value.items():
        if not _DATA_KEY.fullmatch(key):
            raise _invalid(f"data key {key!r} must match ^[a-z0-9_-]+$")
        if not isinstance(item, str | int | float | bool):
            raise _invalid(f"data value of {key!r} must be a string, number or boolean")
    return value


def _data_wrapper(body: Any, extra: Sequence[str] = ()) -> dict[str, DataValue]:
    if not isinstance(body, dict) or "data" not in body:
        raise _invalid('the body must be {"data": {...}}')
    unknown = sorted(set(body) - {"data", *extra})
    if unknown:
        raise _invalid(f"unknown field(s): {', '.join(unknown)}")
    return _check_data(body["data"])


def _profile_list(body: Any) -> list[str]:
    people = body.get("people") if isinstance(body, dict) else None
    profiles = people.get("profiles") if isinstance(people, dict) else None
    if not isinstance(profiles, list) or not profiles:
        raise _invalid('the body must hold {"people": {"profiles": [people_id, ...]}}')
    if not all(isinstance(item, str) for item in profiles):
        raise _invalid("people.profiles must hold people_id strings")
    if isinstance(people, dict) and set(people) != {"profiles"}:
        raise _invalid("people must only hold profiles")
    return profiles


def _standard(body: dict[str, Any]) -> dict[str, Any]:
    """The profile fields of a body other than email (stored on ``Person.email``)."""
    return {key: copy.deepcopy(value) for key, value in body.items() if key != "email"}


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class CrispEmulator(LoopbackEmulator):
    """Crisp REST API v1 on loopback; ``base_url`` ends with ``/v1``."""

    base_path = "/v1"

    def __init__(
        self,
        *,
        website_id: str = DEFAULT_WEBSITE_ID,
        identifier: str = DEFAULT_IDENTIFIER,
        key: str = DEFAULT_KEY,
        tier: Tier = "website",
        daily_quota: int | Literal["tier"] | None = "tier",
        now: Callable[[], datetime] | None = None,
        require_nickname: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        if tier not in DAILY_QUOTA_BY_TIER:
            raise ValueError("tier must be 'website' or 'plugin'")
        self.website_id = website_id
        self.identifier = identifier
        self.key = key
        self.tier: Tier = tier
        #: requests allowed per UTC day (None: unlimited); "tier" → 10,000 website / 5,000 plugin
        self.daily_quota = DAILY_QUOTA_BY_TIER[tier] if daily_quota == "tier" else daily_quota
        #: the clock of the quota day; tests replace it to move to the next day
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.require_nickname = require_nickname
        self._people: dict[str, Person] = {}
        self._by_email: dict[str, str] = {}
        self._quota_day: date | None = None
        self._quota_used = 0

    # ------------------------------------------------------------- inspection
    @property
    def website_url(self) -> str:
        return f"{self.base_url}/website/{self.website_id}"

    @property
    def people(self) -> dict[str, Person]:
        """A deep copy of the stored people, by people_id."""
        with self._lock:
            return copy.deepcopy(self._people)

    def find(self, email: str) -> Person | None:
        """The person with this email (trimmed, case-insensitive), as a copy."""
        with self._lock:
            people_id = self._by_email.get(email.strip().lower())
            return copy.deepcopy(self._people[people_id]) if people_id else None

    def add_person(
        self,
        email: str,
        *,
        nickname: str | None = None,
        profile: dict[str, Any] | None = None,
        data: dict[str, DataValue] | None = None,
        people_id: str | None = None,
    ) -> Person:
        """Seed a person directly (no request, no quota). Returns a copy."""
        with self._lock:
            if email.strip().lower() in self._by_email:
                raise ValueError(f"{email} already exists")
            stored = copy.deepcopy(profile or {})
            stored.setdefault("person", {}).setdefault("nickname", nickname or email.split("@")[0])
            person = Person(people_id or str(uuid.uuid4()), email, stored, dict(data or {}))
            self._store(person)
            return copy.deepcopy(person)

    @property
    def quota_used(self) -> int:
        """Requests counted against today's (UTC) quota."""
        with self._lock:
            return self._quota_used if self._quota_day == self._today() else 0

    def throttle(self, count: int = 1, status: int = 429) -> None:
        """Answer the next ``count`` requests with Crisp throttling (429 or 420)."""
        if status not in (420, 429):
            raise ValueError("Crisp throttles with 429 or 420")
        self.inject(status, count)

    # --------------------------------------------------------- vendor hooks
    def fault_body(self, status: int) -> Any:
        reason = _FAULT_REASONS.get(status, "error")
        return {"error": True, "reason": reason, "data": {"message": f"injected {status}"}}

    def handle(self, request: Incoming) -> Reply:
        route = "unknown"
        try:
            self._authenticate(request)
            self._count_quota()
            route, handler, ref = self._route(request)
            body = self._json_body(request) if request.method in ("POST", "PATCH", "PUT") else None
            return handler(route, ref, body)
        except _Rejected as rejected:
            data = rejected.data if rejected.data is not None else {"message": rejected.message}
            return _envelope(rejected.status, rejected.reason, data, route)

    # -------------------------------------------------------------- checks
    def _authenticate(self, request: Incoming) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if scheme.lower() != "basic" or decoded != f"{self.identifier}:{self.key}":
            raise _Rejected(401, "invalid_session", "HTTP Basic identifier:key is missing or wrong")
        tier = request.headers.get("x-crisp-tier")
        if tier != self.tier:
            raise _Rejected(401, "invalid_session", f"X-Crisp-Tier must be {self.tier!r}")

    def _today(self) -> date:
        moment = self.now()
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date()

    def _count_quota(self) -> None:
        today = self._today()
        if today != self._quota_day:
            self._quota_day, self._quota_used = today, 0
        self._quota_used += 1
        if self.daily_quota is not None and self._quota_used > self.daily_quota:
            raise _Rejected(429, "rate_limited", f"daily quota of {self.daily_quota} exhausted")

    def _json_body(self, request: Incoming) -> Any:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise _invalid("Content-Type must be application/json")
        if request.json_error is not None or request.body is None:
            raise _invalid(f"the body must be JSON: {request.json_error or 'empty'}")
        return request.body

    def _route(self, request: Incoming) -> tuple[str, _Handler, str]:
        prefix = f"{self.base_path}/website/"
        if not request.path.startswith(prefix):
            raise _Rejected(404, "route_not_found", f"no route {request.path}")
        parts = request.path[len(prefix) :].split("/")
        if unquote_plus(parts[0]) != self.website_id:
            raise _Rejected(403, "not_allowed", "this token has no access to that website")
        parts = parts[1:]
        shape = tuple(parts[:2]) if len(parts) in (2, 3) else ()
        ref = unquote_plus(parts[2]) if len(parts) == 3 else ""
        methods = self._routes.get((shape, len(parts) == 3))
        if methods is None or (len(parts) == 3 and not ref):
            raise _Rejected(404, "route_not_found", f"no route {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            raise _Rejected(405, "method_not_allowed", f"{request.method} is not allowed here")
        return f"{request.method} {'/'.join(shape)}", handler, ref

    @property
    def _routes(self) -> dict[tuple[tuple[str, ...], bool], dict[str, _Handler]]:
        """(first two path segments, has a people ref) → method → handler."""
        return {
            (("people", "profile"), False): {"POST": self._create},
            (("people", "profile"), True): {
                "HEAD": self._get_profile,
                "GET": self._get_profile,
                "PATCH": self._patch_profile,
                "PUT": self._put_profile,
                "DELETE": self._delete_profile,
            },
            (("people", "data"), True): {
                "GET": self._get_data,
                "PATCH": self._patch_data,
                "PUT": self._put_data,
            },
            (("people", "profiles"), True): {"GET": self._list_profiles},
            (("batch", "data"), False): {"PATCH": self._batch_data},
            (("batch", "remove"), False): {"PATCH": self._batch_remove},
        }

    def _resolve(self, ref: str) -> Person:
        person = self._people.get(ref)
        if person is None:
            people_id = self._by_email.get(ref.lower())
            person = self._people.get(people_id) if people_id else None
        if person is None:
            raise _Rejected(404, "people_not_found", f"no person {ref!r}")
        return person

    def _claim_email(self, email: str, owner: str | None) -> None:
        taken_by = self._by_email.get(email.lower())
        if taken_by is not None and taken_by != owner:
            raise _Rejected(409, "people_exists", f"{email} is already used by another person")

    def _store(self, person: Person) -> None:
        self._people[person.people_id] = person
        self._by_email[person.email.lower()] = person.people_id

    def _set_email(self, person: Person, email: str) -> None:
        self._claim_email(email, person.people_id)
        self._by_email.pop(person.email.lower(), None)
        person.email = email
        self._by_email[email.lower()] = person.people_id

    # -------------------------------------------------------------- routes
    def _create(self, route: str, _ref: str, body: Any) -> Reply:
        _check_profile(body, full=True, require_nickname=self.require_nickname)
        self._claim_email(body["email"], None)
        profile = _standard(body)
        person = Person(str(uuid.uuid4()), body["email"], profile)
        self._store(person)
        return _envelope(201, "added", {"people_id": person.people_id}, route)

    def _get_profile(self, route: str, ref: str, _body: Any) -> Reply:
        return _envelope(200, "resolved", self._resolve(ref).card(), route)

    def _patch_profile(self, route: str, ref: str, body: Any) -> Reply:
        person = self._resolve(ref)
        _check_profile(body, full=False, require_nickname=self.require_nickname)
        if "email" in body:
            self._set_email(person, body["email"])
        _merge(person.profile, _standard(body))
        return _envelope(200, "updated", {}, route)

    def _put_profile(self, route: str, ref: str, body: Any) -> Reply:
        person = self._resolve(ref)
        _check_profile(body, full=True, require_nickname=self.require_nickname)
        self._set_email(person, body["email"])
        person.profile = _standard(body)
        return _envelope(200, "updated", {}, route)

    def _delete_profile(self, route: str, ref: str, _body: Any) -> Reply:
        person = self._resolve(ref)
        del self._people[person.people_id]
        self._by_email.pop(person.email.lower(), None)
        return _envelope(200, "deleted", {}, route)

    def _get_data(self, route: str, ref: str, _body: Any) -> Reply:
        return _envelope(200, "resolved", {"data": dict(self._resolve(ref).data)}, route)

    def _patch_data(self, route: str, ref: str, body: Any) -> Reply:
        person = self._resolve(ref)
        person.data.update(_data_wrapper(body))
        return _envelope(200, "updated", {}, route)

    def _put_data(self, route: str, ref: str, body: Any) -> Reply:
        person = self._resolve(ref)
        person.data = dict(_data_wrapper(body))
        return _envelope(200, "updated", {}, route)

    def _list_profiles(self, route: str, ref: str, _body: Any) -> Reply:
        if not ref.isdigit() or int(ref) < 1:
            raise _invalid("the page number must be an integer from 1")
        start = (int(ref) - 1) * PAGE_SIZE
        cards = [person.card() for person in list(self._people.values())[start:][:PAGE_SIZE]]
        return _envelope(200, "resolved", cards, route)

    def _batch_data(self, route: str, _ref: str, body: Any) -> Reply:
        data = _data_wrapper(body, extra=("people",))
        profiles = _profile_list(body)
        unknown = [people_id for people_id in profiles if people_id not in self._people]
        if unknown:
            raise _Rejected(404, "people_not_found", "unknown people_id", {"unknown": unknown})
        for people_id in profiles:
            self._people[people_id].data.update(data)
        return _envelope(202, "processing", {}, route)

    def _batch_remove(self, route: str, _ref: str, body: Any) -> Reply:
        profiles = _profile_list(body)
        if set(body) != {"people"}:
            raise _invalid("batch/remove only takes people")
        for people_id in profiles:
            person = self._people.pop(people_id, None)
            if person is not None:
                self._by_email.pop(person.email.lower(), None)
        return _envelope(202, "processing", {}, route)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.emulators.crisp --port 8081``: serve for manual demos."""
    parser = argparse.ArgumentParser(description="Crisp API emulator (loopback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tier", choices=sorted(DAILY_QUOTA_BY_TIER), default="website")
    parser.add_argument("--daily-quota", type=int, default=None, help="default: by tier")
    args = parser.parse_args(argv)
    emulator = CrispEmulator(
        host=args.host,
        port=args.port,
        tier=args.tier,
        daily_quota=args.daily_quota if args.daily_quota is not None else "tier",
    )
    serve_until_interrupted(
        emulator,
        lambda: [
            f"base_url    {emulator.base_url}",
            f"website_id  {emulator.website_id}",
            f"identifier  {emulator.identifier}",
            f"key         {emulator.key}",
            f"tier        {emulator.tier} (header X-Crisp-Tier: {emulator.tier})",
            f"daily_quota {emulator.daily_quota}",
            "Ctrl-C to stop",
        ],
    )


if __name__ == "__main__":
    main()
