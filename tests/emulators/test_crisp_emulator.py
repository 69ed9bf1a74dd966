"""The Crisp emulator, exercised through real HTTP with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from .crisp import CrispEmulator

ROOT = Path(__file__).resolve().parents[2]
JSON_TYPE = {"Content-Type": "application/json"}
NO_TLS = False  # plain HTTP on loopback: skips loading CA certificates for every client


class FakeNow:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def emu() -> Iterator[CrispEmulator]:
    with CrispEmulator() as emulator:
        yield emulator


def connect(emulator: CrispEmulator, **overrides: Any) -> httpx.Client:
    options: dict[str, Any] = {
        "base_url": emulator.website_url,
        "auth": (emulator.identifier, emulator.key),
        "headers": {"X-Crisp-Tier": emulator.tier, "Accept": "application/json"},
        "timeout": 5.0,
        "verify": NO_TLS,
    }
    options.update(overrides)
    return httpx.Client(**options)


@pytest.fixture
def api(emu: CrispEmulator) -> Iterator[httpx.Client]:
    with connect(emu) as client:
        yield client


def create(api: httpx.Client, email: str, nickname: str = "nick") -> str:
    response = api.post("/people/profile", json={"email": email, "person": {"nickname": nickname}})
    assert response.status_code == 201, response.text
    people_id: str = response.json()["data"]["people_id"]
    return people_id


def assert_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] is True
    assert body["reason"] == reason
    assert "data" in body


# ------------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    "overrides",
    [
        {"auth": None},
        {"auth": ("wrong", "credentials")},
        {"headers": {}},
        {"headers": {"X-Crisp-Tier": "plugin"}},
        {"headers": {"X-Crisp-Tier": "Website"}},
    ],
    ids=["no-auth", "wrong-key", "no-tier", "wrong-tier", "tier-case"],
)
def test_auth_and_tier_are_required(emu: CrispEmulator, overrides: dict[str, Any]) -> None:
    with connect(emu, **overrides) as client:
        assert_error(client.get("/people/profiles/1"), 401, "invalid_session")
    assert emu.quota_used == 0  # unauthenticated requests are not counted


def test_plugin_tier() -> None:
    with CrispEmulator(tier="plugin") as emu:
        assert emu.daily_quota == 5_000
        with connect(emu) as client:
            assert client.get("/people/profiles/1").status_code == 200
        with connect(emu, headers={"X-Crisp-Tier": "website"}) as client:
            assert_error(client.get("/people/profiles/1"), 401, "invalid_session")


def test_routing_errors_use_the_envelope(emu: CrispEmulator, api: httpx.Client) -> None:
    assert_error(api.get("/people/unknown/x"), 404, "route_not_found")
    assert_error(api.post("/people/profile/x@y.io", json={}), 405, "method_not_allowed")
    assert_error(
        api.get(f"{emu.base_url}/website/other-site/people/profiles/1"), 403, "not_allowed"
    )
    assert_error(api.get(f"{emu.root_url}/v2/whatever"), 404, "route_not_found")


# --------------------------------------------------------------------- profiles
def test_create_then_read_by_id_and_by_encoded_email(emu: CrispEmulator, api: httpx.Client) -> None:
    people_id = create(api, "ann+tag@example.com", "Ann")
    assert uuid.UUID(people_id)
    person = emu.find("  ANN+TAG@example.com ")
    assert person is not None and person.people_id == people_id
    assert person.profile == {"person": {"nickname": "Ann"}}

    body = api.get(f"/people/profile/{people_id}").json()
    assert body == {
        "error": False,
        "reason": "resolved",
        "data": {
            "people_id": people_id,
            "email": "ann+tag@example.com",
            "person": {"nickname": "Ann"},
        },
    }
    assert (
        api.get("/people/profile/ANN%2BTAG%40example.com").json()["data"]["people_id"] == people_id
    )

    head = api.head("/people/profile/ann%2Btag%40example.com")
    assert head.status_code == 200 and head.content == b""
    assert api.head("/people/profile/nobody%40example.com").status_code == 404
    # an unencoded "+" is read as a space: emails must be URL-encoded
    assert_error(api.get("/people/profile/ann+tag@example.com"), 404, "people_not_found")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"email": "taken@example.com", "person": {"nickname": "x"}}, "people_exists"),
        ({"email": "TAKEN@Example.com", "person": {"nickname": "x"}}, "people_exists"),
        ({"email": "not-an-email", "person": {"nickname": "x"}}, "invalid_data"),
        ({"email": " pad@example.com", "person": {"nickname": "x"}}, "invalid_data"),
        ({"person": {"nickname": "x"}}, "invalid_data"),
        ({"email": "new@example.com"}, "invalid_data"),
        ({"email": "new@example.com", "person": {}}, "invalid_data"),
        ({"email": "new@example.com", "person": {"nickname": ""}}, "invalid_data"),
        ({"email": "new@example.com", "person": {"nickname": "x", "age": 3}}, "invalid_data"),
        ({"email": "new@example.com", "person": {"nickname": 3}}, "invalid_data"),
        ({"email": "new@example.com", "person": {"nickname": "x"}, "vip": True}, "invalid_data"),
        ({"email": "new@example.com", "person": {"nickname": "x"}, "data": {}}, "invalid_data"),
        (
            {"email": "new@example.com", "person": {"nickname": "x"}, "segments": "a"},
            "invalid_data",
        ),
        (["new@example.com"], "invalid_data"),
    ],
)
def test_create_is_strict(emu: CrispEmulator, api: httpx.Client, body: Any, reason: str) -> None:
    emu.add_person("taken@example.com")
    status = 409 if reason == "people_exists" else 400
    assert_error(api.post("/people/profile", json=body), status, reason)
    assert len(emu.people) == 1


def test_create_accepts_standard_fields(emu: CrispEmulator, api: httpx.Client) -> None:
    body = {
        "email": "full@example.com",
        "person": {
            "nickname": "Full",
            "phone": "+33600000000",
            "locales": ["fr"],
            "employment": {"title": "CTO"},
            "geolocation": {"city": "Paris"},
        },
        "company": {"name": "Acme"},
        "segments": ["vip"],
        "notepad": "hello",
    }
    assert api.post("/people/profile", json=body).status_code == 201
    person = emu.find("full@example.com")
    assert person is not None and person.profile["company"] == {"name": "Acme"}


def test_body_must_be_json(api: httpx.Client) -> None:
    person = {"email": "a@example.com", "person": {"nickname": "a"}}
    assert_error(api.post("/people/profile", content=b"{nope"), 400, "invalid_data")
    response = api.post("/people/profile", content=b'{"email": NaN}', headers=JSON_TYPE)
    assert_error(response, 400, "invalid_data")
    form = api.post("/people/profile", data={"email": "a@example.com"})
    assert_error(form, 400, "invalid_data")
    assert api.post("/people/profile", json=person).status_code == 201


def test_patch_profile_merges_and_moves_email(emu: CrispEmulator, api: httpx.Client) -> None:
    ann = emu.add_person("ann@example.com", nickname="Ann", profile={"person": {"phone": "1"}})
    emu.add_person("bob@example.com")

    response = api.patch("/people/profile/ann%40example.com", json={"person": {"phone": "2"}})
    assert response.json() == {"error": False, "reason": "updated", "data": {}}
    assert emu.people[ann.people_id].profile == {"person": {"nickname": "Ann", "phone": "2"}}

    moved = api.patch(f"/people/profile/{ann.people_id}", json={"email": "ann@new.example.com"})
    assert moved.status_code == 200
    assert emu.find("ann@example.com") is None
    assert emu.find("ann@new.example.com") is not None
    assert_error(api.get("/people/profile/ann%40example.com"), 404, "people_not_found")

    clash = api.patch(f"/people/profile/{ann.people_id}", json={"email": "BOB@example.com"})
    assert_error(clash, 409, "people_exists")
    empty_nick = api.patch(f"/people/profile/{ann.people_id}", json={"person": {"nickname": ""}})
    assert_error(empty_nick, 400, "invalid_data")
    unknown = api.patch(f"/people/profile/{ann.people_id}", json={"plan": "pro"})
    assert_error(unknown, 400, "invalid_data")
    cleared = api.patch(f"/people/profile/{ann.people_id}", json={"person": {"phone": ""}})
    assert cleared.status_code == 200
    assert emu.people[ann.people_id].profile["person"] == {"nickname": "Ann", "phone": ""}


def test_put_profile_replaces_the_card_but_keeps_data(
    emu: CrispEmulator, api: httpx.Client
) -> None:
    ann = emu.add_person(
        "ann@example.com", profile={"person": {"phone": "1"}, "notepad": "n"}, data={"plan": "pro"}
    )
    body = {"email": "ann@example.com", "person": {"nickname": "Annie"}}
    assert api.put(f"/people/profile/{ann.people_id}", json=body).status_code == 200
    stored = emu.people[ann.people_id]
    assert stored.profile == {"person": {"nickname": "Annie"}}
    assert stored.data == {"plan": "pro"}
    assert_error(api.put(f"/people/profile/{ann.people_id}", json={}), 400, "invalid_data")


def test_delete_then_not_found(emu: CrispEmulator, api: httpx.Client) -> None:
    emu.add_person("ann@example.com")
    response = api.delete("/people/profile/ann%40example.com")
    assert response.json() == {"error": False, "reason": "deleted", "data": {}}
    assert emu.people == {}
    assert_error(api.delete("/people/profile/ann%40example.com"), 404, "people_not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/people/profile/ghost%40example.com"),
        ("PATCH", "/people/profile/ghost%40example.com"),
        ("DELETE", "/people/profile/00000000-0000-0000-0000-000000000000"),
        ("GET", "/people/data/ghost%40example.com"),
        ("PATCH", "/people/data/ghost%40example.com"),
        ("PUT", "/people/data/ghost%40example.com"),
    ],
)
def test_unknown_people_are_404(api: httpx.Client, method: str, path: str) -> None:
    body = {"data": {"plan": "pro"}} if "/data/" in path else {"person": {"phone": "1"}}
    payload = None if method in ("GET", "DELETE") else body
    assert_error(api.request(method, path, json=payload), 404, "people_not_found")


# ------------------------------------------------------------------ people data
def test_people_data_patch_merges_and_put_replaces(emu: CrispEmulator, api: httpx.Client) -> None:
    ann = emu.add_person("ann@example.com", data={"plan": "free", "seats": 1})
    patch = api.patch("/people/data/ann%40example.com", json={"data": {"plan": "pro", "ltv": 12.5}})
    assert patch.json() == {"error": False, "reason": "updated", "data": {}}
    assert emu.people[ann.people_id].data == {"plan": "pro", "seats": 1, "ltv": 12.5}

    put = api.put(f"/people/data/{ann.people_id}", json={"data": {"vip": True, "score-2": 0}})
    assert put.status_code == 200
    assert emu.people[ann.people_id].data == {"vip": True, "score-2": 0}
    got = api.get(f"/people/data/{ann.people_id}").json()
    assert got["data"] == {"data": {"vip": True, "score-2": 0}}


@pytest.mark.parametrize(
    "body",
    [
        {"plan": "pro"},
        {"data": ["pro"]},
        {"data": {"plan": ["pro"]}},
        {"data": {"plan": {"name": "pro"}}},
        {"data": {"plan": None}},
        {"data": {"Plan": "pro"}},
        {"data": {"plan name": "pro"}},
        {"data": {"plan.name": "pro"}},
        {"data": {"": "pro"}},
        {"data": {"plan": "pro"}, "extra": 1},
        "data",
    ],
)
def test_people_data_is_strict(emu: CrispEmulator, api: httpx.Client, body: Any) -> None:
    ann = emu.add_person("ann@example.com", data={"plan": "free"})
    for method in ("PATCH", "PUT"):
        response = api.request(method, f"/people/data/{ann.people_id}", json=body)
        assert_error(response, 400, "invalid_data")
    assert emu.people[ann.people_id].data == {"plan": "free"}


# ------------------------------------------------------------------------ batch
def test_batch_data_applies_one_map_to_known_people(emu: CrispEmulator, api: httpx.Client) -> None:
    ann = emu.add_person("ann@example.com", data={"seats": 1})
    bob = emu.add_person("bob@example.com")
    body = {"people": {"profiles": [ann.people_id, bob.people_id]}, "data": {"plan": "pro"}}
    response = api.patch("/batch/data", json=body)
    assert response.status_code == 202
    assert response.json() == {"error": False, "reason": "processing", "data": {}}
    assert emu.people[ann.people_id].data == {"seats": 1, "plan": "pro"}
    assert emu.people[bob.people_id].data == {"plan": "pro"}


def test_batch_data_with_unknown_ids_applies_nothing(emu: CrispEmulator, api: httpx.Client) -> None:
    ann = emu.add_person("ann@example.com")
    ghost = "00000000-0000-0000-0000-000000000000"
    for stranger in (ghost, "ann@example.com"):  # emails are not people_ids here
        body = {"people": {"profiles": [ann.people_id, stranger]}, "data": {"plan": "pro"}}
        response = api.patch("/batch/data", json=body)
        assert_error(response, 404, "people_not_found")
        assert response.json()["data"] == {"unknown": [stranger]}
    assert emu.people[ann.people_id].data == {}


@pytest.mark.parametrize(
    "body",
    [
        {"people": {"profiles": ["X"]}},
        {"people": {"profiles": ["X"]}, "data": {"Bad": 1}},
        {"people": {"profiles": ["X"]}, "data": {"a": [1]}},
        {"people": {"profiles": []}, "data": {"a": 1}},
        {"people": ["X"], "data": {"a": 1}},
        {"profiles": ["X"], "data": {"a": 1}},
        {"people": {"profiles": ["X"], "emails": []}, "data": {"a": 1}},
    ],
)
def test_batch_data_is_strict(emu: CrispEmulator, api: httpx.Client, body: dict[str, Any]) -> None:
    ann = emu.add_person("ann@example.com")
    body["people"] = _with_id(body.get("people"), ann.people_id)
    assert_error(api.patch("/batch/data", json=body), 400, "invalid_data")


def _with_id(people: Any, people_id: str) -> Any:
    if isinstance(people, dict) and people.get("profiles"):
        return {**people, "profiles": [people_id]}
    return people


def test_batch_remove_deletes_listed_and_ignores_unknown(
    emu: CrispEmulator, api: httpx.Client
) -> None:
    ann = emu.add_person("ann@example.com")
    bob = emu.add_person("bob@example.com")
    ids = [ann.people_id, "00000000-0000-0000-0000-000000000000"]
    response = api.patch("/batch/remove", json={"people": {"profiles": ids}})
    assert response.status_code == 202 and response.json()["reason"] == "processing"
    assert list(emu.people) == [bob.people_id]
    assert emu.find("ann@example.com") is None
    bad = api.patch("/batch/remove", json={"people": {"profiles": ids}, "data": {}})
    assert_error(bad, 400, "invalid_data")


def test_check_route_lists_profiles(emu: CrispEmulator, api: httpx.Client) -> None:
    for index in range(25):
        emu.add_person(f"p{index}@example.com")
    assert len(api.get("/people/profiles/1").json()["data"]) == 20
    assert len(api.get("/people/profiles/2").json()["data"]) == 5
    assert api.get("/people/profiles/3").json()["data"] == []
    assert_error(api.get("/people/profiles/0"), 400, "invalid_data")


# ------------------------------------------------------------ quota & throttling
def test_daily_quota_rolls_over_at_utc_midnight() -> None:
    clock = FakeNow(datetime(2025, 3, 1, 23, 59, tzinfo=UTC))
    with CrispEmulator(daily_quota=3, now=clock) as emu, connect(emu) as api:
        for _ in range(3):
            assert api.get("/people/profiles/1").status_code == 200
        assert_error(api.get("/people/profiles/1"), 429, "rate_limited")
        assert_error(api.post("/people/profile", json={}), 429, "rate_limited")
        assert emu.quota_used == 5
        # 00:30 at UTC+1 is still 23:30 UTC: the quota day is the UTC day
        clock.moment = datetime(2025, 3, 2, 0, 30, tzinfo=timezone(timedelta(hours=1)))
        assert_error(api.get("/people/profiles/1"), 429, "rate_limited")
        clock.moment = datetime(2025, 3, 2, 0, 0, tzinfo=UTC)
        assert emu.quota_used == 0
        assert api.get("/people/profiles/1").status_code == 200
        assert emu.quota_used == 1


def test_quota_defaults_follow_the_tier() -> None:
    assert CrispEmulator().daily_quota == 10_000
    assert CrispEmulator(tier="plugin").daily_quota == 5_000
    assert CrispEmulator(daily_quota=None).daily_quota is None


def test_throttle_answers_429_or_420_then_recovers(emu: CrispEmulator, api: httpx.Client) -> None:
    emu.throttle(2, status=420)
    emu.throttle(1)
    assert [api.get("/people/profiles/1").status_code for _ in range(4)] == [420, 420, 429, 200]
    with pytest.raises(ValueError):
        emu.throttle(status=503)
    assert emu.quota_used == 1  # injected answers come before the quota


def test_inject_custom_body_headers_and_default_envelope(
    emu: CrispEmulator, api: httpx.Client
) -> None:
    emu.inject(503, body={"error": True, "reason": "maintenance", "data": {}}, headers={"X-A": "1"})
    emu.inject(500)
    first = api.get("/people/profiles/1")
    assert first.status_code == 503 and first.headers["x-a"] == "1"
    assert first.json()["reason"] == "maintenance"
    assert_error(api.get("/people/profiles/1"), 500, "internal_error")
    assert [rec.route for rec in emu.requests] == ["fault", "fault"]


def test_fail_rate_is_seeded_and_reproducible(emu: CrispEmulator, api: httpx.Client) -> None:
    def run() -> list[int]:
        return [api.get("/people/profiles/1").status_code for _ in range(30)]

    emu.fail_rate(0.5, statuses=(429, 500), seed=7)
    first = run()
    emu.fail_rate(0.5, statuses=(429, 500), seed=7)
    assert run() == first
    assert {429, 500, 200} == set(first)
    emu.fail_rate(1.0, statuses=(503,))
    assert set(run()) == {503}
    emu.fail_rate(0)
    assert set(run()) == {200}


def test_latency_delays_answers(emu: CrispEmulator, api: httpx.Client) -> None:
    emu.latency(0.05)
    started = time.monotonic()
    api.get("/people/profiles/1")
    assert time.monotonic() - started >= 0.05
    emu.clear_faults()
    started = time.monotonic()
    api.get("/people/profiles/1")
    assert time.monotonic() - started < 0.05


def test_down_refuses_then_up_serves_again(emu: CrispEmulator, api: httpx.Client) -> None:
    assert api.get("/people/profiles/1").status_code == 200  # a pooled connection exists
    port = emu.port
    emu.down()
    with pytest.raises(httpx.ConnectError):
        api.get("/people/profiles/1")
    emu.up()
    assert emu.port == port
    assert api.get("/people/profiles/1").status_code == 200


def test_down_drop_mode_closes_without_answer(emu: CrispEmulator, api: httpx.Client) -> None:
    emu.down("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        api.get("/people/profiles/1")
    assert emu.dropped == 1 and emu.requests == []
    emu.up()
    assert api.get("/people/profiles/1").status_code == 200


# ------------------------------------------------------------------ request log
def test_request_log_records_everything(emu: CrispEmulator, api: httpx.Client) -> None:
    people_id = create(api, "ann@example.com")
    api.patch(f"/people/data/{people_id}?trace=1", json={"data": {"plan": "pro"}})
    api.head("/people/profile/ann%40example.com")

    first, second, third = emu.requests
    assert (first.method, first.status, first.route) == ("POST", 201, "POST people/profile")
    assert first.path == f"/v1/website/{emu.website_id}/people/profile"
    assert first.body == {"email": "ann@example.com", "person": {"nickname": "nick"}}
    assert first.response["data"] == {"people_id": people_id}
    assert first.headers["x-crisp-tier"] == "website"
    assert first.headers["authorization"].startswith("Basic ")
    assert second.query == {"trace": ["1"]} and second.route == "PATCH people/data"
    assert third.method == "HEAD" and third.response["reason"] == "resolved"
    assert first.at <= second.at <= third.at

    assert len(emu.calls("patch")) == 1
    assert len(emu.calls(path_prefix=f"/website/{emu.website_id}/people/profile")) == 2
    assert len(emu.calls(path_prefix="/v1/website")) == 3
    assert len(emu.calls("POST", route="POST people/profile")) == 1
    emu.reset_log()
    assert emu.requests == [] and emu.calls() == []
    assert emu.find("ann@example.com") is not None  # state survives reset_log


def test_state_accessors_return_copies(emu: CrispEmulator) -> None:
    ann = emu.add_person("ann@example.com", data={"plan": "free"})
    emu.people[ann.people_id].data["plan"] = "hacked"
    found = emu.find("ann@example.com")
    assert found is not None and found.data == {"plan": "free"}
    with pytest.raises(ValueError):
        emu.add_person("ANN@example.com")


def test_lifecycle() -> None:
    emu = CrispEmulator().start()
    with pytest.raises(RuntimeError):
        emu.start()
    url = emu.website_url
    emu.stop()
    emu.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/people/profiles/1")
    with pytest.raises(RuntimeError):
        _ = emu.base_url


def test_runs_standalone() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.emulators.crisp", "--port", "0", "--daily-quota", "5"]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            lines = dict(proc.stdout.readline().split(maxsplit=1) for _ in range(6))
            base_url = lines["base_url"].strip()
            assert base_url.endswith("/v1") and lines["daily_quota"].strip() == "5"
            auth = (lines["identifier"].strip(), lines["key"].strip())
            url = f"{base_url}/website/{lines['website_id'].strip()}/people/profiles/1"
            response = httpx.get(url, auth=auth, headers={"X-Crisp-Tier": "website"})
            assert response.json() == {"error": False, "reason": "resolved", "data": []}
        finally:
            proc.terminate()
