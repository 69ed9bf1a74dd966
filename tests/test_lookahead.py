"""Design §5 with a backlog: while one batch is at the destination, the next full batch is
reconciled and its intents made durable, so a slow destination is not also waiting for the
state topic between batches — and still one batch at the destination at a time, no
operation sent twice, no intent left behind by a clean stop.
"""

from __future__ import annotations

import itertools

import pytest

from stream_sync.state import decode_intent
from tests.fakes.test_destination import TestDestination
from tests.harness import SyncEnv, wait_until
from tests.kafka_helpers import consume_all
from tests.model import Model, describe_diff, mirror_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MAX_SIZE = 20
LATENCY_S = 0.3


def intents(env: SyncEnv) -> tuple[dict[str, int], dict[bytes, bytes | None]]:
    """From the state topic: person id -> when (ms) its first intent was written, and the
    last value of every intent key (None: withdrawn or resolved)."""
    first: dict[str, int] = {}
    last: dict[bytes, bytes | None] = {}
    for rec in consume_all(env.bootstrap, env.topics["state"]):
        if rec.key is None or not rec.key.startswith(b"intent/"):
            continue
        last[rec.key] = rec.value
        if rec.value is not None:
            for op in decode_intent(rec.value).ops:
                first.setdefault(op.person_id, rec.timestamp_ms)
    return first, last


def test_the_next_batch_is_prepared_while_one_is_at_the_destination(
    env: SyncEnv, dest: TestDestination
) -> None:
    model = Model()
    persons = [f"p{i}" for i in range(10 * MAX_SIZE)]
    for pid in persons:  # a backlog: every person a new member, ten full batches
        model.set(env, pid, {"email": f"{pid}@x.io", "first_name": pid.upper()})
        model.enter(env, pid)
    env.flush()
    dest.latency(LATENCY_S)
    config = mirror_config(env, dest.url("d"), MAX_SIZE)
    svc = env.start(config)
    wait_until(lambda: len(dest.ns("d").applies) >= 4, 60, what="four batches answered")
    assert svc.terminate() == 0  # a clean stop with a batch in flight and the next prepared

    ns = dest.ns("d")
    applies = sorted(ns.applies)
    assert ns.max_concurrent == 1, "two batches of one activation at the destination at once"
    assert all(len(batch) == MAX_SIZE for _, _, batch in applies), applies
    first_intent, last = intents(env)
    # every batch after the first had its intents written while the batch before it was at
    # the destination (without lookahead: only after that batch's answer)
    for (_, answered, _), (arrived, _, batch) in itertools.pairwise(applies):
        written = min(first_intent[pid] for pid in batch) / 1000
        assert written < answered - LATENCY_S / 3, (written, answered, arrived)
        assert arrived >= answered - 0.05  # and sent only once that batch was answered
    # the stop withdrew what was prepared and not sent, and resolved what was sent
    assert last and all(value is None for value in last.values()), [
        k for k, v in last.items() if v is not None
    ]
    sent = {pid for _, _, batch in applies for pid in batch}
    assert len(sent) == sum(len(batch) for _, _, batch in applies)  # nobody twice

    # the rest after a restart, with nothing redundant: no intent was left to resolve
    svc = env.start(config)
    expected = model.expected()
    try:
        wait_until(lambda: dest.records("d") == expected, 120, interval=0.5, what="convergence")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{describe_diff(dest.records('d'), expected)}") from None
    assert ns.noops == 0
    assert ns.max_concurrent == 1
    assert len(ns.ops) == len(persons)  # one create each, none sent twice
    assert svc.terminate() == 0
