"""Issue 6: metrics checked against what the test sent, health probes, secrets, redirects."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from stream_sync import health
from tests.emulators.batch import BatchEmulator
from tests.emulators.crisp import CrispEmulator
from tests.fakes.test_destination import TestDestination
from tests.harness import (
    SyncEnv,
    activation,
    free_port,
    metric,
    test_destination_config,
    wait_until,
)
from tests.kafka_helpers import consume_all


@pytest.mark.kafka
def test_metrics_match_what_was_sent(env: SyncEnv) -> None:
    with TestDestination() as dest:
        dest.reject("p9", "invalid_person", "nope")
        dest.inject(429, count=2, headers={"Retry-After": "0"})
        acts = [
            activation("up", "d-up", "upsert", max_wait_ms=300),
            activation("mir", "d-mir", "mirror", max_wait_ms=300),
        ]
        dests = {n: test_destination_config(dest.url(n)) for n in ("d-up", "d-mir")}
        svc = env.start(env.write_config(dests, acts))
        assert svc.get("/healthz").status_code == 200  # type: ignore[union-attr]
        assert svc.get("/readyz").status_code == 200  # type: ignore[union-attr]
        for i in range(10):
            env.attrs(f"p{i}", {"email": f"p{i}@x.io", "plan": "pro"})
            env.enter(f"p{i}", "vip")
        env.enter("p-noid", "vip")  # a member without identifier: pending
        env.raw("attributes", b"bad", b"\x00\x01", partition=env.partition_of("bad"))
        env.flush()
        wait_until(lambda: len(dest.records("d-mir")) == 9, 30, what="9 synced")
        for i in range(3):
            env.exit(f"p{i}", "vip")
        env.flush()
        wait_until(lambda: len(dest.records("d-mir")) == 6, 30, what="3 deleted")
        time.sleep(1.5)  # a commit interval and a batch window
        text = svc.metrics()
        assert (
            metric(text, "stream_sync_events_consumed_total", topic=env.topics["attributes"]) == 11
        )
        assert (
            metric(text, "stream_sync_events_consumed_total", topic=env.topics["memberships"]) == 14
        )
        assert metric(text, "stream_sync_poison_messages_total") == 1
        assert (
            metric(
                text,
                "stream_sync_operations_total",
                activation="mir",
                kind="create",
                outcome="applied",
            )
            == 9
        )
        assert (
            metric(
                text,
                "stream_sync_operations_total",
                activation="mir",
                kind="delete",
                outcome="applied",
            )
            == 3
        )
        assert (
            metric(
                text,
                "stream_sync_operations_total",
                activation="up",
                kind="create",
                outcome="rejected",
            )
            == 1
        )
        assert metric(text, "stream_sync_operations_total", activation="up", kind="delete") == 0
        assert (
            metric(text, "stream_sync_warnings_total", kind="rejected", reason="invalid_person")
            == 2
        )
        assert metric(text, "stream_sync_warnings_total", kind="poison") == 1
        assert metric(text, "stream_sync_pending_identifier_persons", activation="up") == 1
        assert metric(text, "stream_sync_throttled_total") == 2
        assert metric(text, "stream_sync_retries_total") == 2
        calls_200 = metric(text, "stream_sync_api_calls_total", status="200")
        assert calls_200 == sum(ns.requests for ns in dest.namespaces.values())
        assert metric(text, "stream_sync_batch_size_count", activation="mir") >= 2
        assert metric(text, "stream_sync_consumer_lag") == 0
        assert metric(text, "stream_sync_assigned_partitions") == env.partitions
        assert metric(text, "stream_sync_commits_total") >= 1
        assert svc.terminate() == 0
        # a restart restores the state records it wrote
        svc = env.start(env.write_config(dests, acts))
        assert metric(svc.metrics(), "stream_sync_state_records_restored_total") > 0
        assert metric(svc.metrics(), "stream_sync_restore_duration_seconds_count") >= 1
        assert svc.terminate() == 0


def test_healthz_fails_when_the_poll_loop_is_stuck() -> None:
    """The probes served over HTTP: /healthz turns 503 once the loop has not polled in time."""
    state = {"last_poll": time.monotonic(), "ready": False}
    bound = 5.0

    def healthz() -> tuple[bool, str]:
        stalled = time.monotonic() - state["last_poll"]  # type: ignore[operator]
        return (stalled <= bound, f"stalled {stalled:.0f}s")

    def readyz() -> tuple[bool, str]:
        return bool(state["ready"]), "restoring"

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(health.serve, "127.0.0.1", 0, healthz, readyz)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/readyz")).status_code == 503
                state["ready"] = True
                assert (await client.get("/readyz")).status_code == 200
                state["last_poll"] = time.monotonic() - 60  # the loop is stuck
                response = await client.get("/healthz")
                assert response.status_code == 503 and "stalled" in response.text
                metrics = await client.get("/metrics")
                assert metrics.status_code == 200 and "stream_sync_" in metrics.text
                assert (await client.get("/nope")).status_code == 404
                assert (await client.post("/healthz")).status_code == 405
            tg.cancel_scope.cancel()

    anyio.run(scenario)


@pytest.mark.kafka
def test_service_healthz_follows_its_poll_loop(env: SyncEnv) -> None:
    """The real service answers 200 on /healthz while its poll loop runs."""
    with TestDestination() as dest:
        svc = env.start(
            env.write_config(
                {"d": test_destination_config(dest.url("d"))}, [activation("up", "d", "upsert")]
            )
        )
        assert svc.get("/healthz").status_code == 200  # type: ignore[union-attr]
        assert "ok" in svc.get("/healthz").text  # type: ignore[union-attr]
        assert svc.terminate() == 0


@pytest.mark.kafka
def test_no_secret_anywhere(env: SyncEnv, tmp_path: Path) -> None:
    """Recognisable secrets in every credential field never reach logs, metrics, warnings,
    exceptions or dry-run output — including when a destination refuses them."""
    secrets = {
        "CRISP_ID": "SECRET-crisp-identifier-4f1c",
        "CRISP_KEY": "SECRET-crisp-key-8a2b",
        "BATCH_REST": "SECRET-batch-rest-77aa",
        "BATCH_PROJECT": "SECRET-batch-project-19cd",
        "TEST_TOKEN": "SECRET-test-token-5e5e",
    }
    with (
        CrispEmulator(
            identifier=secrets["CRISP_ID"], key=secrets["CRISP_KEY"], daily_quota=None
        ) as crisp,
        BatchEmulator(
            rest_api_key=secrets["BATCH_REST"], project_key=secrets["BATCH_PROJECT"]
        ) as batch,
        TestDestination(token="another-token") as dest,  # our token is refused: 401
    ):
        dry = tmp_path / "dry.jsonl"
        dests = {
            "crisp": {
                "type": "crisp",
                "website_id": crisp.website_id,
                "identifier": "${CRISP_ID}",
                "key": "${CRISP_KEY}",
                "tier": crisp.tier,
                "base_url": crisp.base_url,
            },
            "batch": {
                "type": "batch",
                "rest_api_key": "${BATCH_REST}",
                "project_key": "${BATCH_PROJECT}",
                "base_url": batch.base_url,
            },
            "batch-dry": {
                "type": "batch",
                "rest_api_key": "${BATCH_REST}",
                "project_key": "${BATCH_PROJECT}",
                "base_url": batch.base_url,
                "dry_run": True,
                "dry_run_path": str(dry),
            },
            "refused": {"type": "test", "base_url": dest.url("x"), "token": "${TEST_TOKEN}"},
        }
        acts = [
            activation(
                "c", "crisp", "upsert", fields={"first_name": "person.nickname"}, custom=["plan"]
            ),
            activation("b", "batch", "upsert", identifier="uid", fields={}, custom=["plan"]),
            activation("bd", "batch-dry", "upsert", identifier="uid", fields={}, custom=["plan"]),
            activation("r", "refused", "upsert"),
        ]
        config = env.write_config(dests, acts)
        svc = env.start(config, env=secrets)
        for i in range(5):
            env.attrs(
                f"p{i}", {"email": f"p{i}@x.io", "uid": f"u{i}", "first_name": "A", "plan": "pro"}
            )
            env.enter(f"p{i}", "vip")
        env.flush()
        wait_until(lambda: len(crisp.people) == 5 and len(batch.profiles) == 5, 30, what="synced")
        wait_until(lambda: dry.exists() and len(dry.read_text().splitlines()) == 5, 30, what="dry")
        wait_until(lambda: "activation_stopped" in svc.logs(), 30, what="401 stops 'r'")
        metrics_text = svc.metrics()
        assert svc.terminate() == 0
        check = env.cli("check", config=config[0])
        debug_run = env.cli("--debug", "check", config=config[0])
        warnings = consume_all(env.bootstrap, env.topics["warnings"], timeout=5)
    haystacks = {
        "logs": svc.logs(),
        "metrics": metrics_text,
        "warnings": "\n".join(str(w.value) for w in warnings),
        "dry-run": dry.read_text(),
        "check": check.stdout + check.stderr,
        "check --debug": debug_run.stdout + debug_run.stderr,
        "config": "",
    }
    assert any(w for w in warnings), "expected warnings (activation_stopped)"
    for where, text in haystacks.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} leaked into {where}"


@pytest.mark.kafka
def test_redirect_to_another_host_is_refused(env: SyncEnv) -> None:
    with TestDestination() as dest:
        dest.inject(
            302, count=5, body={}, headers={"Location": f"http://127.0.0.2:{free_port()}/steal"}
        )
        svc = env.start(
            env.write_config(
                {"d": test_destination_config(dest.url("d"))}, [activation("up", "d", "upsert")]
            ),
        )
        env.attrs("p1", {"email": "p1@x.io"})
        env.enter("p1", "vip")
        env.flush()
        code = svc.wait(60)
        assert code == 1  # the only activation stopped
        logs = svc.logs()
        assert "redirect_refused" in logs and "127.0.0.2" in logs
        assert dest.records("d") == {}


def test_plain_http_refused_for_remote_hosts(tmp_path: Path) -> None:
    from stream_sync.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text(
        "kafka: {bootstrap_servers: 127.0.0.1:9092}\n"
        "destinations:\n"
        "  d: {type: test, base_url: 'http://api.example.com'}\n"
        "activations: [{id: a, segment: s, destination: d, mode: upsert, identifier: email}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "destinations.d.base_url" in err.value.render()
    path.write_text(
        path.read_text().replace(
            "'http://api.example.com'", "'http://api.example.com', allow_insecure_http: true"
        )
    )
    assert load_config(path).destinations["d"].base_url == "http://api.example.com"


@pytest.mark.kafka
@pytest.mark.parametrize("catch_up_ms", [60_000, 1])
def test_backlog_person_records_coalesced_while_catching_up(env: SyncEnv, catch_up_ms: int) -> None:
    """A backlog (200 persons x 10 changes, pre-loaded) is caught up before anything is
    reconciled: with the catch-up commit interval each person record is written once, even
    with a 1 ms commit interval; with both at 1 ms it is written again at every commit."""
    persons = 200
    for i in range(persons):
        env.attrs(f"p{i}", {"email": f"p{i}@x.io"})
        env.enter(f"p{i}", "vip")
    for round_ in range(10):
        for i in range(persons):
            env.attrs(f"p{i}", {"plan": f"plan-{round_}"})
    env.flush()
    with TestDestination() as dest:
        kafka = {
            "bootstrap_servers": env.bootstrap,
            "group_id": env.group,
            "commit_interval_ms": 1,
            "catch_up_commit_interval_ms": catch_up_ms,
        }
        config = env.write_config(
            {"d": test_destination_config(dest.url("d"))},
            [activation("up", "d", "upsert", max_wait_ms=100)],
            extra={"kafka": kafka},
        )
        svc = env.start(config)
        wait_until(lambda: len(dest.records("d")) == persons, 60, what="all synced")
        assert all(r["plan"] == "plan-9" for r in dest.records("d").values())
        wait_until(
            lambda: metric(svc.metrics(), "stream_sync_events_consumed_total") >= persons * 12,
            30,
            what="all events consumed",
        )
        time.sleep(0.5)  # the commit after catch-up (1 ms interval) has written the records
        writes = metric(svc.metrics(), "stream_sync_state_writes_total", kind="person")
        # one sync record per acknowledged operation (counted per op, published per commit)
        assert metric(svc.metrics(), "stream_sync_state_writes_total", kind="sync") == persons
        if catch_up_ms > 1:
            assert writes == persons
        else:
            assert writes > persons
        assert svc.terminate() == 0
