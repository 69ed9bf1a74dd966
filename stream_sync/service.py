"""``stream-sync run``: the consume loop, assignment handling, commits and shutdown.

One anyio event loop. librdkafka's blocking calls run in worker threads, except the
``consume`` that follows a non-empty batch: it runs on the loop thread without waiting (a
backlog is read with no thread hand-off), and only an empty answer waits in a worker thread.
Rebalance callbacks (called inside ``consume``) do their work on the loop thread: directly
when ``consume`` was called there, else through ``anyio.from_thread``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio import from_thread, to_thread
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from stream_sync import health, metrics
from stream_sync.destinations import build_adapter
from stream_sync.destinations.base import Adapter
from stream_sync.dryrun import DryRunWriter
from stream_sync.engine import ActivationWorker, Engine, Store
from stream_sync.events import Decoder, PoisonMessage
from stream_sync.guard import DeletionGuard, Hold
from stream_sync.kafka_setup import (
    StartupError,
    admin_client,
    client_config,
    consumer_config,
    ensure_topics,
    inspect_topics,
    wait_for_cluster,
)
from stream_sync.reconcile import ActivationPlan
from stream_sync.restore import PartitionState, restore_partitions
from stream_sync.state import decode_control, fold_intent
from stream_sync.statewriter import StateWriter, WarningSink, producer_config

log = structlog.get_logger("stream_sync.service")

HEALTH_STALL_S = 30.0
#: the state is many small long-lived objects and holds no reference cycles: the young
#: generation is collected less often (fewer pauses on the hot path); set by ``stream-sync run``
GC_THRESHOLDS = (50_000, 20, 20)
#: a full garbage collection of what was allocated since the last one, then a freeze (below)
GC_INTERVAL_S = 60.0
#: freed memory handed back to the OS this often (glibc keeps it otherwise)
TRIM_INTERVAL_S = 10.0


#: allocations from this size up get pages of their own, handed back to the OS when freed
MMAP_THRESHOLD = 128 * 1024


def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    glibc = hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")
    return libc if glibc else None


_LIBC = _glibc()
_MALLOC_TRIM: Callable[[int], int] | None = None if _LIBC is None else _LIBC.malloc_trim


def fix_mmap_threshold(environ: Mapping[str, str] | None = None) -> bool:
    """Keep glibc's mmap threshold at :data:`MMAP_THRESHOLD`, as
    ``MALLOC_MMAP_THRESHOLD_=131072`` would (which still wins when set). True when this call
    set it.

    glibc raises the threshold each time a mapped block is freed (up to 32 MiB), so after a
    burst (a lag consumed after an outage: fetch buffers, request bodies, large dict tables)
    such blocks come from the heap, and fragments around them keep its pages in use: RSS
    stepped up after every burst and stayed there.
    """
    if _LIBC is None or "MALLOC_MMAP_THRESHOLD_" in (os.environ if environ is None else environ):
        return False
    m_mmap_threshold = -3
    return bool(_LIBC.mallopt(m_mmap_threshold, MMAP_THRESHOLD))


def _collect_and_freeze() -> None:
    """Collect cyclic garbage, then move the survivors to the permanent generation.

    The young-generation threshold is raised (cli) and the restored state is frozen after
    catch-up, so full collections are rare; but request handling, retries and cancelled scopes
    leave reference cycles (exception tracebacks holding frames, and the frames' locals), and
    those waited minutes for a full collection: the soak's RSS grew linearly. Collecting every
    minute scans only what was allocated since the last freeze (the minute's churn, not the
    whole state); freezing after the collection never freezes garbage.
    """
    started = time.perf_counter()
    found = gc.collect()
    gc.freeze()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)  # give the freed pages back to the OS (glibc keeps them otherwise)
    log.debug(
        "gc_collected",
        unreachable=found,
        frozen=gc.get_freeze_count(),
        seconds=round(time.perf_counter() - started, 4),
    )


#: consume() returns after this long when fewer than 1,000 records wait: it bounds the latency
#: added by polling (a longer wait made p99 produce-to-destination latency ~100 ms worse)
CONSUME_WAIT_S = 0.02
#: records per consume() call
CONSUME_BATCH = 1000


def build_plan(activation: Any, adapter: Adapter) -> ActivationPlan:
    types = dict(activation.attribute_types)
    fields = [(src, dest, types.get(src), False) for src, dest in activation.fields.items()]
    fields += [(name, name, types.get(name), True) for name in activation.custom_attributes]
    return ActivationPlan(
        id=activation.id,
        segment=activation.segment,
        mode=activation.mode,
        identifier_attr=activation.identifier,
        fields=tuple(fields),
        format_identifier=adapter.format_identifier,
        format_field=adapter.format_field,
        supports_reference=adapter.supports_reference,
    )


def known_state_end(restored_end: int | None, acked_run: tuple[int, int] | None) -> int | None:
    """The offset up to which this process knows every record of a state partition.

    ``restored_end``: the partition's end when this process last restored it (it read every
    record before that); ``acked_run``: the latest unbroken run of this process's own
    acknowledged writes there (``_Producing.acked_run``). A run that starts at or before the
    restored end extends what is known to its last offset; a run that starts after it leaves a
    gap (somebody else's records), so only the restored part counts. None: nothing is known.
    When the partition's high watermark equals the result, nobody else wrote to it since.
    """
    if restored_end is None or restored_end < 0:
        return None
    if acked_run is not None and acked_run[0] <= restored_end:
        return max(restored_end, acked_run[1] + 1)
    return restored_end


@dataclass
class _Resume:
    """Where a lost-and-kept input partition goes on (see ``Service._resume_points``)."""

    position: int
    group_committed: int | None
    end: int  # the high watermark at assignment: caught up once the position reaches it


@dataclass
class _Rebalance:
    """A rebalance callback's outcome, handled on the loop thread (``_handle_rebalance``)."""

    kind: str  # "assign" | "revoke" | "lost"
    partitions: set[int]
    #: assign: partitions whose memory is kept (no restore); ``back`` is those of them that
    #: were lost and came straight back, with where their input goes on
    kept: set[int] = field(default_factory=set)
    back: set[int] = field(default_factory=set)
    resume: dict[tuple[str, int], _Resume] = field(default_factory=dict)
    #: the callback ran on the loop thread (consume() called there, reading a backlog)
    on_loop: bool = False


def meta_of(activation: Any) -> dict[str, str]:
    return {
        "segment": activation.segment,
        "destination": activation.destination,
        "identifier": activation.identifier,
    }


class Service:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.exit_code = 0
        self.stopping = False
        self.last_poll = time.monotonic()
        self.restoring: set[int] = set()
        self.owned: set[int] = set()
        #: partitions whose state is in memory and current (owned, or revoked and not yet
        #: reassigned elsewhere): written on the loop thread only, read by _on_assign inside
        #: consume() (on the loop thread, or in a worker thread while the loop waits for it)
        self._memory: set[int] = set()
        #: partitions lost (group session expired, e.g. across a broker restart) whose memory
        #: is held, not owned, not reconciled, their coalesced person writes held back, until
        #: the next assignment decides: kept if assigned back and still right, else dropped.
        #: Written by the rebalance callbacks, read on the loop thread between consume() calls.
        self._lost_pending: set[int] = set()
        #: partitions held in memory without being owned (lost, or revoked) that input was
        #: applied to all the same (fetched before the callback): their persons were not
        #: marked, so they are scanned for a backlog when kept
        self._unmarked: set[int] = set()
        #: state partition -> its end offset when this process restored it
        self._restored_end: dict[int, int] = {}
        self._assigned_once = False
        self._events: list[_Rebalance] = []
        self.next_offset: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.catching_up: dict[int, dict[tuple[str, int], int]] = {}
        self.adapters: dict[str, Adapter] = {}
        self.dry_runs: list[DryRunWriter] = []
        self.consumed = 0
        #: the thread of the event loop (set when ``run`` starts)
        self._loop_thread: int | None = None

    # --- start ---------------------------------------------------------------------------

    def _connect(self) -> None:
        cfg = self.config
        admin, errors = admin_client(cfg)
        metadata = wait_for_cluster(admin, cfg.kafka.startup_timeout_s, errors)
        layout = inspect_topics(cfg, metadata)
        ensure_topics(cfg, admin, metadata, layout)
        self.partitions = layout.partitions
        self.producer = Producer(producer_config(cfg.kafka.bootstrap_servers, client_config(cfg)))
        self.consumer = Consumer(consumer_config(cfg))
        self.decoder = Decoder(cfg.kafka.schema_registry_url)

    def _build_engine(self) -> None:
        cfg = self.config
        self.store = Store()
        self.writer = StateWriter(self.producer, cfg.topics.state)
        self.warnings = WarningSink(self.producer, cfg.topics.warnings)
        dry: dict[str, DryRunWriter] = {}
        for name, dest in cfg.destinations.items():
            self.adapters[name] = build_adapter(name, dest)
            if dest.type == "log" or getattr(dest, "dry_run", False):
                dry[name] = DryRunWriter(dest.dry_run_path)
                self.dry_runs.append(dry[name])
        workers = []
        for act in cfg.activations:
            adapter = self.adapters[act.destination]
            settings = act.effective_deletion_guard
            guard = (
                DeletionGuard(settings.max_fraction, settings.min_members)
                if settings is not None
                else None
            )
            workers.append(
                ActivationWorker(
                    build_plan(act, adapter),
                    act.destination,
                    adapter,
                    max_size=act.batch.max_size,
                    max_wait_ms=act.batch.max_wait_ms,
                    store=self.store,
                    writer=self.writer,
                    warnings=self.warnings,
                    dry_run=dry.get(act.destination),
                    on_stopped=self._activation_stopped,
                    guard=guard,
                    on_hold=self._hold_started,
                )
            )
        self.engine = Engine(self.store, workers, self.writer)
        self.topic_kind = {cfg.topics.memberships: "m", cfg.topics.attributes: "a"}

    async def run(self) -> int:
        self._loop_thread = threading.get_ident()
        await to_thread.run_sync(self._connect)
        self._build_engine()
        cfg = self.config
        self.consumer.subscribe(
            [cfg.topics.memberships, cfg.topics.attributes],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "started",
            group=cfg.kafka.group_id,
            activations=[w.id for w in self.engine.workers],
            partitions=self.partitions,
        )
        try:
            async with anyio.create_task_group() as tg:
                if cfg.http.port:
                    await tg.start(
                        health.serve, cfg.http.host, cfg.http.port, self.healthz, self.readyz
                    )
                tg.start_soon(self._signals, tg.cancel_scope)
                tg.start_soon(self._watch_approvals)
                for worker in self.engine.workers:
                    tg.start_soon(worker.run)
                await self._consume_loop()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            await self._close()
        return self.exit_code

    # --- health --------------------------------------------------------------------------

    def healthz(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.last_poll
        if stalled > HEALTH_STALL_S:
            return False, f"poll loop stalled for {stalled:.0f}s"
        return True, "ok"

    def readyz(self) -> tuple[bool, str]:
        if not self._assigned_once:
            return False, "waiting for the group to assign partitions"
        if self.restoring or self._events:
            return False, f"restoring partitions {sorted(self.restoring)}"
        return True, f"ready ({len(self.owned)} partitions)"

    # --- the loop ------------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        interval = self.config.kafka.commit_interval_ms / 1000
        # while partitions catch up nothing is reconciled (so nothing waits for a commit): a
        # backlog's person records are coalesced over the longer interval
        catch_up_interval = max(interval, self.config.kafka.catch_up_commit_interval_ms / 1000)
        last_commit = last_lag = last_gc = last_trim = time.monotonic()
        decoders = {
            topic: self.decoder.decode_membership if kind == "m" else self.decoder.decode_attribute
            for topic, kind in self.topic_kind.items()
        }
        apply = self.engine.apply
        consumer = self.consumer
        direct = False
        while not self.stopping:
            # after a non-empty batch, what librdkafka has fetched meanwhile is taken on this
            # thread without waiting: a backlog is read with no hand-off to a worker thread
            # and back (~0.6 ms per call on the 2-core machine, 1,230 calls a million events)
            messages = consumer.consume(CONSUME_BATCH, 0) if direct else []
            if messages or self._events:
                await anyio.lowlevel.checkpoint()  # the lanes and probes get their turn
            else:
                messages = await to_thread.run_sync(consumer.consume, CONSUME_BATCH, CONSUME_WAIT_S)
            direct = bool(messages)
            self.last_poll = self.store.now = time.monotonic()
            if self._events:
                await self._handle_rebalance()
                messages = self._current(messages)
            counts = dict.fromkeys(decoders, 0)
            next_offset = self.next_offset
            # the hot loop (once per input event): a decoder per topic, no other lookups
            for msg in messages:
                err = msg.error()
                if err is not None:
                    log.warning("consume_error", error=str(err))
                    continue
                # a message without error always has these (the stubs say Optional)
                topic: str = msg.topic()  # type: ignore[assignment]
                partition: int = msg.partition()  # type: ignore[assignment]
                offset: int = msg.offset()  # type: ignore[assignment]
                next_offset[(topic, partition)] = offset + 1
                counts[topic] += 1
                try:
                    event: Any = decoders[topic](msg.key(), msg.value())
                except PoisonMessage as poison:
                    self._poison(poison, msg.key(), topic, partition, offset)
                    continue
                apply(event, partition)
            for topic, n in counts.items():
                if n:
                    metrics.EVENTS_CONSUMED.labels(topic).inc(n)
                    self.consumed += n
            if self.catching_up:
                self._check_catch_up()
            now = time.monotonic()
            if now - last_commit >= (catch_up_interval if self.catching_up else interval):
                await self._commit()
                last_commit = last_lag = time.monotonic()
                if last_commit - last_gc >= GC_INTERVAL_S and not self.catching_up:
                    _collect_and_freeze()
                    last_gc = last_trim = time.monotonic()
                elif last_commit - last_trim >= TRIM_INTERVAL_S and _MALLOC_TRIM is not None:
                    _MALLOC_TRIM(0)  # a burst (a lag after an outage) gives its memory back
                    last_trim = time.monotonic()
            elif now - last_lag >= interval:
                self._update_lag()  # the lag stays current while commits are spaced out
                last_lag = now

    def _poison(
        self, poison: PoisonMessage, key: bytes | None, topic: str, partition: int, offset: int
    ) -> None:
        person_id = None
        if key is not None:
            try:
                person_id = key.decode("utf-8")
            except UnicodeDecodeError:
                person_id = None
        metrics.POISON.labels(poison.reason).inc()
        self.warnings.emit(
            "poison",
            poison.reason,
            poison.message,
            person_id=person_id,
            topic=topic,
            partition=partition,
            offset=offset,
        )

    async def _commit(self) -> None:
        """Make applied state durable, then commit the input offsets that produced it."""
        # the person records of lost partitions wait for the next assignment: written now
        # they could land in a partition another member owns (and after its own writes)
        self.writer.flush_persons(self.owned if self._lost_pending else None)
        await self.writer.flush()
        await self.warnings.flush()
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self.next_offset.items()
            if partition in self.owned and self.committed.get((topic, partition)) != offset
        ]
        if offsets:
            try:
                await to_thread.run_sync(
                    lambda: self.consumer.commit(offsets=offsets, asynchronous=False)
                )
            except KafkaException as err:
                log.warning("commit_failed", error=str(err))
                return
            for tp in offsets:
                self.committed[(tp.topic, tp.partition)] = tp.offset
            metrics.COMMITS.inc()
        self._update_lag()
        for worker in self.engine.workers:
            worker.publish_gauges()

    def _update_lag(self) -> None:
        for (topic, partition), offset in self.next_offset.items():
            if partition not in self.owned:
                continue
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(high - offset, 0))

    # --- rebalance (callbacks run in the consume thread) ---------------------------------

    def _input_tps(self, partitions: Sequence[int]) -> list[TopicPartition]:
        t = self.config.topics
        return [
            TopicPartition(topic, p) for p in partitions for topic in (t.memberships, t.attributes)
        ]

    def _on_assign(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        nums = {tp.partition for tp in tps}
        # an eager rebalance revokes everything and assigns again: partitions still in memory
        # (flushed and committed on revoke) are kept as they are; the others are paused until
        # restored from the state topic
        kept = nums & (self._memory - self._lost_pending)
        back: set[int] = set()
        resume: dict[tuple[str, int], _Resume] = {}
        candidates = nums & self._memory & self._lost_pending
        if candidates:
            # lost (session expired, e.g. while the broker restarted) and assigned straight
            # back: when nobody else wrote their state meanwhile, keep the memory and go on
            # from where it is, instead of restoring the whole partition again
            resume = self._resume_points(consumer, self._still_ours(consumer, candidates))
            back = {p for _, p in resume}
            for tp in tps:
                point = resume.get((tp.topic, tp.partition))
                if point is not None:
                    tp.offset = point.position
        self._lost_pending.clear()  # decided: kept, or dropped (and restored if assigned)
        kept |= back
        new = sorted(nums - kept)
        consumer.assign(tps)
        if new:
            consumer.pause(self._input_tps(new))
        self._events.append(_Rebalance("assign", nums, kept, back, resume, self._in_loop()))

    def _still_ours(self, consumer: Consumer, candidates: set[int]) -> set[int]:
        """The lost partitions whose state nobody else wrote since we last knew it (in the
        assignment callback): every write of ours acknowledged without error,
        and the state partition ends where what we know of it ends (``known_state_end``).

        Only what was already produced is flushed: the coalesced person records of these
        partitions are still held back, so nothing of ours can land after another member's
        records and hide them; they are written after the decision, if the partition is kept.
        """
        state = self.config.topics.state
        kept: set[int] = set()
        undecided = sorted(candidates)
        for attempt in range(2):
            try:
                self.writer.flush_blocking(30)
            except Exception as err:  # any doubt: restore
                log.warning("lost_partitions_not_kept", partitions=undecided, reason=str(err))
                return set()
            again: list[int] = []
            for p in undecided:
                if p in self.writer.failed_partitions:
                    log.info("lost_partition_not_kept", partition=p, reason="state write failed")
                    continue
                run = self.writer.acked_run(p)
                known = known_state_end(self._restored_end.get(p), run)
                try:
                    _, high = consumer.get_watermark_offsets(
                        TopicPartition(state, p), timeout=10, cached=False
                    )
                except KafkaException as err:
                    log.info("lost_partition_not_kept", partition=p, reason=str(err))
                    continue
                if known is not None and high == known:
                    kept.add(p)
                elif attempt == 0 and known is not None and high > known:
                    again.append(p)  # perhaps a write of ours not acknowledged yet: flush again
                else:
                    log.info(
                        "lost_partition_not_kept",
                        partition=p,
                        reason="state written by another since",
                        state_end=high,
                        known_end=known,
                        restored_end=self._restored_end.get(p),
                        acked_run=run,
                    )
            undecided = again
            if not undecided:
                break
        return kept

    def _resume_points(
        self, consumer: Consumer, partitions: set[int]
    ) -> dict[tuple[str, int], _Resume]:
        """Where the input of kept partitions goes on: the later of our own position and the
        group's committed offset. Input between them is in our memory already, or was
        consumed by another member that committed without writing state (``_still_ours``
        found none), so it changed nothing. A partition whose positions are not known is left
        out (restored)."""
        if not partitions:
            return {}
        tps = self._input_tps(sorted(partitions))
        try:
            committed = consumer.committed(tps, timeout=15)
        except KafkaException as err:
            log.warning("lost_partitions_not_kept", partitions=sorted(partitions), reason=str(err))
            return {}
        points: dict[tuple[str, int], _Resume] = {}
        doubtful: set[int] = set()
        for tp in committed:
            key = (tp.topic, tp.partition)
            ours = self.next_offset.get(key)
            if tp.error is not None or ours is None:
                doubtful.add(tp.partition)
                continue
            group = tp.offset if tp.offset >= 0 else None
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=10, cached=False
                )
            except KafkaException:
                doubtful.add(tp.partition)
                continue
            position = ours if group is None else max(ours, group)
            points[key] = _Resume(position, group, int(high))
        if doubtful:
            log.info("lost_partition_not_kept", partitions=sorted(doubtful), reason="position")
        return {key: point for key, point in points.items() if key[1] not in doubtful}

    def _on_revoke(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        nums = {tp.partition for tp in tps}
        offsets = self._on_loop(self._prepare_revoke, nums)
        try:
            self.writer.flush_blocking(60)
            if offsets:
                consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as err:
            log.warning("revoke_commit_failed", error=str(err))
        self._events.append(_Rebalance("revoke", nums, on_loop=self._in_loop()))

    def _on_lost(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        nums = {tp.partition for tp in tps}
        # their persons are not reconciled from now on (the engine runs on the loop thread)
        self._on_loop(self.store.ready.difference_update, nums)
        self._lost_pending |= nums
        self._events.append(_Rebalance("lost", nums, on_loop=self._in_loop()))

    def _in_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the loop thread from a rebalance callback: directly when consume()
        was called there, else through anyio (the loop waits for that consume() meanwhile)."""
        if self._in_loop():
            return fn(*args)
        return from_thread.run_sync(fn, *args)

    def _prepare_revoke(self, nums: set[int]) -> list[TopicPartition]:
        self.writer.flush_persons(nums)
        for p in nums:
            self.store.ready.discard(p)
        return [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self.next_offset.items()
            if partition in nums and self.committed.get((topic, partition)) != offset
        ]

    def _current(self, messages: list[Any]) -> list[Any]:
        """The messages of a consume() call that also ran rebalance callbacks, without those
        fetched before the callbacks that no longer apply: of a partition no longer in memory,
        or below our position (already applied: a kept partition's input re-fetched from
        where our memory is)."""
        memory, owned = self._memory, self.owned
        next_offset = self.next_offset
        position: dict[tuple[str, int], int] = {}
        current = []
        for msg in messages:
            if msg.error() is None:
                key = (msg.topic(), msg.partition())
                offset = msg.offset()
                if key[1] not in memory or offset < position.get(key, next_offset.get(key, 0)):
                    continue
                position[key] = offset + 1
                if key[1] not in owned:
                    self._unmarked.add(key[1])  # applied without marking (not ready)
            current.append(msg)
        return current

    async def _handle_rebalance(self) -> None:
        events, self._events = self._events, []
        t = self.config.topics
        for event in events:
            nums = event.partitions
            if event.kind == "revoke":
                log.info("revoked", partitions=sorted(nums), on_loop_thread=event.on_loop)
                for p in nums:
                    self.committed.pop((t.memberships, p), None)
                    self.committed.pop((t.attributes, p), None)
                self.owned -= nums
            elif event.kind == "lost":
                # not dropped yet: if the same partitions come straight back and nobody else
                # wrote their state, the next assignment keeps them (``_still_ours``)
                self.store.ready.difference_update(nums)
                self.owned -= nums
                log.warning(
                    "partitions_lost", partitions=sorted(nums), held=sorted(nums & self._memory)
                )
            else:
                kept = event.kept
                for p in self._memory - kept:  # not ours any more, or to be restored
                    self._drop(p)
                self._resume(event)
                new = sorted(nums - kept)
                self.owned = set(nums)
                self._assigned_once = True
                for p in kept:
                    if p in self.catching_up:
                        pass  # ready (and scanned for its backlog) once caught up
                    elif p in self._unmarked:
                        self.engine.partition_ready(p)  # with a backlog scan
                    else:
                        self.store.ready.add(p)
                self._unmarked -= kept
                for worker in self.engine.workers:
                    worker.mark_wake()
                if new:
                    await self._restore(new)
                back = sorted(event.back)
                log.info(
                    "assigned",
                    partitions=sorted(nums),
                    restored=new,
                    kept=sorted(kept),
                    kept_after_lost=back,
                    on_loop_thread=event.on_loop,
                )
                if back:
                    metrics.PARTITIONS_KEPT_AFTER_LOST.inc(len(back))
        metrics.ASSIGNED_PARTITIONS.set(len(self.owned))

    def _resume(self, event: _Rebalance) -> None:
        """Positions of the partitions kept after a loss. Input that arrived while they were
        lost is a backlog: applied before those partitions are reconciled again (catch-up
        before emit, design §4), as after a restore."""
        for key, point in event.resume.items():
            self.next_offset[key] = point.position
            if point.group_committed is None:
                self.committed.pop(key, None)
            else:
                self.committed[key] = point.group_committed
        for p in event.back:
            targets = {key: point.end for key, point in event.resume.items() if key[1] == p}
            if any(self.next_offset[key] < end for key, end in targets.items()):
                self.catching_up[p] = targets
            # else ready at once; or, still catching up from before the loss, once caught up

    def _drop(self, p: int) -> None:
        self._memory.discard(p)
        self.engine.partition_dropped(p)
        self.writer.drop_pending([p])
        self.catching_up.pop(p, None)
        self._restored_end.pop(p, None)
        self._unmarked.discard(p)
        t = self.config.topics
        for topic in (t.memberships, t.attributes):
            self.next_offset.pop((topic, p), None)
            self.committed.pop((topic, p), None)

    async def _restore(self, partitions: list[int]) -> None:
        self.restoring |= set(partitions)
        metrics.PAUSED_PARTITIONS.set(len(self.restoring))
        conf = {**client_config(self.config), "group.id": f"{self.config.kafka.group_id}.restore"}
        states = await to_thread.run_sync(
            restore_partitions, conf, self.config.topics.state, partitions
        )
        for p in partitions:
            self._merge(states[p])
            self._memory.add(p)
            self._restored_end[p] = states[p].end_offset
        await self.writer.flush()
        tps = self._input_tps(partitions)
        committed = await to_thread.run_sync(lambda: self.consumer.committed(tps, timeout=15))
        for tp in committed:
            low, high = await to_thread.run_sync(self._watermarks, tp.topic, tp.partition)
            start = tp.offset if tp.offset >= 0 else low
            key = (tp.topic, tp.partition)
            self.next_offset[key] = start
            self.committed[key] = start
            self.catching_up.setdefault(tp.partition, {})[key] = high
        self.consumer.resume(tps)
        self.restoring -= set(partitions)
        metrics.PAUSED_PARTITIONS.set(len(self.restoring))
        self._check_catch_up()

    def _watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        low, high = self.consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=10
        )
        return int(low), int(high)

    def _merge(self, state: PartitionState) -> None:
        p = state.partition
        store = self.store
        store.add_partition(p)
        members = store.by_partition[p]
        for pid, person in state.persons.items():
            if person.forgettable():
                continue
            store.persons[pid] = person
            members.add(pid)
        configured = {w.id for w in self.engine.workers}
        for act in self.config.activations:
            expected = meta_of(act)
            found = state.controls.get(f"meta/{act.id}")
            if found is None:
                self.writer.write_control(p, "meta", act.id, expected)
            elif found != expected:
                changed = ", ".join(
                    f"{k} '{found.get(k)}' → '{v}'"
                    for k, v in expected.items()
                    if found.get(k) != v
                )
                raise StartupError(
                    f"activation '{act.id}' was redefined ({changed}); an activation's segment, "
                    "destination and identifier cannot change under the same id: use a new id",
                    2,
                )
            hold = state.controls.get(f"hold/{act.id}")
            if hold is not None:
                for worker in self.engine.workers:
                    if worker.id == act.id:
                        worker.restore_hold(hold)
            token = state.controls.get(f"resync/{act.id}")
            if token is not None:
                store.resync[act.id] = str(token.get("token"))
        for key, intent in state.intents.items():
            if intent.activation in configured:
                for op in intent.ops:
                    person = store.get_or_create(op.person_id, p)
                    record = fold_intent(person, intent.activation, op)
                    self.writer.write_sync(p, intent.activation, op.person_id, record)
            self.writer.tombstone(p, key)

    def _check_catch_up(self) -> None:
        for p, targets in list(self.catching_up.items()):
            if p not in self.owned:
                continue  # lost meanwhile: ready (if kept) once assigned back and caught up
            if all(self.next_offset.get(key, 0) >= end for key, end in targets.items()):
                del self.catching_up[p]
                self.engine.partition_ready(p)
                if not self.catching_up:
                    # the restored state is long-lived: keep the cyclic GC from scanning it
                    # again and again (pauses of 100 ms and more with 100,000 persons)
                    gc.collect()
                    gc.freeze()

    # --- deletion guard ----------------------------------------------------------------------

    def _hold_started(self, activation: str, hold: Hold) -> None:
        """Persist a hold in every state partition: it survives restarts and rebalances."""
        for p in range(self.partitions):
            self.writer.write_control(p, "hold", activation, hold.to_record())

    async def _watch_approvals(self) -> None:
        """While a hold exists, tail state partition 0 for ``approve-deletes`` records."""
        consumer: Consumer | None = None
        try:
            while True:
                held = {w.id: w for w in self.engine.workers if w.guard and w.guard.held}
                if not held:
                    if consumer is not None:
                        await to_thread.run_sync(consumer.close)
                        consumer = None
                    await anyio.sleep(1.0)
                    continue
                if consumer is None:
                    consumer = await to_thread.run_sync(self._approval_consumer)
                for msg in await to_thread.run_sync(consumer.consume, 100, 1.0):
                    if msg.error() is not None or msg.value() is None:
                        continue
                    key = (msg.key() or b"").decode(errors="replace")
                    kind, _, act = key.partition("/")
                    if kind == "hold" and act in held:
                        record = decode_control(msg.value())  # type: ignore[arg-type]
                        if not record.get("held"):
                            held[act].release_hold()
        finally:
            if consumer is not None:
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(consumer.close)

    def _approval_consumer(self) -> Consumer:
        conf = {
            **client_config(self.config),
            "group.id": f"{self.config.kafka.group_id}.approvals",
            "enable.auto.commit": False,
        }
        consumer = Consumer(conf)
        tp = TopicPartition(self.config.topics.state, 0)
        _, high = consumer.get_watermark_offsets(tp, timeout=10)
        consumer.assign([TopicPartition(self.config.topics.state, 0, max(int(high), 0))])
        return consumer

    # --- stopping ------------------------------------------------------------------------

    def _activation_stopped(self, activation: str) -> None:
        if not self.engine.running_workers():
            log.error("no_activation_left", message="every activation has stopped; exiting")
            self.exit_code = 1
            self.stopping = True

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                log.info("signal", signal=signal.Signals(signum).name)
                if self.stopping:
                    scope.cancel()
                    return
                self.stopping = True

    async def _shutdown(self) -> None:
        grace = float(self.config.shutdown_grace_s)
        for worker in self.engine.workers:
            worker.stopping = True
            worker.mark_wake()
        with anyio.move_on_after(grace):
            while any(w.batches_in_flight for w in self.engine.workers):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        in_flight = sum(w.batches_in_flight for w in self.engine.workers)
        if in_flight:
            log.warning("shutdown_grace_expired", batches_in_flight=in_flight)
        with anyio.move_on_after(max(grace, 10)) as scope:
            scope.shield = True
            await self._commit()
        log.info("stopped", consumed=self.consumed, exit_code=self.exit_code)

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            if not hasattr(self, "consumer"):
                return  # failed before Kafka was reached
            # close() revokes the partitions (flush + commit in _on_revoke) and leaves the group
            await to_thread.run_sync(self.consumer.close)
            for adapter in self.adapters.values():
                await adapter.aclose()
            for writer in self.dry_runs:
                writer.close()
            self.producer.flush(10)
