"""Drive ``stream-sync`` as users do: topics on the real broker, a YAML config, a subprocess.

``SyncEnv`` owns one test's topics, config and processes; events are produced with the same
explicit partitioner the tests use to compute expectations (crc32 of the person id).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from stream_sync.events import (
    AttributeChange,
    MembershipChange,
    encode_json,
    encode_single_object,
)

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class ServiceProcess:
    """One ``stream-sync run`` subprocess with its logs in a file."""

    def __init__(
        self, config_path: Path, http_port: int, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.config_path = config_path
        self.http_port = http_port
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_sync.cli", "run", "-c", str(config_path)],
            stdout=self._log,
            stderr=self._log,
            env=full_env,
            cwd=ROOT,
        )

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=2)
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.logs()}")
            response = self.get("/readyz")
            return response is not None and response.status_code == 200

        wait_until(ready, timeout, what="/readyz")

    def metrics(self) -> str:
        response = self.get("/metrics")
        return response.text if response is not None else ""

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log.flush()
        return code

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class SyncEnv:
    """Topics, config and processes of one test."""

    def __init__(self, bootstrap: str, tmp_path: Path, name: str, partitions: int = 2) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp_path
        self.partitions = partitions
        suffix = f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.topics = {
            "memberships": f"m-{suffix}",
            "attributes": f"a-{suffix}",
            "state": f"state-{suffix}",
            "warnings": f"warn-{suffix}",
        }
        self.group = f"g-{suffix}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.create_topics(
            [NewTopic(self.topics[t], partitions, 1) for t in ("memberships", "attributes")]
        )
        for future in futures.values():
            future.result(30)
        wait_until(
            lambda: all(
                self.topics[t] in (md := admin.list_topics(timeout=5)).topics
                and len(md.topics[self.topics[t]].partitions) == partitions
                for t in ("memberships", "attributes")
            ),
            30,
            what="input topics",
        )
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.processes: list[ServiceProcess] = []
        self.encoding = "avro"

    # --- events ------------------------------------------------------------------------

    def partition_of(self, person_id: str) -> int:
        return zlib.crc32(person_id.encode()) % self.partitions

    def _send(self, topic: str, person_id: str, value: bytes | None) -> None:
        self.producer.produce(
            topic, key=person_id.encode(), value=value, partition=self.partition_of(person_id)
        )

    def _encode(self, event: MembershipChange | AttributeChange) -> bytes:
        return encode_single_object(event) if self.encoding == "avro" else encode_json(event)

    def enter(self, person_id: str, segment: str) -> None:
        ev = MembershipChange(person_id, segment, "ENTER", int(time.time() * 1000))
        self._send(self.topics["memberships"], person_id, self._encode(ev))

    def exit(self, person_id: str, segment: str) -> None:
        ev = MembershipChange(person_id, segment, "EXIT", int(time.time() * 1000))
        self._send(self.topics["memberships"], person_id, self._encode(ev))

    def attrs(
        self, person_id: str, set_: dict[str, Any] | None = None, unset: Iterable[str] = ()
    ) -> None:
        ev = AttributeChange(person_id, dict(set_ or {}), tuple(unset), int(time.time() * 1000))
        self._send(self.topics["attributes"], person_id, self._encode(ev))

    def delete_person(self, person_id: str) -> None:
        self._send(self.topics["attributes"], person_id, None)

    def raw(
        self, topic_kind: str, key: bytes | None, value: bytes | None, partition: int = 0
    ) -> None:
        self.producer.produce(self.topics[topic_kind], key=key, value=value, partition=partition)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    # --- config and processes ------------------------------------------------------------

    def write_config(
        self,
        destinations: dict[str, Any],
        activations: list[dict[str, Any]],
        *,
        filename: str = "config.yaml",
        http_port: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[Path, int]:
        port = http_port or free_port()
        config = {
            "kafka": {
                "bootstrap_servers": self.bootstrap,
                "group_id": self.group,
                "commit_interval_ms": 300,
            },
            "topics": self.topics,
            "destinations": destinations,
            "activations": activations,
            "http": {"host": "127.0.0.1", "port": port},
            "shutdown_grace_s": 10,
            **(extra or {}),
        }
        path = self.tmp / filename
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path, port

    def start(
        self, config: tuple[Path, int], *, ready: bool = True, env: dict[str, str] | None = None
    ) -> ServiceProcess:
        path, port = config
        log = self.tmp / f"service-{len(self.processes)}.log"
        proc = ServiceProcess(path, port, log, env)
        self.processes.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    def cli(
        self, *args: str, config: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "stream_sync.cli", *args]
        if config is not None:
            cmd += ["-c", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def close(self) -> None:
        for proc in self.processes:
            if proc.proc.poll() is None:
                proc.kill()
        self.producer.flush(10)


def test_destination_config(url: str, **extra: Any) -> dict[str, Any]:
    from tests.fakes.test_destination import TOKEN

    return {"type": "test", "base_url": url, "token": TOKEN, **extra}


test_destination_config.__test__ = False  # type: ignore[attr-defined]


def activation(
    id_: str,
    destination: str,
    mode: str = "upsert",
    *,
    segment: str = "vip",
    identifier: str = "email",
    fields: dict[str, str] | None = None,
    custom: list[str] | None = None,
    max_size: int = 100,
    max_wait_ms: int = 200,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": id_,
        "segment": segment,
        "destination": destination,
        "mode": mode,
        "identifier": identifier,
        "fields": fields if fields is not None else {"first_name": "first_name", "city": "city"},
        "custom_attributes": custom if custom is not None else ["plan"],
        "batch": {"max_size": max_size, "max_wait_ms": max_wait_ms},
        **extra,
    }


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def log_events(svc: ServiceProcess) -> list[dict[str, Any]]:
    """The service's structured log lines (JSON on stderr), parsed."""
    events = []
    for line in svc.logs().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
