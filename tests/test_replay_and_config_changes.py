"""Replays, full resyncs, mapping changes and redefinitions (design §4, §8)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.fakes.test_destination import TestDestination
from tests.harness import ServiceProcess, SyncEnv, activation, test_destination_config, wait_until

pytestmark = pytest.mark.kafka


def consumed(svc: ServiceProcess) -> int:
    total = 0
    for match in re.finditer(
        r"^stream_sync_events_consumed_total\{[^}]*\} ([0-9.e+]+)$", svc.metrics(), re.M
    ):
        total += int(float(match.group(1)))
    return total


def history(env: SyncEnv, n: int = 30) -> int:
    """Persons with churn: enter, attribute changes, some exits. Returns the event count."""
    events = 0
    for i in range(n):
        pid = f"p{i}"
        env.attrs(pid, {"email": f"{pid}@x.io", "first_name": f"F{i}", "plan": "free"})
        env.enter(pid, "vip")
        env.attrs(pid, {"plan": "pro", "city": f"C{i}"})
        events += 3
        if i % 3 == 0:
            env.exit(pid, "vip")
            events += 1
    env.flush()
    return events


def members(n: int = 30) -> int:
    return sum(1 for i in range(n) if i % 3 != 0)


def acts(**kw: object) -> list[dict[str, object]]:
    return [
        activation("up", "d-up", "upsert", **kw),  # type: ignore[arg-type]
        activation("mir", "d-mir", "mirror", **kw),  # type: ignore[arg-type]
    ]


def dests(dest: TestDestination) -> dict[str, object]:
    return {n: test_destination_config(dest.url(n)) for n in ("d-up", "d-mir")}


def run_until_caught_up(env: SyncEnv, config: tuple[Path, int], events: int) -> ServiceProcess:
    svc = env.start(config)
    wait_until(lambda: consumed(svc) >= events, 60, what=f"{events} events consumed")
    time.sleep(1.5)  # a few batch windows: anything owed is sent by now
    return svc


def test_replay_of_synced_history_sends_nothing(env: SyncEnv, dest: TestDestination) -> None:
    config = env.write_config(dests(dest), acts())
    events = history(env)
    svc = run_until_caught_up(env, config, events)
    assert len(dest.records("d-mir")) == members()
    assert svc.terminate() == 0
    dest.reset_ops()

    result = env.cli("replay", "--from", "earliest", config=config[0])
    assert result.returncode == 0, result.stderr
    svc = run_until_caught_up(env, config, events)
    assert dest.ops("d-up") == [] and dest.ops("d-mir") == []
    assert svc.terminate() == 0


def test_full_resync_sends_one_full_operation_per_member(
    env: SyncEnv, dest: TestDestination
) -> None:
    config = env.write_config(dests(dest), acts())
    events = history(env)
    svc = run_until_caught_up(env, config, events)
    assert svc.terminate() == 0
    dest.reset_ops()

    result = env.cli(
        "replay", "--from", "earliest", "--full-resync", "--activation", "mir", config=config[0]
    )
    assert result.returncode == 0, result.stderr
    svc = run_until_caught_up(env, config, events)
    ops = dest.ops("d-mir")
    assert len(ops) == members()
    assert {op["person_id"] for op in ops} == {f"p{i}" for i in range(30) if i % 3 != 0}
    assert all(op["full"] and op["op"] == "upsert" for op in ops)
    assert all(set(op["fields"]) == {"first_name", "city", "plan"} for op in ops)
    assert dest.ops("d-up") == []  # only the chosen activation
    # once done, a restart sends nothing more
    assert svc.terminate() == 0
    dest.reset_ops()
    svc = run_until_caught_up(env, config, 0)
    assert dest.ops("d-mir") == []
    assert svc.terminate() == 0


def test_replay_refused_while_group_active_and_unknown_activation(
    env: SyncEnv, dest: TestDestination
) -> None:
    config = env.write_config(dests(dest), acts())
    svc = env.start(config)
    result = env.cli("replay", "--from", "earliest", config=config[0])
    assert result.returncode == 1
    assert "active member" in result.stderr
    assert svc.terminate() == 0
    result = env.cli(
        "replay", "--from", "earliest", "--full-resync", "--activation", "nope", config=config[0]
    )
    assert result.returncode == 2 and "unknown activation" in result.stderr
    result = env.cli("replay", "--from", "yesterday", config=config[0])
    assert result.returncode == 2


def test_added_custom_attribute_is_backfilled_alone(env: SyncEnv, dest: TestDestination) -> None:
    config = env.write_config(dests(dest), acts(custom=["plan"]))
    events = history(env)
    for i in range(30):
        env.attrs(f"p{i}", {"ltv": i * 1.5})
    env.flush()
    events += 30
    svc = run_until_caught_up(env, config, events)
    assert svc.terminate() == 0
    dest.reset_ops()

    config = env.write_config(dests(dest), acts(custom=["plan", "ltv"]))
    svc = run_until_caught_up(env, config, 0)
    for ns in ("d-up", "d-mir"):
        ops = dest.ops(ns)
        assert len(ops) == members(), ns
        assert all(op["fields"] == {"ltv": int(op["person_id"][1:]) * 1.5} for op in ops), ops[:3]
        assert all(op["clears"] == [] and not op["full"] for op in ops)
    assert svc.terminate() == 0


def test_redefined_activation_refused(env: SyncEnv, dest: TestDestination) -> None:
    config = env.write_config(dests(dest), acts())
    svc = env.start(config)
    assert svc.terminate() == 0
    config = env.write_config(dests(dest), acts(segment="other"))
    svc = env.start(config, ready=False)
    code = svc.wait(60)
    assert code == 2
    assert "redefined" in svc.logs() and "segment 'vip' → 'other'" in svc.logs()
