"""Shared fixtures: a real Apache Kafka broker for every test that needs one.

`kafka_bootstrap` (session) picks the broker, in this order:

1. `KAFKA_BOOTSTRAP_SERVERS` from the environment, used as is (CI or your own cluster);
2. a testcontainers Apache Kafka (`apache/kafka`, KRaft, single node) when a Docker engine
   answers a ping within ~2 s; the container is removed at the end of the session
   (image overridable with `KAFKA_TEST_IMAGE`);
3. `scripts/kafka start`: the project's own single-node KRaft broker on 127.0.0.1:9092. The
   script reuses a broker that is already running and prints the bootstrap address. When the
   fixture had to start it, it is deliberately **left running** after the session: it costs
   ~0.5 GB of heap, starting it again costs several seconds, and other engineers' sessions
   reuse it. Stop it with `scripts/kafka stop`.

`make_topic` (session) is a factory: `make_topic(name=None, partitions=1, config=None) -> str`
creates a topic (a unique name unless one is given), waits until metadata shows it, and
deletes every topic it created at the end of the session (best effort).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_helpers import TopicFactory, wait_for_broker

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"
DEFAULT_TEST_IMAGE = "apache/kafka:4.3.1"

_MARKERS = {
    "kafka": "needs the real Apache Kafka broker",
    "slow": "long-running end-to-end test",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register our markers when pyproject's [tool.pytest.ini_options] is not in effect
    (e.g. pytest run with another rootdir), so `--strict-markers` never trips on them."""
    declared = {str(line).split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, help_text in _MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", f"{name}: {help_text}")


# --------------------------------------------------------------------------- broker selection


def _docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping. Quick and silent when there is none."""
    if os.environ.get("STREAM_SYNC_TESTS_NO_DOCKER"):
        return False
    sockets = [
        Path("/var/run/docker.sock"),
        Path.home() / ".docker" / "run" / "docker.sock",
    ]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        sockets.append(Path(runtime_dir) / "docker.sock")
    if not os.environ.get("DOCKER_HOST") and not any(s.exists() for s in sockets):
        return False
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _apache_kafka_container(image: str) -> Any:
    """testcontainers' KafkaContainer, adapted to the Apache image in KRaft mode.

    The stock class drives the Confluent image's `/etc/confluent/docker/*` scripts; the
    Apache image is configured from KAFKA_* environment variables by `/etc/kafka/docker/run`.
    The advertised listener needs the mapped host port, known only once the container runs,
    hence the start script written into the container (the base class waits for it).
    """
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.10 keeps it at the old place
        from testcontainers.kafka import KafkaContainer

    class ApacheKafkaContainer(KafkaContainer):  # type: ignore[misc, valid-type]
        def configure(self) -> None:
            self.kraft_enabled = True
            self.wait_for = re.compile(r".*Kafka Server started.*")
            self.env.pop("KAFKA_BROKER_ID", None)
            self.with_env("CLUSTER_ID", self.cluster_id)
            self.with_env("KAFKA_NODE_ID", "1")
            self.with_env("KAFKA_PROCESS_ROLES", "broker,controller")
            self.with_env("KAFKA_LISTENERS", f"{self.listeners},CONTROLLER://0.0.0.0:9094")
            self.with_env(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                f"{self.security_protocol_map},CONTROLLER:PLAINTEXT",
            )
            self.with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            self.with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9094")
            self.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            self.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            self.with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1")
            self.with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
            self.with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")

        def tc_start(self) -> None:
            host = self.get_container_host_ip()
            port = self.get_exposed_port(self.port)
            advertised = (
                f"{self.listener_name}://{host}:{port},BROKER://$(hostname -i | cut -d' ' -f1):9092"
            )
            script = f"export KAFKA_ADVERTISED_LISTENERS={advertised}\nexec /etc/kafka/docker/run\n"
            self.create_file(script.encode(), self.TC_START_SCRIPT)

    return ApacheKafkaContainer(image)


def _start_local_broker() -> str:
    """`scripts/kafka start` (reuses a running broker); returns the printed bootstrap."""
    try:
        proc = subprocess.run(
            [str(KAFKA_SCRIPT), "start"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,  # the first run fetches the jars with Maven
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"scripts/kafka start failed: {exc}", pytrace=False)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        pytest.fail(
            f"scripts/kafka start exited {proc.returncode}:\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    return lines[-1]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Apache Kafka 4.x broker (see the module docstring)."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if from_env:
        wait_for_broker(from_env, timeout=60)
        yield from_env
        return
    if _docker_available():
        container = _apache_kafka_container(os.environ.get("KAFKA_TEST_IMAGE", DEFAULT_TEST_IMAGE))
        container.start(timeout=180)
        try:
            bootstrap = container.get_bootstrap_server()
            wait_for_broker(bootstrap, timeout=60)
            yield bootstrap
        finally:
            container.stop()
        return
    bootstrap = _start_local_broker()
    wait_for_broker(bootstrap, timeout=60)
    yield bootstrap  # left running on purpose: cheap to reuse (see the module docstring)


@pytest.fixture(scope="session")
def make_topic(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """Factory `make_topic(name=None, partitions=1, config=None) -> str`; topics are deleted
    at the end of the session, best effort."""
    factory = TopicFactory(kafka_bootstrap)
    try:
        yield factory
    finally:
        factory.cleanup()


# --------------------------------------------------------------------------- service tests


@pytest.fixture
def sync_partitions() -> int:
    """Partitions of a test's input topics; a module overrides this fixture to change it."""
    return 2


@pytest.fixture
def env(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest, sync_partitions: int
) -> Iterator[Any]:
    """One test's topics, config and `stream-sync run` processes (`tests/harness.py`)."""
    from tests.harness import SyncEnv

    name = request.node.name[:30].replace("_", "-")
    sync_env = SyncEnv(kafka_bootstrap, tmp_path, name, partitions=sync_partitions)
    yield sync_env
    sync_env.close()


@pytest.fixture
def dest() -> Iterator[Any]:
    """The fault-injecting test destination, a real HTTP server on loopback."""
    from tests.fakes.test_destination import TestDestination

    with TestDestination() as server:
        yield server
