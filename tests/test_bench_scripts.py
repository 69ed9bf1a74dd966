"""The benchmark scripts still run against the code as it is (no figure is asserted: the
machines are shared and noisy). They call the engine's internals and the service's CLI, so a
rename would otherwise break them unnoticed until someone measures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_lanes_measures_both_passes() -> None:
    out = run(
        "bench/bench_lanes.py",
        "--persons",
        "500",
        "--max-size",
        "100",
        "--rounds",
        "1",
        timeout=120,
    )
    for label in ("create (full record)", "update (one field)"):
        match = re.search(re.escape(label) + r"\s+([\d.]+) µs/op", out)
        assert match is not None, out
        assert float(match.group(1)) > 0


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_engine_throughput_converges_with_a_slow_destination(kafka_bootstrap: str) -> None:
    out = run(
        "bench/bench_engine.py",
        "--bootstrap",
        kafka_bootstrap,
        "--quick",
        "--dest-latency-ms",
        "20",
        "throughput",
        timeout=600,
    )
    assert "NOT CONVERGED" not in out and "FAILED" not in out, out
    assert "service [test, 20 ms per request]" in out, out
    rate = re.search(r"from assignment to done\s+([\d,]+) events/s", out)
    assert rate is not None and int(rate.group(1).replace(",", "")) > 0, out
    ops = re.search(r"operations ([\d,]+) \(expected ([\d,]+)\)", out)
    assert ops is not None and ops.group(1) == ops.group(2), out
