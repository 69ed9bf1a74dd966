"""Level-triggered reconciliation (design §4): desired record vs acknowledged record.

Pure functions: given an activation plan, a person and its sync record, decide what (if
anything) the destination needs. The engine calls this at flush time, so any number of events
between two flushes become one operation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from stream_sync.destinations.base import (
    Adapter,
    AttributeProblem,
    Operation,
    Outcome,
    OutcomeKind,
    Unidentifiable,
)
from stream_sync.events import Value
from stream_sync.state import OpKind, Person, SyncRecord, SyncStatus

_MISSING = object()


@dataclass(frozen=True, slots=True)
class ActivationPlan:
    """What reconciliation needs of one activation (compiled from config and the adapter)."""

    id: str
    segment: str
    mode: str  # upsert | update_only | mirror
    identifier_attr: str
    #: (source attribute, destination field, declared type, is a custom attribute)
    fields: tuple[tuple[str, str, str | None, bool], ...]
    format_identifier: Callable[[Value], str]
    format_field: Callable[[str, Value, str | None, bool], Value]
    supports_reference: bool = False
    source_attributes: frozenset[str] = frozenset()
    custom_fields: frozenset[str] = frozenset()
    #: ``format_field`` is :meth:`Adapter.format_field` itself (only :func:`canonical`): the
    #: reconciliation of each operation applies it inline instead of two calls per field
    canonical_fields: bool = False

    def __post_init__(self) -> None:
        sources = frozenset({self.identifier_attr, *(f[0] for f in self.fields)})
        object.__setattr__(self, "source_attributes", sources)
        object.__setattr__(self, "custom_fields", frozenset(f[1] for f in self.fields if f[3]))
        plain = getattr(self.format_field, "__func__", None) is Adapter.format_field
        object.__setattr__(self, "canonical_fields", plain)


class DecisionKind(StrEnum):
    NONE = "none"  # nothing to do
    SEND = "send"  # ``op`` goes to the destination
    RECORD = "record"  # no call, but the sync record changes to ``record`` (None = forget)
    PENDING = "pending"  # member waiting for its identifier


@dataclass(slots=True)
class Warning_:
    kind: str
    reason: str
    message: str
    attribute: str | None = None


@dataclass(slots=True)
class Decision:
    kind: DecisionKind
    op: Operation | None = None
    record: SyncRecord | None = None
    desired: dict[str, Value] | None = None
    warnings: Sequence[Warning_] = ()


@dataclass(slots=True)
class Desired:
    identifier: str
    values: dict[str, Value]
    skipped: set[str]


def compute_desired(plan: ActivationPlan, person: Person, warnings: list[Warning_]) -> Desired:
    """The mapped record of a member whose identifier is known (raises Unidentifiable)."""
    attrs = person.attrs
    identifier = plan.format_identifier(attrs[plan.identifier_attr])
    values: dict[str, Value] = {}
    skipped: set[str] = set()
    if plan.canonical_fields:  # once per operation: canonical() inline
        for src, dest, _, _ in plan.fields:
            value = attrs.get(src)
            if value is None:
                continue
            if type(value) is float and value.is_integer() and abs(value) < 2**53:
                value = int(value)
            values[dest] = value
        return Desired(identifier, values, skipped)
    for src, dest, attr_type, custom in plan.fields:
        value = attrs.get(src)
        if value is None:
            continue
        try:
            values[dest] = plan.format_field(dest, value, attr_type, custom)
        except AttributeProblem as problem:
            skipped.add(dest)
            warnings.append(Warning_("attribute_rejected", problem.reason, problem.message, src))
    return Desired(identifier, values, skipped)


def reconcile(
    plan: ActivationPlan, person_id: str, person: Person, resync_token: str | None = None
) -> Decision:
    """Decide the operation that brings the destination to the person's desired record."""
    sync = person.sync.get(plan.id)
    member = plan.segment in person.segments
    mirror = plan.mode == "mirror"

    if not member:
        if sync is None:
            return Decision(DecisionKind.NONE)
        status = sync.status
        if status is SyncStatus.LEFT:
            return Decision(DecisionKind.NONE)
        if mirror and status in (SyncStatus.SYNCED, SyncStatus.MAYBE, SyncStatus.REJECTED):
            if sync.identifier is None:
                return Decision(DecisionKind.RECORD, record=None)
            op = Operation(
                person_id, OpKind.DELETE, sync.identifier, sync.ref, custom=plan.custom_fields
            )
            return Decision(DecisionKind.SEND, op=op)
        if status is SyncStatus.SYNCED:
            left = SyncRecord(SyncStatus.LEFT, sync.values, sync.identifier, sync.ref, None)
            return Decision(DecisionKind.RECORD, record=left)
        if status is SyncStatus.MAYBE:
            values = dict(sync.values)
            left = SyncRecord(SyncStatus.LEFT, values, sync.identifier, sync.ref, None)
            return Decision(DecisionKind.RECORD, record=left)
        return Decision(DecisionKind.RECORD, record=None)  # ignored / rejected: forget

    warnings: list[Warning_] = []
    if person.attrs.get(plan.identifier_attr) is None:
        if sync is not None and sync.status is SyncStatus.SYNCED:
            warnings.append(
                Warning_(
                    "unidentifiable",
                    "identifier_missing",
                    f"identifier attribute '{plan.identifier_attr}' disappeared for a synced "
                    "member; the destination record is left as it is",
                    plan.identifier_attr,
                )
            )
        return Decision(DecisionKind.PENDING, warnings=warnings)
    try:
        desired = compute_desired(plan, person, warnings)
    except Unidentifiable as err:
        warnings.append(Warning_("unidentifiable", err.reason, err.message, plan.identifier_attr))
        return Decision(DecisionKind.NONE, warnings=warnings)

    kind = OpKind.UPDATE if plan.mode == "update_only" else OpKind.UPSERT

    if sync is not None and sync.status in (SyncStatus.IGNORED, SyncStatus.REJECTED):
        if (
            sync.values == desired.values
            and sync.identifier == desired.identifier
            and (resync_token is None or sync.resync == resync_token)
        ):
            return Decision(DecisionKind.NONE, warnings=warnings)
        sync = None  # try again with the full record

    full = (
        sync is None
        or sync.status is not SyncStatus.SYNCED
        or (resync_token is not None and sync.resync != resync_token)
    )
    if full:
        clears: tuple[str, ...] = ()
        if sync is not None:
            values, skipped = desired.values, desired.skipped
            clears = tuple([f for f in sync.values if f not in values and f not in skipped])
        ref = sync.ref if sync is not None else None
        op = Operation(
            person_id,
            kind,
            desired.identifier,
            ref,
            dict(desired.values),
            clears,
            True,
            custom=plan.custom_fields,
        )
        if (
            sync is not None
            and sync.identifier is not None
            and sync.identifier != desired.identifier
        ):
            if plan.supports_reference and ref is not None:
                op.previous_identifier = sync.identifier
            else:
                op.ref = None
        return Decision(DecisionKind.SEND, op=op, desired=desired.values, warnings=warnings)

    assert sync is not None
    synced = sync.values
    changed = {f: v for f, v in desired.values.items() if synced.get(f, _MISSING) != v}
    values, skipped = desired.values, desired.skipped
    clears = tuple([f for f in synced if f not in values and f not in skipped])
    identifier = desired.identifier
    previous_identifier: str | None = None
    if sync.identifier is not None and identifier != sync.identifier:
        if plan.supports_reference and sync.ref is not None:
            previous_identifier = sync.identifier
        else:
            warnings.append(
                Warning_(
                    "identifier_change_unsupported",
                    "identifier_changed",
                    f"the identifier changed from '{sync.identifier}' to '{identifier}' but "
                    "this destination cannot rename a record; updates go on under the old one",
                    plan.identifier_attr,
                )
            )
            identifier = sync.identifier
    if not changed and not clears and previous_identifier is None:
        return Decision(DecisionKind.NONE, warnings=warnings)
    op = Operation(
        person_id,
        kind,
        identifier,
        sync.ref,
        changed,
        clears,
        False,
        previous_identifier,
        custom=plan.custom_fields,
    )
    return Decision(DecisionKind.SEND, op=op, desired=desired.values, warnings=warnings)


def record_after(
    before: SyncRecord | None,
    op: Operation,
    desired: dict[str, Value] | None,
    outcome: Outcome,
    resync_token: str | None,
) -> SyncRecord | None:
    """The sync record once the destination answered ``outcome`` for ``op``."""
    if op.kind is OpKind.DELETE:
        if outcome.kind is OutcomeKind.REJECTED:
            kept = before.values if before is not None else {}
            return SyncRecord(SyncStatus.REJECTED, kept, op.identifier, op.ref, None)
        return None
    if outcome.kind is not OutcomeKind.APPLIED:
        # SyncRecord copies the values it is given: no copy needed here
        wanted = desired if desired is not None else op.fields
        if outcome.kind is OutcomeKind.IGNORED:
            return SyncRecord(SyncStatus.IGNORED, wanted, op.identifier, None, resync_token)
        ref = before.ref if before is not None else None
        return SyncRecord(SyncStatus.REJECTED, wanted, op.identifier, ref, resync_token)
    values: dict[str, Value]
    if op.full or before is None:
        resync = resync_token
        if op.clears:
            values = {k: v for k, v in op.fields.items() if k not in op.clears}
        else:
            values = op.fields
    else:
        values = before.values  # a new dict
        values.update(op.fields)
        resync = before.resync
        for name in op.clears:
            values.pop(name, None)
    ref = outcome.ref or op.ref or (before.ref if before is not None else None)
    return SyncRecord(SyncStatus.SYNCED, values, op.identifier, ref, resync)
