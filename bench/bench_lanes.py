"""CPU per operation of an activation's lane: reconcile → intents → send → outcomes → sync records.

The reconcile + send tail of the throughput benchmark (``bench_engine.py throughput``) is this
work, 150,000 times, on the event-loop thread. This script measures it alone, in-process and
without Kafka or HTTP, so a change to it can be compared in seconds instead of in noisy
end-to-end runs:

- the engine's real ``ActivationWorker._prepare`` and ``_send`` on batches of ``--max-size``
  persons, with the benchmark's activation ``act-a`` (mirror, 4 mapped fields, the plain
  adapter formatting);
- the adapter acknowledges every operation at once (no request is built);
- the ``StateWriter`` is the real one on a stand-in producer that keeps each record and serves
  its delivery report on the next ``poll`` (the real callback, in the measuring thread);
- the service's garbage-collector thresholds, and the state frozen after it is built (as
  the service freezes it once its partitions are caught up);
- two passes over ``--persons`` members: **create** (never synced: a full record each), then
  **update** (one mapped attribute changed: the changed field each).

Printed: CPU µs per operation for each pass, the minimum over ``--rounds`` rounds (the machine's
noise only ever adds time), and each round's figures. Run:
``.venv/bin/python bench/bench_lanes.py`` (about 15 s). To compare two versions of the code,
run the script of each checkout, interleaved, a few times.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_sync.destinations.base import Adapter, Operation, Outcome  # noqa: E402
from stream_sync.engine import ActivationWorker, Store  # noqa: E402
from stream_sync.reconcile import ActivationPlan  # noqa: E402
from stream_sync.service import GC_THRESHOLDS  # noqa: E402
from stream_sync.statewriter import StateWriter, WarningSink  # noqa: E402

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

PARTITIONS = 6
#: act-a of bench/workload.py: mirror, first_name, city, custom plan and ltv
FIELDS = (
    ("first_name", "first_name", None, False),
    ("city", "city", None, False),
    ("plan", "plan", None, True),
    ("ltv", "ltv", None, True),
)


class _Acknowledging(Adapter):
    """Every operation applied, no request built: the engine's share of the work alone."""

    type_name = "bench"

    async def apply(self, ops: Sequence[Operation]) -> list[Outcome]:
        return [Outcome.applied() for _ in ops]

    def preview_request(self, op: Operation) -> dict[str, Any]:
        return {}


class _Delivered:
    __slots__ = ("_offset", "_partition")

    def __init__(self, partition: int, offset: int) -> None:
        self._partition = partition
        self._offset = offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return "state"


class _Producer:
    """``confluent_kafka.Producer``'s calls the writer makes; reports served on ``poll``."""

    def __init__(self) -> None:
        self.records = 0
        self._reports: list[tuple[Callable[[Any, Any], None], _Delivered]] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = 0,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.records += 1
        if on_delivery is not None:
            self._reports.append((on_delivery, _Delivered(partition, self.records)))

    def poll(self, timeout: float = 0) -> int:
        reports, self._reports = self._reports, []
        for report, msg in reports:
            report(None, msg)
        return len(reports)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


def _attrs(pid: str, rng: random.Random) -> dict[str, Any]:
    return {
        "email": f"{pid}@example.com",
        "first_name": rng.choice(("Ann", "Bob", "Chloé", "Dev")),
        "last_name": "Martin",
        "city": rng.choice(("Paris", "Lyon", "Nice")),
        "country": "FR",
        "plan": rng.choice(("free", "pro", "team")),
        "ltv": round(rng.uniform(0, 500), 2),
        "orders": rng.randrange(20),
        "score": rng.randrange(100),
        "opt_in": rng.random() < 0.5,
    }


def one_round(persons: int, max_size: int, seed: int) -> tuple[float, float, int]:
    """(create µs/op, update µs/op, state records written) for one fresh worker."""
    rng = random.Random(seed)
    adapter = _Acknowledging("bench")
    plan = ActivationPlan(
        id="act-a",
        segment="seg-a",
        mode="mirror",
        identifier_attr="email",
        fields=FIELDS,
        format_identifier=adapter.format_identifier,
        format_field=adapter.format_field,
        supports_reference=adapter.supports_reference,
    )
    store = Store()
    producer = _Producer()
    worker = ActivationWorker(
        plan,
        "bench",
        adapter,
        max_size=max_size,
        max_wait_ms=200,
        store=store,
        writer=StateWriter(producer, "state"),
        warnings=WarningSink(producer, "warnings"),
        dry_run=None,
        on_stopped=lambda _: None,
    )
    ids = []
    for n in range(persons):
        pid = f"{rng.getrandbits(64):016x}"
        person = store.get_or_create(pid, n % PARTITIONS)
        person.attrs = _attrs(pid, rng)
        person.segments = frozenset({"seg-a"})
        ids.append(pid)
    for partition in range(PARTITIONS):
        store.add_partition(partition)
        store.ready.add(partition)

    async def one_pass() -> float:
        started = time.process_time()
        for i in range(0, persons, max_size):
            # a batch as the lane handles it: reconcile and intents, then send and outcomes
            prepared = await worker._prepare(ids[i : i + max_size])
            if prepared is not None:
                await worker._send(prepared)
            producer.poll()
        return (time.process_time() - started) / persons * 1e6

    gc.collect()
    gc.freeze()  # as the service does once partitions are caught up
    create = anyio.run(one_pass)
    for pid in ids:
        attrs = store.persons[pid].attrs
        attrs["city"] = "Marseille" if attrs["city"] != "Marseille" else "Lille"
    update = anyio.run(one_pass)
    expected = 2 * persons
    if worker.sent_operations != expected:
        raise SystemExit(f"sent {worker.sent_operations} operations, expected {expected}")
    return create, update, producer.records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--persons", type=int, default=30_000)
    parser.add_argument("--max-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)  # the service's (``stream-sync run``)
    rounds = [one_round(args.persons, args.max_size, seed) for seed in range(args.rounds)]
    creates = [r[0] for r in rounds]
    updates = [r[1] for r in rounds]
    records = rounds[0][2]
    print(
        f"lane CPU per operation ({args.persons:,} persons, batches of {args.max_size:,}, "
        f"{args.rounds} rounds; {records:,} state records a round)"
    )
    print(
        f"  create (full record)    {min(creates):6.2f} µs/op   rounds: "
        + " ".join(f"{c:.2f}" for c in creates)
    )
    print(
        f"  update (one field)      {min(updates):6.2f} µs/op   rounds: "
        + " ".join(f"{u:.2f}" for u in updates)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
