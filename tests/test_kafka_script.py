"""``scripts/kafka start`` on a port that is already taken fails at once and says by what,
instead of a JVM bind error after the broker's start-up (no Java, no Maven needed here)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _start(env_extra: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_HOME_DIR": str(home / "kafka"),
        "KAFKA_CACHE_DIR": str(home / "cache"),
        **env_extra,
    }
    env.pop("KAFKA_SASL_PORT", None)
    env.pop("KAFKA_SSL_PORT", None)
    return subprocess.run(
        [str(ROOT / "scripts" / "kafka"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def _start_with_one_taken(
    taken_role: str, home: Path
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Start with the plaintext or the controller port held by this process; the other free."""
    with _listening() as taken, _listening() as probe:
        free = probe.getsockname()[1]
        probe.close()
        busy = taken.getsockname()[1]
        port, controller = (busy, free) if taken_role == "plaintext" else (free, busy)
        proc = _start({"KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller)}, home)
    return proc, busy


def test_a_taken_port_fails_the_start_and_names_who_holds_it(tmp_path: Path) -> None:
    proc, port = _start_with_one_taken("plaintext", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # stdout carries only a bootstrap address, and there is none
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in proc.stderr
    if shutil.which("ss"):
        assert f"pid {os.getpid()} (" in proc.stderr  # this test's own process holds it
    # nothing was started, fetched or written
    assert not (tmp_path / "kafka").exists()
    assert not (tmp_path / "cache").exists()


def test_a_taken_controller_port_fails_the_start_too(tmp_path: Path) -> None:
    proc, controller = _start_with_one_taken("controller", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"port {controller} on 127.0.0.1 is already in use" in proc.stderr
    assert not (tmp_path / "kafka").exists()
