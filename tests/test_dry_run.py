"""Design §6, dry run: one JSON line per operation instead of a request, no sync state written.

Real Kafka, `stream-sync run` subprocesses and the test destination (which records every
request it receives, so "it received nothing" is checked on the wire).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.test_destination import TOKEN, TestDestination
from tests.harness import ServiceProcess, SyncEnv, activation, test_destination_config, wait_until

pytestmark = pytest.mark.kafka

FIELDS = {"first_name": "first_name", "city": "city"}
CUSTOM = ["plan"]
LINE_KEYS = {
    "activation",
    "destination",
    "person_id",
    "op",
    "identifier",
    "fields",
    "clears",
    "request",
}


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stdout_lines(svc: ServiceProcess) -> list[dict[str, Any]]:
    """Dry-run lines among the process output (logs are JSON too, but carry an "event")."""
    out = []
    for line in svc.logs().splitlines():
        if not line.startswith("{"):
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if "event" not in item and "request" in item:
            out.append(item)
    return out


def essence(line: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """What must be identical whatever the destination: the operation itself."""
    return (
        line["person_id"],
        line["op"],
        line["identifier"],
        json.dumps(line["fields"], sort_keys=True),
        json.dumps(sorted(line["clears"])),
    )


def by_person(
    lines: list[dict[str, Any]],
) -> dict[str, list[tuple[str, dict[str, Any], list[str]]]]:
    out: dict[str, list[tuple[str, dict[str, Any], list[str]]]] = {}
    for line in lines:
        out.setdefault(line["person_id"], []).append((line["op"], line["fields"], line["clears"]))
    return out


def test_dry_run_writes_lines_sends_nothing_and_a_real_run_then_sends_everything(
    env: SyncEnv, dest: TestDestination
) -> None:
    tmp = env.tmp
    dry_mir, dry_upd, log_file = tmp / "dry-mir.jsonl", tmp / "dry-upd.jsonl", tmp / "log.jsonl"

    def config(dry_run: bool) -> tuple[Path, int]:
        return env.write_config(
            {
                "d-mir": test_destination_config(
                    dest.url("mir"), dry_run=dry_run, dry_run_path=str(dry_mir)
                ),
                "d-upd": test_destination_config(
                    dest.url("upd"), dry_run=dry_run, dry_run_path=str(dry_upd)
                ),
                "lg": {"type": "log", "dry_run_path": str(log_file)},
                "lg-out": {"type": "log"},  # no path: stdout
            },
            [
                activation("mir", "d-mir", "mirror", fields=FIELDS, custom=CUSTOM),
                activation("upd", "d-upd", "update_only", fields=FIELDS, custom=CUSTOM),
                activation("lg-mir", "lg", "mirror", fields=FIELDS, custom=CUSTOM),
                activation("out", "lg-out", "mirror", fields=FIELDS, custom=CUSTOM),
            ],
        )

    # --- the dry run ----------------------------------------------------------------------
    svc = env.start(config(dry_run=True))
    for i in range(10):
        env.attrs(f"p{i}", {"email": f"p{i}@x.io", "first_name": f"F{i}", "plan": "pro"})
        env.enter(f"p{i}", "vip")
    env.flush()
    wait_until(
        lambda: (
            len(read_lines(dry_mir)) == 10
            and len(read_lines(dry_upd)) == 10
            and len(read_lines(log_file)) == 10
            and len(stdout_lines(svc)) == 10
        ),
        60,
        what="first dry-run lines",
    )
    env.attrs("p0", {"city": "Paris"})  # a changed field
    env.attrs("p1", {}, unset=["first_name"])  # a cleared field
    env.exit("p2", "vip")  # mirror: a delete; update_only: nothing
    env.flush()
    wait_until(
        lambda: (
            len(read_lines(dry_mir)) == 13
            and len(read_lines(dry_upd)) == 12
            and len(read_lines(log_file)) == 13
            and len(stdout_lines(svc)) == 13
        ),
        60,
        what="dry-run lines of the changes",
    )
    time.sleep(1.0)  # a few batch windows: nothing more may come
    mir, upd, lg, out = (
        read_lines(dry_mir),
        read_lines(dry_upd),
        read_lines(log_file),
        stdout_lines(svc),
    )
    assert (len(mir), len(upd), len(lg), len(out)) == (13, 12, 13, 13)

    # the destination received nothing at all
    assert dest.requests == []
    assert dest.ops("mir") == [] and dest.ops("upd") == []

    # the shape of design §6, with the first request the adapter would send
    for line in mir + upd + lg + out:
        assert set(line) == LINE_KEYS, line
        assert set(line["request"]) == {"method", "url", "body"}, line
    for line, name, ns in [(x, "d-mir", "mir") for x in mir] + [(x, "d-upd", "upd") for x in upd]:
        assert line["destination"] == name
        request = line["request"]
        assert request["method"] == "POST"
        assert request["url"] == f"{dest.url(ns)}/apply"
        [wire] = request["body"]["operations"]
        for key in ("person_id", "identifier", "fields", "clears"):
            assert wire[key] == line[key], (key, line)
        # the line names the operation ("update": changed fields of a synced person); the
        # wire protocol of the test destination says upsert for that
        assert (wire["op"] == "delete") == (line["op"] == "delete"), line
    assert {x["activation"] for x in mir} == {"mir"}
    assert {x["activation"] for x in upd} == {"upd"}
    assert {(x["activation"], x["destination"]) for x in lg} == {("lg-mir", "lg")}
    assert {(x["activation"], x["destination"]) for x in out} == {("out", "lg-out")}

    # the operations themselves
    def full(i: int) -> dict[str, Any]:
        return {"first_name": f"F{i}", "plan": "pro"}

    expected_mir = {f"p{i}": [("upsert", full(i), [])] for i in range(10)}
    expected_mir["p0"].append(("update", {"city": "Paris"}, []))
    expected_mir["p1"].append(("update", {}, ["first_name"]))
    got_mir = by_person(mir)
    assert [op for op, _, _ in got_mir["p2"]] == ["upsert", "delete"]
    got_mir["p2"] = got_mir["p2"][:1]
    assert got_mir == expected_mir
    assert {x["identifier"] for x in mir if x["person_id"] == "p2"} == {"p2@x.io"}

    expected_upd = {f"p{i}": [("update", full(i), [])] for i in range(10)}
    expected_upd["p0"].append(("update", {"city": "Paris"}, []))
    expected_upd["p1"].append(("update", {}, ["first_name"]))
    assert by_person(upd) == expected_upd

    # a `type: log` destination writes the same lines (to its file, or stdout by default)
    assert sorted(map(essence, lg)) == sorted(map(essence, mir))
    assert sorted(map(essence, out)) == sorted(map(essence, mir))

    # no secret anywhere
    for path in (dry_mir, dry_upd, log_file):
        assert TOKEN not in path.read_text()
    assert TOKEN not in svc.logs() and "Bearer" not in svc.logs()
    assert svc.terminate() == 0

    # --- then a real run, same group and state: a dry run wrote no sync state -------------
    svc = env.start(config(dry_run=False))
    expected_records = {
        f"p{i}@x.io": full(i) for i in range(10) if i != 2
    }  # p2 left the segment before anything was really sent: nothing to delete
    expected_records["p0@x.io"]["city"] = "Paris"
    del expected_records["p1@x.io"]["first_name"]
    wait_until(lambda: dest.records("mir") == expected_records, 60, what="real run sent")
    wait_until(lambda: len(dest.ops("upd")) == 9, 60, what="update_only attempts")
    time.sleep(1.0)
    mir_ops = dest.ops("mir")
    assert sorted(op["person_id"] for op in mir_ops) == sorted(f"p{i}" for i in range(10) if i != 2)
    assert all(op["op"] == "upsert" and op["full"] for op in mir_ops), mir_ops
    # update_only: every member tried once in full (unknown to the destination → ignored)
    upd_ops = dest.ops("upd")
    assert len(upd_ops) == 9
    assert all(op["op"] == "update" and op["full"] for op in upd_ops), upd_ops
    assert dest.records("upd") == {}
    # the real run wrote no dry-run line; the log destinations, always dry, write theirs again
    assert len(read_lines(dry_mir)) == 13 and len(read_lines(dry_upd)) == 12
    wait_until(lambda: len(read_lines(log_file)) == 13 + 9, 30, what="log lines again")
    assert sorted(map(essence, read_lines(log_file)[13:])) == sorted(
        (f"p{i}", "upsert", f"p{i}@x.io", json.dumps(rec, sort_keys=True), "[]")
        for i in range(10)
        if i != 2
        for rec in [expected_records[f"p{i}@x.io"]]
    )
    assert TOKEN not in svc.logs() and "Bearer" not in svc.logs()
    assert svc.terminate() == 0
