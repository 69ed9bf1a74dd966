"""The fault-injecting test destination (``type: test``), a real HTTP server on loopback.

It speaks the protocol of ``stream_sync/destinations/test.py`` and keeps, per namespace (the
first path segment of the base URL, one per activation in the tests), the records it
acknowledged — so tests compare the destination's final state with a state they compute
themselves from the events. Faults come from the shared emulator base (``inject``,
``fail_rate``, ``latency``, ``down``) plus:

- ``hold()``: every ``/apply`` request waits until ``release()``; ``wait_held()`` returns once
  one is held (a batch is in flight — the moment to SIGKILL the service);
- ``reject(person_id, ...)``: per-person rejections; ``reject_batch_with(person_id)``: a whole
  request containing that person is refused with 400 naming no culprit (batch splitting);
- ``unauthorized(namespace)``: 401 on every request of a namespace.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.emulators.base import Incoming, LoopbackEmulator, Reply, serve_until_interrupted

TOKEN = "test-token-0123456789"


@dataclass
class Namespace:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # identifier → fields
    refs: dict[str, str] = field(default_factory=dict)  # ref → identifier
    ops: list[dict[str, Any]] = field(default_factory=list)  # acknowledged operations
    requests: int = 0
    noops: int = 0  # acknowledged operations that changed nothing (redundant writes)
    #: every /apply request: (arrived, answered) wall-clock seconds and its person ids
    applies: list[tuple[float, float, list[str]]] = field(default_factory=list)
    concurrent: int = 0  # /apply requests being served now
    max_concurrent: int = 0  # the most ever served at once (one activation: must stay 1)


class TestDestination(LoopbackEmulator):
    __test__ = False

    def __init__(self, *, token: str | None = TOKEN, port: int = 0) -> None:
        super().__init__(port=port)
        self.token = token
        self.namespaces: dict[str, Namespace] = {}
        self._refs = itertools.count(1)
        self._rejects: dict[str, tuple[str, str]] = {}
        self._reject_batches: set[str] = set()
        self._unauthorized: set[str] = set()
        self._ignore_unknown = True
        self._hold = threading.Event()
        self._released = threading.Event()
        self._held = threading.Event()
        self.held_count = 0
        self._drop_held = False
        self._applying = threading.local()

    def url(self, namespace: str) -> str:
        return f"{self.root_url}/{namespace}"

    def ns(self, namespace: str) -> Namespace:
        with self._lock:
            return self.namespaces.setdefault(namespace, Namespace())

    # --- faults ------------------------------------------------------------------------

    def hold(self) -> None:
        self._released.clear()
        self._held.clear()
        self._hold.set()

    def wait_held(self, timeout: float = 30.0) -> bool:
        return self._held.wait(timeout)

    def release(self, apply: bool = True) -> None:
        """Let held requests go on; with ``apply=False`` they are dropped unapplied."""
        self._drop_held = not apply
        self._hold.clear()
        self._released.set()

    def reject(
        self, person_id: str, reason: str = "invalid_person", message: str = "refused"
    ) -> None:
        with self._lock:
            self._rejects[person_id] = (reason, message)

    def reject_batch_with(self, person_id: str) -> None:
        with self._lock:
            self._reject_batches.add(person_id)

    def unauthorized(self, namespace: str) -> None:
        with self._lock:
            self._unauthorized.add(namespace)

    # --- inspection --------------------------------------------------------------------

    def records(self, namespace: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                k: {f: v for f, v in rec.items() if f != "_ref"}
                for k, rec in self.ns(namespace).records.items()
            }

    def ops(self, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.ns(namespace).ops)

    def op_counts(self, namespace: str) -> Counter[str]:
        return Counter(op["op"] for op in self.ops(namespace))

    def reset_ops(self) -> None:
        with self._lock:
            for ns in self.namespaces.values():
                ns.ops.clear()
                ns.noops = 0
                ns.applies.clear()

    # --- serving -----------------------------------------------------------------------

    def _process(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> Reply | None:
        if not target.endswith("/apply"):
            return super()._process(method, target, headers, raw)
        ns = self.ns(target.strip("/").split("/")[0])
        arrived = time.time()
        with self._lock:
            ns.concurrent += 1
            ns.max_concurrent = max(ns.max_concurrent, ns.concurrent)
        self._applying.persons = []
        try:
            if self._hold.is_set():
                with self._lock:
                    self.held_count += 1
                self._held.set()
                self._released.wait(120)
                if self._drop_held:
                    return None
            reply = super()._process(method, target, headers, raw)
            with self._lock:
                ns.applies.append((arrived, time.time(), self._applying.persons))
            return reply
        finally:
            with self._lock:
                ns.concurrent -= 1

    def fault_body(self, status: int) -> Any:
        return {"reason": f"http_{status}", "message": "injected failure"}

    def fault_headers(self, status: int) -> dict[str, str]:
        return {"Retry-After": "0"} if status == 429 else {}

    def handle(self, request: Incoming) -> Reply:
        parts = request.path.strip("/").split("/")
        if len(parts) != 2:
            return Reply(404, {"reason": "not_found", "message": request.path})
        namespace, action = parts
        if (
            self.token is not None
            and request.headers.get("authorization") != f"Bearer {self.token}"
        ):
            return Reply(401, {"reason": "unauthorized", "message": "bad token"})
        if namespace in self._unauthorized:
            return Reply(401, {"reason": "unauthorized", "message": "token revoked"})
        if action == "check" and request.method == "GET":
            return Reply(200, {"ok": True})
        if action != "apply" or request.method != "POST":
            return Reply(404, {"reason": "not_found", "message": request.path})
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("operations"), list):
            return Reply(400, {"reason": "bad_request", "message": "operations missing"})
        ops = body["operations"]
        if not ops or len(ops) > 1000:
            return Reply(400, {"reason": "bad_request", "message": "1 to 1000 operations"})
        if any(op.get("person_id") in self._reject_batches for op in ops):
            return Reply(400, {"reason": "bad_batch", "message": "something in this batch is bad"})
        ns = self.ns(namespace)
        ns.requests += 1
        return Reply(200, {"results": [self._apply(ns, op) for op in ops]}, route="apply")

    def _apply(self, ns: Namespace, op: dict[str, Any]) -> dict[str, Any]:
        pid = op["person_id"]
        self._applying.persons.append(pid)
        if pid in self._rejects:
            reason, message = self._rejects[pid]
            return {"status": "rejected", "reason": reason, "message": message}
        ident = op["identifier"]
        ref = op.get("ref")
        kind = op["op"]
        target = ident
        if ref is not None and ref in ns.refs:
            target = ns.refs[ref]
        if kind == "delete":
            if ns.records.pop(target, None) is None:
                ns.noops += 1
            ns.ops.append(op)
            return {"status": "applied"}
        record = ns.records.get(target)
        before = None if record is None else dict(record)
        if record is None:
            if kind == "update":
                ns.ops.append(op)
                return {"status": "ignored"}
            new_ref = f"ref-{next(self._refs)}"
            record = {"_ref": new_ref}
            ns.refs[new_ref] = ident
        elif target != ident:  # identifier change through the reference
            ns.records.pop(target)
            ns.refs[record["_ref"]] = ident
        ns.records[ident] = record
        record.update(op["fields"])
        for name in op["clears"]:
            record.pop(name, None)
        if before == record and target == ident:
            ns.noops += 1
        ns.ops.append(op)
        return {"status": "applied", "ref": record["_ref"]}


if __name__ == "__main__":  # pragma: no cover - manual demos
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    dest = TestDestination(port=args.port)
    serve_until_interrupted(dest, lambda: [dest.root_url])
