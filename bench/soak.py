"""Soak: a long run at a steady input rate with injected faults (issue 6, reliability figures).

    .venv/bin/python bench/soak.py                 # 10 minutes at 2,000 events/s
    .venv/bin/python bench/soak.py --minutes 2     # shorter

One `stream-sync run` process, a mirror activation on the fault-injecting test destination
(5 % of requests answered 429 or 500 throughout, a 30-second outage at 30 % of the run), and one
restart of the local broker (`scripts/kafka stop && start`) at 60 % of the run — so only run it
against the project's own broker, with nothing else using it. Every 10 s it samples the
service's RSS, consumer lag, events consumed and operations acknowledged; at the end it waits
for convergence and compares the destination with the state computed here from the events.
Prints: events in, operations out, warnings, max lag, RSS samples and the RSS slope over the
last 80 % of the run (target < 1 MB/min), and whether the final state equals the expected one.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.test_destination import TestDestination  # noqa: E402
from tests.harness import SyncEnv  # noqa: E402
from tests.model import CUSTOM, FIELDS, mirror_config  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape(port: int) -> dict[str, float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for name, _, value in re.findall(r"^(stream_sync_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", text, re.M):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    return (cov / var) * 60 if var else 0.0


class Model:
    def __init__(self) -> None:
        self.attrs: dict[str, dict[str, Any]] = {}
        self.member: dict[str, bool] = {}

    def expected(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for pid, member in self.member.items():
            attrs = self.attrs.get(pid, {})
            if member and "email" in attrs:
                mapped = {d: attrs[s] for s, d in FIELDS.items() if s in attrs}
                mapped.update({c: attrs[c] for c in CUSTOM if c in attrs})
                out[attrs["email"]] = mapped
        return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=2000, help="input events per second")
    parser.add_argument("--persons", type=int, default=20000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument(
        "--broker-down-s",
        type=float,
        default=12.0,
        help="seconds the broker stays stopped: longer than the group session (10 s), so the "
        "service's partitions are lost and come back",
    )
    args = parser.parse_args()

    duration = args.minutes * 60
    workdir = ROOT / "var" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    env = SyncEnv(args.bootstrap, workdir, "soak", partitions=4)
    rng = random.Random(1)
    model = Model()
    dest = TestDestination().start()
    dest.fail_rate(0.05, statuses=(429, 500))
    config = mirror_config(env, dest.url("d"), 500, max_wait_ms=200, retry={"max_backoff_s": 5})
    svc = env.start(config)
    pid = svc.proc.pid
    print(f"soak: {args.minutes:g} min at {args.rate} events/s, logs in {workdir}", flush=True)
    started = time.monotonic()
    produced = 0
    samples: list[tuple[float, float]] = []
    blocks: list[tuple[float, float]] = []  # Python allocator blocks (thousands)
    max_lag = 0.0
    max_behind = 0
    next_sample = started
    outage_at, outage_end = 0.3 * duration, 0.3 * duration + 30
    restart_at = 0.6 * duration
    outage_done = restart_done = dest_down = False
    values = {
        "first_name": ["Ann", "Bob", "Cid", None],
        "city": ["Paris", "Lyon", None],
        "plan": ["free", "pro"],
    }
    while (elapsed := time.monotonic() - started) < duration:
        target = int(elapsed * args.rate)
        while produced < target:
            p = f"p{rng.randrange(args.persons)}"
            if p not in model.attrs:
                model.attrs[p] = {"email": f"{p}@x.io"}
                env.attrs(p, {"email": f"{p}@x.io"})
                produced += 1
            if rng.random() < 0.3:
                now_member = not model.member.get(p, False)
                model.member[p] = now_member
                (env.enter if now_member else env.exit)(p, "vip")
            else:
                name = rng.choice(sorted(values))
                value = rng.choice(values[name])
                if value is None:
                    model.attrs[p].pop(name, None)
                else:
                    model.attrs[p][name] = value
                env.attrs(p, {name: value})
            produced += 1
            if produced % 1000 == 0:
                env.producer.poll(0)
        if not outage_done and elapsed >= outage_at:
            dest.down()
            dest_down = True
            print(f"[{elapsed:6.0f}s] destination down for 30 s", flush=True)
            outage_done = True
        if dest_down and elapsed >= outage_end:
            dest.up()
            dest_down = False
            print(f"[{elapsed:6.0f}s] destination up", flush=True)
        if not restart_done and not args.no_broker_restart and elapsed >= restart_at:
            print(f"[{elapsed:6.0f}s] restarting the broker", flush=True)
            subprocess.run([str(ROOT / "scripts" / "kafka"), "stop"], check=True)
            time.sleep(args.broker_down_s)
            subprocess.run(
                [str(ROOT / "scripts" / "kafka"), "start"], check=True, capture_output=True
            )
            print(f"[{time.monotonic() - started:6.0f}s] broker back", flush=True)
            restart_done = True
        if time.monotonic() >= next_sample:
            m = scrape(config[1])
            lag = m.get("stream_sync_consumer_lag", 0.0)
            max_lag = max(max_lag, lag)
            if "stream_sync_events_consumed_total" in m:  # the gauge above is the service's
                # view, stale while it is cut off from the broker: this one is the producer's
                behind = produced - int(m["stream_sync_events_consumed_total"])
                max_behind = max(max_behind, behind)
            rss = rss_mb(pid)
            samples.append((time.monotonic() - started, rss))
            kblocks = m.get("stream_sync_python_allocated_blocks", 0.0) / 1000
            blocks.append((time.monotonic() - started, kblocks))
            print(
                f"[{elapsed:6.0f}s] produced {produced} "
                f"consumed {int(m.get('stream_sync_events_consumed_total', 0))} "
                f"ops {int(m.get('stream_sync_operations_total', 0))} "
                f"lag {int(lag)} rss {rss:.1f} MB python blocks {kblocks:.0f}k",
                flush=True,
            )
            next_sample += 10
        time.sleep(0.01)
    env.flush()
    expected = model.expected()
    deadline = time.monotonic() + 300
    while dest.records("d") != expected and time.monotonic() < deadline:
        time.sleep(1)
    converged = dest.records("d") == expected
    m = scrape(config[1])
    tail = [s for s in samples if s[0] >= 0.2 * duration]
    print("\n== soak results")
    print(f"events in:            {produced}")
    print(f"operations out:       {int(m.get('stream_sync_operations_total', 0))}")
    print(f"warnings:             {int(m.get('stream_sync_warnings_total', 0))}")
    print(
        "retries / throttled:  "
        f"{int(m.get('stream_sync_retries_total', 0))} / "
        f"{int(m.get('stream_sync_throttled_total', 0))}"
    )
    print(f"max consumer lag:     {int(max_lag)} (the service's gauge, sampled)")
    print(f"max backlog:          {max_behind} events produced but not consumed (sampled)")
    print("rss samples (MB):     " + " ".join(f"{r:.0f}" for _, r in samples))
    print(f"rss slope (last 80%): {slope_mb_per_min(tail):+.2f} MB/min (target < 1)")
    tail_blocks = [s for s in blocks if s[0] >= 0.2 * duration]
    print(
        f"python blocks slope:   {slope_mb_per_min(tail_blocks):+.1f} k blocks/min "
        f"({blocks[0][1] if blocks else 0:.0f}k → {blocks[-1][1] if blocks else 0:.0f}k)"
    )
    print(f"final state equals expected ({len(expected)} records): {converged}")
    code = svc.terminate()
    print(f"service exit code:    {code}")
    dest.stop()
    env.close()
    return 0 if converged and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
