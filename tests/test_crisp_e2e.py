"""The Crisp destination through the whole service: real Kafka, `stream-sync run`, the emulator.

Each test starts its own topics on the real broker, a strict Crisp emulator on loopback and a
`stream-sync run` subprocess whose config points `base_url` at the emulator. Credentials go
through `${ENV}` interpolation, as in production, and are checked to never reach the logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulators.crisp import CrispEmulator
from tests.harness import ServiceProcess, SyncEnv, activation, wait_until
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.kafka

FIELDS = {"first_name": "person.nickname", "phone": "person.phone", "company": "company.name"}
CUSTOM = ["plan", "ltv", "tags"]


@pytest.fixture
def crisp() -> Iterator[CrispEmulator]:
    with CrispEmulator(daily_quota=None) as emulator:
        yield emulator


def secrets_env(emu: CrispEmulator, prefix: str = "CRISP") -> dict[str, str]:
    return {f"{prefix}_IDENTIFIER": emu.identifier, f"{prefix}_KEY": emu.key}


def crisp_config(emu: CrispEmulator, prefix: str = "CRISP", **extra: Any) -> dict[str, Any]:
    return {
        "type": "crisp",
        "website_id": emu.website_id,
        "identifier": f"${{{prefix}_IDENTIFIER}}",
        "key": f"${{{prefix}_KEY}}",
        "tier": emu.tier,
        "base_url": emu.base_url,
        "rate_limit": None,
        "retry": {"max_backoff_s": 0.5},
        **extra,
    }


def crisp_activation(id_: str, dest: str, mode: str = "upsert", **kw: Any) -> dict[str, Any]:
    kw.setdefault("fields", FIELDS)
    kw.setdefault("custom", CUSTOM)
    kw.setdefault("max_wait_ms", 300)
    return activation(id_, dest, mode, **kw)


def settle(seconds: float = 1.0) -> None:
    """Let batch windows pass with margin, to assert that nothing more is sent."""
    time.sleep(seconds)


def warnings_of(env: SyncEnv) -> list[dict[str, Any]]:
    try:
        records = consume_all(env.bootstrap, env.topics["warnings"], timeout=10)
    except Exception:  # the topic may not be readable yet
        return []
    return [r.json() for r in records]


def no_secret_in(text: str, *emulators: CrispEmulator) -> None:
    for emu in emulators:
        assert emu.key not in text
        assert emu.identifier not in text


def routes(emu: CrispEmulator) -> list[str]:
    return [r.route for r in emu.requests]


def test_upsert_mirror_update_only(env: SyncEnv) -> None:
    with (
        CrispEmulator(daily_quota=None) as up,
        CrispEmulator(daily_quota=None) as mir,
        CrispEmulator(daily_quota=None) as upd,
    ):
        known = upd.add_person("known@x.io", nickname="Known", data={"plan": "free"})
        dests = {
            "c-up": crisp_config(up, "UP"),
            "c-mir": crisp_config(mir, "MIR"),
            "c-upd": crisp_config(upd, "UPD"),
        }
        acts = [
            crisp_activation("up", "c-up", "upsert"),
            crisp_activation("mir", "c-mir", "mirror"),
            crisp_activation("upd", "c-upd", "update_only"),
        ]
        secrets = {**secrets_env(up, "UP"), **secrets_env(mir, "MIR"), **secrets_env(upd, "UPD")}
        svc = env.start(env.write_config(dests, acts), env=secrets)
        env.attrs(
            "p1",
            {
                "email": " Ann@X.io",
                "first_name": "Ann",
                "phone": "+33 1",
                "company": "Acme",
                "plan": "pro",
                "ltv": 12.5,
                "tags": ["a", "b"],
            },
        )
        env.attrs("p2", {"email": "known@x.io", "plan": "pro"})
        env.enter("p1", "vip")
        env.enter("p2", "vip")
        env.flush()

        # upsert and mirror: two persons created (POST) with their people data (PATCH data)
        for emu in (up, mir):
            wait_until(
                lambda emu=emu: len(emu.people) == 2 and all(p.data for p in emu.people.values()),
                what="created",
            )
            ann = emu.find("ann@x.io")
            assert ann is not None
            assert ann.profile == {
                "person": {"nickname": "Ann", "phone": "+33 1"},
                "company": {"name": "Acme"},
            }
            assert ann.data == {"plan": "pro", "ltv": 12.5}  # the list `tags` is not sent
            kn = emu.find("known@x.io")
            assert kn is not None and kn.profile["person"]["nickname"] == "known"
        # update_only: the unknown person is ignored (one call), the known one updated
        wait_until(lambda: upd.people[known.people_id].data == {"plan": "pro"}, what="update")
        wait_until(
            lambda: (
                'stream_sync_operations_total{activation="upd",kind="create",'
                'outcome="ignored"} 1.0' in svc.metrics()
            ),
            what="ignored metric",
        )
        settle()
        assert upd.find("ann@x.io") is None and len(upd.people) == 1
        assert not upd.calls(method="POST")
        for emu in (up, mir):
            assert sorted(routes(emu)) == sorted(
                ["POST people/profile"] * 2 + ["PATCH people/data"] * 2
            )
        # the list attribute → one attribute warning per activation, naming the attribute
        found = wait_until(
            lambda: [w for w in warnings_of(env) if w["kind"] == "attribute_rejected"],
            what="attribute warnings",
        )
        assert {w["activation"] for w in found} == {"up", "mir", "upd"}
        assert all(w["attribute"] == "tags" and w["reason"] == "data_not_scalar" for w in found)

        # a custom-data change → one data PATCH through the people_id; a profile change → one
        # profile PATCH; an unset attribute → cleared with ""
        for emu in (up, mir, upd):
            emu.reset_log()
        env.attrs("p1", {"plan": "max"})
        env.attrs("p2", {"plan": "max", "phone": "+33 2"})
        env.flush()
        for emu in (up, mir):
            wait_until(
                lambda emu=emu: (
                    emu.find("ann@x.io").data["plan"] == "max"
                    and emu.find("known@x.io").profile["person"].get("phone") == "+33 2"
                ),
                what="updates",
            )
        wait_until(lambda: upd.people[known.people_id].data["plan"] == "max", what="upd update")
        settle()
        for emu in (up, mir):
            ann = emu.find("ann@x.io")
            assert ann is not None
            # p1's and p2's data changes are identical and both have a people_id: grouped
            bulk = emu.calls(route="PATCH batch/data")
            data_calls = emu.calls(route="PATCH people/data")
            assert len(bulk) + len(data_calls) in (1, 2)  # 1 when both fell in one batch
            assert len(emu.calls(route="PATCH people/profile")) == 1
            assert not emu.calls(method="POST")
        # update_only addresses the known person by e-mail (no people_id learned); the ignored
        # person is tried again because one of its values changed: one call, 404, ignored
        assert sorted((r.route, r.path.rsplit("/", 1)[1], r.status) for r in upd.requests) == [
            ("PATCH people/data", "known%40x.io", 200),
            ("PATCH people/profile", "ann%40x.io", 404),
            ("PATCH people/profile", "known%40x.io", 200),
        ]

        for emu in (up, mir, upd):
            emu.reset_log()
        env.attrs("p1", unset=["phone"])
        env.flush()
        for emu in (up, mir):
            wait_until(
                lambda emu=emu: emu.find("ann@x.io").profile["person"]["phone"] == "", what="clear"
            )
        wait_until(lambda: upd.requests, what="update_only retry of the ignored person")
        settle()
        assert up.requests[0].body == {"person": {"phone": ""}}

        # EXIT: mirror deletes (irreversibly), the others make no call
        for emu in (up, mir, upd):
            emu.reset_log()
        env.exit("p1", "vip")
        env.exit("p2", "vip")
        env.flush()
        wait_until(lambda: mir.people == {}, what="mirror deletes")
        settle()
        assert routes(mir) in (["PATCH batch/remove"], ["DELETE people/profile"] * 2)
        assert up.requests == [] and upd.requests == []
        assert len(up.people) == 2

        # re-ENTER after the mirror delete: created again with the full record
        env.enter("p1", "vip")
        env.flush()
        wait_until(
            lambda: mir.find("ann@x.io") is not None and mir.find("ann@x.io").data,
            what="re-created",
        )
        ann = mir.find("ann@x.io")
        assert ann is not None and ann.data == {"plan": "max", "ltv": 12.5}
        assert svc.terminate() == 0
        no_secret_in(svc.logs(), up, mir, upd)


def test_rejected_person_goes_to_warnings_rest_lands(env: SyncEnv, crisp: CrispEmulator) -> None:
    acts = [crisp_activation("up", "crisp", max_wait_ms=500)]
    svc = env.start(env.write_config({"crisp": crisp_config(crisp)}, acts), env=secrets_env(crisp))
    people = {f"ok{i}": f"ok{i}@x.io" for i in range(5)}
    people["bad"] = "bad@localhost"  # accepted as an e-mail by us, refused by Crisp
    for pid, email in people.items():
        env.attrs(pid, {"email": email, "plan": "pro"})
        env.enter(pid, "vip")
    env.flush()
    wait_until(
        lambda: len(crisp.people) == 5 and all(p.data for p in crisp.people.values()),
        what="5 good persons",
    )
    found = wait_until(
        lambda: [w for w in warnings_of(env) if w["kind"] == "rejected"], what="rejection"
    )
    assert len(found) == 1
    warning = found[0]
    assert warning["person_id"] == "bad" and warning["reason"] == "invalid_data"
    assert warning["activation"] == "up" and warning["destination"] == "crisp"
    assert "email" in warning["message"]
    # a rejected person is not resent on restart (remembered with the refused values)
    assert svc.terminate() == 0
    before = len(crisp.requests)
    svc2 = env.start(env.write_config({"crisp": crisp_config(crisp)}, acts), env=secrets_env(crisp))
    settle(2)
    assert len(crisp.requests) == before
    assert svc2.terminate() == 0


def test_throttling_is_retried_nothing_lost(env: SyncEnv, crisp: CrispEmulator) -> None:
    crisp.throttle(3, 429)
    crisp.throttle(3, 420)
    acts = [crisp_activation("up", "crisp")]
    svc = env.start(env.write_config({"crisp": crisp_config(crisp)}, acts), env=secrets_env(crisp))
    for i in range(10):
        env.attrs(f"t{i}", {"email": f"t{i}@x.io", "plan": "pro", "first_name": f"T{i}"})
        env.enter(f"t{i}", "vip")
    env.flush()
    wait_until(
        lambda: (
            len(crisp.people) == 10
            and all(p.data == {"plan": "pro"} for p in crisp.people.values())
        ),
        what="10 persons despite throttling",
    )
    faults = [r.status for r in crisp.requests if r.route == "fault"]
    assert sorted(faults) == [420] * 3 + [429] * 3
    metrics = svc.metrics()
    assert 'stream_sync_throttled_total{destination="crisp"} 6.0' in metrics
    assert 'outcome="applied"} 10.0' in metrics
    assert svc.terminate() == 0


def test_bad_credentials_stop_the_activation(env: SyncEnv, crisp: CrispEmulator) -> None:
    acts = [crisp_activation("up", "crisp")]
    wrong = {"CRISP_IDENTIFIER": crisp.identifier, "CRISP_KEY": "bad-" + "z" * 40}
    svc = env.start(env.write_config({"crisp": crisp_config(crisp)}, acts), env=wrong)
    env.attrs("p1", {"email": "a@x.io", "plan": "pro"})
    env.enter("p1", "vip")
    env.flush()
    # the only activation stopped → the service ends with exit code 1
    assert svc.wait(60) == 1
    assert crisp.people == {}
    found = wait_until(
        lambda: [w for w in warnings_of(env) if w["kind"] == "activation_stopped"],
        what="activation_stopped warning",
    )
    assert found[0]["reason"] == "http_401" and found[0]["activation"] == "up"
    assert "401" in found[0]["message"]
    logs = svc.logs()
    assert "activation_stopped" in logs and "no_activation_left" in logs
    no_secret_in(logs + json.dumps(found), crisp)
    assert "z" * 40 not in logs + json.dumps(found)


def test_dry_run_writes_operations_and_first_requests(env: SyncEnv, crisp: CrispEmulator) -> None:
    out = env.tmp / "dry.jsonl"
    dest = crisp_config(crisp, dry_run=True, dry_run_path=str(out))
    acts = [crisp_activation("up", "crisp")]
    svc = env.start(env.write_config({"crisp": dest}, acts), env=secrets_env(crisp))
    env.attrs("p1", {"email": "Ann+1@X.io", "first_name": "Ann", "plan": "pro"})
    env.enter("p1", "vip")
    env.flush()
    wait_until(lambda: out.exists() and out.read_text().strip(), what="dry-run line")
    settle()
    assert svc.terminate() == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["activation"] == "up" and line["destination"] == "crisp"
    assert line["op"] == "upsert" and line["identifier"] == "ann+1@x.io"
    assert line["fields"] == {"person.nickname": "Ann", "plan": "pro"}
    assert line["request"] == {
        "method": "POST",
        "url": f"{crisp.website_url}/people/profile",
        "body": {"person": {"nickname": "Ann"}, "email": "ann+1@x.io"},
    }
    assert crisp.requests == []  # nothing sent
    no_secret_in(out.read_text() + svc.logs(), crisp)


def test_daily_budget_pauses_the_activation(env: SyncEnv, crisp: CrispEmulator) -> None:
    dest = crisp_config(crisp, requests_per_day=3)
    acts = [crisp_activation("up", "crisp")]
    svc: ServiceProcess = env.start(
        env.write_config({"crisp": dest}, acts, extra={"shutdown_grace_s": 1}),
        env=secrets_env(crisp),
    )
    for i in range(4):  # two calls each (create + data): 8 calls, 3 allowed today
        env.attrs(f"q{i}", {"email": f"q{i}@x.io", "plan": "pro"})
        env.enter(f"q{i}", "vip")
    env.flush()
    wait_until(lambda: "daily_quota_exhausted" in svc.logs(), what="quota log")
    wait_until(
        lambda: 'stream_sync_daily_quota_paused{destination="crisp"} 1.0' in svc.metrics(),
        what="paused gauge",
    )
    settle(1.5)
    assert len(crisp.requests) == 3  # stopped exactly at requests_per_day
    assert all(r.status < 400 for r in crisp.requests)
    logs = svc.logs()
    quota_line = next(
        json.loads(line) for line in logs.splitlines() if "daily_quota_exhausted" in line
    )
    assert quota_line["per_day"] == 3 and 0 < quota_line["resume_in_s"] <= 86_401
    assert svc.terminate(60) == 0
    assert "daily_quota_exhausted" in svc.logs()


def test_check_command(env: SyncEnv, crisp: CrispEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    acts = [crisp_activation("up", "crisp")]
    path, _ = env.write_config({"crisp": crisp_config(crisp)}, acts)
    for name, value in secrets_env(crisp).items():
        monkeypatch.setenv(name, value)
    ok = env.cli("check", config=path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok    destination crisp: credentials" in ok.stdout
    monkeypatch.setenv("CRISP_KEY", "nope-" + "q" * 30)
    bad = env.cli("check", config=path)
    assert bad.returncode == 1
    assert "FAIL  destination crisp: credentials" in bad.stdout
    assert "q" * 30 not in bad.stdout + bad.stderr
    no_secret_in(ok.stdout + ok.stderr + bad.stdout + bad.stderr, crisp)
