"""End-to-end demo: sample events on the local broker → `stream-sync run` with dry-run destinations.

What it does, truthfully:
1. creates fresh input topics (3 partitions) on the broker given by --bootstrap;
2. produces realistic sample events: thousands of persons with attributes, three segments,
   then churn (attribute changes, segment enters and exits), Avro single-object and JSON mixed;
3. writes a config with three activations — `vip` → Crisp (mirror), `newsletter` → Batch
   (upsert), `churn_risk` → a `log` destination — all in dry run: nothing leaves this machine;
4. runs `stream-sync run`, shows a live progress line read from its /metrics endpoint;
5. once every event is consumed and nothing is left to send, stops it with SIGTERM and prints
   a summary of what would have been sent, with one sample operation per activation.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_sync.events import (  # noqa: E402
    AttributeChange,
    MembershipChange,
    encode_json,
    encode_single_object,
)

FIRST = ["Ada", "Ben", "Chloé", "Dan", "Eve", "Farid", "Gina", "Hugo", "Inès", "Jon", "Kim", "Léa"]
CITIES = ["Paris", "Lyon", "Berlin", "Madrid", "Lisbon", "Milan", "Ghent", "Nantes"]
PLANS = ["free", "starter", "pro", "enterprise"]
LANGS = ["fr", "en", "de", "es", "pt", "it"]
SEGMENTS = ["vip", "newsletter", "churn_risk"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Generator:
    """Realistic sample events: an initial load, then churn."""

    def __init__(self, producer: Producer, topics: dict[str, str], persons: int, seed: int) -> None:
        self.producer = producer
        self.topics = topics
        self.persons = persons
        self.rng = random.Random(seed)
        self.members: dict[str, set[str]] = {}
        self.sent = 0

    def send(self, topic: str, event: MembershipChange | AttributeChange) -> None:
        value = encode_single_object(event) if self.rng.random() < 0.8 else encode_json(event)
        partition = hash_partition(event.person_id)
        self.producer.produce(topic, key=event.person_id.encode(), value=value, partition=partition)
        self.sent += 1
        if self.sent % 10_000 == 0:
            self.producer.poll(0)

    def initial_load(self) -> None:
        rng, now = self.rng, int(time.time() * 1000)
        for i in range(self.persons):
            pid = f"user-{i:06d}"
            first = rng.choice(FIRST)
            attrs = {
                "email": f"{first.lower()}.{i}@example.com",
                "first_name": first,
                "city": rng.choice(CITIES),
                "plan": rng.choice(PLANS),
                "ltv": round(rng.uniform(0, 5000), 2),
                "language": rng.choice(LANGS),
                "user_id": pid,
            }
            self.send(self.topics["attributes"], AttributeChange(pid, attrs, (), now))
            for seg in SEGMENTS:
                if rng.random() < {"vip": 0.15, "newsletter": 0.6, "churn_risk": 0.1}[seg]:
                    self.members.setdefault(pid, set()).add(seg)
                    self.send(self.topics["memberships"], MembershipChange(pid, seg, "ENTER", now))
        self.producer.flush(60)

    def churn(self, count: int) -> None:
        rng, now = self.rng, int(time.time() * 1000)
        for _ in range(count):
            pid = f"user-{rng.randrange(self.persons):06d}"
            if rng.random() < 0.3:
                seg = rng.choice(SEGMENTS)
                segments = self.members.setdefault(pid, set())
                if seg in segments:
                    segments.discard(seg)
                    self.send(self.topics["memberships"], MembershipChange(pid, seg, "EXIT", now))
                else:
                    segments.add(seg)
                    self.send(self.topics["memberships"], MembershipChange(pid, seg, "ENTER", now))
            else:
                change = rng.choice(
                    [
                        {"plan": rng.choice(PLANS)},
                        {"ltv": round(rng.uniform(0, 5000), 2)},
                        {"city": rng.choice(CITIES)},
                        {"city": None},
                    ]
                )
                self.send(self.topics["attributes"], AttributeChange(pid, change, (), now))
        self.producer.flush(60)


PARTITIONS = 3


def hash_partition(person_id: str) -> int:
    import zlib

    return zlib.crc32(person_id.encode()) % PARTITIONS


def write_config(workdir: Path, bootstrap: str, topics: dict[str, str], port: int) -> Path:
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"demo-{topics['memberships']}"},
        "topics": topics,
        "destinations": {
            "crisp-demo": {
                "type": "crisp",
                "website_id": "8c842203-7ed8-4e29-a608-7cf78a7d2fcc",
                "identifier": "${CRISP_IDENTIFIER:-demo-identifier}",
                "key": "${CRISP_KEY:-demo-key}",
                "tier": "plugin",
                "dry_run": True,
                "dry_run_path": str(workdir / "crisp.jsonl"),
            },
            "batch-demo": {
                "type": "batch",
                "rest_api_key": "${BATCH_REST_API_KEY:-demo-rest-key}",
                "project_key": "${BATCH_PROJECT_KEY:-demo-project}",
                "dry_run": True,
                "dry_run_path": str(workdir / "batch.jsonl"),
            },
            "log-demo": {"type": "log", "dry_run_path": str(workdir / "log.jsonl")},
        },
        "activations": [
            {
                "id": "vip-to-crisp",
                "segment": "vip",
                "destination": "crisp-demo",
                "mode": "mirror",
                "identifier": "email",
                "fields": {"first_name": "person.nickname"},
                "custom_attributes": ["plan", "ltv", "city"],
            },
            {
                "id": "newsletter-to-batch",
                "segment": "newsletter",
                "destination": "batch-demo",
                "mode": "upsert",
                "identifier": "user_id",
                "fields": {"email": "$email_address", "language": "$language"},
                "custom_attributes": ["plan", "city"],
            },
            {
                "id": "churn-to-log",
                "segment": "churn_risk",
                "destination": "log-demo",
                "mode": "upsert",
                "identifier": "email",
                "fields": {"first_name": "first_name", "plan": "plan", "ltv": "ltv"},
            },
        ],
        "http": {"host": "127.0.0.1", "port": port},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def scrape(port: int) -> dict[str, float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for name, labels, value in re.findall(
        r"^(stream_sync_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", text, re.M
    ):
        key = name + (labels or "")
        out[key] = out.get(key, 0.0) + float(value)
    return out


def total(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--persons", type=int, default=5000)
    parser.add_argument("--churn", type=int, default=20000, help="churn events before the start")
    parser.add_argument("--live", type=int, default=5000, help="churn events while it runs")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = ROOT / "var" / "demo" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    topics = {
        "memberships": f"demo-memberships-{stamp}",
        "attributes": f"demo-attributes-{stamp}",
        "state": f"demo-state-{stamp}",
        "warnings": f"demo-warnings-{stamp}",
    }
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for future in admin.create_topics(
        [NewTopic(topics[t], PARTITIONS, 1) for t in ("memberships", "attributes")]
    ).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 20})
    started = time.monotonic()
    gen = Generator(producer, topics, args.persons, args.seed)
    gen.initial_load()
    gen.churn(args.churn)
    print(
        f"produced {gen.sent} events for {args.persons} persons in "
        f"{time.monotonic() - started:.1f}s (the backlog the service starts with)"
    )

    port = free_port()
    config = write_config(workdir, args.bootstrap, topics, port)
    log_path = workdir / "service.log"
    print(f"config: {config}\nservice logs: {log_path}\nrunning `stream-sync run` (dry run)…")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_sync.cli", "run", "-c", str(config)],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        started = time.monotonic()
        stable = 0
        last_ops = -1.0
        live_sent = False
        sent = gen.sent
        try:
            while proc.poll() is None:
                time.sleep(1)
                m = scrape(port)
                consumed = total(m, "stream_sync_events_consumed_total")
                ops = {
                    act: total(m, f'stream_sync_operations_total{{activation="{act}"')
                    for act in ("vip-to-crisp", "newsletter-to-batch", "churn-to-log")
                }
                backlog = total(m, "stream_sync_backlog_persons")
                line = "  ".join(f"{a}={int(n)}" for a, n in ops.items())
                print(
                    f"\r[{time.monotonic() - started:5.1f}s] consumed {int(consumed)}/{sent} "
                    f"ops: {line} backlog={int(backlog)}   ",
                    end="",
                    flush=True,
                )
                now_ops = sum(ops.values())
                if consumed >= sent and backlog == 0 and now_ops == last_ops:
                    stable += 1
                    if stable >= 2 and not live_sent and args.live:
                        live_sent = True
                        gen.churn(args.live)
                        sent = gen.sent
                        print(f"\nbacklog synced; producing {args.live} live churn events…")
                        stable = 0
                    elif stable >= 2:
                        break
                else:
                    stable = 0
                last_ops = now_ops
        finally:
            print()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    print(f"service stopped with exit code {code} after {time.monotonic() - started:.1f}s")
    print("\nwhat would have been sent:")
    for name in ("crisp", "batch", "log"):
        path = workdir / f"{name}.jsonl"
        if not path.exists():
            continue
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by = Counter((line["activation"], line["op"]) for line in lines)
        for (activation, op), n in sorted(by.items()):
            print(f"  {activation:<22} {op:<7} {n:>6}")
        if lines:
            sample = json.dumps(lines[0])
            print(f"    e.g. {sample[:300]}{'…' if len(sample) > 300 else ''}")
    print(f"\ndry-run files: {workdir}/*.jsonl")
    return code


if __name__ == "__main__":
    sys.exit(main())
