"""Dry runs: one JSON line per operation instead of a request (design §6)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from stream_sync.destinations.base import Adapter, Operation
from stream_sync.state import OpKind


def op_name(op: Operation) -> str:
    """``upsert`` (create-or-update with the full record), ``update`` (changed fields of a
    synced person, or update_only) or ``delete``."""
    if op.kind is OpKind.DELETE:
        return "delete"
    if op.kind is OpKind.UPSERT and op.full:
        return "upsert"
    return "update"


class DryRunWriter:
    """Writes ``{"activation", "destination", "person_id", "op", ...}`` lines to a file."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._file: IO[str] | None = None
        self.lines = 0

    def _out(self) -> IO[str]:
        if self._file is None:
            if self._path is None:
                self._file = sys.stdout
            else:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        return self._file

    def write(
        self, activation: str, destination: str, adapter: Adapter, ops: Sequence[Operation]
    ) -> None:
        out = self._out()
        for op in ops:
            line: dict[str, Any] = {
                "activation": activation,
                "destination": destination,
                "person_id": op.person_id,
                "op": op_name(op),
                "identifier": op.identifier,
                "fields": op.fields,
                "clears": list(op.clears),
                "request": adapter.preview_request(op),
            }
            out.write(json.dumps(line, default=str) + "\n")
            self.lines += 1
        out.flush()

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None
