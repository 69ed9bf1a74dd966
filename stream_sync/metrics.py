"""Every Prometheus metric the service exposes, defined once (names are part of operations)."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...
ProcessCollector(registry=REGISTRY)

PYTHON_ALLOCATED_BLOCKS = Gauge(
    "stream_sync_python_allocated_blocks",
    "Memory blocks held by the Python allocator (sys.getallocatedblocks): flat while RSS "
    "grows points at native memory (librdkafka, malloc), growing at Python objects",
    registry=REGISTRY,
)
PYTHON_ALLOCATED_BLOCKS.set_function(sys.getallocatedblocks)

EVENTS_CONSUMED = Counter(
    "stream_sync_events_consumed_total",
    "Input records consumed, by topic",
    ["topic"],
    registry=REGISTRY,
)
POISON = Counter(
    "stream_sync_poison_messages_total",
    "Input records that could not be decoded, by reason",
    ["reason"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "stream_sync_consumer_lag",
    "Records between the consumer position and the end of the partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
STATE_RESTORED = Counter(
    "stream_sync_state_records_restored_total",
    "State records read back from the state topic on assignment",
    registry=REGISTRY,
)
RESTORE_SECONDS = Histogram(
    "stream_sync_restore_duration_seconds",
    "Time to restore one partition's state",
    buckets=(0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
STATE_WRITES = Counter(
    "stream_sync_state_writes_total",
    "Records written to the state topic, by kind",
    ["kind"],
    registry=REGISTRY,
)
OPERATIONS = Counter(
    "stream_sync_operations_total",
    "Destination operations by activation, kind (create/update/delete) and outcome",
    ["activation", "kind", "outcome"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "stream_sync_batch_size",
    "Operations per batch sent to a destination",
    ["activation"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
BACKLOG = Gauge(
    "stream_sync_backlog_persons",
    "Persons whose destination record differs from the desired one (dirty), by activation",
    ["activation"],
    registry=REGISTRY,
)
PENDING_IDENTIFIER = Gauge(
    "stream_sync_pending_identifier_persons",
    "Members waiting for their identifier attribute, by activation",
    ["activation"],
    registry=REGISTRY,
)
ACTIVATION_RUNNING = Gauge(
    "stream_sync_activation_running",
    "1 while the activation runs, 0 once stopped by a fatal destination answer",
    ["activation"],
    registry=REGISTRY,
)
API_CALLS = Counter(
    "stream_sync_api_calls_total",
    "HTTP requests to destinations by destination, method and status (error = no answer)",
    ["destination", "method", "status"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "stream_sync_api_latency_seconds",
    "Destination request latency",
    ["destination"],
    registry=REGISTRY,
)
THROTTLED = Counter(
    "stream_sync_throttled_total",
    "Throttling answers (429/420) by destination",
    ["destination"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "stream_sync_retries_total",
    "Requests sent again after a retryable failure, by destination",
    ["destination"],
    registry=REGISTRY,
)
BACKOFF_SECONDS = Counter(
    "stream_sync_backoff_seconds_total",
    "Seconds spent waiting before retries, by destination",
    ["destination"],
    registry=REGISTRY,
)
QUOTA_USED = Gauge(
    "stream_sync_daily_quota_used",
    "Requests counted against the destination's daily quota today",
    ["destination"],
    registry=REGISTRY,
)
QUOTA_PAUSED = Gauge(
    "stream_sync_daily_quota_paused",
    "1 while the destination waits for its daily quota to reset",
    ["destination"],
    registry=REGISTRY,
)
WARNINGS = Counter(
    "stream_sync_warnings_total",
    "Records written to the warnings topic, by kind and reason",
    ["kind", "reason"],
    registry=REGISTRY,
)
PAUSED_PARTITIONS = Gauge(
    "stream_sync_paused_partitions",
    "Input partitions paused (restoring)",
    registry=REGISTRY,
)
PARTITIONS_KEPT_AFTER_LOST = Counter(
    "stream_sync_partitions_kept_after_lost_total",
    "Partitions lost (session expired) and assigned straight back with their state unchanged: "
    "kept in memory, not restored again",
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "stream_sync_assigned_partitions",
    "Input partitions assigned to this instance",
    registry=REGISTRY,
)
COMMITS = Counter(
    "stream_sync_commits_total",
    "Input offset commits after durable state",
    registry=REGISTRY,
)
DELETION_HOLD = Gauge(
    "stream_sync_deletion_hold",
    "1 while the deletion guard holds an activation's deletes",
    ["activation"],
    registry=REGISTRY,
)
