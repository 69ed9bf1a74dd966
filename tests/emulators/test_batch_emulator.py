"""The Batch emulator, exercised through real HTTP with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from .batch import BatchEmulator

ROOT = Path(__file__).resolve().parents[2]
NO_TLS = False  # plain HTTP on loopback: skips loading CA certificates for every client


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[BatchEmulator]:
    with BatchEmulator(clock=clock) as emulator:
        yield emulator


def connect(emulator: BatchEmulator, headers: dict[str, str] | None = None) -> httpx.Client:
    if headers is None:
        headers = {
            "Authorization": f"Bearer {emulator.rest_api_key}",
            "X-Batch-Project": emulator.project_key,
        }
    return httpx.Client(base_url=emulator.base_url, headers=headers, timeout=5.0, verify=NO_TLS)


@pytest.fixture
def api(emu: BatchEmulator) -> Iterator[httpx.Client]:
    with connect(emu) as client:
        yield client


def op(custom_id: str = "u1", **attributes: Any) -> dict[str, Any]:
    return {"identifiers": {"custom_id": custom_id}, "attributes": attributes}


def send(api: httpx.Client, body: Any) -> httpx.Response:
    return api.post("/2.11/profiles/update", json=body)


def assert_failure(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code
    assert isinstance(body["error_message"], str) and body["error_message"]


# ------------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Batch-Project": "P"},
        {"Authorization": "Bearer R"},
        {"Authorization": "Bearer wrong", "X-Batch-Project": "P"},
        {"Authorization": "Bearer R", "X-Batch-Project": "wrong"},
        {"Authorization": "R", "X-Batch-Project": "P"},
        {"Authorization": "Basic R", "X-Batch-Project": "P"},
    ],
)
def test_both_keys_are_required(emu: BatchEmulator, headers: dict[str, str]) -> None:
    real = {"R": emu.rest_api_key, "P": emu.project_key}
    resolved = {name: " ".join(real.get(w, w) for w in v.split()) for name, v in headers.items()}
    with connect(emu, resolved) as client:
        assert_failure(send(client, [op(plan="pro")]), 401, "AUTHENTICATION_INVALID")
    assert emu.profiles == {}
    assert emu.tokens == 1000


def test_route_and_method(emu: BatchEmulator, api: httpx.Client) -> None:
    assert_failure(api.post("/2.10/profiles/update", json=[op()]), 404, "ROUTE_NOT_FOUND")
    assert_failure(api.post("/profiles/update", json=[op()]), 404, "ROUTE_NOT_FOUND")
    assert_failure(api.get("/2.11/profiles/update"), 405, "METHOD_NOT_ALLOWED")
    assert emu.endpoint == f"{emu.base_url}/2.11/profiles/update"
    with BatchEmulator(api_version="2.7") as other, connect(other) as client:
        assert client.post("/2.7/profiles/update", json=[op()]).status_code == 202


def test_success(emu: BatchEmulator, api: httpx.Client) -> None:
    response = send(api, [op("u1", plan="pro", ltv=12.5, vip=True), op("U1 ", tags=["a", "b"])])
    assert response.status_code == 202
    assert response.json() == {"code": "SUCCESS"}
    profiles = emu.profiles
    assert profiles["u1"].attributes == {"plan": "pro", "ltv": 12.5, "vip": True}
    assert profiles["U1 "].attributes == {"tags": ["a", "b"]}  # case and spaces are significant


# ------------------------------------------------------------------- malformed
def _long_id() -> dict[str, Any]:
    return op("x" * 1024)


MALFORMED: list[Any] = [
    {"identifiers": {"custom_id": "u1"}, "attributes": {}},
    [],
    [op(f"u{index}") for index in range(201)],
    ["u1"],
    [{"attributes": {"plan": "pro"}}],
    [{"identifiers": {}, "attributes": {}}],
    [{"identifiers": {"custom_id": "u1", "installation_id": "i"}, "attributes": {}}],
    [{"identifiers": {"installation_id": "i"}, "attributes": {}}],
    [{"identifiers": {"custom_id": ""}, "attributes": {}}],
    [{"identifiers": {"custom_id": 42}, "attributes": {}}],
    [{"identifiers": [{"custom_id": "u1"}], "attributes": {}}],
    [_long_id()],
    [{"identifiers": {"custom_id": "u1"}}],
    [{"identifiers": {"custom_id": "u1"}, "attributes": [["plan", "pro"]]}],
    [op("u1", **{f"a{index}": index for index in range(51)})],
    [{"identifiers": {"custom_id": "u1"}, "attributes": {}, "events": []}],
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_requests_are_rejected_whole(
    emu: BatchEmulator, api: httpx.Client, body: Any
) -> None:
    if isinstance(body, list) and body and len(body) < 200:
        body = [op("first", plan="pro"), *body]  # nothing is applied, not even valid operations
    assert_failure(send(api, body), 400, "MALFORMED_REQUEST")
    assert emu.profiles == {}
    assert emu.tokens == 1000


def test_body_must_be_json(api: httpx.Client) -> None:
    url = "/2.11/profiles/update"
    json_type = {"Content-Type": "application/json"}
    assert_failure(api.post(url, content=b"[{", headers=json_type), 400, "MALFORMED_JSON_BODY")
    assert_failure(api.post(url, content=b"[NaN]", headers=json_type), 400, "MALFORMED_JSON_BODY")
    assert_failure(api.post(url, content=b"", headers=json_type), 400, "MALFORMED_JSON_BODY")
    plain = api.post(url, content=b'[{"identifiers": {"custom_id": "u1"}, "attributes": {}}]')
    assert_failure(plain, 400, "MALFORMED_JSON_BODY")


def test_limits_are_inclusive(emu: BatchEmulator, api: httpx.Client) -> None:
    assert send(api, [op(f"u{index}") for index in range(200)]).status_code == 202
    assert send(api, [op("x" * 1023)]).status_code == 202
    attributes = {f"a{index}": index for index in range(50)}
    assert send(api, [op("u1", **attributes)]).json() == {"code": "SUCCESS"}
    assert len(emu.profiles) == 201


# ------------------------------------------------------------------ attributes
def test_native_attributes(emu: BatchEmulator, api: httpx.Client) -> None:
    native = {
        "$email_address": "ann@example.com",
        "$phone_number": "+33612345678",
        "$language": "fr",
        "$region": "FR",
        "$timezone": "Europe/Paris",
        "$email_marketing": "subscribed",
        "$sms_marketing": "unsubscribed",
    }
    assert send(api, [op("u1", **native)]).json() == {"code": "SUCCESS"}
    profile = emu.profile("u1")
    assert profile is not None and profile.attributes == native


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("$email_address", "not-an-email"),
        ("$email_address", 42),
        ("$phone_number", "0612345678"),
        ("$phone_number", "+33 6 12 34 56 78"),
        ("$phone_number", "+0612345678"),
        ("$language", "FR"),
        ("$language", "fra"),
        ("$region", "fr"),
        ("$region", "FRA"),
        ("$timezone", "Paris"),
        ("$timezone", "europe/paris"),
        ("$timezone", "+01:00"),
        ("$email_marketing", "yes"),
        ("$sms_marketing", True),
        ("$favorite_color", "blue"),
        ("Plan", "pro"),
        ("plan-name", "pro"),
        ("plan name", "pro"),
        ("a" * 31, "pro"),
        ("", "pro"),
        ("plan", ""),
        ("plan", "x" * 301),
        ("plan", {"tier": "pro"}),
        ("tags", ["a"] * 26),
        ("tags", ["a", 1]),
        ("tags", ["a", ""]),
        ("tags", ["a", "x" * 301]),
        ("date(signup)", "2024-01-31"),
        ("date(signup)", "2024-01-31T12:00:00"),
        ("date(signup)", "2024-01-31T12:00:00+01:00"),
        ("date(signup)", "31/01/2024"),
        ("date(signup)", 1706702400),
        ("date(Signup)", "2024-01-31T12:00:00Z"),
        ("url(site)", "example.com"),
        ("url(site)", "https://"),
        ("url(site)", 3),
        ("url(Site)", "https://example.com"),
        ("datetime(x)", "2024-01-31T12:00:00Z"),
    ],
)
def test_invalid_attributes_are_partial_errors(
    emu: BatchEmulator, api: httpx.Client, name: str, value: Any
) -> None:
    response = send(api, [op("u0", plan="free"), op("u1", **{name: value, "ok": "yes"})])
    assert response.status_code == 202
    body = response.json()
    assert body["code"] == "SUCCESS_WITH_PARTIAL_ERRORS"
    [error] = body["errors"]
    assert error["category"] == "attribute"
    assert error["bulk_index"] == 1
    assert error["attribute"] == name
    assert isinstance(error["reason"], str) and error["reason"]
    profile = emu.profile("u1")
    assert profile is not None and profile.attributes == {"ok": "yes"}  # the rest was applied


def test_valid_custom_values_and_typed_attributes(emu: BatchEmulator, api: httpx.Client) -> None:
    attributes = {
        "plan": "x" * 300,
        "a" * 30: 1,
        "score_2": -0.5,
        "vip": False,
        "tags": ["t"] * 25,
        "empty_tags": [],
        "date(signup)": "2024-01-31T12:00:00Z",
        "date(renewal)": "2024-01-31T12:00:00.123+00:00",
        "url(site)": "https://example.com/path?q=1",
    }
    assert send(api, [op("u1", **attributes)]).json() == {"code": "SUCCESS"}
    profile = emu.profile("u1")
    assert profile is not None
    assert profile.attributes["signup"] == "2024-01-31T12:00:00Z"
    assert profile.attributes["site"] == "https://example.com/path?q=1"
    assert profile.types == {"signup": "date", "renewal": "date", "site": "url"}


def test_null_removes_attributes(emu: BatchEmulator, api: httpx.Client) -> None:
    send(api, [op("u1", plan="pro", seats=3, **{"date(signup)": "2024-01-31T12:00:00Z"})])
    send(api, [op("u1", **{"$language": "fr"})])
    nulls = {"plan": None, "date(signup)": None, "$language": None, "never_set": None}
    assert send(api, [op("u1", **nulls)]).json() == {"code": "SUCCESS"}
    profile = emu.profile("u1")
    assert profile is not None and profile.attributes == {"seats": 3} and profile.types == {}


def test_partial_errors_carry_the_operation_index(emu: BatchEmulator, api: httpx.Client) -> None:
    body = [
        op("a", plan="pro"),
        op("b", Plan="pro", seats=2),
        op("c", plan="ok"),
        op("d", **{"$region": "fr", "$language": "EN"}),
    ]
    response = send(api, body)
    assert response.status_code == 202
    errors = response.json()["errors"]
    assert [(e["bulk_index"], e["attribute"]) for e in errors] == [
        (1, "Plan"),
        (3, "$region"),
        (3, "$language"),
    ]
    profiles = emu.profiles
    assert profiles["b"].attributes == {"seats": 2}
    assert profiles["d"].attributes == {}  # created even with only invalid attributes


def test_operations_apply_in_order(emu: BatchEmulator, api: httpx.Client) -> None:
    send(api, [op("u1", plan="free", seats=1), op("u1", plan="pro")])
    profile = emu.profile("u1")
    assert profile is not None and profile.attributes == {"plan": "pro", "seats": 1}


# ------------------------------------------------------------------ rate limit
def test_weighted_rate_limit_with_burst(
    emu: BatchEmulator, api: httpx.Client, clock: FakeClock
) -> None:
    full = [op(f"u{index}") for index in range(200)]
    for _ in range(5):
        assert send(api, full).status_code == 202  # burst of 1000 operations
    limited = send(api, full)
    assert_failure(limited, 429, "TOO_MANY_REQUESTS")
    assert "retry-after" not in limited.headers  # not documented: adapters must cope without
    assert send(api, [op("u1")]).status_code == 429
    clock.now += 0.5  # 150 operations refilled
    assert send(api, full[:150]).status_code == 202
    assert send(api, [op("u1")]).status_code == 429
    clock.now += 1.0  # 300 more
    assert send(api, full).status_code == 202
    assert send(api, full).status_code == 429  # 100 left, a rejected call consumes nothing
    assert send(api, full[:100]).status_code == 202
    clock.now += 60  # refill caps at the burst
    assert emu.tokens == 1000
    assert [rec.status for rec in emu.calls("POST")].count(429) == 4


def test_retry_after_options(clock: FakeClock) -> None:
    full = [op(f"u{index}") for index in range(200)]
    options: list[tuple[float | Literal["auto"], str]] = [(2, "2"), (1.5, "1.5"), ("auto", "1")]
    for option, expected in options:
        with BatchEmulator(clock=clock, burst=250, retry_after=option) as emu, connect(emu) as api:
            assert send(api, full).status_code == 202  # 50 tokens left; 200 need 0.5 s
            limited = send(api, full)
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == expected


def test_rate_limit_can_be_configured_or_disabled(clock: FakeClock) -> None:
    with BatchEmulator(clock=clock, rate_per_second=10, burst=20) as emu, connect(emu) as api:
        assert send(api, [op(f"u{index}") for index in range(20)]).status_code == 202
        assert send(api, [op("u1")]).status_code == 429
        clock.now += 0.1
        assert send(api, [op("u1")]).status_code == 202
    with BatchEmulator(clock=clock, rate_per_second=None) as emu, connect(emu) as api:
        for _ in range(10):
            assert send(api, [op(f"u{index}") for index in range(200)]).status_code == 202


# ------------------------------------------------------------ faults and the log
def test_injected_failures(emu: BatchEmulator, api: httpx.Client) -> None:
    emu.inject(503)
    emu.inject(500, count=2)
    emu.inject(429, headers={"Retry-After": "3"})
    assert_failure(send(api, [op()]), 503, "SERVICE_UNAVAILABLE")
    assert_failure(send(api, [op()]), 500, "INTERNAL_SERVER_ERROR")
    assert_failure(send(api, [op()]), 500, "INTERNAL_SERVER_ERROR")
    throttled = send(api, [op()])
    assert_failure(throttled, 429, "TOO_MANY_REQUESTS")
    assert throttled.headers["retry-after"] == "3"
    assert send(api, [op()]).status_code == 202
    assert emu.tokens == 999  # injected answers consume no tokens


def test_injected_429_uses_configured_retry_after(clock: FakeClock) -> None:
    with BatchEmulator(clock=clock, retry_after=4) as emu, connect(emu) as api:
        emu.fail_rate(1.0, statuses=(429,))
        assert send(api, [op()]).headers["retry-after"] == "4"


def test_request_log(emu: BatchEmulator, api: httpx.Client) -> None:
    send(api, [op("u1", plan="pro")])
    send(api, [op("u1", Plan="pro")])
    with connect(emu, {}) as anonymous:
        send(anonymous, [op()])
    ok, partial, denied = emu.requests
    assert (ok.method, ok.path, ok.status, ok.route) == (
        "POST",
        "/2.11/profiles/update",
        202,
        "profiles/update",
    )
    assert ok.body == [op("u1", plan="pro")] and ok.response == {"code": "SUCCESS"}
    assert ok.headers["x-batch-project"] == emu.project_key
    assert partial.response["code"] == "SUCCESS_WITH_PARTIAL_ERRORS"
    assert denied.status == 401
    assert ok.at <= partial.at <= denied.at
    assert len(emu.calls("POST", path_prefix="/2.11/")) == 3
    emu.reset_log()
    assert emu.requests == []


def test_outage(emu: BatchEmulator, api: httpx.Client) -> None:
    emu.down()
    with pytest.raises(httpx.ConnectError):
        send(api, [op()])
    emu.down("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        send(api, [op()])
    emu.up()
    assert send(api, [op()]).status_code == 202
    assert emu.dropped == 1 and len(emu.requests) == 1


def test_runs_standalone() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.emulators.batch", "--port", "0"]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            lines = dict(proc.stdout.readline().split(maxsplit=1) for _ in range(5))
            headers = {
                "Authorization": f"Bearer {lines['rest_api_key'].strip()}",
                "X-Batch-Project": lines["project_key"].strip(),
            }
            response = httpx.post(lines["endpoint"].strip(), json=[op()], headers=headers)
            assert response.status_code == 202
        finally:
            proc.terminate()
