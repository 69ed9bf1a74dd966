"""Crisp destination benchmark: API calls per change, per 1,000 persons, and the daily quota.

Drives :class:`stream_sync.destinations.crisp.CrispAdapter` in-process against the strict
Crisp emulator (``tests/emulators/crisp.py``, a real HTTP server on loopback), through the real
HTTP layer (limiter, retries, daily budget). No Kafka needed::

    .venv/bin/python bench/bench_crisp.py [--persons 1000] [--seconds 3]

Prints:

1. calls per person for a new person, an existing person unknown to state, a profile-field
   change, a custom-data change and a delete;
2. API calls per 1,000 changed persons for a mixed workload (creates, updates, deletes) sent
   in batches of 100 like the engine does;
3. the daily quota: with an injected clock, the adapter stops exactly at ``requests_per_day``
   and resumes at the next UTC day (the emulator counts its own quota and never answers 429);
4. sustained request rate with the per-second limiter set (Crisp publishes no per-second
   figure, so this only shows the limiter is honoured without a single 429).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_sync.config.destinations import CrispDestination  # noqa: E402
from stream_sync.destinations import http_for  # noqa: E402
from stream_sync.destinations.base import Operation, OutcomeKind  # noqa: E402
from stream_sync.destinations.crisp import CrispAdapter  # noqa: E402
from stream_sync.http import DailyBudget  # noqa: E402
from stream_sync.state import OpKind  # noqa: E402
from tests.emulators.crisp import CrispEmulator  # noqa: E402

CUSTOM = frozenset({"plan", "ltv"})
BATCH = 100


class FakeClock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


@dataclass
class Sleeper:
    clock: FakeClock | None = None
    slept: float = 0.0
    pauses: int = 0

    async def __call__(self, seconds: float) -> None:
        self.slept += seconds
        self.pauses += 1
        if self.clock is not None:
            self.clock.moment += timedelta(seconds=seconds)


def make_adapter(
    emu: CrispEmulator,
    *,
    budget: DailyBudget | None = None,
    sleeper: Sleeper | None = None,
    rate: float | None = None,
) -> CrispAdapter:
    dest = CrispDestination.model_validate(
        {
            "type": "crisp",
            "website_id": emu.website_id,
            "identifier": emu.identifier,
            "key": emu.key,
            "tier": emu.tier,
            "base_url": emu.base_url,
            "rate_limit": {"per_second": rate} if rate else None,
            "requests_per_day": None,
        }
    )
    kwargs: dict[str, Any] = {"daily_budget": budget}
    if sleeper is not None:
        kwargs["sleep"] = sleeper
    return CrispAdapter("crisp", dest, http_for("crisp", dest, **kwargs))


def op(
    email: str,
    fields: dict[str, Any],
    *,
    kind: OpKind = OpKind.UPSERT,
    ref: str | None = None,
    full: bool = True,
) -> Operation:
    return Operation(email, kind, email, ref, fields, (), full, custom=CUSTOM)


async def calls_for(
    emu: CrispEmulator,
    adapter: CrispAdapter,
    ops: list[Operation],
    expect: OutcomeKind = OutcomeKind.APPLIED,
) -> int:
    emu.reset_log()
    outcomes = await adapter.apply(ops)
    assert all(o.kind is expect for o in outcomes), outcomes
    return len(emu.requests)


async def per_person() -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    with CrispEmulator(daily_quota=None) as emu:
        adapter = make_adapter(emu)
        full = {"person.nickname": "Ann", "person.phone": "1", "plan": "pro", "ltv": 3}
        n = await calls_for(emu, adapter, [op("new@x.io", full)])
        rows.append(("new person (profile + custom data)", n, "POST profile, PATCH data"))
        n = await calls_for(emu, adapter, [op("new2@x.io", {"person.phone": "1"})])
        rows.append(("new person (profile fields only)", n, "POST profile"))
        emu.add_person("old@x.io")
        n = await calls_for(emu, adapter, [op("old@x.io", full)])
        rows.append(
            (
                "existing person unknown to state",
                n,
                "POST (people_exists), PATCH profile, PATCH data",
            )
        )
        ann = emu.find("new@x.io")
        assert ann is not None
        n = await calls_for(
            emu, adapter, [op("new@x.io", {"person.phone": "2"}, ref=ann.people_id, full=False)]
        )
        rows.append(("profile-field change", n, "PATCH profile/{people_id}"))
        n = await calls_for(
            emu, adapter, [op("new@x.io", {"plan": "max"}, ref=ann.people_id, full=False)]
        )
        rows.append(("custom-data change", n, "PATCH data/{people_id}"))
        people = [emu.add_person(f"g{i}@x.io") for i in range(BATCH)]
        n = await calls_for(
            emu,
            adapter,
            [op(p.email, {"plan": "gold"}, ref=p.people_id, full=False) for p in people],
        )
        rows.append(("custom-data change, same map, 100 in a batch", n / BATCH, "PATCH batch/data"))
        n = await calls_for(emu, adapter, [op("old@x.io", {}, kind=OpKind.DELETE, full=False)])
        rows.append(("delete (no people_id)", n, "DELETE profile/{email}"))
        n = await calls_for(
            emu, adapter, [op("new@x.io", {}, kind=OpKind.DELETE, ref=ann.people_id, full=False)]
        )
        rows.append(("delete (people_id, alone)", n, "DELETE profile/{people_id}"))
        n = await calls_for(
            emu,
            adapter,
            [op(p.email, {}, kind=OpKind.DELETE, ref=p.people_id, full=False) for p in people],
        )
        rows.append(("delete (people_id, 100 in a batch)", n / BATCH, "PATCH batch/remove"))
        n = await calls_for(
            emu,
            adapter,
            [op("nobody@x.io", {"person.phone": "1"}, kind=OpKind.UPDATE)],
            OutcomeKind.IGNORED,
        )
        rows.append(("update_only, unknown to Crisp (ignored)", n, "PATCH profile → 404"))
        await adapter.aclose()
    return rows


async def mixed(persons: int) -> dict[str, Any]:
    """creates 30 %, profile changes 20 %, data changes 20 % (4 plans), both 10 %, deletes 20 %."""
    rng = random.Random(4)
    with CrispEmulator(daily_quota=None) as emu:
        adapter = make_adapter(emu)
        kinds = ["create"] * 30 + ["profile"] * 20 + ["data"] * 20 + ["both"] * 10 + ["delete"] * 20
        ops: list[Operation] = []
        for i in range(persons):
            kind = kinds[i % len(kinds)]
            email = f"m{i}@x.io"
            if kind == "create":
                ops.append(op(email, {"person.nickname": f"M{i}", "plan": "free", "ltv": i}))
                continue
            person = emu.add_person(email, data={"plan": "free"})
            if kind == "profile":
                ops.append(op(email, {"person.phone": str(i)}, ref=person.people_id, full=False))
            elif kind == "data":
                plan = rng.choice(["pro", "max", "team", "free2"])
                ops.append(op(email, {"plan": plan}, ref=person.people_id, full=False))
            elif kind == "both":
                ops.append(
                    op(email, {"company.name": f"C{i}", "ltv": i}, ref=person.people_id, full=False)
                )
            else:
                ops.append(op(email, {}, kind=OpKind.DELETE, ref=person.people_id, full=False))
        rng.shuffle(ops)
        emu.reset_log()
        started = time.perf_counter()
        for start in range(0, len(ops), BATCH):
            outcomes = await adapter.apply(ops[start : start + BATCH])
            assert all(o.kind is OutcomeKind.APPLIED for o in outcomes)
        elapsed = time.perf_counter() - started
        by_route = Counter(r.route for r in emu.requests)
        await adapter.aclose()
        mix = Counter(kinds[i % len(kinds)] for i in range(persons))
        naive = 2 * mix["create"] + mix["profile"] + mix["data"] + 2 * mix["both"] + mix["delete"]
    return {
        "calls": len(emu.requests),
        "by_route": by_route,
        "mix": mix,
        "naive": naive,
        "elapsed": elapsed,
    }


async def quota(per_day: int, persons: int) -> dict[str, Any]:
    clock = FakeClock(datetime(2025, 6, 30, 23, 0, tzinfo=UTC))
    seen: list[str] = []  # the UTC day of every request, as the emulator's quota saw it

    def emulator_now() -> datetime:
        seen.append(clock.moment.date().isoformat())
        return clock.moment

    with CrispEmulator(daily_quota=per_day, now=emulator_now) as emu:
        sleeper = Sleeper(clock)
        adapter = make_adapter(emu, budget=DailyBudget(per_day, clock=clock), sleeper=sleeper)
        adapter.concurrency = 1
        ops = [op(f"q{i}@x.io", {"plan": "pro"}) for i in range(persons)]
        outcomes = await adapter.apply(ops)
        days = Counter(seen)
        statuses = Counter(record.status for record in emu.requests)
        result = {
            "calls": len(emu.requests),
            "days": days,
            "pauses": sleeper.pauses,
            "paused_s": sleeper.slept,
            "resumed_at": clock.moment.isoformat(),
            "quota_used_day2": emu.quota_used,
            "statuses": statuses,
            "applied": sum(o.kind is OutcomeKind.APPLIED for o in outcomes),
        }
        await adapter.aclose()
    return result


async def rate(per_second: float, seconds: float) -> dict[str, float]:
    with CrispEmulator(daily_quota=None) as emu:
        adapter = make_adapter(emu, rate=per_second)
        people = [emu.add_person(f"r{i}@x.io") for i in range(BATCH)]
        emu.reset_log()
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < seconds:
            ops = [
                op(p.email, {"person.phone": str(n)}, ref=p.people_id, full=False)
                for p in people[: int(per_second)]
            ]
            await adapter.apply(ops)
            n += 1
        elapsed = time.perf_counter() - started
        throttled = sum(1 for r in emu.requests if r.status in (420, 429))
        total = len(emu.requests)
        await adapter.aclose()
    # the first `burst` calls go at once (the bucket starts full): the sustained rate is what
    # follows them
    burst = max(1, int(per_second + 0.999))
    return {
        "requests": total,
        "elapsed": elapsed,
        "rate": (total - burst) / elapsed,
        "throttled": throttled,
    }


async def main(args: argparse.Namespace) -> None:
    print("Crisp adapter — API calls per person (against the strict emulator)")
    for label, calls, how in await per_person():
        print(f"  {label:<46} {calls:>5.2f}   {how}")

    result = await mixed(args.persons)
    per_1000 = result["calls"] * 1000 / args.persons
    naive_1000 = result["naive"] * 1000 / args.persons
    mix = result["mix"]
    print(f"\nMixed workload: {args.persons} changed persons in batches of {BATCH}")
    print("  mix: " + ", ".join(f"{k} {v}" for k, v in sorted(mix.items())))
    print(
        f"  API calls: {result['calls']}  → {per_1000:.0f} per 1,000 changed persons"
        f"  (one call per profile/data change and per delete would be {naive_1000:.0f})"
    )
    print("  by route: " + ", ".join(f"{k} {v}" for k, v in sorted(result["by_route"].items())))
    print(f"  wall time against loopback: {result['elapsed']:.2f}s")

    q = await quota(args.per_day, args.quota_persons)
    print(
        f"\nDaily quota: requests_per_day={args.per_day}, {args.quota_persons} new persons "
        f"(2 calls each), clock starting 2025-06-30T23:00Z"
    )
    print(f"  calls on 2025-06-30: {q['days']['2025-06-30']} (stopped exactly at the budget)")
    print(
        f"  pauses: {q['pauses']} of {q['paused_s']:.0f}s in total; resumed at "
        f"{q['resumed_at']} (next UTC day)"
    )
    print(
        f"  calls on 2025-07-01: {q['days']['2025-07-01']} (emulator quota counter: "
        f"{q['quota_used_day2']})"
    )
    print(
        f"  answers: {dict(sorted(q['statuses'].items()))} — no 429; "
        f"{q['applied']}/{args.quota_persons} persons applied"
    )

    r = await rate(args.rate, args.seconds)
    print(
        f"\nPer-second limiter at {args.rate:g}/s for {args.seconds:g}s: {r['requests']} "
        f"requests, {r['rate']:.1f}/s sustained after the initial burst, "
        f"{r['throttled']} throttled answers"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--per-day", type=int, default=500)
    parser.add_argument("--quota-persons", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    anyio.run(main, parser.parse_args())
