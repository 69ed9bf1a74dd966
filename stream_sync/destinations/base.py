"""The small interface between the engine and a destination adapter.

An adapter owns the wire format, the classification of answers and the creation of missing
custom attributes. Batching, rate limits, retries and the intent/outcome bookkeeping belong to
the engine (and :mod:`stream_sync.http`, which adapters use for every request).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from stream_sync.events import Value
from stream_sync.state import OpKind


class FatalDestinationError(Exception):
    """The destination refuses us for good (bad credentials): the activation stops."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class BatchRejected(Exception):
    """A whole request was refused with a 4xx naming no culprit: the engine splits the batch."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Unidentifiable(Exception):
    """The identifier value cannot be used by this destination."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class AttributeProblem(Exception):
    """One attribute cannot be sent; the rest of the person is."""

    def __init__(self, field_name: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class Operation:
    """One person's change for one activation, computed by reconciliation."""

    person_id: str
    kind: OpKind
    identifier: str
    ref: str | None = None
    fields: dict[str, Value] = field(default_factory=dict)
    clears: tuple[str, ...] = ()
    full: bool = False
    previous_identifier: str | None = None  # set when the identifier changes (via ``ref``)
    #: destination field names in ``fields``/``clears`` that are custom attributes
    custom: frozenset[str] = frozenset()


class OutcomeKind(StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"
    REJECTED = "rejected"


@dataclass(slots=True)
class Outcome:
    kind: OutcomeKind
    ref: str | None = None
    reason: str | None = None
    message: str | None = None
    attribute_problems: list[AttributeProblem] = field(default_factory=list)

    @staticmethod
    def applied(ref: str | None = None) -> Outcome:
        return Outcome(OutcomeKind.APPLIED, ref=ref)

    @staticmethod
    def ignored() -> Outcome:
        return Outcome(OutcomeKind.IGNORED)

    @staticmethod
    def rejected(reason: str, message: str) -> Outcome:
        return Outcome(OutcomeKind.REJECTED, reason=reason, message=message)


@dataclass(frozen=True, slots=True)
class CheckRow:
    item: str
    ok: bool
    detail: str = ""


def canonical(value: Value) -> Value:
    """Compare-ready value: an integral double becomes a long, so ``1`` and ``1.0`` are equal."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class Adapter(abc.ABC):
    """One configured destination."""

    type_name: ClassVar[str]
    #: identifier changes can be applied in place through the destination's own reference
    supports_reference: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    def format_identifier(self, value: Value) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise Unidentifiable("identifier_not_scalar", "the identifier is not a scalar value")
        text = str(canonical(value)).strip()
        if not text:
            raise Unidentifiable("identifier_empty", "the identifier is empty")
        return text

    def format_field(
        self, field_name: str, value: Value, attr_type: str | None, custom: bool
    ) -> Value:
        """Destination form of one value (raise :class:`AttributeProblem` to skip it)."""
        return canonical(value)

    @abc.abstractmethod
    async def apply(self, ops: Sequence[Operation]) -> list[Outcome]:
        """Send the operations; one outcome per operation, in order.

        Raises :class:`FatalDestinationError` (activation stops) or :class:`BatchRejected`
        (the engine splits the batch). Retryable failures are retried below, in the HTTP layer.
        """

    @abc.abstractmethod
    def preview_request(self, op: Operation) -> dict[str, Any]:
        """The first request ``apply`` would send for ``op`` (secrets redacted), for dry runs."""

    async def check(self) -> list[CheckRow]:
        return [CheckRow(f"destination {self.name}", True, "no check available")]

    async def aclose(self) -> None:
        return None
