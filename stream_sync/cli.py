"""The ``stream-sync`` command line (design §8).

Exit codes: 0 normal end (also after SIGTERM); 2 invalid configuration or usage; 1 any other
fatal error, with its message on stderr (``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from stream_sync import __version__

IMPLEMENTED_TYPES = frozenset({"log", "test", "crisp", "batch"})


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stream-sync",
        description="Keep people in SaaS tools in step with segments and attributes from Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"stream-sync {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the sync service (long-lived)")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")

    check = sub.add_parser("check", help="validate the config, reach Kafka and destinations")
    check.add_argument("-c", "--config", required=True)

    replay = sub.add_parser("replay", help="rewind the group's input offsets (group stopped)")
    replay.add_argument("-c", "--config", required=True)
    replay.add_argument(
        "--from", dest="start", required=True, help="earliest, or an ISO-8601 time (UTC if no zone)"
    )
    replay.add_argument(
        "--full-resync", action="store_true", help="resend every mapped field of every member once"
    )
    replay.add_argument("--activation", help="limit --full-resync to one activation")

    approve = sub.add_parser(
        "approve-deletes", help="release a deletion-guard hold of a mirror activation"
    )
    approve.add_argument("-c", "--config", required=True)
    approve.add_argument("--activation", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    from stream_sync import logs

    logs.configure(args.debug)
    try:
        code = _dispatch(args)
    except UsageError as err:
        print(f"stream-sync: error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 0
    except BaseException as err:
        code = _report(err, args.debug)
    sys.exit(code)


def _report(err: BaseException, debug: bool) -> int:
    from stream_sync.config import ConfigError
    from stream_sync.kafka_setup import StartupError

    leaf = _unwrap(err)
    if isinstance(leaf, SystemExit):
        return int(leaf.code or 0)
    if debug:
        traceback.print_exception(err)
    if isinstance(leaf, ConfigError):
        print(leaf.render(), file=sys.stderr)
        return 2
    if isinstance(leaf, StartupError):
        print(f"stream-sync: {leaf.message}", file=sys.stderr)
        return leaf.exit_code
    print(f"stream-sync: fatal: {type(leaf).__name__}: {leaf}", file=sys.stderr)
    return 1


def _unwrap(err: BaseException) -> BaseException:
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return err


def _load(path: str) -> Any:
    from stream_sync.config import ConfigError, load_config

    config = load_config(path)
    problems = [
        (f"destinations.{name}.type", f"'{dest.type}' is not implemented yet in this version")
        for name, dest in config.destinations.items()
        if dest.type not in IMPLEMENTED_TYPES
    ]
    if problems:
        raise ConfigError(problems)
    return config


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "check":
        return _check(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "approve-deletes":
        return _approve_deletes(args)
    raise UsageError(f"unknown command {args.command}")  # pragma: no cover


def _run(args: argparse.Namespace) -> int:
    import gc

    import anyio

    from stream_sync.service import GC_THRESHOLDS, Service, fix_mmap_threshold

    config = _load(args.config)
    fix_mmap_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    service = Service(config)
    return anyio.run(service.run)


# --- check -------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    import anyio

    from stream_sync.config import ConfigError, load_config, overlapping_activations
    from stream_sync.destinations import build_adapter
    from stream_sync.kafka_setup import (
        StartupError,
        admin_client,
        inspect_topics,
        topic_config,
        wait_for_cluster,
    )

    rows: list[tuple[str, str, str]] = []
    try:
        config = load_config(args.config)
    except ConfigError as err:
        for path, message in err.problems:
            rows.append(("FAIL", f"config {path}", message))
        _print_rows(rows)
        return 1
    rows.append(("ok", "config", args.config))
    for warning in overlapping_activations(config):
        rows.append(("WARN", "activations", warning))
    try:
        admin, errors = admin_client(config)
        metadata = wait_for_cluster(admin, min(float(config.kafka.startup_timeout_s), 15.0), errors)
        rows.append(("ok", "kafka", f"reachable at {config.kafka.bootstrap_servers}"))
        layout = inspect_topics(config, metadata)
        rows.append(
            (
                "ok",
                "kafka input topics",
                f"'{config.topics.memberships}' and '{config.topics.attributes}' exist, "
                f"co-partitioned ({layout.partitions} partitions)",
            )
        )
        if layout.state_exists:
            policy = topic_config(admin, config.topics.state).get("cleanup.policy", "")
            ok = "compact" in policy
            rows.append(
                (
                    "ok" if ok else "FAIL",
                    "kafka state topic",
                    f"'{config.topics.state}' cleanup.policy={policy}, "
                    f"{layout.partitions} partitions",
                )
            )
        else:
            rows.append(("ok", "kafka state topic", "missing: created by run (compacted)"))
    except StartupError as err:
        rows.append(("FAIL", "kafka", err.message))

    async def destinations() -> None:
        for name, dest in config.destinations.items():
            if dest.type not in IMPLEMENTED_TYPES:
                rows.append(("FAIL", f"destination {name}", f"type '{dest.type}' not implemented"))
                continue
            adapter = build_adapter(name, dest)
            try:
                for row in await adapter.check():
                    rows.append(("ok" if row.ok else "FAIL", row.item, row.detail))
            except Exception as err:
                rows.append(("FAIL", f"destination {name}", f"{type(err).__name__}: {err}"))
            finally:
                await adapter.aclose()

    anyio.run(destinations)
    _print_rows(rows)
    return 0 if all(status != "FAIL" for status, _, _ in rows) else 1


def _print_rows(rows: list[tuple[str, str, str]]) -> None:
    for status, item, detail in rows:
        print(f"{status:<5} {item}: {detail}")


# --- replay ------------------------------------------------------------------------------


def parse_from(value: str) -> datetime | None:
    """``earliest`` → None; else an ISO-8601 time (UTC when it has no zone)."""
    if value == "earliest":
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--from: expected 'earliest' or an ISO-8601 time, got {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def _replay(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from stream_sync.kafka_setup import (
        StartupError,
        admin_client,
        client_config,
        ensure_topics,
        inspect_topics,
        wait_for_cluster,
    )
    from stream_sync.statewriter import StateWriter, producer_config

    config = _load(args.config)
    when = parse_from(args.start)
    ids = [a.id for a in config.activations]
    if args.activation is not None:
        if not args.full_resync:
            raise UsageError("--activation goes with --full-resync")
        if args.activation not in ids:
            raise UsageError(f"--activation: unknown activation id {args.activation!r}")
    group = config.kafka.group_id
    admin, errors = admin_client(config)
    metadata = wait_for_cluster(admin, float(config.kafka.startup_timeout_s), errors)
    layout = inspect_topics(config, metadata)
    described = admin.describe_consumer_groups([group])[group].result(timeout=15)
    if described.members:
        raise StartupError(
            f"consumer group '{group}' has {len(described.members)} active member(s): stop every "
            "stream-sync run of this group before replaying",
            1,
        )
    topics = (config.topics.memberships, config.topics.attributes)
    probe = Consumer({**client_config(config), "group.id": f"{group}.replay-probe"})
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            for p in range(layout.partitions):
                low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
                if when is None:
                    tps.append(TopicPartition(topic, p, low))
                else:
                    ms = int(when.timestamp() * 1000)
                    found = probe.offsets_for_times([TopicPartition(topic, p, ms)], timeout=15)[0]
                    tps.append(
                        TopicPartition(topic, p, found.offset if found.offset >= 0 else high)
                    )
    finally:
        probe.close()
    from confluent_kafka import ConsumerGroupTopicPartitions

    result = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
    for future in result.values():
        future.result(timeout=30)
    print(
        f"rewound group '{group}' on {', '.join(topics)} to "
        f"{'earliest' if when is None else when.isoformat()}"
    )
    if args.full_resync:
        from confluent_kafka import Producer

        ensure_topics(config, admin, metadata, layout)
        producer = Producer(producer_config(config.kafka.bootstrap_servers, client_config(config)))
        writer = StateWriter(producer, config.topics.state)
        token = uuid.uuid4().hex
        chosen = [args.activation] if args.activation else ids
        for act in chosen:
            for p in range(layout.partitions):
                writer.write_control(p, "resync", act, {"token": token})
        writer.flush_blocking(30)
        print(f"full resync requested for {', '.join(chosen)} (token {token})")
    print("the next `stream-sync run` re-applies the input and reconciles")
    return 0


# --- approve-deletes -------------------------------------------------------------------------


def _approve_deletes(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from stream_sync.kafka_setup import (
        admin_client,
        client_config,
        ensure_topics,
        inspect_topics,
        wait_for_cluster,
    )
    from stream_sync.statewriter import StateWriter, producer_config

    config = _load(args.config)
    chosen = next((a for a in config.activations if a.id == args.activation), None)
    if chosen is None:
        raise UsageError(f"--activation: unknown activation id {args.activation!r}")
    if chosen.effective_deletion_guard is None:
        raise UsageError(
            f"activation {args.activation!r} has no deletion guard (mirror mode with "
            "deletion_guard enabled): nothing to approve"
        )
    admin, errors = admin_client(config)
    metadata = wait_for_cluster(admin, float(config.kafka.startup_timeout_s), errors)
    layout = inspect_topics(config, metadata)
    ensure_topics(config, admin, metadata, layout)
    producer = Producer(producer_config(config.kafka.bootstrap_servers, client_config(config)))
    writer = StateWriter(producer, config.topics.state)
    approved_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    for p in range(layout.partitions):
        writer.write_control(
            p, "hold", args.activation, {"held": False, "approved_at": approved_at}
        )
    writer.flush_blocking(30)
    print(
        f"deletions of activation '{args.activation}' approved at {approved_at}; a running "
        "service releases them within seconds, a stopped one at its next start"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
