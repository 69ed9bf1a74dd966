"""``type: crisp``: Crisp people profiles and people data (REST API v1).

Follows the contract page ``destinations/crisp.md``. Crisp quotas are counted per day, so the
adapter sends only the calls a change needs:

* a person is addressed by its ``people_id`` (the destination reference kept in state) once
  known, else by its e-mail address (lower-cased, trimmed, URL-encoded in paths);
* standard profile fields (dotted paths such as ``person.phone`` or ``company.name``) go to
  ``PATCH people/profile/{ref}``, custom attributes to ``PATCH people/data/{ref}`` wrapped in
  ``{"data": {...}}``; a change touching only one of the two sends only that call;
* **call order** — a full record (new person, re-enter, retry) without a people_id is
  *created first*: ``POST people/profile`` (its answer carries the people_id), then
  ``PATCH people/data/{people_id}``; ``people_exists`` falls back to ``PATCH`` through the
  e-mail. A person with a people_id, an ``update_only`` activation or a partial change is
  *updated first* through its reference; a 404 then means "not in Crisp": ignored
  (update_only), created (a full record in upsert/mirror) or rejected (a partial change of a
  profile deleted in Crisp: the next change of a mapped value sends the full record again);
* **grouping** — persons of one batch with a people_id known from state whose custom-data
  change is identical share one ``PATCH batch/data``; mirror deletes with a people_id share one
  ``PATCH batch/remove``; deletes by e-mail are single ``DELETE`` calls (404 = already gone);
* **clears** — a standard field is cleared with ``""`` (``[]`` for the list fields
  ``segments`` and ``person.locales``) and ``person.nickname`` is never cleared; a custom
  attribute is cleared by writing ``""`` (Crisp documents no way to remove one key).

Retries (429, 420, 5xx, timeouts), the per-second limiter and the daily request budget live in
:mod:`stream_sync.http`; 401/403 stop the activation. Credentials are sent as an HTTP Basic
header built here and never appear in logs, messages or dry-run previews.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from stream_sync.config.destinations import CrispDestination
from stream_sync.config.spec import CRISP_STANDARD_FIELD
from stream_sync.destinations.base import (
    Adapter,
    AttributeProblem,
    CheckRow,
    FatalDestinationError,
    Operation,
    Outcome,
    Unidentifiable,
    canonical,
)
from stream_sync.events import Value
from stream_sync.http import DestinationHttp, Verdict
from stream_sync.state import OpKind

CUSTOM_KEY = re.compile(r"^[a-z0-9_-]+$")
"""Crisp people-data keys: lower-case letters, digits, ``_`` and ``-``."""

#: one ``@``, something on each side, no whitespace; Crisp decides about the rest
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

NICKNAME = "person.nickname"
LIST_FIELDS = frozenset({"segments", "person.locales"})
TEXT_FIELDS = frozenset(
    {
        "email",
        "notepad",
        "person.nickname",
        "person.avatar",
        "person.gender",
        "person.phone",
        "person.address",
        "person.description",
        "person.website",
    }
)
#: largest ``people.profiles`` list sent in one ``batch/*`` call
BATCH_MAX = 100
#: persons of one batch worked on at the same time (the HTTP layer still paces every call)
DEFAULT_CONCURRENCY = 4

Job = Callable[[], Awaitable[None]]


def classify(response: httpx.Response) -> Verdict:
    """Crisp throttles with 429 *or* 420; 5xx and timeouts are retried; 401/403 are fatal."""
    status = response.status_code
    if status in (408, 420, 425, 429) or status >= 500:
        return Verdict.RETRY
    if status in (401, 403):
        return Verdict.FATAL
    return Verdict.OK


def _classify_check(response: httpx.Response) -> Verdict:
    """``check`` reports what it got instead of waiting out a throttled answer."""
    return Verdict.FATAL if response.status_code in (401, 403) else Verdict.OK


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    body: dict[str, Any] | None
    what: str  # route name for messages (never the e-mail or a credential)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    reason: str
    message: str
    data: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def missing(self) -> bool:
        return self.status == 404


@dataclass(frozen=True, slots=True)
class _Parts:
    """An operation split into Crisp's two halves."""

    fields: dict[str, Value]  # standard fields with a value (dotted path → value)
    clears: dict[str, Value]  # standard fields to clear (dotted path → "" or [])
    data: dict[str, Value]  # custom attributes, cleared ones as ""


@dataclass(frozen=True, slots=True)
class _DataStep:
    """The custom-data write left for a person with a known people_id (maybe grouped)."""

    people_id: str
    data: dict[str, Value]
    profile_done: bool

    @property
    def key(self) -> str:
        return json.dumps(self.data, sort_keys=True, separators=(",", ":"))


def _nest(flat: dict[str, Value]) -> dict[str, Any]:
    """``{"person.phone": "1", "company.name": "X"}`` → nested profile body."""
    body: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = body
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # a scalar mapped on a parent path wins
                break
            node = child
        else:
            node[leaf] = value
    return body


def _local_part(email: str) -> str:
    return email.split("@", 1)[0]


def _split(op: Operation) -> _Parts:
    fields: dict[str, Value] = {}
    clears: dict[str, Value] = {}
    data: dict[str, Value] = {}
    for name, value in op.fields.items():
        if name in op.custom:
            data[name] = value
        elif name != "email":  # the e-mail is the identifier: it comes from op.identifier
            fields[name] = value
    for name in op.clears:
        if name in op.custom:
            data[name] = ""
        elif name not in ("email", NICKNAME):
            clears[name] = [] if name in LIST_FIELDS else ""
    return _Parts(fields, clears, data)


def _patch_body(op: Operation, parts: _Parts) -> dict[str, Any]:
    """The profile PATCH: changed fields, clears, and the new e-mail on an identifier change."""
    body = _nest({**parts.clears, **parts.fields})
    if op.previous_identifier is not None:
        body["email"] = op.identifier
    return body


def _create_body(op: Operation, parts: _Parts) -> dict[str, Any]:
    """The profile POST: e-mail, every standard field with a value, and always a nickname."""
    body = _nest(dict(parts.fields))
    body["email"] = op.identifier
    person = body.get("person")
    if not isinstance(person, dict):
        person = body["person"] = {}
    if not person.get("nickname"):
        person["nickname"] = _local_part(op.identifier)
    return body


def _answer(response: httpx.Response) -> _Answer:
    body: Any
    try:
        body = response.json()
    except ValueError:  # HEAD, or not JSON
        body = None
    reason = ""
    message = ""
    data: Any = None
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        data = body.get("data")
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            message = data["message"]
    return _Answer(response.status_code, reason or f"http_{response.status_code}", message, data)


def _people_id(answer: _Answer) -> str | None:
    data = answer.data
    if isinstance(data, dict) and isinstance(data.get("people_id"), str) and data["people_id"]:
        return str(data["people_id"])
    return None


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class CrispAdapter(Adapter):
    type_name = "crisp"
    supports_reference = True  # the people_id: an e-mail change is applied in place

    def __init__(
        self,
        name: str,
        dest: CrispDestination,
        http: DestinationHttp,
        *,
        custom_attributes: Iterable[str] = (),
        fields: Iterable[str] = (),
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        super().__init__(name)
        self.dest = dest
        self.http = http
        self.website_id = dest.website_id
        #: names ``check`` validates (the activations' mapping, when the caller knows it)
        self.custom_attributes = tuple(custom_attributes)
        self.fields = tuple(fields)
        self.concurrency = max(1, concurrency)
        token = base64.b64encode(
            f"{dest.identifier.get_secret_value()}:{dest.key.get_secret_value()}".encode()
        ).decode("ascii")
        self.__headers = {
            "Authorization": f"Basic {token}",
            "X-Crisp-Tier": dest.tier,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

    def __repr__(self) -> str:
        return f"CrispAdapter(name={self.name!r}, website_id={self.website_id!r})"

    # --- formatting (called by reconciliation) -----------------------------------------------

    def format_identifier(self, value: Value) -> str:
        if not isinstance(value, str):
            raise Unidentifiable("identifier_not_email", "the identifier is not an e-mail address")
        email = value.strip().lower()
        if not email:
            raise Unidentifiable("identifier_empty", "the identifier is empty")
        if not EMAIL.fullmatch(email):
            raise Unidentifiable("identifier_not_email", "the identifier is not an e-mail address")
        return email

    def format_field(
        self, field_name: str, value: Value, attr_type: str | None, custom: bool
    ) -> Value:
        if isinstance(value, float) and not math.isfinite(value):
            raise AttributeProblem(
                field_name, "invalid_number", f"{field_name}: {value} is not a number Crisp takes"
            )
        if custom:
            if not CUSTOM_KEY.fullmatch(field_name):
                raise AttributeProblem(
                    field_name,
                    "invalid_attribute_name",
                    f"Crisp people data keys must match ^[a-z0-9_-]+$; {field_name!r} is not sent",
                )
            if isinstance(value, list):
                raise AttributeProblem(
                    field_name,
                    "data_not_scalar",
                    f"Crisp people data only takes strings, numbers and booleans; the list value "
                    f"of {field_name!r} is not sent",
                )
            return canonical(value)
        if field_name in LIST_FIELDS:
            items = value if isinstance(value, list) else [value]
            return [_text(item) for item in items if item is not None]
        if isinstance(value, list):
            raise AttributeProblem(
                field_name,
                "value_not_scalar",
                f"the Crisp profile field {field_name} takes one value; the list is not sent",
            )
        if field_name == "email":
            return str(value).strip().lower()
        if field_name in TEXT_FIELDS:
            text = _text(value)
            if field_name == NICKNAME and not text.strip():
                raise AttributeProblem(
                    field_name, "empty_nickname", "Crisp refuses an empty person.nickname"
                )
            return text
        if isinstance(value, bool) and field_name == "person.timezone":
            return _text(value)
        return canonical(value)

    # --- requests ------------------------------------------------------------------------------

    def _website(self) -> str:
        return f"/website/{quote(self.website_id, safe='')}"

    def _profile(self, target: str) -> str:
        return f"{self._website()}/people/profile/{quote(target, safe='')}"

    def _data(self, target: str) -> str:
        return f"{self._website()}/people/data/{quote(target, safe='')}"

    def _req_create(self, op: Operation, parts: _Parts) -> _Request:
        path = f"{self._website()}/people/profile"
        return _Request("POST", path, _create_body(op, parts), "profile creation")

    def _req_patch(self, target: str, body: dict[str, Any]) -> _Request:
        return _Request("PATCH", self._profile(target), body, "profile update")

    def _req_data(self, target: str, data: dict[str, Value]) -> _Request:
        return _Request("PATCH", self._data(target), {"data": dict(data)}, "people data update")

    def _req_exists(self, target: str) -> _Request:
        return _Request("HEAD", self._profile(target), None, "profile lookup")

    def _req_delete(self, target: str) -> _Request:
        return _Request("DELETE", self._profile(target), None, "profile deletion")

    async def _send(self, req: _Request) -> _Answer:
        response = await self.http.request(
            req.method, req.path, json=req.body, classify=classify, headers=self.__headers
        )
        answer = _answer(response)
        if answer.status == 404 and answer.reason == "route_not_found":
            raise FatalDestinationError(
                "route_not_found",
                f"{self.name}: Crisp answered 404 route_not_found to the {req.what} "
                "(check base_url: it must end with /v1)",
            )
        return answer

    @staticmethod
    def _rejected(answer: _Answer, req: _Request) -> Outcome:
        detail = f": {answer.message}" if answer.message else ""
        return Outcome.rejected(
            answer.reason,
            f"Crisp refused the {req.what} (HTTP {answer.status} {answer.reason}){detail}",
        )

    def _first_request(self, op: Operation) -> _Request | None:
        """The first request :meth:`apply` sends for ``op`` alone (shared with the preview)."""
        if op.kind is OpKind.DELETE:
            return self._req_delete(op.ref or op.identifier)
        parts = _split(op)
        if op.kind is OpKind.UPSERT and op.full and op.ref is None:
            return self._req_create(op, parts)
        target = op.ref or op.identifier
        patch = _patch_body(op, parts)
        if patch:
            return self._req_patch(target, patch)
        if parts.data:
            return self._req_data(target, parts.data)
        if op.full:
            return self._req_exists(target)
        return None

    # --- apply -------------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Operation]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(ops)
        steps: dict[int, _DataStep] = {}

        async def person(index: int) -> None:
            result = await self._person(ops[index])
            if isinstance(result, _DataStep):
                steps[index] = result
            else:
                outcomes[index] = result

        def person_job(index: int) -> Job:
            return lambda: person(index)

        def remove_job(chunk: list[int]) -> Job:
            return lambda: self._remove_group(ops, chunk, outcomes)

        def data_job(chunk: list[int]) -> Job:
            return lambda: self._data_group(ops, chunk, steps, outcomes)

        removals = [i for i, op in enumerate(ops) if op.kind is OpKind.DELETE and op.ref]
        removal_set = set(removals)
        jobs = [person_job(i) for i in range(len(ops)) if i not in removal_set]
        jobs += [remove_job(chunk) for chunk in _chunks(removals, BATCH_MAX)]
        await self._gather(jobs)

        groups: dict[str, list[int]] = {}
        for index in sorted(steps):
            groups.setdefault(steps[index].key, []).append(index)
        await self._gather(
            [data_job(chunk) for group in groups.values() for chunk in _chunks(group, BATCH_MAX)]
        )
        done: list[Outcome] = []
        for outcome in outcomes:
            if outcome is None:  # pragma: no cover - every path sets one
                raise RuntimeError("crisp adapter left an operation without an outcome")
            done.append(outcome)
        return done

    async def _gather(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        if len(jobs) == 1 or self.concurrency == 1:
            for job in jobs:
                await job()
            return
        limiter = anyio.CapacityLimiter(self.concurrency)

        async def run(job: Job) -> None:
            async with limiter:
                await job()

        try:
            async with anyio.create_task_group() as tg:
                for job in jobs:
                    tg.start_soon(run, job)
        except BaseExceptionGroup as group:
            fatal, _ = group.split(FatalDestinationError)
            if fatal is not None:
                raise _first_leaf(fatal) from None
            errors, _ = group.split(Exception)
            if errors is not None:
                raise _first_leaf(errors) from None
            raise

    async def _person(self, op: Operation) -> Outcome | _DataStep:
        if op.kind is OpKind.DELETE:
            return await self._delete_one(op)
        parts = _split(op)
        if op.kind is OpKind.UPSERT and op.full and op.ref is None:
            return await self._create(op, parts, stale_ref=False)
        target = op.ref or op.identifier
        patch = _patch_body(op, parts)
        profile_done = False
        if patch or (op.full and not parts.data):
            req = self._req_patch(target, patch) if patch else self._req_exists(target)
            answer = await self._send(req)
            if answer.missing:
                return await self._missing(op, parts)
            if not answer.ok:
                return self._rejected(answer, req)
            profile_done = True
        if not parts.data:
            return Outcome.applied(op.ref)
        if op.ref is not None:
            return _DataStep(op.ref, parts.data, profile_done)
        req = self._req_data(target, parts.data)
        answer = await self._send(req)
        if answer.missing and not profile_done:
            return await self._missing(op, parts)
        if not answer.ok:
            return self._rejected(answer, req)
        return Outcome.applied(op.ref)

    async def _missing(self, op: Operation, parts: _Parts) -> Outcome:
        """The person is not in Crisp where we looked for it."""
        if op.kind is OpKind.UPDATE:
            return Outcome.ignored()
        if op.full:
            return await self._create(op, parts, stale_ref=op.ref is not None)
        return Outcome.rejected(
            "people_not_found",
            "the Crisp profile was not found (deleted in Crisp?); the full record is sent "
            "again at the next change of a mapped value or with replay --full-resync",
        )

    async def _create(self, op: Operation, parts: _Parts, *, stale_ref: bool) -> Outcome:
        req = self._req_create(op, parts)
        answer = await self._send(req)
        if answer.ok:
            created = _people_id(answer)
            if parts.data:
                data_req = self._req_data(created or op.identifier, parts.data)
                data_answer = await self._send(data_req)
                if not data_answer.ok:
                    return self._rejected(data_answer, data_req)
            return Outcome.applied(created)
        if answer.reason != "people_exists":
            return self._rejected(answer, req)
        # the e-mail is already in Crisp: update that profile through its e-mail
        email = op.identifier
        patch = _patch_body(op, parts)
        if patch:
            patch_req = self._req_patch(email, patch)
            patch_answer = await self._send(patch_req)
            if not patch_answer.ok:
                return self._rejected(patch_answer, patch_req)
        if parts.data:
            data_req = self._req_data(email, parts.data)
            data_answer = await self._send(data_req)
            if not data_answer.ok:
                return self._rejected(data_answer, data_req)
        people_id: str | None = None
        if stale_ref:
            # the people_id in state is gone: learn the current one (rare; one read)
            lookup = await self._send(_Request("GET", self._profile(email), None, "profile lookup"))
            people_id = _people_id(lookup) if lookup.ok else None
        return Outcome.applied(people_id)

    async def _data_single(self, op: Operation, step: _DataStep) -> Outcome:
        req = self._req_data(step.people_id, step.data)
        answer = await self._send(req)
        if answer.ok:
            return Outcome.applied(step.people_id)
        if answer.missing and not step.profile_done:
            return await self._missing(op, _split(op))
        return self._rejected(answer, req)

    async def _data_group(
        self,
        ops: Sequence[Operation],
        chunk: list[int],
        steps: dict[int, _DataStep],
        outcomes: list[Outcome | None],
    ) -> None:
        if len(chunk) == 1:
            index = chunk[0]
            outcomes[index] = await self._data_single(ops[index], steps[index])
            return
        first = steps[chunk[0]]
        body = {
            "people": {"profiles": [steps[i].people_id for i in chunk]},
            "data": dict(first.data),
        }
        path = f"{self._website()}/batch/data"
        answer = await self._send(_Request("PATCH", path, body, "bulk people data update"))
        if answer.ok:
            for index in chunk:
                outcomes[index] = Outcome.applied(steps[index].people_id)
            return
        unknown: set[str] = set()
        if answer.missing and isinstance(answer.data, dict):
            listed = answer.data.get("unknown")
            if isinstance(listed, list):
                unknown = {str(item) for item in listed}
        known = [i for i in chunk if steps[i].people_id not in unknown]
        if unknown and len(known) < len(chunk):
            # nothing was applied: the persons Crisp does not know are handled one by one,
            # the others are sent again together
            for index in chunk:
                if index not in known:
                    op, step = ops[index], steps[index]
                    if step.profile_done:
                        outcomes[index] = Outcome.rejected(
                            "people_not_found", "the Crisp profile disappeared during the update"
                        )
                    else:
                        outcomes[index] = await self._missing(op, _split(op))
            if known:
                await self._data_group(ops, known, steps, outcomes)
            return
        # refused without naming a culprit: one call per person finds it
        for index in chunk:
            outcomes[index] = await self._data_single(ops[index], steps[index])

    async def _delete_one(self, op: Operation) -> Outcome:
        req = self._req_delete(op.ref or op.identifier)
        answer = await self._send(req)
        if answer.ok or answer.missing:  # already gone: deletion is idempotent
            return Outcome.applied()
        return self._rejected(answer, req)

    async def _remove_group(
        self, ops: Sequence[Operation], chunk: list[int], outcomes: list[Outcome | None]
    ) -> None:
        if len(chunk) == 1:
            outcomes[chunk[0]] = await self._delete_one(ops[chunk[0]])
            return
        body = {"people": {"profiles": [ops[i].ref for i in chunk]}}
        path = f"{self._website()}/batch/remove"
        answer = await self._send(_Request("PATCH", path, body, "bulk profile deletion"))
        if answer.ok:
            for index in chunk:
                outcomes[index] = Outcome.applied()
            return
        for index in chunk:
            outcomes[index] = await self._delete_one(ops[index])

    # --- dry run, check ----------------------------------------------------------------------

    def preview_request(self, op: Operation) -> dict[str, Any]:
        req = self._first_request(op)
        if req is None:
            return {"method": None, "url": None, "body": None}
        return {"method": req.method, "url": self.http.url(req.path), "body": req.body}

    async def check(self) -> list[CheckRow]:
        rows = [await self._check_credentials()]
        bad = [name for name in self.custom_attributes if not CUSTOM_KEY.fullmatch(name)]
        if bad:
            rows.append(
                CheckRow(
                    f"destination {self.name}: custom attributes",
                    False,
                    "invalid people data key(s) "
                    + ", ".join(repr(name) for name in bad)
                    + " (lower-case letters, digits, '_' and '-' only)",
                )
            )
        else:
            count = len(self.custom_attributes)
            detail = (
                f"{count} valid name(s); " if count else "names checked when the config loads; "
            )
            rows.append(
                CheckRow(
                    f"destination {self.name}: custom attributes",
                    True,
                    detail + "Crisp creates people data keys on first write",
                )
            )
        wrong = [name for name in self.fields if not CRISP_STANDARD_FIELD.fullmatch(name)]
        if wrong:
            rows.append(
                CheckRow(
                    f"destination {self.name}: mapped fields",
                    False,
                    "not Crisp profile fields: " + ", ".join(wrong),
                )
            )
        elif self.fields:
            rows.append(
                CheckRow(
                    f"destination {self.name}: mapped fields",
                    True,
                    f"{len(self.fields)} standard profile field(s)",
                )
            )
        return rows

    async def _check_credentials(self) -> CheckRow:
        item = f"destination {self.name}: credentials"
        path = f"{self._website()}/people/profiles/1"
        try:
            with anyio.fail_after(max(float(self.dest.timeout_s), 5.0) * 2):
                response = await self.http.request(
                    "GET", path, classify=_classify_check, headers=self.__headers
                )
        except FatalDestinationError as err:
            return CheckRow(item, False, err.message)
        except TimeoutError:
            return CheckRow(item, False, f"no answer from {self.http.base_url}")
        answer = _answer(response)
        if answer.ok:
            return CheckRow(
                item, True, f"website {self.website_id} readable with a {self.dest.tier} token"
            )
        return CheckRow(item, False, f"HTTP {answer.status} {answer.reason}")

    async def aclose(self) -> None:
        await self.http.aclose()


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(value)
    return str(canonical(value))
