"""A second, secured Apache Kafka broker for the Kafka security tests (issue 6, part 5).

`start_security_broker(home)` makes a throwaway CA and a server certificate for 127.0.0.1 /
localhost with `openssl` (PKCS12 keystore for the broker), then runs `scripts/kafka start` with
its `KAFKA_*` variables: a PLAINTEXT listener (topics and events, without credentials), a
SASL_PLAINTEXT listener (SCRAM-SHA-256/512 and PLAIN, one user) and an SSL listener, on free
loopback ports, with data, logs and pid under `home`. `SecurityBroker.stop()` runs
`scripts/kafka stop` with the same variables: it stops exactly that instance (pid file checked
against the process's command line), never the shared broker on 9092.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class TlsFiles:
    ca_pem: Path
    """The test CA's certificate: what clients put in `ssl.ca.location`."""
    keystore: Path
    """PKCS12: the server key, its certificate (SAN 127.0.0.1, localhost) and the CA."""
    password: str
    other_ca_pem: Path
    """A second CA that did not sign the server certificate (an untrusted chain)."""


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise RuntimeError("openssl not found: apt-get install openssl")
    return path


def _run_openssl(*args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [_openssl(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _run_openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key.name, "-out", cert.name, "-days", "3",
        "-subj", f"/CN=stream-sync {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return key, cert


def make_tls_files(directory: Path, password: str) -> TlsFiles:
    """CA, server certificate signed by it, PKCS12 keystore; a second, unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = _make_ca(directory, "test-ca")
    _, other_ca_pem = _make_ca(directory, "other-ca")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _run_openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _run_openssl(
        "x509", "-req", "-in", "server.csr", "-CA", ca_pem.name, "-CAkey", ca_key.name,
        "-CAcreateserial", "-out", "server.pem", "-days", "3", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    keystore = directory / "server.p12"
    _run_openssl(
        "pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key",
        "-certfile", ca_pem.name, "-name", "kafka", "-out", keystore.name,
        "-passout", "env:KEYSTORE_PASSWORD",
        cwd=directory,
        env={"KEYSTORE_PASSWORD": password},
    )  # fmt: skip
    return TlsFiles(ca_pem, keystore, password, other_ca_pem)


# --------------------------------------------------------------------------- the broker


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held together while picking, so never twice the same)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def kafka_cluster_id() -> str:
    """A random Kafka cluster id (base64url UUID, 22 characters, not starting with '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class SecurityBroker:
    home: Path
    plaintext_port: int
    controller_port: int
    sasl_port: int
    ssl_port: int
    user: str
    password: str
    tls: TlsFiles
    env: dict[str, str] = field(repr=False)
    start_seconds: float = 0.0

    @property
    def plaintext(self) -> str:
        return f"127.0.0.1:{self.plaintext_port}"

    @property
    def sasl(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def server_log(self) -> Path:
        return self.home / "server.log"

    def sasl_client(self, mechanism: str, password: str | None = None) -> dict[str, Any]:
        """`kafka.client` for the SASL_PLAINTEXT listener."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism,
            "sasl.username": self.user,
            "sasl.password": self.password if password is None else password,
        }

    def ssl_client(self, ca: Path | None) -> dict[str, Any]:
        """`kafka.client` for the SSL listener; `ca=None`: librdkafka's default trust store."""
        client: dict[str, Any] = {"security.protocol": "SSL"}
        if ca is not None:
            client["ssl.ca.location"] = str(ca)
        return client

    def script(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_SCRIPT), command],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        """`scripts/kafka stop` for this instance only (its pid file under `home`)."""
        proc = self.script("stop", timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/kafka stop exited {proc.returncode}:\n{proc.stderr}")


def start_security_broker(
    home: Path, *, user: str = "sync-user", password: str | None = None
) -> SecurityBroker:
    """Certificates, then `scripts/kafka start` on free ports; waits until SASL and SSL answer."""
    t0 = time.monotonic()
    password = password or f"sasl-pw-{secrets.token_hex(8)}"
    tls = make_tls_files(home / "tls", f"ks-{secrets.token_hex(8)}")
    plaintext, controller, sasl, ssl = free_ports(4)
    kafka_home = home / "kafka"
    env = {
        **os.environ,
        "KAFKA_PORT": str(plaintext),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_SASL_PORT": str(sasl),
        "KAFKA_SCRAM_USERS": f"{user}:{password}",
        "KAFKA_SSL_PORT": str(ssl),
        "KAFKA_SSL_KEYSTORE": str(tls.keystore),
        "KAFKA_SSL_PASSWORD": tls.password,
        "KAFKA_HOME_DIR": str(kafka_home),
        "KAFKA_CLUSTER_ID": kafka_cluster_id(),
        "KAFKA_HEAP": "256m",
        "KAFKA_START_TIMEOUT_S": "90",
    }
    broker = SecurityBroker(kafka_home, plaintext, controller, sasl, ssl, user, password, tls, env)
    proc = broker.script("start", timeout=900)  # the first run ever fetches the jars
    if proc.returncode != 0:
        _stop_quietly(broker)
        raise RuntimeError(f"scripts/kafka start exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    try:
        _wait_for_metadata({"bootstrap.servers": broker.plaintext})
        _wait_for_metadata(
            {"bootstrap.servers": broker.sasl, **broker.sasl_client("SCRAM-SHA-512")}
        )
        _wait_for_metadata({"bootstrap.servers": broker.ssl, **broker.ssl_client(tls.ca_pem)})
    except BaseException:
        _stop_quietly(broker)
        raise
    broker.start_seconds = time.monotonic() - t0
    return broker


def _stop_quietly(broker: SecurityBroker) -> None:
    with suppress(Exception):
        broker.stop()


def _wait_for_metadata(conf: dict[str, Any], timeout: float = 30) -> None:
    """Metadata through one listener, or raise with what librdkafka reported."""
    errors: list[str] = []
    admin = AdminClient({**conf, "error_cb": lambda err: errors.append(str(err))})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=5)
            return
        except KafkaException as err:
            if time.monotonic() > deadline:
                listener = conf["bootstrap.servers"]
                raise RuntimeError(f"no metadata from {listener}: {err}; {errors[-3:]}") from err
            time.sleep(0.2)
