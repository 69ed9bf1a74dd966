"""The Crisp adapter against the strict Crisp emulator, in-process (no Kafka): fast.

Every test drives ``CrispAdapter.apply`` through the real HTTP layer (limits, retries, the
daily budget) with an injected sleeper, so retries and quota pauses never really wait.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from stream_sync.config.destinations import CrispDestination
from stream_sync.destinations import build_adapter, http_for
from stream_sync.destinations.base import (
    AttributeProblem,
    FatalDestinationError,
    Operation,
    OutcomeKind,
    Unidentifiable,
)
from stream_sync.destinations.crisp import CrispAdapter
from stream_sync.http import DailyBudget
from stream_sync.state import OpKind
from tests.emulators.crisp import CrispEmulator

pytestmark = pytest.mark.anyio

CUSTOM = frozenset({"plan", "ltv", "vip", "tags"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emu() -> Iterator[CrispEmulator]:
    with CrispEmulator(daily_quota=None) as emulator:
        yield emulator


class Sleeps:
    """The injected sleeper: records the delays, never waits (optionally moves a clock)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.moment += timedelta(seconds=seconds)


class FakeClock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def destination(emu: CrispEmulator, **overrides: Any) -> CrispDestination:
    values: dict[str, Any] = {
        "type": "crisp",
        "website_id": emu.website_id,
        "identifier": emu.identifier,
        "key": emu.key,
        "tier": emu.tier,
        "base_url": emu.base_url,
        "rate_limit": None,
        "requests_per_day": None,
        "retry": {"max_backoff_s": 0.5},
    }
    values.update(overrides)
    return CrispDestination.model_validate(values)


def adapter_for(
    emu: CrispEmulator,
    *,
    sleeps: Sleeps | None = None,
    budget: DailyBudget | None = None,
    custom_attributes: tuple[str, ...] = (),
    fields: tuple[str, ...] = (),
    **overrides: Any,
) -> CrispAdapter:
    dest = destination(emu, **overrides)
    http = http_for("crisp", dest, daily_budget=budget, sleep=sleeps or Sleeps())
    return CrispAdapter("crisp", dest, http, custom_attributes=custom_attributes, fields=fields)


def op(
    email: str,
    fields: dict[str, Any] | None = None,
    *,
    kind: OpKind = OpKind.UPSERT,
    ref: str | None = None,
    full: bool = True,
    clears: tuple[str, ...] = (),
    previous: str | None = None,
    person_id: str = "p",
) -> Operation:
    return Operation(
        person_id, kind, email, ref, dict(fields or {}), clears, full, previous, custom=CUSTOM
    )


def routes(emu: CrispEmulator) -> list[str]:
    return [f"{r.method} {r.route}" for r in emu.requests]


# --- formatting ------------------------------------------------------------------------------


async def test_identifier_is_a_trimmed_lower_case_email(emu: CrispEmulator) -> None:
    adapter = adapter_for(emu)
    assert adapter.format_identifier("  Ann.Lee+VIP@Example.COM ") == "ann.lee+vip@example.com"
    for bad in ("not-an-email", "a b@x.io", "", "   ", 42, True, ["a@x.io"]):
        with pytest.raises(Unidentifiable):
            adapter.format_identifier(bad)
    await adapter.aclose()


async def test_field_formatting(emu: CrispEmulator) -> None:
    adapter = adapter_for(emu)
    # custom data: scalars only; a list is one attribute problem (the rest is sent)
    assert adapter.format_field("ltv", 12.0, None, True) == 12
    assert adapter.format_field("vip", True, None, True) is True
    with pytest.raises(AttributeProblem) as problem:
        adapter.format_field("tags", ["a", "b"], None, True)
    assert problem.value.field == "tags" and problem.value.reason == "data_not_scalar"
    with pytest.raises(AttributeProblem):
        adapter.format_field("Bad Key", "x", None, True)
    with pytest.raises(AttributeProblem):
        adapter.format_field("ltv", float("nan"), None, True)
    # standard fields: text fields are strings, list fields lists of strings
    assert adapter.format_field("person.phone", 33612345678, None, False) == "33612345678"
    assert adapter.format_field("segments", "vip", None, False) == ["vip"]
    assert adapter.format_field("person.locales", ["fr", "en"], None, False) == ["fr", "en"]
    assert adapter.format_field("company.name", "Acme", None, False) == "Acme"
    assert adapter.format_field("email", " A@X.io", None, False) == "a@x.io"
    with pytest.raises(AttributeProblem):
        adapter.format_field("person.phone", ["1", "2"], None, False)
    with pytest.raises(AttributeProblem):
        adapter.format_field("person.nickname", "  ", None, False)
    await adapter.aclose()


# --- calls per change ------------------------------------------------------------------------


async def test_new_person_is_created_then_its_data_set(emu: CrispEmulator) -> None:
    adapter = adapter_for(emu)
    [outcome] = await adapter.apply(
        [
            op(
                "Ann+x@example.com".lower(),
                {"person.phone": "+33 6", "company.name": "Acme", "plan": "pro", "ltv": 12.5},
            )
        ]
    )
    assert outcome.kind is OutcomeKind.APPLIED
    assert routes(emu) == ["POST POST people/profile", "PATCH PATCH people/data"]
    person = emu.find("ann+x@example.com")
    assert person is not None and outcome.ref == person.people_id
    assert person.profile == {
        "person": {"phone": "+33 6", "nickname": "ann+x"},  # nickname: the local part
        "company": {"name": "Acme"},
    }
    assert person.data == {"plan": "pro", "ltv": 12.5}
    # the data call goes through the returned people_id
    assert emu.requests[1].path.endswith(f"/people/data/{person.people_id}")
    await adapter.aclose()


async def test_mapped_nickname_is_used_on_create(emu: CrispEmulator) -> None:
    adapter = adapter_for(emu)
    [outcome] = await adapter.apply([op("bo@x.io", {"person.nickname": "Bo Diddley"})])
    assert outcome.kind is OutcomeKind.APPLIED
    assert routes(emu) == ["POST POST people/profile"]  # no data: one call
    person = emu.find("bo@x.io")
    assert person is not None and person.profile["person"]["nickname"] == "Bo Diddley"
    await adapter.aclose()


async def test_existing_person_unknown_to_state(emu: CrispEmulator) -> None:
    emu.add_person("a+b@x.io", nickname="Old", data={"plan": "free", "keep": 1})
    adapter = adapter_for(emu)
    [outcome] = await adapter.apply([op("a+b@x.io", {"person.phone": "1", "plan": "pro"})])
    assert outcome.kind is OutcomeKind.APPLIED and outcome.ref is None
    assert routes(emu) == [
        "POST POST people/profile",  # 409 people_exists
        "PATCH PATCH people/profile",
        "PATCH PATCH people/data",
    ]
    assert [r.status for r in emu.requests] == [409, 200, 200]
    # the e-mail is URL-encoded in the path ('+' would read as a space)
    assert emu.requests[1].path.endswith("/people/profile/a%2Bb%40x.io")
    person = emu.find("a+b@x.io")
    assert person is not None
    assert person.profile["person"] == {"nickname": "Old", "phone": "1"}
    assert person.data == {"plan": "pro", "keep": 1}
    await adapter.aclose()


async def test_changes_send_only_the_calls_they_need(emu: CrispEmulator) -> None:
    ann = emu.add_person("ann@x.io", data={"plan": "free"})
    adapter = adapter_for(emu)
    # a profile-field change → one profile PATCH, no data call
    [o1] = await adapter.apply(
        [op("ann@x.io", {"person.phone": "2"}, ref=ann.people_id, full=False)]
    )
    assert routes(emu) == ["PATCH PATCH people/profile"]
    assert emu.requests[0].path.endswith(f"/people/profile/{ann.people_id}")
    assert emu.requests[0].body == {"person": {"phone": "2"}}
    assert o1.kind is OutcomeKind.APPLIED and o1.ref == ann.people_id
    # a custom-data change → one data PATCH, no profile call
    emu.reset_log()
    await adapter.apply([op("ann@x.io", {"plan": "pro"}, ref=ann.people_id, full=False)])
    assert routes(emu) == ["PATCH PATCH people/data"]
    assert emu.requests[0].body == {"data": {"plan": "pro"}}
    # both → two calls
    emu.reset_log()
    await adapter.apply(
        [op("ann@x.io", {"plan": "max", "company.name": "X"}, ref=ann.people_id, full=False)]
    )
    assert routes(emu) == ["PATCH PATCH people/profile", "PATCH PATCH people/data"]
    person = emu.find("ann@x.io")
    assert person is not None and person.data == {"plan": "max"}
    assert person.profile["company"] == {"name": "X"}
    await adapter.aclose()


async def test_clears(emu: CrispEmulator) -> None:
    ann = emu.add_person(
        "ann@x.io",
        nickname="Ann",
        profile={
            "person": {"phone": "1", "locales": ["fr"]},
            "segments": ["a"],
            "company": {"name": "Acme"},
        },
        data={"plan": "pro", "ltv": 3},
    )
    adapter = adapter_for(emu)
    [outcome] = await adapter.apply(
        [
            op(
                "ann@x.io",
                ref=ann.people_id,
                full=False,
                clears=(
                    "person.phone",
                    "person.nickname",
                    "segments",
                    "person.locales",
                    "company.name",
                    "plan",
                ),
            )
        ]
    )
    assert outcome.kind is OutcomeKind.APPLIED
    assert emu.requests[0].body == {
        "person": {"phone": "", "locales": []},
        "segments": [],
        "company": {"name": ""},
    }
    assert emu.requests[1].body == {"data": {"plan": ""}}
    person = emu.find("ann@x.io")
    assert person is not None
    assert person.profile["person"]["nickname"] == "Ann"  # never cleared
    assert person.data == {"plan": "", "ltv": 3}
    await adapter.aclose()


async def test_identical_data_changes_share_one_batch_call(emu: CrispEmulator) -> None:
    people = [emu.add_person(f"u{i}@x.io") for i in range(5)]
    adapter = adapter_for(emu)
    ops = [
        op(p.email, {"plan": "pro"}, ref=p.people_id, full=False, person_id=p.email)
        for p in people[:4]
    ]
    ops.append(op(people[4].email, {"plan": "free"}, ref=people[4].people_id, full=False))
    # a person known only by e-mail cannot be grouped (batch/data takes people_ids)
    emu.add_person("byemail@x.io")
    ops.append(op("byemail@x.io", {"plan": "pro"}, full=False))
    outcomes = await adapter.apply(ops)
    assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED] * 6
    assert sorted(routes(emu)) == [
        "PATCH PATCH batch/data",
        "PATCH PATCH people/data",
        "PATCH PATCH people/data",
    ]
    [bulk] = emu.calls(route="PATCH batch/data")
    assert bulk.body == {
        "people": {"profiles": [p.people_id for p in people[:4]]},
        "data": {"plan": "pro"},
    }
    assert all(emu.people[p.people_id].data == {"plan": "pro"} for p in people[:4])
    assert emu.people[people[4].people_id].data == {"plan": "free"}
    await adapter.aclose()


async def test_batch_data_with_a_profile_deleted_in_crisp(emu: CrispEmulator) -> None:
    people = [emu.add_person(f"u{i}@x.io") for i in range(3)]
    adapter = adapter_for(emu)
    ops = [
        op(p.email, {"plan": "pro"}, ref=p.people_id, full=False, person_id=p.email) for p in people
    ]
    ops.append(op("gone@x.io", {"plan": "pro"}, ref="0000-gone", full=False))
    outcomes = await adapter.apply(ops)
    assert [o.kind for o in outcomes[:3]] == [OutcomeKind.APPLIED] * 3
    assert outcomes[3].kind is OutcomeKind.REJECTED and outcomes[3].reason == "people_not_found"
    # the first bulk call named the unknown id and applied nothing; the rest went again
    assert routes(emu) == ["PATCH PATCH batch/data", "PATCH PATCH batch/data"]
    assert emu.requests[1].body["people"]["profiles"] == [p.people_id for p in people]
    assert all(emu.people[p.people_id].data == {"plan": "pro"} for p in people)
    await adapter.aclose()


async def test_full_record_with_a_stale_people_id_is_recreated(emu: CrispEmulator) -> None:
    adapter = adapter_for(emu)
    [outcome] = await adapter.apply(
        [op("re@x.io", {"person.phone": "9", "plan": "pro"}, ref="stale-id")]
    )
    assert outcome.kind is OutcomeKind.APPLIED
    assert routes(emu) == [
        "PATCH PATCH people/profile",
        "POST POST people/profile",
        "PATCH PATCH people/data",
    ]
    person = emu.find("re@x.io")
    assert person is not None and outcome.ref == person.people_id
    # re-created elsewhere meanwhile: people_exists → update by e-mail, learn the new id
    emu.reset_log()
    [outcome] = await adapter.apply([op("re@x.io", {"plan": "max"}, ref="stale-again")])
    assert routes(emu) == [
        "PATCH PATCH people/data",
        "POST POST people/profile",
        "PATCH PATCH people/data",
        "GET GET people/profile",
    ]
    assert outcome.kind is OutcomeKind.APPLIED and outcome.ref == person.people_id
    await adapter.aclose()


async def test_email_change_through_the_people_id(emu: CrispEmulator) -> None:
    ann = emu.add_person("ann@x.io")
    emu.add_person("taken@x.io")
    bob = emu.add_person("bob@x.io")
    adapter = adapter_for(emu)
    outcomes = await adapter.apply(
        [
            op("ann.new@x.io", {}, ref=ann.people_id, full=False, previous="ann@x.io"),
            op("taken@x.io", {}, ref=bob.people_id, full=False, previous="bob@x.io"),
        ]
    )
    assert outcomes[0].kind is OutcomeKind.APPLIED
    moved = emu.find("ann.new@x.io")
    assert moved is not None and moved.people_id == ann.people_id
    assert outcomes[1].kind is OutcomeKind.REJECTED and outcomes[1].reason == "people_exists"
    assert "people_exists" in (outcomes[1].message or "")
    await adapter.aclose()


async def test_per_person_refusal_is_rejected_rest_lands(emu: CrispEmulator) -> None:
    adapter = adapter_for(emu)
    ops = [op(f"ok{i}@x.io", {"plan": "pro"}, person_id=f"ok{i}") for i in range(3)]
    ops.insert(1, op("bob@localhost", {"plan": "pro"}, person_id="bad"))  # Crisp wants a dot
    outcomes = await adapter.apply(ops)
    assert [o.kind for o in outcomes] == [
        OutcomeKind.APPLIED,
        OutcomeKind.REJECTED,
        OutcomeKind.APPLIED,
        OutcomeKind.APPLIED,
    ]
    assert outcomes[1].reason == "invalid_data"
    assert "email" in (outcomes[1].message or "")
    assert len(emu.people) == 3
    await adapter.aclose()


async def test_update_only(emu: CrispEmulator) -> None:
    known = emu.add_person("known@x.io")
    adapter = adapter_for(emu)
    outcomes = await adapter.apply(
        [
            op("nobody@x.io", {"person.phone": "1", "plan": "pro"}, kind=OpKind.UPDATE),
            op("known@x.io", {"person.phone": "1", "plan": "pro"}, kind=OpKind.UPDATE),
            op("nobody2@x.io", {"plan": "pro"}, kind=OpKind.UPDATE),
            op("nobody3@x.io", {}, kind=OpKind.UPDATE),
        ]
    )
    assert [o.kind for o in outcomes] == [
        OutcomeKind.IGNORED,
        OutcomeKind.APPLIED,
        OutcomeKind.IGNORED,
        OutcomeKind.IGNORED,
    ]
    assert not emu.calls(method="POST")  # never creates
    assert len(emu.people) == 1
    stored = emu.people[known.people_id]
    assert stored.data == {"plan": "pro"} and stored.profile["person"]["phone"] == "1"
    # one call for each unknown person (the first one answers 404)
    assert len(emu.requests) == 5
    await adapter.aclose()


async def test_mirror_deletes(emu: CrispEmulator) -> None:
    people = [emu.add_person(f"d{i}@x.io") for i in range(3)]
    emu.add_person("mail@x.io")
    adapter = adapter_for(emu)
    ops = [op(p.email, kind=OpKind.DELETE, ref=p.people_id, full=False) for p in people]
    ops.append(op("mail@x.io", kind=OpKind.DELETE, full=False))  # no people_id known
    ops.append(op("never@x.io", kind=OpKind.DELETE, full=False))  # unknown: 404 = success
    ops.append(op("gone@x.io", kind=OpKind.DELETE, ref="gone-id", full=False))
    outcomes = await adapter.apply(ops)
    assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED] * 6
    assert emu.people == {}
    assert sorted(routes(emu)) == [
        "DELETE DELETE people/profile",
        "DELETE DELETE people/profile",
        "PATCH PATCH batch/remove",
    ]
    [bulk] = emu.calls(route="PATCH batch/remove")
    assert bulk.body == {"people": {"profiles": [p.people_id for p in people] + ["gone-id"]}}
    # one delete with a people_id alone → a plain DELETE
    other = emu.add_person("solo@x.io")
    emu.reset_log()
    await adapter.apply([op("solo@x.io", kind=OpKind.DELETE, ref=other.people_id, full=False)])
    assert routes(emu) == ["DELETE DELETE people/profile"]
    assert emu.people == {}
    await adapter.aclose()


async def test_full_record_of_a_known_person_without_fields_checks_existence(
    emu: CrispEmulator,
) -> None:
    known = emu.add_person("k@x.io")
    adapter = adapter_for(emu)
    [applied] = await adapter.apply([op("k@x.io", {}, ref=known.people_id)])
    assert applied.kind is OutcomeKind.APPLIED and routes(emu) == ["HEAD HEAD people/profile"]
    emu.reset_log()
    [created] = await adapter.apply([op("k2@x.io", {}, ref="gone")])
    assert created.kind is OutcomeKind.APPLIED
    assert routes(emu) == ["HEAD HEAD people/profile", "POST POST people/profile"]
    await adapter.aclose()


# --- throttling, credentials, routes ---------------------------------------------------------


async def test_429_and_420_are_retried(emu: CrispEmulator) -> None:
    sleeps = Sleeps()
    adapter = adapter_for(emu, sleeps=sleeps)
    emu.throttle(2, 429)
    emu.throttle(2, 420)
    outcomes = await adapter.apply(
        [op(f"t{i}@x.io", {"plan": "pro"}, person_id=f"t{i}") for i in range(3)]
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED] * 3
    assert len(emu.people) == 3
    assert all(p.data == {"plan": "pro"} for p in emu.people.values())
    assert sorted(r.status for r in emu.requests if r.route == "fault") == [420, 420, 429, 429]
    assert len(sleeps.delays) == 4 and all(0 <= d <= 0.5 for d in sleeps.delays)
    await adapter.aclose()


async def test_bad_credentials_are_fatal_and_never_leak(emu: CrispEmulator) -> None:
    secret_key = "wrong-key-" + "s3cr3t" * 4
    adapter = adapter_for(emu, key=secret_key)
    ops = [op(f"c{i}@x.io", {"plan": "pro"}, person_id=f"c{i}") for i in range(3)]
    with pytest.raises(FatalDestinationError) as err:
        await adapter.apply(ops)
    assert err.value.reason == "http_401"
    text = f"{err.value} {err.value.message} {adapter!r}"
    assert secret_key not in text and emu.identifier not in text
    # wrong tier: the same
    tier = adapter_for(emu, tier="plugin")
    with pytest.raises(FatalDestinationError):
        await tier.apply(ops[:1])
    await adapter.aclose()
    await tier.aclose()


async def test_base_url_without_v1_is_fatal(emu: CrispEmulator) -> None:
    adapter = adapter_for(emu, base_url=emu.root_url)
    with pytest.raises(FatalDestinationError) as err:
        await adapter.apply([op("a@x.io", {"plan": "pro"})])
    assert err.value.reason == "route_not_found" and "base_url" in err.value.message
    await adapter.aclose()


# --- dry run preview, check ------------------------------------------------------------------


async def test_preview_is_the_first_request_apply_sends(emu: CrispEmulator) -> None:
    known = emu.add_person("known@x.io")
    emu.add_person("mail@x.io")
    adapter = adapter_for(emu)
    cases = [
        op("new+1@x.io", {"person.phone": "1", "plan": "pro"}),
        op("known@x.io", {"person.phone": "2"}, ref=known.people_id, full=False),
        op("known@x.io", {"plan": "x"}, ref=known.people_id, full=False),
        op("mail@x.io", {"plan": "y"}, kind=OpKind.UPDATE),
        op("known@x.io", {}, ref=known.people_id),
        op("mail@x.io", kind=OpKind.DELETE, full=False),
    ]
    for case in cases:
        preview = adapter.preview_request(case)
        emu.reset_log()
        await adapter.apply([case])
        first = emu.requests[0]
        assert preview["method"] == first.method
        assert preview["url"] == emu.root_url + first.path
        assert preview["body"] == first.body
        dumped = json.dumps(preview)
        assert emu.key not in dumped and emu.identifier not in dumped
    # nothing to send (only the nickname was unset: never cleared)
    nothing = op("known@x.io", ref=known.people_id, full=False, clears=("person.nickname",))
    assert adapter.preview_request(nothing) == {"method": None, "url": None, "body": None}
    emu.reset_log()
    assert [o.kind for o in await adapter.apply([nothing])] == [OutcomeKind.APPLIED]
    assert emu.requests == []
    await adapter.aclose()


async def test_check(emu: CrispEmulator) -> None:
    good = adapter_for(emu, custom_attributes=("plan", "ltv"), fields=("person.phone",))
    rows = await good.check()
    assert all(row.ok for row in rows), rows
    assert [r.route for r in emu.requests] == ["GET people/profiles"]
    assert emu.requests[0].path.endswith("/people/profiles/1")
    bad = adapter_for(emu, key="nope-" + "x" * 20, custom_attributes=("plan", "Bad Name"))
    rows = await bad.check()
    assert [row.ok for row in rows] == [False, False]
    assert "401" in rows[0].detail and "x" * 20 not in rows[0].detail
    assert "'Bad Name'" in rows[1].detail
    await good.aclose()
    await bad.aclose()


async def test_build_adapter_uses_the_configured_budget(emu: CrispEmulator) -> None:
    adapter = build_adapter("crisp", destination(emu, requests_per_day=7))
    assert isinstance(adapter, CrispAdapter)
    assert adapter.http.daily_budget is not None and adapter.http.daily_budget.per_day == 7
    assert (await adapter.check())[0].ok
    await adapter.aclose()


# --- the daily budget ------------------------------------------------------------------------


async def test_daily_budget_stops_at_the_quota_and_resumes_next_utc_day() -> None:
    clock = FakeClock(datetime(2025, 3, 4, 22, 30, tzinfo=UTC))
    with CrispEmulator(daily_quota=5, now=clock) as emu:
        sleeps = Sleeps(clock)
        adapter = adapter_for(emu, sleeps=sleeps, budget=DailyBudget(5, clock=clock))
        ops = [op(f"q{i}@x.io", {"plan": "pro"}, person_id=f"q{i}") for i in range(4)]
        adapter.concurrency = 1
        outcomes = await adapter.apply(ops)  # 8 calls: 5 today, 3 tomorrow
        assert [o.kind for o in outcomes] == [OutcomeKind.APPLIED] * 4
        statuses = [record.status for record in emu.requests]
        assert statuses == [201, 200, 201, 200, 201, 200, 201, 200]  # never a quota 429
        # one pause, until just after midnight UTC
        assert len(sleeps.delays) == 1
        assert clock.moment.date() == datetime(2025, 3, 5).date()
        assert clock.moment - datetime(2025, 3, 5, tzinfo=UTC) <= timedelta(seconds=2)
        assert emu.quota_used == 3
        await adapter.aclose()


async def test_no_secret_in_logs(emu: CrispEmulator, caplog: pytest.LogCaptureFixture) -> None:
    captured: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        captured.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    try:
        adapter = adapter_for(emu, key="k" * 40)
        emu.throttle(1, 429)
        with caplog.at_level(logging.DEBUG), pytest.raises(FatalDestinationError):
            await adapter.apply([op("a@x.io", {"plan": "pro"})])
        await adapter.aclose()
    finally:
        structlog.reset_defaults()
    assert captured  # the retry was logged
    text = json.dumps(captured, default=str) + caplog.text
    assert "k" * 40 not in text and emu.identifier not in text
