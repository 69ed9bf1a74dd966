"""The deletion guard of mirror activations (issue 6): hold, approval, restarts, off, normal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.test_destination import TestDestination
from tests.harness import SyncEnv, activation, test_destination_config, wait_until

pytestmark = pytest.mark.kafka

MEMBERS = 20


def config(env: SyncEnv, dest: TestDestination, guard: Any) -> tuple[Path, int]:
    return env.write_config(
        {"d": test_destination_config(dest.url("d"))},
        [activation("mir", "d", "mirror", deletion_guard=guard)],
    )


def populate(env: SyncEnv, dest: TestDestination) -> None:
    for i in range(MEMBERS):
        env.attrs(f"p{i}", {"email": f"p{i}@x.io", "plan": "pro"})
        env.enter(f"p{i}", "vip")
    env.flush()
    wait_until(lambda: len(dest.records("d")) == MEMBERS, 30, what="members synced")


def exit_people(env: SyncEnv, ids: range) -> None:
    for i in ids:
        env.exit(f"p{i}", "vip")
    env.flush()


def hold_gauge(metrics: str) -> str:
    for line in metrics.splitlines():
        if line.startswith('stream_sync_deletion_hold{activation="mir"}'):
            return line.rsplit(" ", 1)[1]
    return ""


def test_mass_exit_is_held_until_approved_and_hold_survives_restart(
    env: SyncEnv, dest: TestDestination
) -> None:
    cfg = config(env, dest, {"max_fraction": 0.2, "min_members": 10})
    svc = env.start(cfg)
    populate(env, dest)
    exit_people(env, range(10))  # 50 % of the synced members
    wait_until(lambda: hold_gauge(svc.metrics()) == "1.0", 30, what="hold")
    # creates and updates go on during the hold
    env.attrs("new", {"email": "new@x.io"})
    env.enter("new", "vip")
    env.attrs("p15", {"plan": "team"})
    env.flush()
    wait_until(lambda: "new@x.io" in dest.records("d"), 30, what="create during hold")
    wait_until(lambda: dest.records("d")["p15@x.io"]["plan"] == "team", 30, what="update")
    assert dest.op_counts("d")["delete"] == 0
    assert "deletion_guard_hold" in svc.logs()

    # the hold survives a restart
    assert svc.terminate() == 0
    svc = env.start(cfg)
    time.sleep(2)
    assert hold_gauge(svc.metrics()) == "1.0"
    assert dest.op_counts("d")["delete"] == 0

    result = env.cli("approve-deletes", "--activation", "mir", config=cfg[0])
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(dest.records("d")) == MEMBERS + 1 - 10, 30, what="approved deletes")
    assert hold_gauge(svc.metrics()) == "0.0"
    assert svc.terminate() == 0


def test_segment_emptied_slowly_is_caught(env: SyncEnv, dest: TestDestination) -> None:
    svc = env.start(config(env, dest, {"max_fraction": 0.2, "min_members": 10}))
    populate(env, dest)
    exit_people(env, range(3))  # 15 %: allowed
    wait_until(lambda: len(dest.records("d")) == MEMBERS - 3, 30, what="first deletes")
    exit_people(env, range(3, 6))  # 30 % within the hour: held
    wait_until(lambda: hold_gauge(svc.metrics()) == "1.0", 30, what="hold")
    time.sleep(1)
    assert len(dest.records("d")) == MEMBERS - 3
    assert svc.terminate() == 0


def test_raising_the_limit_releases_the_hold(env: SyncEnv, dest: TestDestination) -> None:
    svc = env.start(config(env, dest, {"max_fraction": 0.2, "min_members": 10}))
    populate(env, dest)
    exit_people(env, range(10))
    wait_until(lambda: hold_gauge(svc.metrics()) == "1.0", 30, what="hold")
    assert svc.terminate() == 0
    svc = env.start(config(env, dest, {"max_fraction": 0.6, "min_members": 10}))
    wait_until(lambda: len(dest.records("d")) == MEMBERS - 10, 30, what="deletes after raise")
    assert svc.terminate() == 0


def test_guard_off_and_normal_case(env: SyncEnv, dest: TestDestination) -> None:
    svc = env.start(config(env, dest, False))
    populate(env, dest)
    exit_people(env, range(15))  # 75 %, no guard
    wait_until(lambda: len(dest.records("d")) == MEMBERS - 15, 30, what="all deletes")
    assert svc.terminate() == 0


def test_small_exit_is_not_held(env: SyncEnv, dest: TestDestination) -> None:
    svc = env.start(config(env, dest, {"max_fraction": 0.2, "min_members": 10}))
    populate(env, dest)
    exit_people(env, range(2))  # 10 %
    wait_until(lambda: len(dest.records("d")) == MEMBERS - 2, 30, what="deletes")
    assert hold_gauge(svc.metrics()) == "0.0"
    assert svc.terminate() == 0
