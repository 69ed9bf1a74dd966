"""Engine benchmarks (issue 3, "Benchmarks"): throughput, latency, restore, efficiency.

Every figure drives the real service — ``stream-sync run`` in a subprocess — against the real
Kafka broker, with the project's test destination (``tests/fakes/test_destination.py``, a real
HTTP server) running inside this process, so operations are acknowledged over HTTP with zero
added latency and the destination's final records can be compared with the expected state that
``bench/workload.py`` computes independently from the events. Nothing here asserts on time:
each benchmark prints its figures next to the issue's targets. The exit code is non-zero only
when a run did not converge to the expected state (a correctness failure) or the service died.

Figures (``bench/README.md`` explains each):

* ``throughput`` — input events/s from decode to acknowledged operation, pre-loaded events,
  clock stopped when the group's committed offsets equal the end offsets *and* the destination
  equals the expected state; plus the raw ``consume(1000)`` rate, alone and with the same
  decoder, and the ratio; optionally under a profiler (``--profile py-spy|cprofile``);
* ``latency`` — produce-to-destination p50 / p99 at a steady rate with ``max_wait_ms: 200``;
* ``restore`` — time to restore N state records, memory per tracked person (RSS delta);
* ``efficiency`` — operations and HTTP requests per 10,000 changed persons.

Run ``.venv/bin/python bench/bench_engine.py --help``; ``--quick`` runs everything small.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from workload import (  # noqa: E402
    ACTIVATIONS,
    MAPPED,
    SEGMENTS,
    EventProducer,
    Model,
    Workload,
    partition_of,
)

from stream_sync.events import AttributeChange, Decoder  # noqa: E402
from tests.fakes.test_destination import TOKEN, Namespace, TestDestination  # noqa: E402

FULL = {
    "persons": 100_000,
    "events": 1_000_000,
    "latency_persons": 100_000,
    "duration": 60.0,
    "warmup": 5.0,
    "records": 1_000_000,
    "memory_persons": 100_000,
    "changed": 10_000,
    "timeout": 900.0,
}
QUICK = {
    "persons": 5_000,
    "events": 50_000,
    "latency_persons": 5_000,
    "duration": 5.0,
    "warmup": 1.0,
    "records": 80_000,
    "memory_persons": 8_000,
    "changed": 1_000,
    "timeout": 180.0,
}
FIGURES = ("throughput", "latency", "restore", "efficiency")
TARGETS = {
    "throughput": 50_000,  # events/s
    "ratio": 0.5,
    "latency_p99_ms": 500,
    "restore_s": 30,
    "bytes_per_person": 2048,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------------------
# Kafka topics of one benchmark invocation


class Ctx:
    """Broker access, unique names and cleanup for one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bootstrap: str = args.bootstrap
        self.partitions: int = args.partitions
        self.stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.workdir = ROOT / "var" / "bench" / self.stamp
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        self.created: list[str] = []
        self.failures: list[str] = []

    def name(self, kind: str) -> str:
        return f"bench-{kind}-{self.stamp}"

    def create_topics(self, names: Iterable[str], compact: bool = False) -> None:
        config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"} if compact else {}
        new = [NewTopic(n, self.partitions, 1, config=config) for n in names]
        for future in self.admin.create_topics(new, operation_timeout=30).values():
            future.result(30)
        self.created += [t.topic for t in new]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = self.admin.list_topics(timeout=5)
            if all(t.topic in md.topics and len(md.topics[t.topic].partitions) for t in new):
                return
            time.sleep(0.1)
        raise RuntimeError("topics did not appear in metadata")

    def input_topics(self, kind: str) -> dict[str, str]:
        topics = {
            "memberships": self.name(f"{kind}-m"),
            "attributes": self.name(f"{kind}-a"),
        }
        self.create_topics(topics.values())
        return topics

    def service_topics(self, inputs: dict[str, str], run: str) -> dict[str, str]:
        """Inputs plus a fresh state and warnings topic (created by the service)."""
        topics = {**inputs, "state": self.name(f"{run}-state"), "warnings": self.name(f"{run}-w")}
        self.created += [topics["state"], topics["warnings"]]
        return topics

    def end_offsets(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.name("wm")})
        try:
            return {
                (t, p): int(consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1])
                for t in topics
                for p in range(self.partitions)
            }
        finally:
            consumer.close()

    def cleanup(self) -> None:
        if self.args.keep_topics or not self.created:
            return
        existing = set(self.admin.list_topics(timeout=10).topics)
        doomed = [t for t in self.created if t in existing]
        if doomed:
            for future in self.admin.delete_topics(doomed, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(30)


class OffsetWatch:
    """Does the group's committed position equal the end offsets?"""

    def __init__(self, ctx: Ctx, group: str, ends: dict[tuple[str, int], int]) -> None:
        self.ends = ends
        self.consumer = Consumer(
            {"bootstrap.servers": ctx.bootstrap, "group.id": group, "enable.auto.commit": False}
        )

    def done(self) -> bool:
        tps = [TopicPartition(t, p) for t, p in self.ends]
        try:
            committed = self.consumer.committed(tps, timeout=5)
        except KafkaException:
            return False
        return all(
            tp.offset == end or (end == 0 and tp.offset < 0)
            for tp in committed
            if (end := self.ends[(tp.topic, tp.partition)]) is not None
        )

    def close(self) -> None:
        self.consumer.close()


# ---------------------------------------------------------------------------------------------
# The test destination, in this process


class BenchDestination(TestDestination):
    """The test destination, timestamping every acknowledged operation (wall clock)."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.last_op_at = 0.0
        self.op_count = 0
        self.on_op: Callable[[str, dict[str, Any], float], None] | None = None
        self._current = ""
        #: namespace -> (arrival time, operations) of every /apply request
        self.arrivals: dict[str, list[tuple[float, int]]] = {}

    def handle(self, request: Any) -> Any:  # called with the lock held
        self._current = request.path.strip("/").split("/")[0]
        if isinstance(request.body, dict) and isinstance(request.body.get("operations"), list):
            self.arrivals.setdefault(self._current, []).append(
                (time.time(), len(request.body["operations"]))
            )
        return super().handle(request)

    def _apply(self, ns: Namespace, op: dict[str, Any]) -> dict[str, Any]:
        result = super()._apply(ns, op)
        now = time.time()
        self.last_op_at = now
        self.op_count += 1
        if self.on_op is not None:
            self.on_op(self._current, op, now)
        return result

    def requests_of(self, namespace: str) -> int:
        with self._lock:
            return self.ns(namespace).requests

    def op_total(self) -> int:
        with self._lock:
            self._log.clear()  # the request log is not needed here: keep memory flat
            return self.op_count


def destinations_config(dest: BenchDestination | None) -> dict[str, Any]:
    """One destination per activation: the test destination's namespace is the activation id."""
    if dest is None:
        return {"log": {"type": "log", "dry_run_path": "/dev/null"}}
    return {
        f"d-{act.id}": {"type": "test", "base_url": dest.url(act.namespace), "token": TOKEN}
        for act in ACTIVATIONS
    }


def write_config(
    ctx: Ctx,
    run: str,
    topics: dict[str, str],
    dest: BenchDestination | None,
    *,
    max_size: int = 1000,
    max_wait_ms: int = 500,
    extra_custom: tuple[str, ...] = (),
    group: str | None = None,
) -> tuple[Path, int, str]:
    port = free_port()
    group = group or ctx.name(f"{run}-g")
    config = {
        "kafka": {
            "bootstrap_servers": ctx.bootstrap,
            "group_id": group,
            "commit_interval_ms": ctx.args.commit_interval_ms,
        },
        "topics": topics,
        "destinations": destinations_config(dest),
        "activations": [
            act.config(
                "log" if dest is None else f"d-{act.id}", max_size, max_wait_ms, extra_custom
            )
            for act in ACTIVATIONS
        ],
        "http": {"host": "127.0.0.1", "port": port},
        "shutdown_grace_s": 10,
    }
    path = ctx.workdir / f"{run}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, port, group


def expected_state(model: Model, extra_custom: tuple[str, ...] = ()) -> dict[str, Any]:
    return {act.namespace: model.expected(act, extra_custom) for act in ACTIVATIONS}


def describe_diff(actual: dict[str, Any], expected: dict[str, Any]) -> str:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    lines = [f"missing {len(missing)}, extra {len(extra)}, differing {len(differ)}"]
    lines += [f"    missing {k}: {expected[k]}" for k in missing[:3]]
    lines += [f"    extra {k}: {actual[k]}" for k in extra[:3]]
    lines += [f"    differ {k}: {actual[k]} != {expected[k]}" for k in differ[:3]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The service subprocess


class Service:
    """``stream-sync run`` in a subprocess (optionally under py-spy or cProfile)."""

    def __init__(self, ctx: Ctx, run: str, config: Path, port: int, profile: str = "none") -> None:
        self.port = port
        self.log_path = ctx.workdir / f"{run}.log"
        self.profile = profile
        self.profile_path: Path | None = None
        cmd = [sys.executable, "-m", "stream_sync.cli", "run", "-c", str(config)]
        if profile == "py-spy":
            self.profile_path = ctx.workdir / f"{run}.pyspy.txt"
            cmd = [
                pyspy_path(),
                "record",
                "--nonblocking",
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(self.profile_path),
                "--",
                *cmd,
            ]
        elif profile == "cprofile":
            self.profile_path = ctx.workdir / f"{run}.prof"
            cmd = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(self.profile_path),
                "-m",
                "stream_sync.cli",
                "run",
                "-c",
                str(config),
            ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, cwd=ROOT)
        self.pid = self.proc.pid
        if profile == "py-spy":
            self.pid = self._child_pid()

    def _child_pid(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                if children.split():
                    return int(children.split()[0])
            time.sleep(0.02)
        raise RuntimeError("py-spy did not start the service")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)
        except httpx.HTTPError:
            return None

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        response = self.get("/metrics")
        if response is None:
            return []
        out = []
        for name, labels, value in re.findall(
            r"^(stream_sync_\w+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN)$", response.text, re.M
        ):
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels or ""))
            out.append((name, pairs, float(value)))
        return out

    def metric(self, name: str, **labels: str) -> float:
        return sum(
            v
            for n, lab, v in self.metrics()
            if n == name and all(lab.get(k) == w for k, w in labels.items())
        )

    def rss_kb(self, field: str = "VmRSS") -> int:
        try:
            return rss_kb(self.pid, field)
        except OSError:
            return 0

    def log_events(self, event: str) -> list[dict[str, Any]]:
        if not self._log.closed:
            self._log.flush()
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{event}"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    def log_time(self, event: str) -> float | None:
        """Wall-clock time of the first log line of ``event``."""
        found = self.log_events(event)
        if not found:
            return None
        return datetime.fromisoformat(found[0]["timestamp"]).timestamp()

    def wait_assigned(self, partitions: int, timeout: float) -> float:
        """Until every partition is assigned, restored and /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"service exited with {self.proc.returncode}: {self.log_path}")
            if self.metric("stream_sync_assigned_partitions") >= partitions:
                ready = self.get("/readyz")
                if ready is not None and ready.status_code == 200:
                    return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"service not ready after {timeout}s: {self.log_path}")

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._log.close()
        return code


def wait_converged(
    dest: BenchDestination,
    expected: dict[str, dict[str, Any]],
    svc: Service,
    timeout: float,
    *,
    min_ops: int = 0,
    on_poll: Callable[[], None] | None = None,
) -> float | None:
    """Until the destination holds ``expected``; returns the time of its last operation."""
    deadline = time.monotonic() + timeout
    compared = -1
    last_compare = 0.0
    while time.monotonic() < deadline:
        if on_poll is not None:
            on_poll()
        if not svc.alive():
            print(f"  service exited with {svc.proc.returncode}; logs: {svc.log_path}")
            return None
        count = dest.op_total()
        stale = time.monotonic() - last_compare > 2.0
        if count >= min_ops and (count != compared or stale):
            compared, last_compare = count, time.monotonic()
            if all(dest.records(ns) == records for ns, records in expected.items()):
                return dest.last_op_at or time.time()
        time.sleep(0.1)
    print("  NOT CONVERGED within the timeout:")
    for ns, records in expected.items():
        print(f"  {ns}: {describe_diff(dest.records(ns), records)}")
    return None


# ---------------------------------------------------------------------------------------------
# Profiling reports


def pyspy_path() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit(
            "py-spy is not installed: .venv/bin/pip install py-spy (or --profile cprofile)"
        )
    return found


def _short(path: str) -> str:
    for marker in ("/site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/lib/python3", 1)[-1] if "/lib/python3" in path else path


def report_pyspy(path: Path, top: int = 20) -> None:
    frame_re = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = []
        for frame in stack.split(";"):
            match = frame_re.match(frame)
            names.append(f"{match.group(1)} ({_short(match.group(2))})" if match else frame)
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        print("  (no samples)")
        return
    print(f"  py-spy: {total} samples of running Python threads (idle threads excluded)")
    print(f"  top {top} by own time (the frame on top of the stack):")
    for name, count in own.most_common(top):
        print(f"    {100 * count / total:5.1f} %  {name}")
    print(f"  top {top} by inclusive time (the frame anywhere in the stack):")
    shown = 0
    for name, count in inclusive.most_common():
        if name.split(" ")[0] in ("<module>", "_run_module_as_main", "_run_code", "main"):
            continue
        print(f"    {100 * count / total:5.1f} %  {name}")
        shown += 1
        if shown >= top:
            break


def report_cprofile(path: Path, top: int = 20) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values()) or 1.0

    def label(key: tuple[str, int, str]) -> str:
        file, line, func = key
        return f"{func} ({_short(file)}:{line})"

    print(f"  cProfile (event-loop thread only): {total:.1f} s of own time")
    print(f"  top {top} by own time:")
    for key, (_, ncalls, tt, _, _) in sorted(entries.items(), key=lambda kv: -kv[1][2])[:top]:
        print(f"    {100 * tt / total:5.1f} %  {tt:7.2f} s  {ncalls:>9}  {label(key)}")
    print(f"  top {top} by cumulative time:")
    for key, (_, ncalls, _, ct, _) in sorted(entries.items(), key=lambda kv: -kv[1][3])[:top]:
        print(f"    {ct:7.2f} s  {ncalls:>9}  {label(key)}")


# ---------------------------------------------------------------------------------------------
# 1. throughput


def raw_rate(ctx: Ctx, topics: dict[str, str], total: int, decode: bool) -> tuple[float, float]:
    """consume(1000) from the beginning to the end (and decode each message): (events/s, s)."""
    conf = {
        "bootstrap.servers": ctx.bootstrap,
        "group.id": ctx.name(f"raw-{int(decode)}"),
        "enable.auto.commit": False,
        "session.timeout.ms": 10_000,
        "fetch.wait.max.ms": 100,
    }
    consumer = Consumer(conf)
    decoder = Decoder()
    decode_of = {
        topics["memberships"]: decoder.decode_membership,
        topics["attributes"]: decoder.decode_attribute,
    }
    try:
        consumer.assign(
            [
                TopicPartition(topics[t], p, OFFSET_BEGINNING)
                for t in ("memberships", "attributes")
                for p in range(ctx.partitions)
            ]
        )
        started = time.perf_counter()
        seen = 0
        deadline = time.monotonic() + ctx.args.timeout
        while seen < total and time.monotonic() < deadline:
            messages = consumer.consume(1000, 0.1)
            for msg in messages:
                if msg.error() is not None:
                    continue
                seen += 1
                if decode:
                    decode_of[msg.topic()](msg.key(), msg.value())  # type: ignore[index]
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    return seen / elapsed, elapsed


def throughput(ctx: Ctx) -> None:
    args = ctx.args
    print(f"\n=== throughput: {fmt(args.persons)} persons, {fmt(args.events)} churn events ===")
    wl = Workload(args.persons, args.seed)
    topics = ctx.input_topics("tp")
    producer = EventProducer(ctx.bootstrap, topics, ctx.partitions)
    started = time.monotonic()
    initial = producer.send_all(wl.initial())
    churn = producer.send_all(wl.churn(args.events))
    producer.flush()
    ends = ctx.end_offsets(topics.values())
    total = sum(ends.values())
    log(
        f"produced {fmt(total)} events ({fmt(initial)} initial + {fmt(churn)} churn) "
        f"in {time.monotonic() - started:.1f}s"
    )
    expected = expected_state(wl.model)
    expected_ops = sum(len(r) for r in expected.values())

    consume_rate, consume_s = raw_rate(ctx, topics, total, decode=False)
    decode_rate, decode_s = raw_rate(ctx, topics, total, decode=True)
    log(f"raw consume(1000): {fmt(consume_rate)}/s; with decode: {fmt(decode_rate)}/s")

    kinds = ["test", "log"] if args.destination == "both" else [args.destination]
    results = []
    for kind in kinds:
        results.append(throughput_run(ctx, topics, kind, ends, expected, expected_ops, "none"))
    if args.profile != "none":
        results.append(
            throughput_run(ctx, topics, "test", ends, expected, expected_ops, args.profile)
        )

    print(f"\nthroughput — {fmt(total)} input events ({fmt(initial)} initial: one 10-attribute")
    print(f"  record + ENTERs per person; {fmt(churn)} churn: 70 % attribute changes, 30 % flips)")
    print(
        f"  {ctx.partitions} partitions, 3 activations, commit_interval_ms "
        f"{args.commit_interval_ms}, expected operations {fmt(expected_ops)}"
    )
    print(f"  raw consume(1000) alone          {fmt(consume_rate):>9} events/s ({consume_s:.1f} s)")
    print(f"  raw consume(1000) + decode       {fmt(decode_rate):>9} events/s ({decode_s:.1f} s)")
    for r in results:
        if r is None:
            continue
        tag = r["kind"] + (f", under {r['profile']}" if r["profile"] != "none" else "")
        if r["kind"] == "test" and args.dest_latency_ms:
            tag += f", {args.dest_latency_ms} ms per request"
        print(f"  service [{tag}]")
        print(
            f"    from assignment to done      {fmt(r['rate']):>9} events/s "
            f"({r['sustained_s']:.1f} s)"
            f"   target ≥ {fmt(TARGETS['throughput'])}"
        )
        print(
            f"    ratio service / (consume+decode)  {r['rate'] / decode_rate:.2f}"
            f"   target ≥ {TARGETS['ratio']}"
        )
        print(
            f"    from process start to done   {fmt(total / r['wall_s']):>9} events/s "
            f"({r['wall_s']:.1f} s)"
        )
        if r.get("consume_s"):
            print(
                f"    phases: consume+apply {r['consume_s']:.1f} s "
                f"({fmt(total / r['consume_s'])} events/s), then reconcile+send "
                f"{r['sustained_s'] - r['consume_s']:.1f} s (offsets committed at "
                f"+{r['commit_s']:.1f} s, last operation at +{r['dest_s']:.1f} s)"
            )
        print(
            f"    operations {fmt(r['ops'])} (expected {fmt(expected_ops)}), "
            f"HTTP requests {r['requests']}, peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"exit code {r['exit_code']}"
        )
        if r.get("cpu_s") is not None:
            # below 1 core: waits (broker, destination), or runnable while the two cores ran
            # the broker and this script; the CPU seconds themselves vary from run to run
            print(
                f"    service CPU {r['cpu_s']:.1f} s from process start to done "
                f"({r['cpu_s'] / r['wall_s']:.2f} of a core; event-loop thread "
                f"{r['main_cpu_s']:.1f} s)"
            )
        if r["profile"] != "none" and r["profile_path"]:
            print(f"  hotspots ({r['profile_path']}):")
            if r["profile"] == "py-spy":
                report_pyspy(Path(r["profile_path"]))
            else:
                report_cprofile(Path(r["profile_path"]))


def throughput_run(
    ctx: Ctx,
    inputs: dict[str, str],
    kind: str,
    ends: dict[tuple[str, int], int],
    expected: dict[str, dict[str, Any]],
    expected_ops: int,
    profile: str,
) -> dict[str, Any] | None:
    args = ctx.args
    run = f"tp-{kind}" + ("" if profile == "none" else f"-{profile}")
    total = sum(ends.values())
    dest = BenchDestination().start() if kind == "test" else None
    if dest is not None and args.dest_latency_ms:
        dest.latency(args.dest_latency_ms / 1000)
    topics = ctx.service_topics(inputs, run)
    path, port, group = write_config(ctx, run, topics, dest)
    watch = OffsetWatch(ctx, group, ends)
    svc = Service(ctx, run, path, port, profile)
    log(f"{run}: service started (pid {svc.pid}); logs {svc.log_path}")
    t_commit = t_dest = t_consumed = None
    deadline = time.monotonic() + args.timeout
    compared = -1
    try:
        while time.monotonic() < deadline:
            if not svc.alive():
                break
            now = time.time()
            if t_consumed is None and svc.metric("stream_sync_events_consumed_total") >= total:
                t_consumed = now
            if t_commit is None and watch.done():
                t_commit = now
            if t_dest is None:
                if dest is not None:
                    dest.reset_ops()  # only counts are needed here: keep memory flat
                    count = dest.op_total()
                    if count >= expected_ops and count != compared:
                        compared = count
                        if all(dest.records(ns) == rec for ns, rec in expected.items()):
                            t_dest = dest.last_op_at
                elif svc.metric("stream_sync_operations_total") >= expected_ops:
                    t_dest = now
            if t_commit is not None and t_dest is not None:
                break
            time.sleep(0.1)
        converged = t_commit is not None and t_dest is not None
        if dest is not None and converged:
            time.sleep(1.0)  # anything after convergence would be a redundant operation
        ops = (
            dest.op_total() if dest is not None else int(svc.metric("stream_sync_operations_total"))
        )
        requests = (
            sum(dest.requests_of(a.namespace) for a in ACTIVATIONS) if dest is not None else 0
        )
        peak = svc.rss_kb("VmHWM") / 1024
        cpu = main_cpu = None
        with contextlib.suppress(OSError):
            cpu, main_cpu = cpu_seconds(svc.pid), cpu_seconds(svc.pid, svc.pid)
    finally:
        exit_code = svc.stop()
        watch.close()
    t_assigned = svc.log_time("assigned")
    if not converged or t_assigned is None:
        ctx.failures.append(f"throughput {run}")
        print(
            f"  {run}: NOT CONVERGED (commit done: {t_commit is not None}, destination done: "
            f"{t_dest is not None}); logs {svc.log_path}"
        )
        if dest is not None:
            for ns, rec in expected.items():
                print(f"  {ns}: {describe_diff(dest.records(ns), rec)}")
            dest.stop()
        return None
    if dest is not None:
        dest.stop()
    assert t_commit is not None and t_dest is not None
    done = max(t_commit, t_dest)
    sustained = done - t_assigned
    return {
        "kind": kind,
        "profile": profile,
        "profile_path": str(svc.profile_path) if svc.profile_path else None,
        "rate": total / sustained,
        "sustained_s": sustained,
        "wall_s": done - svc.started,
        "consume_s": (t_consumed - t_assigned) if t_consumed else None,
        "commit_s": t_commit - t_assigned,
        "dest_s": t_dest - t_assigned,
        "ops": ops,
        "requests": requests,
        "peak_rss_mb": peak,
        "cpu_s": cpu,
        "main_cpu_s": main_cpu,
        "exit_code": exit_code,
    }


# ---------------------------------------------------------------------------------------------
# 2. latency


class LatencyTracker:
    """Produce time of every event, per (namespace, person), matched on arrival by its mark.

    Each event sets the mapped attribute ``mark`` to its produce time (µs). An operation
    carrying mark M acknowledges every event of that person produced with a mark ≤ M (events
    coalesced into one operation all count, each with its own delay).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[tuple[str, str], deque[tuple[int, bool]]] = {}
        self.samples: dict[str, list[float]] = {a.namespace: [] for a in ACTIVATIONS}
        self.outstanding = 0

    def produced(self, pid: str, namespaces: list[str], mark: int, measured: bool) -> None:
        with self.lock:
            for ns in namespaces:
                self.pending.setdefault((ns, pid), deque()).append((mark, measured))
                self.outstanding += 1

    def arrived(self, ns: str, op: dict[str, Any], now: float) -> None:
        mark = (op.get("fields") or {}).get("mark")
        if not isinstance(mark, int):
            return
        now_us = now * 1e6
        with self.lock:
            queue = self.pending.get((ns, op["person_id"]))
            while queue and queue[0][0] <= mark:
                produced, measured = queue.popleft()
                self.outstanding -= 1
                if measured:
                    self.samples[ns].append((now_us - produced) / 1000)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency(ctx: Ctx) -> None:
    args = ctx.args
    print(
        f"\n=== latency: {fmt(args.rate)} events/s for {args.duration:g}s "
        f"(+{args.warmup:g}s warm-up), max_wait_ms {args.max_wait_ms} ==="
    )
    wl = Workload(args.latency_persons, args.seed)
    topics = ctx.input_topics("lat")
    loader = EventProducer(ctx.bootstrap, topics, ctx.partitions)
    loader.send_all(wl.initial())
    loader.flush()
    dest = BenchDestination().start()
    run_topics = ctx.service_topics(topics, "lat")
    path, port, _ = write_config(
        ctx, "lat", run_topics, dest, max_wait_ms=args.max_wait_ms, extra_custom=("mark",)
    )
    svc = Service(ctx, "lat", path, port)
    tracker = LatencyTracker()
    try:
        log("latency: initial sync of the pre-loaded persons")
        if wait_converged(dest, expected_state(wl.model, ("mark",)), svc, args.timeout) is None:
            ctx.failures.append("latency: initial sync")
            return
        dest.on_op = tracker.arrived
        namespaces = {
            pid: [a.namespace for a in ACTIVATIONS if a.segment in wl.model.segments[pid]]
            for pid in wl.person_ids
        }
        # a low-latency producer, as an upstream service would use
        producer = EventProducer(
            ctx.bootstrap, topics, ctx.partitions, **{"linger.ms": 5, "batch.size": 65536}
        )
        rng, ids = wl.rng, wl.person_ids
        metrics_before = svc.metrics()
        interval = 1 / args.rate
        start = time.perf_counter()
        start_wall = time.time()
        measure_from = start + args.warmup
        stop_at = measure_from + args.duration
        produced = measured = 0
        log("latency: producing")
        while True:
            target = start + produced * interval
            if target >= stop_at:
                break
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pid = ids[rng.randrange(len(ids))]
            values: dict[str, Any] = {
                name: wl.fresh_value(name, wl.model.attrs[pid].get(name))
                for name in rng.sample(MAPPED, rng.randint(0, 2))
            }
            mark = time.time_ns() // 1000
            values["mark"] = mark
            wl.model.set(pid, values)
            is_measured = target >= measure_from
            tracker.produced(pid, namespaces[pid], mark, is_measured)
            producer.send("a", pid, AttributeChange(pid, values, (), mark // 1000))
            producer.producer.poll(0)
            produced += 1
            measured += is_measured
        elapsed = time.perf_counter() - start
        producer.flush()
        drain = time.monotonic() + 30
        while tracker.outstanding and time.monotonic() < drain:
            time.sleep(0.05)
        converged = wait_converged(dest, expected_state(wl.model, ("mark",)), svc, 30) is not None
        if not converged:
            ctx.failures.append("latency: final state")
        service_metrics = svc.metrics()
    finally:
        svc.stop()
        dest.on_op = None
        dest.stop()
    every = [s for values in tracker.samples.values() for s in values]
    print(
        f"\nlatency — produce → acknowledged by the destination, {fmt(args.latency_persons)} "
        f"persons; each event sets `mark` (its produce time, mapped in every activation) "
        f"and 0-2 other mapped attributes of a random person"
    )
    print(
        f"  produced {fmt(produced)} events in {elapsed:.1f}s ({fmt(produced / elapsed)}/s), "
        f"{fmt(measured)} measured after the warm-up"
    )
    print(
        f"  samples (event x activation of a member): {fmt(len(every))}, "
        f"not delivered: {tracker.outstanding}, final state correct: {converged}"
    )
    print(
        f"  all activations  p50 {percentile(every, 0.5):6.0f} ms   p90 "
        f"{percentile(every, 0.9):6.0f} ms   p99 {percentile(every, 0.99):6.0f} ms   max "
        f"{max(every, default=math.nan):6.0f} ms   target p99 ≤ {TARGETS['latency_p99_ms']} ms"
    )
    for ns, delays in tracker.samples.items():
        print(
            f"  {ns:<15}  p50 {percentile(delays, 0.5):6.0f} ms   p90 "
            f"{percentile(delays, 0.9):6.0f} ms   p99 {percentile(delays, 0.99):6.0f} ms   "
            f"({fmt(len(delays))} samples)"
        )
    window = (start_wall + args.warmup, start_wall + args.warmup + args.duration)
    print("  where the time goes (requests in the measured window; HTTP time per request as the")
    print("  service's stream_sync_api_latency_seconds saw it while events were produced):")
    for act in ACTIVATIONS:
        ns = act.namespace
        hits = [(t, n) for t, n in dest.arrivals.get(ns, []) if window[0] <= t <= window[1]]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(hits)]
        http = metric_mean(
            service_metrics, "stream_sync_api_latency_seconds", f"d-{act.id}", metrics_before
        )
        print(
            f"  {ns:<15}  {len(hits)} requests, {mean([n for _, n in hits]):.0f} "
            f"ops each, one every {1000 * mean(gaps):.0f} ms; HTTP "
            f"{1000 * http:.1f} ms per request"
        )


def mean(values: list[float] | list[int]) -> float:
    return sum(values) / len(values) if values else math.nan


Samples = list[tuple[str, dict[str, str], float]]


def metric_mean(after: Samples, histogram: str, destination: str, before: Samples) -> float:
    """Mean of a Prometheus histogram (sum / count) for one destination, between two scrapes."""
    total = count = 0.0
    for sign, samples in ((1, after), (-1, before)):
        for name, labels, value in samples:
            if labels.get("destination") != destination:
                continue
            if name == histogram + "_sum":
                total += sign * value
            elif name == histogram + "_count":
                count += sign * value
    return total / count if count else math.nan


# ---------------------------------------------------------------------------------------------
# 3. restore


def produce_state(ctx: Ctx, topic: str, persons: int, seed: int) -> int:
    """person/ + 3 x sync/ records per person (member of the 3 segments, SYNCED everywhere)."""
    from stream_sync.state import (
        Person,
        SyncRecord,
        SyncStatus,
        encode_person,
        encode_sync,
        person_key,
        sync_key,
    )

    wl = Workload(persons, seed)
    producer = Producer(
        {
            "bootstrap.servers": ctx.bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_152,
        }
    )
    count = 0
    for kind, pid, event in wl.initial():
        if kind != "a":
            continue
        part = partition_of(pid, ctx.partitions)
        person = Person(part)
        person.attrs = dict(event.set)
        person.segments = set(SEGMENTS)
        wl.model.segments[pid] = set(SEGMENTS)
        records = [(person_key(pid), encode_person(person))]
        for i, act in enumerate(ACTIVATIONS):
            found = wl.model.desired(act, pid)
            assert found is not None
            ident, fields = found
            rec = SyncRecord(SyncStatus.SYNCED, fields, ident, f"ref-{count}-{i}")
            records.append((sync_key(act.id, pid), encode_sync(rec)))
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value, key, part)
                    break
                except BufferError:
                    producer.poll(0.05)
            count += 1
        if count % 20_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("state records not acknowledged")
    return count


def run_probe(ctx: Ctx, topic: str, churn_rounds: int = 0) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--bootstrap",
        ctx.bootstrap,
        "--partitions",
        str(ctx.partitions),
        "_probe",
        "--topic",
        topic,
        "--churn-rounds",
        str(churn_rounds),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=ctx.args.timeout)
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            return dict(json.loads(line[6:]))
    raise RuntimeError(f"restore probe failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def probe(args: argparse.Namespace) -> None:
    """In a fresh process: restore a state topic; time, RSS before/after, sizes."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    from stream_sync.engine import Store
    from stream_sync.restore import restore_partitions

    conf = {"bootstrap.servers": args.bootstrap, "group.id": f"bench-probe-{os.getpid()}"}
    warm = Consumer(conf)  # librdkafka loaded and initialised before the first measurement
    warm.list_topics(args.topic, timeout=10)
    warm.close()
    gc.collect()
    malloc_trim()
    before = rss_kb()
    started = time.perf_counter()
    states = restore_partitions(conf, args.topic, list(range(args.partitions)))
    seconds = time.perf_counter() - started
    records = sum(s.records for s in states.values())
    store = Store()  # what the service keeps: Service._merge
    for p, state in states.items():
        store.add_partition(p)
        for pid, person in state.persons.items():
            store.persons[pid] = person
            store.by_partition[p].add(pid)
    del states
    gc.collect()
    after = rss_kb()
    malloc_trim()
    trimmed = rss_kb()
    persons = len(store.persons)
    sizes = deep_sizes(store, 2000)
    tables = attrs_tables(store, 2000)
    changes = churn_attributes(store, rounds=args.churn_rounds, seed=args.seed)
    print(
        "PROBE "
        + json.dumps(
            {
                "records": records,
                "seconds": seconds,
                "persons": persons,
                "rss_before_kb": before,
                "rss_after_kb": after,
                "rss_after_trim_kb": trimmed,
                "sizes": sizes,
                "attrs_table": tables,
                "churn_changes": changes,
                "attrs_table_churned": attrs_tables(store, 2000),
            }
        ),
        flush=True,
    )


def attrs_tables(store: Any, sample: int) -> float:
    """Average size of a person's attribute dict itself (its hash table, not the values)."""
    pids = list(store.persons)[:sample]
    return sum(sys.getsizeof(store.persons[pid].attrs) for pid in pids) / max(len(pids), 1)


def churn_attributes(store: Any, rounds: int, seed: int) -> int:
    """Attribute changes on the restored persons, as a long run brings them: each round
    changes one attribute of every person, 30 % of them unsets (set again in a later
    round). Applied as the consume loop does (``Engine.apply``); returns the change count."""
    from stream_sync.engine import Engine
    from stream_sync.events import AttributeChange
    from stream_sync.statewriter import StateWriter

    engine = Engine(store, [], StateWriter(None, "unused"))
    rng = random.Random(seed)
    names = sorted({name for p in list(store.persons.values())[:100] for name in p.attrs})
    changes = 0
    for r in range(rounds):
        for pid, person in list(store.persons.items()):
            name = rng.choice(names)
            if rng.random() < 0.3:
                event = AttributeChange(pid, {}, (name,), r)
            else:
                event = AttributeChange(pid, {name: f"{name}-{rng.randrange(50)}"}, (), r)
            engine.apply(event, person.partition)
            changes += 1
    return changes


def deep_sizes(store: Any, sample: int) -> dict[str, float]:
    """Average bytes per person by part (objects shared across the sample counted once)."""
    seen: set[int] = set()

    def deep(obj: Any) -> int:
        total, stack = 0, [obj]
        while stack:
            o = stack.pop()
            if id(o) in seen:
                continue
            seen.add(id(o))
            total += sys.getsizeof(o)
            if isinstance(o, dict):
                stack.extend(o.keys())
                stack.extend(o.values())
            elif isinstance(o, (list, tuple, set, frozenset)):
                stack.extend(o)
            elif hasattr(o, "__slots__") and not isinstance(o, str):
                stack.extend(getattr(o, s) for s in o.__slots__ if hasattr(o, s))
        return total

    parts: Counter[str] = Counter()
    pids = list(store.persons)[:sample]
    for pid in pids:
        person = store.persons[pid]
        parts["person_id"] += deep(pid)
        parts["Person object"] += sys.getsizeof(person)
        seen.add(id(person))
        parts["attrs (10)"] += deep(person.attrs)
        parts["segments (3)"] += deep(person.segments)
        parts["sync (3 records)"] += deep(person.sync)
    n = max(len(pids), 1)
    out = {k: v / n for k, v in parts.items()}
    out["store indexes"] = (
        sys.getsizeof(store.persons) + sum(sys.getsizeof(s) for s in store.by_partition.values())
    ) / max(len(store.persons), 1)
    return out


def restore(ctx: Ctx) -> None:
    args = ctx.args
    persons_big = args.records // 4
    print(
        f"\n=== restore: {fmt(persons_big * 4)} state records; memory with "
        f"{fmt(args.memory_persons)} persons ==="
    )
    big, small = ctx.name("restore-state"), ctx.name("memory-state")
    ctx.create_topics([big, small], compact=True)
    started = time.monotonic()
    records_big = produce_state(ctx, big, persons_big, args.seed)
    records_small = produce_state(ctx, small, args.memory_persons, args.seed + 1)
    log(
        f"produced {fmt(records_big + records_small)} state records in "
        f"{time.monotonic() - started:.1f}s"
    )
    timing = run_probe(ctx, big)
    memory = run_probe(ctx, small, churn_rounds=5)
    service: dict[str, Any] = {}
    if not args.no_service_restore:
        service = restore_service(ctx, big, small, persons_big, args.memory_persons)

    rate = timing["records"] / timing["seconds"]
    print(
        f"\nrestore — {ctx.partitions} partitions, each person: person/ + 3 sync/ records "
        f"(10 attributes, 3 activations)"
    )
    print(
        f"  restore_partitions of {fmt(timing['records'])} records: {timing['seconds']:.1f} s "
        f"({fmt(rate)} records/s)   target ≤ {TARGETS['restore_s']} s for 1,000,000 "
        f"(→ {1_000_000 / rate:.1f} s at this rate)"
    )
    delta = memory["rss_after_kb"] - memory["rss_before_kb"]
    delta_trim = memory["rss_after_trim_kb"] - memory["rss_before_kb"]
    n = memory["persons"]
    print(f"  memory per tracked person ({fmt(n)} persons restored into a Store, fresh process):")
    print(
        f"    RSS delta {delta / 1024:.1f} MB → {delta * 1024 / n:,.0f} bytes/person; after "
        f"malloc_trim {delta_trim * 1024 / n:,.0f} bytes/person   "
        f"target ≤ {TARGETS['bytes_per_person']}"
    )
    sizes = memory["sizes"]
    print(
        "    Python objects per person: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))
        + f" (sum {sum(sizes.values()):,.0f} bytes)"
    )
    print(
        f"    attribute dict of a person: {memory['attrs_table']:,.0f} bytes after the restore, "
        f"{memory['attrs_table_churned']:,.0f} after {fmt(memory['churn_changes'])} changes "
        "(30 % unsets, set again later)"
    )
    if service:
        print(
            "  full service start (`stream-sync run`, empty inputs) until every partition is "
            "assigned, restored and /readyz is 200:"
        )
        for r in service.values():
            print(
                f"    {r['label']:<22} ready after {r['ready_s']:5.1f} s (restore "
                f"{r['restore_s']:.1f} s, then merge + backlog scan {r['after_restore_s']:.1f} s), "
                f"RSS {r['rss_kb'] / 1024:.0f} MB, operations sent {r['ops']}"
            )
        if "memory" in service and "empty" in service:
            d = service["memory"]["rss_kb"] - service["empty"]["rss_kb"]
            print(
                f"    service RSS per person: ({service['memory']['rss_kb'] / 1024:.0f} - "
                f"{service['empty']['rss_kb'] / 1024:.0f} MB) ÷ {fmt(args.memory_persons)} = "
                f"{d * 1024 / args.memory_persons:,.0f} bytes"
            )


def restore_service(
    ctx: Ctx, big: str, small: str, persons_big: int, persons_small: int
) -> dict[str, dict[str, Any]]:
    """Time a real start on each state topic; RSS once ready (vs an empty state)."""
    inputs = ctx.input_topics("rs")
    dest = BenchDestination().start()
    out: dict[str, dict[str, Any]] = {}
    try:
        for label, state in (("records", big), ("memory", small), ("empty", None)):
            run = f"rs-{label}"
            topics = {
                **inputs,
                "state": state or ctx.name(f"{run}-state"),
                "warnings": ctx.name(f"{run}-w"),
            }
            ctx.created += [topics["warnings"]] + ([] if state else [topics["state"]])
            path, port, _ = write_config(ctx, run, topics, dest, max_wait_ms=100)
            before = dest.op_total()
            svc = Service(ctx, run, path, port)
            try:
                ready = svc.wait_assigned(ctx.partitions, ctx.args.timeout)
                time.sleep(1.0)  # any backlog the restored state implies would be sent now
                gc_rss = svc.rss_kb()
            finally:
                svc.stop()
            restored = svc.log_events("state_restored")
            restore_s = sum(float(r.get("seconds", 0)) for r in restored)
            t_restored = svc.log_time("state_restored") or ready
            key = {
                "records": f"{fmt(persons_big * 4)} records",
                "memory": f"{fmt(persons_small)} persons",
                "empty": "empty state",
            }[label]
            out[label] = {
                "label": key,
                "ready_s": ready - svc.started,
                "restore_s": restore_s,
                "after_restore_s": max(ready - t_restored, 0.0),
                "rss_kb": gc_rss,
                "ops": dest.op_total() - before,
            }
            log(f"{run}: ready after {ready - svc.started:.1f}s")
    finally:
        dest.stop()
    return out


# ---------------------------------------------------------------------------------------------
# 4. efficiency


def efficiency(ctx: Ctx) -> None:
    args = ctx.args
    print(
        f"\n=== efficiency: {fmt(args.changed)} changed persons per burst, max_size "
        f"{args.max_size}, max_wait_ms {args.eff_max_wait_ms} ==="
    )
    persons = max(args.persons, 2 * args.changed)
    wl = Workload(persons, args.seed)
    topics = ctx.input_topics("eff")
    producer = EventProducer(ctx.bootstrap, topics, ctx.partitions)
    producer.send_all(wl.initial())
    producer.flush()
    dest = BenchDestination().start()
    run_topics = ctx.service_topics(topics, "eff")
    path, port, _ = write_config(
        ctx, "eff", run_topics, dest, max_size=args.max_size, max_wait_ms=args.eff_max_wait_ms
    )
    svc = Service(ctx, "eff", path, port)
    rows = []
    try:
        log("efficiency: initial sync")
        if wait_converged(dest, expected_state(wl.model), svc, args.timeout) is None:
            ctx.failures.append("efficiency: initial sync")
            return
        candidates = list(wl.person_ids)
        wl.rng.shuffle(candidates)
        for variant in ("live", "backlog"):
            chosen, candidates = candidates[: args.changed], candidates[args.changed :]
            before = {a.namespace: {p: wl.model.desired(a, p) for p in chosen} for a in ACTIVATIONS}
            base_ops = {a.namespace: len(dest.ops(a.namespace)) for a in ACTIVATIONS}
            base_req = {a.namespace: dest.requests_of(a.namespace) for a in ACTIVATIONS}
            if variant == "backlog":
                svc.stop()
            events = producer.send_all(wl.bursts(chosen))
            producer.flush()
            if variant == "backlog":
                svc = Service(ctx, "eff-restart", path, port)
            log(f"efficiency [{variant}]: {fmt(events)} events for {fmt(len(chosen))} persons")
            if wait_converged(dest, expected_state(wl.model), svc, args.timeout) is None:
                ctx.failures.append(f"efficiency: {variant}")
                return
            time.sleep(max(1.0, 2 * args.eff_max_wait_ms / 1000))  # redundant ops would land now
            for act in ACTIVATIONS:
                ns = act.namespace
                changed = {
                    p
                    for p in chosen
                    if (after := wl.model.desired(act, p)) is not None and after != before[ns][p]
                }
                ops = dest.ops(ns)[base_ops[ns] :]
                per_person = Counter(op["person_id"] for op in ops)
                requests = dest.requests_of(ns) - base_req[ns]
                rows.append(
                    {
                        "variant": variant,
                        "activation": f"{act.id} ({act.mode})",
                        "events": events,
                        "changed": len(changed),
                        "ops": len(ops),
                        "unchanged_ops": sum(n for p, n in per_person.items() if p not in changed),
                        "multi": sum(1 for p in changed if per_person[p] > 1),
                        "missing": sum(1 for p in changed if per_person[p] == 0),
                        "requests": requests,
                        "ideal_requests": math.ceil(len(ops) / args.max_size),
                    }
                )
    finally:
        svc.stop()
        dest.stop()
    print(
        f"\nefficiency — bursts of 1-5 attribute changes (1-3 mapped attributes each) per "
        f"person, {fmt(args.changed)} persons per burst"
    )
    print(
        "  live: the service runs while the burst is produced; backlog: produced while it is "
        "stopped, then restarted (catch-up before emit)"
    )
    header = (
        f"  {'variant':<8} {'activation':<18} {'changed':>8} {'ops':>7} "
        f"{'ops/10k changed':>16} {'>1 op':>6} {'missing':>8} {'extra':>6} "
        f"{'requests':>9} {'ceil(ops/max)':>14}"
    )
    print(header)
    for r in rows:
        per10k = 10_000 * r["ops"] / r["changed"] if r["changed"] else math.nan
        print(
            f"  {r['variant']:<8} {r['activation']:<18} {r['changed']:>8,} {r['ops']:>7,} "
            f"{per10k:>16,.0f} {r['multi']:>6} {r['missing']:>8} {r['unchanged_ops']:>6} "
            f"{r['requests']:>9} {r['ideal_requests']:>14}"
        )
    print(
        "  target: ops/10k changed = 10,000 (exactly one per changed person and batch window), "
        "requests = ceil(ops / max_size)"
    )


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "figures",
        nargs="*",
        choices=[*FIGURES, "all", "_probe"],
        default="all",
        help="which benchmarks to run (default: all)",
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--quick", action="store_true", help="everything small (< 1 minute)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--persons", type=int, help="throughput/efficiency persons (100,000)")
    parser.add_argument("--events", type=int, help="throughput churn events (1,000,000)")
    parser.add_argument(
        "--destination",
        choices=["test", "log", "both"],
        default="both",
        help="throughput destination: the HTTP test destination, type: log "
        "with dry_run_path /dev/null, or both (default)",
    )
    parser.add_argument(
        "--profile",
        choices=["none", "py-spy", "cprofile"],
        default="none",
        help="also run the throughput test under a profiler; print hotspots",
    )
    parser.add_argument("--commit-interval-ms", type=int, default=1000)
    parser.add_argument(
        "--dest-latency-ms",
        type=int,
        default=0,
        help="throughput: the test destination answers each request this much later (0)",
    )
    parser.add_argument("--rate", type=float, default=2000.0, help="latency: events/s")
    parser.add_argument("--duration", type=float, help="latency: measured seconds (60)")
    parser.add_argument("--warmup", type=float, help="latency: warm-up seconds (5)")
    parser.add_argument("--max-wait-ms", type=int, default=200, help="latency: batch.max_wait_ms")
    parser.add_argument("--latency-persons", type=int, help="latency: persons (100,000)")
    parser.add_argument("--records", type=int, help="restore: state records (1,000,000)")
    parser.add_argument("--memory-persons", type=int, help="restore: persons for RSS (100,000)")
    parser.add_argument(
        "--no-service-restore",
        action="store_true",
        help="restore: skip the full `stream-sync run` starts",
    )
    parser.add_argument("--changed", type=int, help="efficiency: changed persons (10,000)")
    parser.add_argument("--max-size", type=int, default=100, help="efficiency: batch.max_size")
    parser.add_argument(
        "--eff-max-wait-ms", type=int, default=500, help="efficiency: batch.max_wait_ms"
    )
    parser.add_argument("--timeout", type=float, help="per-run convergence timeout, s")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the topics")
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--churn-rounds", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if isinstance(args.figures, str):
        args.figures = [args.figures]
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick and "--destination" not in (argv or sys.argv):
        args.destination = "test"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "_probe" in args.figures:
        probe(args)
        return 0
    figures = FIGURES if "all" in args.figures else tuple(dict.fromkeys(args.figures))
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C: services are stopped, topics deleted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = Ctx(args)
    log(f"broker {ctx.bootstrap}, work directory {ctx.workdir}")
    started = time.monotonic()
    try:
        for figure in figures:
            {
                "throughput": throughput,
                "latency": latency,
                "restore": restore,
                "efficiency": efficiency,
            }[figure](ctx)
    finally:
        ctx.cleanup()
    log(f"done in {time.monotonic() - started:.0f}s")
    if ctx.failures:
        print("FAILED (did not converge / service died): " + "; ".join(ctx.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
