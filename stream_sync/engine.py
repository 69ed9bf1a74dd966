"""The sync engine: source view, dirty sets, micro-batches, intents and outcomes.

Events update the source view and mark persons dirty per activation; one worker per activation
drains its dirty set in batches (``max_size`` / ``max_wait_ms``), reconciles each person at that
moment (so any number of changes become one operation), records an intent, sends, and records
the outcome. While a batch is at the destination the next full one (a backlog) is reconciled
and its intent recorded, so it leaves as soon as the answer is in. Nothing here holds the
input back: what an activation owes is always recomputable from state (design §5).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from stream_sync import metrics
from stream_sync.destinations.base import (
    Adapter,
    BatchRejected,
    FatalDestinationError,
    Operation,
    Outcome,
    OutcomeKind,
)
from stream_sync.dryrun import DryRunWriter
from stream_sync.events import AttributeChange, MembershipChange, PersonDeleted, Value
from stream_sync.guard import DeletionGuard, Hold
from stream_sync.reconcile import (
    ActivationPlan,
    DecisionKind,
    Warning_,
    reconcile,
    record_after,
)
from stream_sync.state import (
    IntentRow,
    OpKind,
    Person,
    SyncRecord,
    SyncStatus,
    apply_attributes,
    apply_attributes_changed,
    apply_deleted,
    apply_membership,
)
from stream_sync.statewriter import StateWriter, WarningSink

log = structlog.get_logger("stream_sync.engine")


class Store:
    """Persons of the partitions this instance owns."""

    def __init__(self) -> None:
        self.persons: dict[str, Person] = {}
        self.by_partition: dict[int, set[str]] = {}
        self.ready: set[int] = set()  # restored and caught up: reconcilable
        #: activation id → resync token requested (``replay --full-resync``)
        self.resync: dict[str, str] = {}
        #: the consume loop's clock, set once per poll: a person marked dirty holds this
        #: float (shared by every mark of the poll) instead of a float of its own, 24 bytes
        #: per person of a backlog
        self.now = time.monotonic()

    def owns(self, partition: int) -> bool:
        return partition in self.by_partition

    def get_or_create(self, person_id: str, partition: int) -> Person:
        person = self.persons.get(person_id)
        if person is None:
            person = Person(partition)
            self.persons[person_id] = person
            self.by_partition.setdefault(partition, set()).add(person_id)
        elif person.partition != partition:
            # the person's events moved partition (producer partitioner changed): follow them
            self.by_partition.get(person.partition, set()).discard(person_id)
            person.partition = partition
            self.by_partition.setdefault(partition, set()).add(person_id)
        return person

    def forget_if_empty(self, person_id: str) -> None:
        person = self.persons.get(person_id)
        if person is not None and person.forgettable():
            del self.persons[person_id]
            self.by_partition.get(person.partition, set()).discard(person_id)

    def add_partition(self, partition: int) -> None:
        self.by_partition.setdefault(partition, set())

    def drop_partition(self, partition: int) -> None:
        for pid in self.by_partition.pop(partition, set()):
            self.persons.pop(pid, None)
        self.ready.discard(partition)


@dataclass(slots=True)
class _Pending:
    person_id: str
    person: Person
    op: Operation
    desired: dict[str, Value] | None
    before: SyncRecord | None


@dataclass(slots=True)
class _Prepared:
    """A batch reconciled and its intents durable: what is left is to send it."""

    persons: list[str]  # every person taken (in flight until the batch is done)
    pending: list[_Pending]  # their operations
    token: str | None
    intent_keys: list[tuple[int, bytes]]


class ActivationWorker:
    """Drains one activation's dirty set into batches for its destination."""

    def __init__(
        self,
        plan: ActivationPlan,
        destination: str,
        adapter: Adapter,
        *,
        max_size: int,
        max_wait_ms: int,
        store: Store,
        writer: StateWriter,
        warnings: WarningSink,
        dry_run: DryRunWriter | None,
        on_stopped: Callable[[str], None],
        guard: DeletionGuard | None = None,
        on_hold: Callable[[str, Hold], None] | None = None,
        lanes: int = 1,
    ) -> None:
        self.plan = plan
        self.id = plan.id
        self.destination = destination
        self.adapter = adapter
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000
        self.store = store
        self.writer = writer
        self.warnings = warnings
        self.dry_run = dry_run
        self._on_stopped = on_stopped
        self.dirty: dict[str, float] = {}
        self.in_flight: set[str] = set()
        self.pending_identifier: set[str] = set()
        self.running = True
        self.stopping = False
        self.batches_in_flight = 0
        self._wake = anyio.Event()
        self.lanes = lanes
        self._lanes_scope: anyio.CancelScope | None = None
        self.sent_operations = 0
        self.guard = guard
        self._on_hold = on_hold
        self.held_deletes: set[str] = set()
        self.synced_count = 0
        #: destination field → source attribute, so warnings name what users map
        self._source_of = {dest: src for src, dest, _, _ in plan.fields}
        self._sources = tuple((dest, src) for src, dest, _, _ in plan.fields)
        metrics.ACTIVATION_RUNNING.labels(self.id).set(1)
        metrics.DELETION_HOLD.labels(self.id).set(0)
        self._ops_metric: dict[tuple[str, str], Any] = {}
        self._batch_metric = metrics.BATCH_SIZE.labels(self.id)

    # --- dirty marking (called from the consume loop) ------------------------------------

    def mark(self, person_id: str) -> None:
        if not self.running:
            return
        if self.held_deletes:
            self.held_deletes.discard(person_id)
        dirty = self.dirty
        if person_id not in dirty:
            dirty[person_id] = self.store.now
            # wake the lanes when work appears and when a full batch is ready (not again for
            # every further person: a backlog scan marks 100,000s)
            if len(dirty) == 1 or len(dirty) % self.max_size == 0:
                self.mark_wake()

    def publish_gauges(self) -> None:
        """Backlog: persons owed to the destination (dirty, in flight, or held deletions)."""
        owed = len(self.dirty) + len(self.in_flight) + len(self.held_deletes)
        metrics.BACKLOG.labels(self.id).set(owed)
        metrics.PENDING_IDENTIFIER.labels(self.id).set(len(self.pending_identifier))

    def mark_wake(self) -> None:
        """Wake every lane waiting for work (each waits on the event current when it began)."""
        event, self._wake = self._wake, anyio.Event()
        event.set()

    def discard_partition(self, person_ids: Iterable[str]) -> None:
        persons = self.store.persons
        for pid in person_ids:
            self.dirty.pop(pid, None)
            self.pending_identifier.discard(pid)
            self.held_deletes.discard(pid)
            person = persons.get(pid)
            if person is not None and _is_synced(person.sync.get(self.id)):
                self.synced_count -= 1

    def backlog_scan(self, person_ids: Iterable[str]) -> None:
        """After restore and catch-up: mark the persons whose destination record differs.

        Only those: marking everyone and letting the flush sort them out would send batches
        of the few that differ among ``max_size`` taken, wasting API calls.
        """
        token = self.store.resync.get(self.id)
        persons = self.store.persons
        segment = self.plan.segment
        identifier_attr = self.plan.identifier_attr
        act = self.id
        for pid in person_ids:
            person = persons.get(pid)
            if person is None:
                continue
            sync = person.sync.get(act)
            if sync is not None:
                if sync.status is SyncStatus.SYNCED:
                    self.synced_count += 1
                _share_values(sync, person.attrs, self._sources, identifier_attr)
            elif segment not in person.segments:
                continue
            elif person.attrs.get(identifier_attr) is not None:
                self.mark(pid)  # a member never synced: always owes its full record
                continue
            else:
                self.pending_identifier.add(pid)
                continue
            decision = reconcile(self.plan, pid, person, token)
            if decision.kind in (DecisionKind.SEND, DecisionKind.RECORD):
                self.mark(pid)
            elif decision.kind is DecisionKind.PENDING:
                self.pending_identifier.add(pid)
        self.publish_gauges()

    # --- the worker loop -------------------------------------------------------------------

    async def run(self) -> None:
        """``lanes`` batches may be in flight at once (never two for one person), so one
        batch's round trip does not hold the next batch window back."""
        async with anyio.create_task_group() as tg:
            self._lanes_scope = tg.cancel_scope
            for _ in range(self.lanes):
                tg.start_soon(self._lane)

    async def _lane(self) -> None:
        # the next batch, prepared while this one was sent: its intents durable, not sent
        ahead: _Prepared | None = None
        try:
            while self.running and not self.stopping:
                if ahead is not None:
                    prepared: _Prepared | None = self._still_ours(ahead)
                    ahead = None
                else:
                    batch = await self._next_batch()
                    if batch is None:
                        continue
                    if not batch:  # only persons of partitions not ready (rebalancing): wait
                        await anyio.sleep(0.05)
                        continue
                    prepared = await self._prepare_taken(batch)
                if prepared is None:
                    continue
                slot: list[_Prepared | Exception] = []
                fatal: FatalDestinationError | None = None
                try:
                    async with anyio.create_task_group() as tg:
                        if self._full_batch_waiting():
                            tg.start_soon(self._prepare_ahead, slot)
                        try:
                            await self._send(prepared)
                        except FatalDestinationError as err:
                            fatal = err
                            tg.cancel_scope.cancel()
                        finally:
                            self._done(prepared.persons)
                finally:  # also when cancelled: a batch prepared meanwhile is abandoned
                    for item in slot:
                        if isinstance(item, _Prepared):
                            ahead = item
                for item in slot:
                    if isinstance(item, Exception):
                        raise item
                if fatal is not None:
                    self._stop(fatal)
        finally:
            if ahead is not None:
                self._abandon(ahead)

    def _full_batch_waiting(self) -> bool:
        """Prepare the next batch during a send only when a full one waits (a backlog):
        a partial batch keeps coalescing until this send is done, as without lookahead."""
        return (
            self.dry_run is None
            and self.running
            and not self.stopping
            and self._ready_count() >= self.max_size
        )

    async def _prepare_ahead(self, slot: list[_Prepared | Exception]) -> None:
        """Take the next batch, reconcile it and make its intents durable while the
        previous batch is at the destination: it is sent once that one is done (still one
        batch at the destination at a time per activation, design §5)."""
        batch = self._take()
        if not batch:
            return
        try:
            prepared = await self._prepare_taken(batch)
        except Exception as err:  # raised by the lane, outside the task group
            slot.append(err)
            return
        if prepared is not None:
            slot.append(prepared)

    async def _prepare_taken(self, batch: list[str]) -> _Prepared | None:
        """Reconcile ``batch`` (taken: in flight) and write its intents. None when there is
        nothing to send (the batch is then done)."""
        self.batches_in_flight += 1
        try:
            prepared = await self._prepare(batch)
        except BaseException:
            self._done(batch)
            raise
        if prepared is None:
            self._done(batch)
        return prepared

    def _done(self, batch: Iterable[str]) -> None:
        self.batches_in_flight -= 1
        self.in_flight.difference_update(batch)

    def _still_ours(self, ahead: _Prepared) -> _Prepared | None:
        """A batch prepared ahead goes only to persons still reconcilable here: after a
        rebalance meanwhile (partition revoked, restored again or moved), those are left to
        their intent, which the partition's owner resolves, and marked again if still here."""
        persons = self.store.persons
        ready = self.store.ready
        kept: list[_Pending] = []
        for p in ahead.pending:
            if persons.get(p.person_id) is not p.person:
                continue  # the partition is gone (or was restored again): its owner's now
            if p.person.partition in ready:
                kept.append(p)
            else:
                self.mark(p.person_id)  # taken once its partition is ready again
        if len(kept) == len(ahead.pending):
            return ahead
        if not kept:
            self._abandon(ahead)
            return None
        ahead.pending = kept
        return ahead

    def _abandon(self, ahead: _Prepared) -> None:
        """A batch prepared ahead and never sent (stopping, stopped, or the lane failed):
        nothing of it reached the destination, so its intents are withdrawn and its persons
        owe their operations again."""
        for partition, key in ahead.intent_keys:
            if self.store.owns(partition):
                self.writer.tombstone(partition, key)
        persons = self.store.persons
        for p in ahead.pending:
            if persons.get(p.person_id) is p.person:
                self.mark(p.person_id)
        self._done(ahead.persons)

    async def _next_batch(self) -> list[str] | None:
        while True:
            if self.stopping or not self.running:
                return None
            ready = self._ready_count()
            if ready == 0:
                with anyio.move_on_after(0.5):
                    await self._wake.wait()
                continue
            if ready < self.max_size:
                oldest = next(iter(self.dirty.values()))
                wait = oldest + self.max_wait_s - time.monotonic()
                if wait > 0:
                    with anyio.move_on_after(wait):
                        await self._wake.wait()
                    continue
            return self._take()

    def _ready_count(self) -> int:
        # the persons dirty again while in flight wait for their batch: counted over the
        # (at most lanes * max_size) in flight, not over a backlog of 100,000s
        dirty = self.dirty
        return len(dirty) - sum(1 for pid in self.in_flight if pid in dirty)

    def _take(self) -> list[str]:
        """The oldest dirty persons of ready partitions, not in flight, up to ``max_size``.

        Persons of a partition that is not ready (revoked, restoring) stay dirty: the partition
        may come back in the same rebalance.
        """
        taken: list[str] = []
        gone: list[str] = []
        ready_partitions = self.store.ready
        persons = self.store.persons
        in_flight = self.in_flight
        for pid in self.dirty:
            if pid in in_flight:
                continue
            person = persons.get(pid)
            if person is None:
                gone.append(pid)
            elif person.partition in ready_partitions:
                taken.append(pid)
                if len(taken) >= self.max_size:
                    break
        for pid in gone:
            del self.dirty[pid]
        for pid in taken:
            del self.dirty[pid]
        in_flight.update(taken)
        return taken

    async def _prepare(self, person_ids: list[str]) -> _Prepared | None:
        """Reconcile the persons taken; record what needs no request; write the intents of
        the operations (durable when this returns). None: nothing to send."""
        act = self.id
        token = self.store.resync.get(act)
        pending: list[_Pending] = []
        persist = self.dry_run is None
        persons = self.store.persons
        plan = self.plan
        for pid in person_ids:  # once per person taken
            person = persons.get(pid)
            if person is None:
                continue
            decision = reconcile(plan, pid, person, token)
            if decision.warnings:
                self._emit(decision.warnings, pid)
            if decision.kind is DecisionKind.PENDING:
                self.pending_identifier.add(pid)
                continue
            self.pending_identifier.discard(pid)
            if decision.kind is DecisionKind.RECORD:
                self._set_record(pid, person, decision.record, persist)
            elif decision.kind is DecisionKind.SEND and decision.op is not None:
                pending.append(
                    _Pending(pid, person, decision.op, decision.desired, person.sync.get(act))
                )
        metrics.PENDING_IDENTIFIER.labels(self.id).set(len(self.pending_identifier))
        if self.guard is not None and pending:
            pending = self._guard_deletes(pending)
        if not pending:
            return None
        if self.dry_run is not None:
            ops = [p.op for p in pending]
            self._batch_metric.observe(len(ops))
            self.dry_run.write(self.id, self.destination, self.adapter, ops)
            outcomes = [Outcome.applied() for _ in ops]
            self._record_outcomes(pending, outcomes, token, persist=False)
            return None
        intent_keys = await self._write_intents(pending)
        return _Prepared(person_ids, pending, token, intent_keys)

    async def _send(self, prepared: _Prepared) -> None:
        pending = prepared.pending
        ops = [p.op for p in pending]
        self._batch_metric.observe(len(ops))
        outcomes = await self._apply_split(ops)
        self._record_outcomes(pending, outcomes, prepared.token, persist=True)
        for partition, key in prepared.intent_keys:
            if self.store.owns(partition):
                self.writer.tombstone(partition, key)

    def _guard_deletes(self, pending: list[_Pending]) -> list[_Pending]:
        """Hold this batch's deletions when the deletion guard trips (or already holds)."""
        guard = self.guard
        assert guard is not None
        deletes = [p for p in pending if p.op.kind is OpKind.DELETE]
        if not deletes:
            return pending
        was_held = guard.held
        if guard.allows(len(deletes), self._deletes_waiting(), self.synced_count):
            return pending
        if not was_held and guard.hold is not None:
            self._hold_started(guard.hold)
        for p in deletes:
            self.held_deletes.add(p.person_id)
        return [p for p in pending if p.op.kind is not OpKind.DELETE]

    def _deletes_waiting(self) -> int:
        """Dirty persons that would be deleted next (non-members still synced)."""
        persons = self.store.persons
        segment = self.plan.segment
        count = 0
        for pid in self.dirty:
            person = persons.get(pid)
            if person is not None and segment not in person.segments:
                rec = person.sync.get(self.id)
                if rec is not None and rec.status in (SyncStatus.SYNCED, SyncStatus.MAYBE):
                    count += 1
        return count

    def _hold_started(self, hold: Hold) -> None:
        metrics.DELETION_HOLD.labels(self.id).set(1)
        log.error(
            "deletion_guard_hold",
            activation=self.id,
            destination=self.destination,
            deletes=hold.deletes,
            synced=hold.synced,
            max_fraction=self.guard.max_fraction if self.guard else None,
            message=(
                f"deletions held: {hold.deletes} of {hold.synced} synced members would be deleted "
                f"within an hour; creates and updates go on. Check the segment upstream, then run "
                f"`stream-sync approve-deletes -c CONFIG --activation {self.id}`"
            ),
        )
        if self._on_hold is not None:
            self._on_hold(self.id, hold)

    def restore_hold(self, record: dict[str, object]) -> None:
        if self.guard is None:
            return
        self.guard.restore(dict(record))
        if self.guard.hold is not None:
            metrics.DELETION_HOLD.labels(self.id).set(1)

    def release_hold(self) -> None:
        """``approve-deletes``: the held deletions go now."""
        if self.guard is None or not self.guard.held:
            return
        held, self.held_deletes = self.held_deletes, set()
        self.guard.release(len(held) + self._deletes_waiting())
        metrics.DELETION_HOLD.labels(self.id).set(0)
        for pid in held:
            self.mark(pid)
        log.warning("deletion_guard_released", activation=self.id, deletes=len(held))

    async def _write_intents(self, pending: Sequence[_Pending]) -> list[tuple[int, bytes]]:
        # once per operation: a row each, no IntendedOp (the record is the same)
        by_partition: dict[int, list[IntentRow]] = {}
        for p in pending:
            op = p.op
            rows = by_partition.get(p.person.partition)
            if rows is None:
                rows = by_partition[p.person.partition] = []
            rows.append((p.person_id, op.kind, op.identifier, tuple(op.fields), op.clears))
        batch_id = uuid.uuid4().hex
        keys = []
        acks = []
        for partition, rows in by_partition.items():
            key, ack = self.writer.write_intent_rows(partition, self.id, batch_id, rows)
            keys.append((partition, key))
            acks.append(ack)
        # durable before the send: these records (and, in order, what went before them in
        # their partitions), not whatever the other activations produce meanwhile
        await self.writer.delivered(acks)
        return keys

    async def _apply_split(self, ops: Sequence[Operation]) -> list[Outcome]:
        try:
            outcomes = await self.adapter.apply(ops)
        except BatchRejected as err:
            if len(ops) == 1:
                return [Outcome.rejected(err.reason, err.message)]
            mid = len(ops) // 2
            return [*await self._apply_split(ops[:mid]), *await self._apply_split(ops[mid:])]
        if len(outcomes) != len(ops):
            raise RuntimeError(
                f"{self.adapter.type_name} adapter answered {len(outcomes)} outcomes "
                f"for {len(ops)} operations"
            )
        return outcomes

    def _record_outcomes(
        self,
        pending: Sequence[_Pending],
        outcomes: Sequence[Outcome],
        token: str | None,
        *,
        persist: bool,
    ) -> None:
        # once per operation: counted by enum members (an enum's ``.value`` is a property
        # call), labelled once per kind and outcome at the end
        counts: dict[tuple[OpKind, bool, OutcomeKind], int] = {}
        persons = self.store.persons
        for p, outcome in zip(pending, outcomes, strict=True):
            op = p.op
            key = (op.kind, op.full, outcome.kind)
            counts[key] = counts.get(key, 0) + 1
            if persons.get(p.person_id) is not p.person:
                continue  # partition revoked meanwhile: the new owner resolves the intent
            if outcome.attribute_problems:
                for problem in outcome.attribute_problems:
                    self._warn(
                        "attribute_rejected",
                        problem.reason,
                        problem.message,
                        p.person_id,
                        attribute=self._source_of.get(problem.field, problem.field),
                    )
            if outcome.kind is OutcomeKind.REJECTED:
                self._warn(
                    "rejected",
                    outcome.reason or "rejected",
                    outcome.message or "the destination refused the person",
                    p.person_id,
                )
            record = record_after(p.before, op, p.desired, outcome, token)
            self._set_record(p.person_id, p.person, record, persist)
            if op.kind is OpKind.DELETE and outcome.kind is OutcomeKind.APPLIED and self.guard:
                self.guard.note_deleted(1)
        self.sent_operations += len(pending)
        for (kind, full, result), n in counts.items():  # one metric update per label pair
            label = (_op_label(kind, full), result.value)
            counter = self._ops_metric.get(label)
            if counter is None:
                counter = self._ops_metric[label] = metrics.OPERATIONS.labels(self.id, *label)
            counter.inc(n)

    def _set_record(
        self, person_id: str, person: Person, record: SyncRecord | None, persist: bool
    ) -> None:
        before = person.sync.get(self.id)  # _is_synced inlined: once per operation
        self.synced_count += (record is not None and record.status is SyncStatus.SYNCED) - (
            before is not None and before.status is SyncStatus.SYNCED
        )
        if record is None:
            person.drop_sync(self.id)
        else:
            person.sync[self.id] = record
        if persist:
            self.writer.write_sync(person.partition, self.id, person_id, record)
        if record is None:
            self.store.forget_if_empty(person_id)

    def _emit(self, warnings: Sequence[Warning_], person_id: str) -> None:
        for w in warnings:
            self._warn(w.kind, w.reason, w.message, person_id, attribute=w.attribute)

    def _warn(
        self,
        kind: str,
        reason: str,
        message: str,
        person_id: str | None,
        *,
        attribute: str | None = None,
    ) -> None:
        self.warnings.emit(
            kind,
            reason,
            message,
            activation=self.id,
            destination=self.destination,
            person_id=person_id,
            attribute=attribute,
        )

    def _stop(self, err: FatalDestinationError) -> None:
        self.running = False
        metrics.ACTIVATION_RUNNING.labels(self.id).set(0)
        log.error(
            "activation_stopped",
            activation=self.id,
            destination=self.destination,
            reason=err.reason,
            error=err.message,
        )
        self._warn("activation_stopped", err.reason, err.message, None)
        self.dirty.clear()
        if self._lanes_scope is not None:
            self._lanes_scope.cancel()  # other lanes may be retrying against the same refusal
        self._on_stopped(self.id)


def _share_values(
    record: SyncRecord,
    attrs: dict[str, Value],
    sources: tuple[tuple[str, str], ...],
    identifier_attr: str,
) -> None:
    """Restored sync values equal to the source attribute point to the same object (the two
    were decoded separately): memory per tracked person."""
    record.share({dest: attrs.get(src) for dest, src in sources})
    ident = attrs.get(identifier_attr)
    if record.identifier is not None and isinstance(ident, str) and ident == record.identifier:
        record.identifier = ident


def _is_synced(record: SyncRecord | None) -> int:
    return 1 if record is not None and record.status is SyncStatus.SYNCED else 0


def _op_label(kind: OpKind, full: bool) -> str:
    if kind is OpKind.DELETE:
        return "delete"
    return "create" if full else "update"


class Engine:
    """Applies input events to the source view and routes dirty persons to workers."""

    def __init__(
        self, store: Store, workers: Sequence[ActivationWorker], writer: StateWriter
    ) -> None:
        self.store = store
        self.workers = list(workers)
        self.writer = writer
        self.by_segment: dict[str, list[ActivationWorker]] = {}
        for w in self.workers:
            self.by_segment.setdefault(w.plan.segment, []).append(w)
        self._attr_index: dict[str, list[ActivationWorker]] = {}
        for w in self.workers:
            for name in w.plan.source_attributes:
                self._attr_index.setdefault(name, []).append(w)

    def apply(
        self, event: MembershipChange | AttributeChange | PersonDeleted, partition: int
    ) -> None:
        """Apply one input event to the source view; mark the person dirty where it matters.

        The hot path of the consume loop (once per input event): plain lookups, and the
        "forget an empty person" check only when something was removed.
        """
        store = self.store
        pid = event.person_id
        person = store.persons.get(pid)
        if person is None or person.partition != partition:
            person = store.get_or_create(pid, partition)
        kind = type(event)
        if kind is AttributeChange:
            ready = partition in store.ready
            if not ready:  # catching up: nothing is marked, only "changed or not" matters
                if apply_attributes_changed(person, event):  # type: ignore[arg-type]
                    self.writer.pending_persons[pid] = person
                if not person.attrs and person.forgettable():
                    store.forget_if_empty(pid)
                return
            changed = apply_attributes(person, event)  # type: ignore[arg-type]
            if not changed:
                if not person.attrs and person.forgettable():  # e.g. an unset, person unknown
                    store.forget_if_empty(pid)
                return
            self.writer.pending_persons[pid] = person  # StateWriter.person_changed, inlined
            if ready:
                index = self._attr_index
                marked: set[int] = set()
                for name in changed:
                    for w in index.get(name, ()):
                        if id(w) in marked:
                            continue
                        if w.plan.segment in person.segments or w.id in person.sync:
                            marked.add(id(w))
                            w.mark(pid)
            if not person.attrs and person.forgettable():
                store.forget_if_empty(pid)
        elif kind is MembershipChange:
            if not apply_membership(person, event):  # type: ignore[arg-type]
                if person.forgettable():  # a no-op EXIT of a person unknown until now
                    store.forget_if_empty(pid)
                return
            self.writer.pending_persons[pid] = person
            if partition in store.ready:
                for w in self.by_segment.get(event.segment_id, ()):  # type: ignore[union-attr]
                    w.mark(pid)
            if not person.segments and person.forgettable():
                store.forget_if_empty(pid)
        else:
            segments = person.segments
            if apply_deleted(person):
                self.writer.person_changed(partition, pid, person)
                if partition in store.ready:
                    for w in self.workers:
                        if w.plan.segment in segments or w.id in person.sync:
                            w.mark(pid)
            if person.forgettable():
                store.forget_if_empty(pid)

    def partition_ready(self, partition: int) -> None:
        self.store.ready.add(partition)
        pids = list(self.store.by_partition.get(partition, ()))
        for w in self.workers:
            w.backlog_scan(pids)

    def partition_dropped(self, partition: int) -> None:
        pids = self.store.by_partition.get(partition, set())
        for w in self.workers:
            w.discard_partition(pids)
        self.store.drop_partition(partition)

    def running_workers(self) -> list[ActivationWorker]:
        return [w for w in self.workers if w.running]
