"""Batch through the whole service: real Kafka, `stream-sync run`, the Batch emulator."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.batch import DEFAULT_PROJECT_KEY, DEFAULT_REST_API_KEY, BatchEmulator
from tests.harness import SyncEnv, activation, wait_until
from tests.kafka_helpers import consume_all
from tests.test_batch_adapter import RefusingBatch

pytestmark = pytest.mark.kafka

REST_KEY_ENV = "E2E_BATCH_REST_KEY"
PROJECT_KEY_ENV = "E2E_BATCH_PROJECT_KEY"

FIELDS = {
    "email": "email",  # the friendly alias of $email_address
    "phone": "$phone_number",
    "lang": "language",
    "country": "$region",
    "tz": "timezone",
    "newsletter": "email_marketing",
    "sms_ok": "$sms_marketing",
}
CUSTOM = ["plan", "signup", "home", "tags", "ltv"]
TYPES = {"signup": "date", "home": "url"}


@pytest.fixture(autouse=True)
def batch_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulators' keys in the environment of every `stream-sync` subprocess."""
    monkeypatch.setenv(REST_KEY_ENV, DEFAULT_REST_API_KEY)
    monkeypatch.setenv(PROJECT_KEY_ENV, DEFAULT_PROJECT_KEY)


@pytest.fixture
def emu() -> Iterator[BatchEmulator]:
    with BatchEmulator() as server:  # the documented limit: 300/s, burst 1000
        yield server


def batch_dest(emu: BatchEmulator, **extra: Any) -> dict[str, Any]:
    """Credentials come from the environment, as in production (`${...}`)."""
    return {
        "type": "batch",
        "rest_api_key": "${" + REST_KEY_ENV + "}",
        "project_key": "${" + PROJECT_KEY_ENV + "}",
        "base_url": emu.base_url,
        "retry": {"max_backoff_s": 1},
        **extra,
    }


def batch_activation(
    id_: str = "to-batch", dest: str = "batch", mode: str = "upsert", **extra: Any
) -> dict[str, Any]:
    extra.setdefault("fields", FIELDS)
    extra.setdefault("custom", CUSTOM)
    extra.setdefault("attribute_types", {k: v for k, v in TYPES.items() if k in extra["custom"]})
    return activation(id_, dest, mode, identifier="customer_id", **extra)


def warnings_of(env: SyncEnv, count: int, what: str) -> list[dict[str, Any]]:
    records = wait_until(
        lambda: (
            (w := consume_all(env.bootstrap, env.topics["warnings"], timeout=5))
            and len(w) >= count
            and w
        ),
        timeout=60,
        what=what,
    )
    return [json.loads(r.value) for r in records]


def settle(seconds: float = 1.0) -> None:
    time.sleep(seconds)


def test_upsert_native_and_custom_attributes_then_update_and_unset(
    env: SyncEnv, emu: BatchEmulator
) -> None:
    svc = env.start(env.write_config({"batch": batch_dest(emu)}, [batch_activation()]))
    env.attrs(
        "p1",
        {
            "customer_id": " C-001 ",
            "email": "Ann@Example.COM",
            "phone": "+33 6 12 34 56 78",
            "lang": "FR",
            "country": "fr",
            "tz": "europe/paris",
            "newsletter": True,
            "sms_ok": "Unsubscribed",
            "plan": "pro",
            "signup": "2024-01-31T13:00:00+01:00",
            "home": "https://shop.example/ann",
            "tags": ["vip", "eu"],
            "ltv": 120.5,
        },
    )
    env.attrs("p2", {"customer_id": "c-001", "plan": "free", "ltv": 3.0})  # another profile
    env.attrs("p3", {"customer_id": "", "plan": "free"})  # empty custom_id: not sent
    env.attrs("p4", {"customer_id": "x" * 1024, "plan": "free"})  # too long: not sent
    for pid in ("p1", "p2", "p3", "p4"):
        env.enter(pid, "vip")
    env.flush()

    wait_until(lambda: len(emu.profiles) == 2, what="two profiles")
    ann = emu.profile(" C-001 ")
    assert ann is not None
    assert ann.attributes == {
        "$email_address": "Ann@example.com",
        "$phone_number": "+33612345678",
        "$language": "fr",
        "$region": "FR",
        "$timezone": "Europe/Paris",
        "$email_marketing": "subscribed",
        "$sms_marketing": "unsubscribed",
        "plan": "pro",
        "signup": "2024-01-31T12:00:00Z",
        "home": "https://shop.example/ann",
        "tags": ["vip", "eu"],
        "ltv": 120.5,
    }
    assert ann.types == {"signup": "date", "home": "url"}
    other = emu.profile("c-001")  # case-sensitive: a profile of its own
    assert other is not None and other.attributes == {"plan": "free", "ltv": 3}
    first = [op for r in emu.calls("POST") for op in r.body]
    assert sorted(op["identifiers"]["custom_id"] for op in first) == [" C-001 ", "c-001"]
    by_id = {op["identifiers"]["custom_id"]: op["attributes"] for op in first}
    assert by_id[" C-001 "]["date(signup)"] == "2024-01-31T12:00:00Z"
    assert by_id[" C-001 "]["url(home)"] == "https://shop.example/ann"
    assert None not in by_id[" C-001 "].values()  # a first sync never clears

    unidentifiable = {
        w["person_id"]: w
        for w in warnings_of(env, 2, "unidentifiable warnings")
        if w["kind"] == "unidentifiable"
    }
    assert unidentifiable["p3"]["reason"] == "identifier_empty"
    assert unidentifiable["p4"]["reason"] == "identifier_too_long"
    assert unidentifiable["p3"]["activation"] == "to-batch"
    assert unidentifiable["p3"]["destination"] == "batch"

    # an update sends only what changed; attributes unset upstream are sent as null
    emu.reset_log()
    env.attrs("p1", {"plan": "max", "ltv": 120.50, "signup": None}, unset=["tags"])
    env.flush()
    wait_until(lambda: emu.calls("POST"), what="update")
    settle()
    (update,) = emu.calls("POST")
    assert update.body == [
        {
            "identifiers": {"custom_id": " C-001 "},
            "attributes": {"plan": "max", "signup": None, "tags": None},
        }
    ]
    ann = emu.profile(" C-001 ")
    assert ann is not None
    assert ann.attributes["plan"] == "max"
    assert "signup" not in ann.attributes and "tags" not in ann.attributes
    assert ann.types == {"home": "url"}
    assert svc.terminate() == 0


def test_update_only_and_mirror_are_configuration_errors(env: SyncEnv, emu: BatchEmulator) -> None:
    config, _ = env.write_config(
        {"batch": batch_dest(emu)},
        [
            batch_activation("a-mirror", mode="mirror"),
            batch_activation("a-update", mode="update_only"),
            batch_activation("a-names", custom=["plan", "Plan", "a" * 31, "first-name"]),
        ],
    )
    done = env.cli("run", config=config, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "activations[0].mode: 'mirror' is not supported by batch" in lines
    assert "activations[1].mode: 'update_only' is not supported by batch" in lines
    names = [line for line in lines if line.startswith("activations[2].custom_attributes")]
    assert len(names) == 3, lines
    assert any(line.startswith("activations[2].custom_attributes[1]: 'Plan'") for line in names)
    assert any("at most 30 characters" in line for line in names)
    assert "Traceback" not in done.stderr
    assert emu.requests == []


def test_rejected_attributes_warn_while_the_rest_lands(env: SyncEnv) -> None:
    with RefusingBatch(refused={"ann@blocked.example"}) as picky:
        svc = env.start(
            env.write_config({"batch": batch_dest(picky)}, [batch_activation(max_wait_ms=500)]),
        )
        env.attrs("r1", {"customer_id": "r1", "email": "ann@blocked.example", "plan": "pro"})
        env.attrs(
            "r2",
            {
                "customer_id": "r2",
                "email": "bob@x.io",
                "plan": "p" * 301,
                "lang": "French",
                "ltv": 7,
            },
        )
        for i in range(5):
            env.attrs(f"ok{i}", {"customer_id": f"ok{i}", "email": f"ok{i}@x.io", "plan": "pro"})
        for pid in ["r1", "r2", *(f"ok{i}" for i in range(5))]:
            env.enter(pid, "vip")
        env.flush()

        wait_until(lambda: len(picky.profiles) == 7, what="7 profiles")
        for i in range(5):
            profile = picky.profile(f"ok{i}")
            assert profile is not None
            assert profile.attributes == {"$email_address": f"ok{i}@x.io", "plan": "pro"}
        # refused by Batch (SUCCESS_WITH_PARTIAL_ERRORS): the rest of the profile landed
        r1 = picky.profile("r1")
        assert r1 is not None and r1.attributes == {"plan": "pro"}
        # refused before sending: too long, not a language code
        r2 = picky.profile("r2")
        assert r2 is not None and r2.attributes == {"$email_address": "bob@x.io", "ltv": 7}

        found = warnings_of(env, 3, "three attribute warnings")
        rejected = {(w["person_id"], w["attribute"]): w for w in found}
        assert all(w["kind"] == "attribute_rejected" for w in found), found
        batch_said = rejected[("r1", "email")]  # named by its source attribute
        assert batch_said["reason"] == "invalid_attribute"
        assert "value refused by the project" in batch_said["message"]
        assert batch_said["activation"] == "to-batch" and batch_said["destination"] == "batch"
        assert rejected[("r2", "plan")]["reason"] == "string_too_long"
        assert rejected[("r2", "lang")]["reason"] == "invalid_language"
        assert svc.terminate() == 0


def test_throttled_above_the_limit_is_retried_and_nothing_is_lost(
    env: SyncEnv, emu: BatchEmulator
) -> None:
    people = 1600
    dest = batch_dest(emu, rate_limit={"per_second": 5000, "burst": 5000})  # above Batch's
    acts = [batch_activation(custom=["plan"], fields={}, max_wait_ms=100)]
    svc = env.start(env.write_config({"batch": dest}, acts))
    for i in range(people):
        env.attrs(f"t{i}", {"customer_id": f"t{i}", "plan": f"plan-{i}"})
        env.enter(f"t{i}", "vip")
    env.flush()

    wait_until(lambda: len(emu.profiles) == people, timeout=90, what="every profile")
    profiles = emu.profiles
    assert all(profiles[f"t{i}"].attributes == {"plan": f"plan-{i}"} for i in range(people))
    statuses = [r.status for r in emu.calls("POST")]
    assert statuses.count(429) >= 1, "the emulator never throttled"
    assert set(statuses) == {202, 429}
    accepted = sum(len(r.body) for r in emu.calls("POST") if r.status == 202)
    assert accepted == people  # each person sent once: retries repeat only throttled calls
    metrics = svc.metrics()
    assert 'stream_sync_throttled_total{destination="batch"}' in metrics
    assert svc.terminate() == 0
    assert consume_all(env.bootstrap, env.topics["warnings"], timeout=10) == []


def test_bad_credentials_stop_the_activation(env: SyncEnv, emu: BatchEmulator) -> None:
    dests = {
        "batch-bad": {**batch_dest(emu), "rest_api_key": "not-the-key-0123456789"},
        "batch": batch_dest(emu),
    }
    acts = [
        batch_activation("bad", "batch-bad", custom=["plan"]),
        batch_activation("good", "batch", custom=["plan"]),
    ]
    svc = env.start(env.write_config(dests, acts))
    env.attrs("b1", {"customer_id": "b1", "plan": "pro"})
    env.enter("b1", "vip")
    env.flush()

    (stopped,) = [
        w for w in warnings_of(env, 1, "activation_stopped") if w["kind"] == "activation_stopped"
    ]
    assert stopped["activation"] == "bad" and stopped["destination"] == "batch-bad"
    assert stopped["reason"] == "invalid_credentials"
    assert "401 AUTHENTICATION_INVALID" in stopped["message"]
    assert "rest_api_key and project_key" in stopped["message"]
    assert "not-the-key" not in stopped["message"]
    # the other activation goes on
    wait_until(lambda: emu.profile("b1") is not None, what="good activation synced")
    env.attrs("b2", {"customer_id": "b2", "plan": "max"})
    env.enter("b2", "vip")
    env.flush()
    wait_until(lambda: emu.profile("b2") is not None, what="still syncing")
    assert svc.proc.poll() is None
    assert 'stream_sync_activation_running{activation="bad"} 0.0' in svc.metrics()
    bad_calls = [r for r in emu.requests if r.status == 401]
    assert len(bad_calls) == 1  # not retried
    assert svc.terminate() == 0
    for text in ("not-the-key-0123456789", emu.rest_api_key, emu.project_key):
        assert text not in svc.logs()

    # alone, the stopped activation ends the service with exit code 1
    only_bad = env.write_config(
        {"batch-bad": dests["batch-bad"]}, acts[:1], filename="bad-only.yaml"
    )
    # not waited for as ready: its backlog (b1, b2, owed since the first run) may reach the
    # 401, and the exit, before /readyz is first asked
    svc2 = env.start(only_bad, ready=False)
    assert svc2.wait(60) == 1
    assert "no_activation_left" in svc2.logs()
    assert "not-the-key-0123456789" not in svc2.logs()


def test_dry_run_writes_operations_and_first_request_without_secrets(
    env: SyncEnv, emu: BatchEmulator, tmp_path: Path
) -> None:
    out = tmp_path / "dry.jsonl"
    dest = batch_dest(emu, dry_run=True, dry_run_path=str(out))
    acts = [batch_activation(custom=[*CUSTOM, *(f"extra_{i}" for i in range(50))])]
    config = env.write_config({"batch": dest}, acts)
    env.attrs(
        "d1",
        {
            "customer_id": "D-1",
            "email": "D1@X.io",
            "plan": "pro",
            "signup": "2024-02-01",
            "home": "https://x.io/d1",
            **{f"extra_{i}": i for i in range(50)},
        },
    )
    env.attrs("d2", {"customer_id": "D-2", "lang": "en-GB"})
    env.enter("d1", "vip")
    env.enter("d2", "vip")
    env.flush()
    svc = env.start(config)

    lines = wait_until(
        lambda: out.exists() and len(text := out.read_text().splitlines()) >= 2 and text,
        what="dry-run lines",
    )
    rows = {row["person_id"]: row for row in map(json.loads, lines)}
    d1 = rows["d1"]
    assert d1["activation"] == "to-batch" and d1["destination"] == "batch"
    assert d1["op"] == "upsert" and d1["identifier"] == "D-1" and d1["clears"] == []
    assert d1["fields"]["$email_address"] == "D1@x.io"
    assert d1["fields"]["signup"] == "2024-02-01T00:00:00Z"
    request = d1["request"]
    assert request["method"] == "POST" and request["url"] == emu.endpoint
    assert "headers" not in request
    body = request["body"]  # 54 attributes: two operations for one custom_id
    assert [len(op["attributes"]) for op in body] == [50, 4]
    assert {op["identifiers"]["custom_id"] for op in body} == {"D-1"}
    sent = {k: v for op in body for k, v in op["attributes"].items()}
    assert sent["date(signup)"] == "2024-02-01T00:00:00Z"
    assert sent["url(home)"] == "https://x.io/d1"
    assert rows["d2"]["request"]["body"] == [
        {"identifiers": {"custom_id": "D-2"}, "attributes": {"$language": "en"}}
    ]
    settle()
    assert emu.requests == []  # nothing sent
    assert svc.terminate() == 0
    for text in (emu.rest_api_key, emu.project_key):
        assert text not in out.read_text()
        assert text not in svc.logs()

    # `check` has no read-only endpoint to call: it says when the keys are verified
    done = env.cli("check", config=config[0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified at the first send" in done.stdout
    assert emu.requests == []

    # a dry run never writes the sync view: a real run afterwards sends everything
    real = env.write_config({"batch": batch_dest(emu)}, acts, filename="real.yaml")
    svc2 = env.start(real)
    wait_until(lambda: len(emu.profiles) == 2, what="real run sends everything")
    d1_profile = emu.profile("D-1")
    assert d1_profile is not None and len(d1_profile.attributes) == 54
    assert svc2.terminate() == 0
