"""``type: log``: no network at all; every operation becomes a dry-run line (design §6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stream_sync.destinations.base import Adapter, CheckRow, Operation, Outcome


class LogAdapter(Adapter):
    type_name = "log"

    async def apply(self, ops: Sequence[Operation]) -> list[Outcome]:
        # never called: the engine routes log destinations through the dry-run writer
        return [Outcome.applied() for _ in ops]

    def preview_request(self, op: Operation) -> dict[str, Any]:
        return {"method": None, "url": None, "body": None}

    async def check(self) -> list[CheckRow]:
        return [CheckRow(f"destination {self.name}", True, "log destination (no network)")]
