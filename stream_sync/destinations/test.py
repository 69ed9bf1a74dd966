"""``type: test``: the project's own fault-injecting destination, spoken to over HTTP.

The server lives in the test suite (``tests/fakes/test_destination.py``); this adapter speaks
its small JSON protocol so that tests exercise the real HTTP layer (limits, retries,
Retry-After, fatal answers, batch splitting):

``POST {base_url}/apply`` ``{"operations": [{"person_id", "op", "identifier", "ref", "fields",
"clears", "full", "previous_identifier"}]}`` → 200 ``{"results": [{"status": "applied" |
"ignored" | "rejected", "ref", "reason", "message", "attribute_errors": [...]}]}``; 400 with no
per-person results → the batch is split; 401/403 → fatal; 429/5xx → retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from stream_sync.destinations.base import (
    Adapter,
    AttributeProblem,
    BatchRejected,
    CheckRow,
    FatalDestinationError,
    Operation,
    Outcome,
    OutcomeKind,
)
from stream_sync.http import DestinationHttp

#: keyed by ``OpKind`` (a ``StrEnum``: its members find their string keys without ``.value``,
#: a property call once per operation)
_OPS = {"UPSERT": "upsert", "UPDATE": "update", "DELETE": "delete"}


def _wire(op: Operation) -> dict[str, Any]:
    return {
        "person_id": op.person_id,
        "op": _OPS[op.kind],
        "identifier": op.identifier,
        "ref": op.ref,
        "fields": op.fields,
        "clears": op.clears,  # a tuple: a JSON array all the same
        "full": op.full,
        "previous_identifier": op.previous_identifier,
    }


class TestAdapter(Adapter):
    __test__ = False
    type_name = "test"
    supports_reference = True

    def __init__(self, name: str, http: DestinationHttp) -> None:
        super().__init__(name)
        self.http = http

    async def apply(self, ops: Sequence[Operation]) -> list[Outcome]:
        response = await self.http.request(
            "POST", "/apply", json={"operations": [_wire(op) for op in ops]}, weight=len(ops)
        )
        if response.status_code == 400:
            body = _json(response)
            raise BatchRejected(
                str(body.get("reason", "bad_request")), str(body.get("message", ""))
            )
        if response.status_code != 200:
            raise FatalDestinationError(
                f"http_{response.status_code}",
                f"{self.name}: unexpected answer {response.status_code}",
            )
        results = _json(response).get("results")
        if not isinstance(results, list) or len(results) != len(ops):
            raise FatalDestinationError("bad_answer", f"{self.name}: malformed results")
        outcomes = []
        for result in results:
            status = result.get("status")
            if status == "applied":
                outcome = Outcome.applied(result.get("ref"))
            elif status == "ignored":
                outcome = Outcome.ignored()
            else:
                outcome = Outcome(
                    OutcomeKind.REJECTED,
                    reason=str(result.get("reason", "rejected")),
                    message=str(result.get("message", "refused by the test destination")),
                )
            for problem in result.get("attribute_errors") or []:
                outcome.attribute_problems.append(
                    AttributeProblem(
                        str(problem.get("attribute")),
                        str(problem.get("reason", "invalid_value")),
                        str(problem.get("message", "")),
                    )
                )
            outcomes.append(outcome)
        return outcomes

    def preview_request(self, op: Operation) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": self.http.url("/apply"),
            "body": {"operations": [_wire(op)]},
        }

    async def check(self) -> list[CheckRow]:
        try:
            response = await self.http.request("GET", "/check")
        except FatalDestinationError as err:
            return [CheckRow(f"destination {self.name}: credentials", False, err.message)]
        ok = response.status_code == 200
        return [
            CheckRow(f"destination {self.name}: credentials", ok, f"HTTP {response.status_code}")
        ]

    async def aclose(self) -> None:
        await self.http.aclose()


def _json(response: Any) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)  # 1,000 results: ~3x faster than json
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
