"""Kafka security through `kafka.client` (issue 6, part 5): SASL (SCRAM-SHA-256/512, PLAIN) and
TLS, on a second broker started for this module (`tests/security_broker.py`), through the real
CLI: `stream-sync check` and `stream-sync run` with a `type: log` destination (dry-run lines).

Topics are created and events produced through the broker's PLAINTEXT listener; only the
service connects through the secured listeners. Every failure case also checks that neither
the real nor the wrong password appears in anything the service printed or wrote.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import SyncEnv, activation, wait_until
from tests.security_broker import SecurityBroker, start_security_broker

pytestmark = pytest.mark.kafka

FAIL_TIMEOUT_S = 2.0
"""`kafka.startup_timeout_s` of the failure cases: `run` must give up about this fast."""

_ROW = re.compile(r"^(ok|WARN|FAIL)\s+([^:]+): (.*)$")


@pytest.fixture(scope="session")
def security_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityBroker]:
    """A second broker (PLAINTEXT, SASL_PLAINTEXT, SSL) on free ports; stopped at the end."""
    broker = start_security_broker(tmp_path_factory.mktemp("kafka-security"))
    print(f"security broker started in {broker.start_seconds:.1f}s at {broker.home}")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def env(
    security_broker: SecurityBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SyncEnv]:
    name = re.sub(r"[^A-Za-z0-9-]", "-", request.node.name)[:40]
    sync_env = SyncEnv(security_broker.plaintext, tmp_path, name)
    yield sync_env
    sync_env.close()
    # an xfail's traceback keeps this env alive: drop the producer now, or it would log
    # "connection refused" until the end of the session once the broker is stopped
    del sync_env.producer


# --------------------------------------------------------------------------- helpers


def write_config(
    env: SyncEnv, bootstrap: str, client: dict[str, Any], startup_timeout_s: float = 30
) -> tuple[Path, int]:
    return env.write_config(
        {"out": {"type": "log", "dry_run_path": str(env.tmp / "dry-run.jsonl")}},
        [activation("act", "out")],
        extra={
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": env.group,
                "commit_interval_ms": 300,
                "startup_timeout_s": startup_timeout_s,
                "client": client,
            }
        },
    )


def rows(stdout: str) -> list[tuple[str, str, str]]:
    found = []
    for line in stdout.splitlines():
        match = _ROW.match(line)
        if match:
            found.append((match[1], match[2], match[3]))
    return found


def check_ok(env: SyncEnv, config: Path) -> str:
    result = env.cli("check", config=config, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = rows(result.stdout)
    assert [r for r in found if r[0] != "ok"] == [], output
    items = {item for _, item, _ in found}
    assert {"kafka", "kafka input topics", "kafka state topic", "destination out"} <= items
    return output


def dry_run_lines(env: SyncEnv) -> list[dict[str, Any]]:
    path = env.tmp / "dry-run.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_consumes(env: SyncEnv, config: tuple[Path, int]) -> str:
    """`run` gets ready, consumes two events and writes the dry-run line; SIGTERM → 0.

    Returns everything the service printed or wrote: logs, a /metrics scrape, dry-run lines."""
    svc = env.start(config)  # waits for /readyz 200
    env.attrs("p1", {"email": "ann@example.com", "first_name": "Ann", "city": "Paris"})
    env.enter("p1", "vip")
    env.flush()
    lines = wait_until(lambda: dry_run_lines(env), 30, what="dry-run line")
    assert [(x["person_id"], x["op"], x["activation"]) for x in lines] == [("p1", "upsert", "act")]
    assert lines[0]["fields"]["first_name"] == "Ann"
    for kind in ("memberships", "attributes"):
        sample = f'stream_sync_events_consumed_total{{topic="{env.topics[kind]}"}} 1.0'
        wait_until(lambda sample=sample: sample in svc.metrics(), 15, what=sample)
    metrics_text = svc.metrics()
    assert svc.terminate(30) == 0, svc.logs()
    return svc.logs() + metrics_text + (env.tmp / "dry-run.jsonl").read_text()


def run_fails(env: SyncEnv, config: tuple[Path, int]) -> tuple[str, float]:
    """`run` exits 1 within about `startup_timeout_s`; returns its output and the duration."""
    t0 = time.monotonic()
    svc = env.start(config, ready=False)
    try:
        code = svc.wait(FAIL_TIMEOUT_S + 30)
    except Exception:
        svc.kill()
        raise AssertionError(f"run did not exit:\n{svc.logs()[-3000:]}") from None
    elapsed = time.monotonic() - t0
    logs = svc.logs()
    assert code == 1, logs[-3000:]
    # interpreter start + the metadata wait; generous for a loaded 2-core machine
    assert elapsed < FAIL_TIMEOUT_S + 12, f"run took {elapsed:.1f}s to give up"
    return logs, elapsed


def service_message(run_output: str) -> str:
    """The service's own fatal line (`stream-sync: ...`), not librdkafka's log lines."""
    lines = [line for line in run_output.splitlines() if line.startswith("stream-sync:")]
    assert lines, run_output[-3000:]
    return lines[-1]


def assert_secret_free(text: str, *secrets_: str) -> None:
    for secret in secrets_:
        assert secret not in text, "a password appears in the service's output"


# --------------------------------------------------------------------------- SASL


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
def test_sasl_check_ok(security_broker: SecurityBroker, env: SyncEnv, mechanism: str) -> None:
    config, _ = write_config(env, security_broker.sasl, security_broker.sasl_client(mechanism))
    output = check_ok(env, config)
    assert f"reachable at {security_broker.sasl}" in output
    assert_secret_free(output, security_broker.password)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_sasl_run_consumes(security_broker: SecurityBroker, env: SyncEnv, mechanism: str) -> None:
    config = write_config(env, security_broker.sasl, security_broker.sasl_client(mechanism))
    output = run_consumes(env, config)
    assert_secret_free(output, security_broker.password)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_sasl_wrong_password_fails(
    security_broker: SecurityBroker, env: SyncEnv, mechanism: str
) -> None:
    wrong = f"wrong-pw-{secrets.token_hex(6)}"
    client = security_broker.sasl_client(mechanism, password=wrong)
    config = write_config(env, security_broker.sasl, client, startup_timeout_s=FAIL_TIMEOUT_S)

    result = env.cli("check", config=config[0], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    kafka_rows = [r for r in rows(result.stdout) if r[1] == "kafka"]
    assert kafka_rows and kafka_rows[0][0] == "FAIL", output
    # the row itself names the cause, at once (no waiting for the timeout)
    assert "SASL authentication failed" in kafka_rows[0][2], output
    assert_secret_free(output, wrong, security_broker.password)

    logs, _ = run_fails(env, config)
    assert "Kafka refused the connection: SASL authentication failed" in service_message(logs)
    assert_secret_free(logs, wrong, security_broker.password)
    assert not dry_run_lines(env)


# --------------------------------------------------------------------------- TLS


def test_ssl_with_test_ca_check_and_run(security_broker: SecurityBroker, env: SyncEnv) -> None:
    client = security_broker.ssl_client(security_broker.tls.ca_pem)
    config = write_config(env, security_broker.ssl, client)
    output = check_ok(env, config[0])
    assert f"reachable at {security_broker.ssl}" in output
    output = run_consumes(env, config)
    assert_secret_free(output, security_broker.tls.password)


@pytest.mark.parametrize("trust", ["default-store", "other-ca"])
def test_ssl_untrusted_certificate_fails(
    security_broker: SecurityBroker, env: SyncEnv, trust: str
) -> None:
    ca = security_broker.tls.other_ca_pem if trust == "other-ca" else None
    client = security_broker.ssl_client(ca)
    config = write_config(env, security_broker.ssl, client, startup_timeout_s=FAIL_TIMEOUT_S)

    result = env.cli("check", config=config[0], timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    kafka_rows = [r for r in rows(result.stdout) if r[1] == "kafka"]
    assert kafka_rows and kafka_rows[0][0] == "FAIL", output
    assert "SSL/TLS failure" in kafka_rows[0][2] and "certificate" in kafka_rows[0][2], output

    logs, _ = run_fails(env, config)
    assert "Kafka refused the connection: SSL/TLS failure" in service_message(logs)
    assert "certificate verify failed" in service_message(logs)
    assert not dry_run_lines(env)


# --------------------------------------------------------------------------- clear causes


@pytest.mark.parametrize("case", ["scram-wrong-password", "plain-wrong-password", "ssl-no-ca"])
def test_service_message_names_the_cause(
    security_broker: SecurityBroker, env: SyncEnv, case: str
) -> None:
    if case == "ssl-no-ca":
        bootstrap, client = security_broker.ssl, security_broker.ssl_client(None)
        cause = ("ssl", "certificate")
    else:
        mechanism = "PLAIN" if case.startswith("plain") else "SCRAM-SHA-512"
        bootstrap = security_broker.sasl
        client = security_broker.sasl_client(mechanism, password="wrong-pw-cause")
        cause = ("sasl", "authentication")
    config = write_config(env, bootstrap, client, startup_timeout_s=1)
    result = env.cli("check", config=config[0], timeout=60)
    kafka_rows = [r for r in rows(result.stdout) if r[1] == "kafka"]
    assert kafka_rows and kafka_rows[0][0] == "FAIL"
    row = kafka_rows[0][2].lower()
    message = service_message(run_fails(env, config)[0]).lower()
    for word in cause:
        assert word in row, f"check row: {kafka_rows[0][2]}"
        assert word in message, f"run: {message}"
