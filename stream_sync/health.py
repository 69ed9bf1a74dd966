"""``/healthz``, ``/readyz`` and ``/metrics`` on a small HTTP listener in the service's loop."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_sync.metrics import REGISTRY

log = structlog.get_logger("stream_sync.health")

Probe = Callable[[], tuple[bool, str]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(
    host: str,
    port: int,
    healthz: Probe,
    readyz: Probe,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the three endpoints until cancelled; reports the bound port to ``task_status``."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    log.info("http_listening", host=host, port=bound)
    task_status.started(bound)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    request = b""
                    while b"\r\n\r\n" not in request and len(request) < 8192:
                        chunk = await stream.receive(4096)
                        if not chunk:
                            return
                        request += chunk
                line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
                method, path = (line[0], line[1]) if len(line) >= 2 else ("", "")
                path = path.split("?", 1)[0]
                status, ctype, body = _route(method, path, healthz, readyz)
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                await stream.send(head + (b"" if method == "HEAD" else body))
            except (TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                return

    await listener.serve(handle)


def _route(method: str, path: str, healthz: Probe, readyz: Probe) -> tuple[int, str, bytes]:
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"method not allowed\n"
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
    if path in ("/healthz", "/readyz"):
        ok, text = (healthz if path == "/healthz" else readyz)()
        return (200 if ok else 503), "text/plain", (text + "\n").encode()
    return 404, "text/plain", b"not found\n"
