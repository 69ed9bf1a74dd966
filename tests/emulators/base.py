"""A reusable loopback HTTP server for vendor API emulators.

Emulators are real HTTP servers (stdlib ``ThreadingHTTPServer`` on 127.0.0.1, port 0 unless
told otherwise) so destination adapters are exercised through their real HTTP client, with
real connection pooling, timeouts and error paths. A subclass implements :meth:`handle`
(called with the state lock held, so vendor state never needs its own locking) and
:meth:`fault_body` (the vendor's error body for an injected failure).

Shared by every emulator:

* a thread-safe request log (:attr:`requests`, :meth:`calls`, :meth:`reset_log`);
* fault injection, checked in this order before the vendor logic (so before auth, quotas and
  rate limits, like failures of the infrastructure in front of the API): :meth:`down`,
  :meth:`inject` (a FIFO of forced answers), :meth:`fail_rate` (seeded random failures);
  :meth:`latency` delays every answer (outside the lock, so concurrent requests overlap).

Outage modes of :meth:`down`:

* ``"refuse"`` (default): the listening socket is closed and open keep-alive connections are
  shut down, so clients get *connection refused* (``httpx.ConnectError``). :meth:`up` binds
  the same port again.
* ``"drop"``: connections are accepted and the request is read, then the connection is closed
  without an answer (``httpx.RemoteProtocolError``: server disconnected).

Requests dropped by an outage are not in the log (they got no answer); :attr:`dropped`
counts them.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs

__all__ = [
    "Incoming",
    "LoopbackEmulator",
    "Recorded",
    "Reply",
    "parse_json",
    "serve_until_interrupted",
]

OutageMode = Literal["refuse", "drop"]


@dataclass(frozen=True)
class Incoming:
    """A request as the vendor logic sees it."""

    method: str
    path: str  # raw path as sent (percent-encoding kept), without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    raw_body: bytes
    body: Any  # parsed JSON; None when the body is empty or not valid JSON
    json_error: str | None  # why the non-empty body is not valid JSON, else None


@dataclass
class Reply:
    """An answer: JSON body (None: empty body), extra headers, and a route name for the log."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    route: str = ""


@dataclass(frozen=True)
class Recorded:
    """One answered request in the log."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # parsed JSON request body (None if empty or invalid)
    raw_body: bytes
    status: int
    response: Any  # JSON body answered (for HEAD: the body a GET would carry, not sent)
    at: float  # time.monotonic() when the request arrived
    route: str  # logical route chosen by the emulator ("fault" for injected answers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> tuple[Any, str | None]:
    """Strict JSON: UTF-8 only, no NaN/Infinity. Returns (value, error)."""
    if not raw:
        return None, None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant), None
    except (UnicodeDecodeError, ValueError) as exc:
        return None, str(exc)


@dataclass
class _Forced:
    status: int
    remaining: int
    body: Any
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: LoopbackEmulator) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: avoid delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr lines."""

    def _serve(self) -> None:
        emulator = self.server.emulator
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(Reply(400, emulator.fault_body(400)))
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        reply = emulator._process(self.command, self.path, headers, raw)
        if reply is None:
            self.close_connection = True
            return
        self._write(reply)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(size)

    def _write(self, reply: Reply) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode("utf-8")
        self.send_response(reply.status)
        if reply.body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class LoopbackEmulator:
    """Base of the vendor emulators: lifecycle, request log and fault injection."""

    #: path of :attr:`base_url` below the server root (e.g. ``"/v1"``)
    base_path: str = ""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._log: list[Recorded] = []
        self._dropped = 0
        self._forced: deque[_Forced] = deque()
        self._fail_fraction = 0.0
        self._fail_statuses: tuple[int, ...] = (429, 500)
        self._rng = random.Random(0)
        self._latency = 0.0
        self._outage: OutageMode | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Bind and serve in a daemon thread. Returns self."""
        with self._lock:
            if self._running:
                raise RuntimeError(f"{type(self).__name__} is already running")
            self._running = True
            self._outage = None
            self._bind()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (idempotent)."""
        with self._lock:
            self._running = False
            self._outage = None
        self._unbind()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> None:
        server = _Server((self._host, self._port), self)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _unbind(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        if not self._running:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an adapter's ``base_url`` setting should hold."""
        return self.root_url + self.base_path

    # ---------------------------------------------------------------- request log
    @property
    def requests(self) -> list[Recorded]:
        """A copy of the log, oldest first."""
        with self._lock:
            return list(self._log)

    def calls(
        self, method: str | None = None, path_prefix: str | None = None, route: str | None = None
    ) -> list[Recorded]:
        """Logged requests filtered by method, path prefix and/or route name.

        ``path_prefix`` matches the raw path either from the server root (``/v1/website/...``)
        or relative to :attr:`base_url` (``/website/...``).
        """
        wanted = method.upper() if method else None

        def keep(rec: Recorded) -> bool:
            if wanted is not None and rec.method != wanted:
                return False
            if route is not None and rec.route != route:
                return False
            if path_prefix is not None:
                relative = self.base_path + path_prefix
                return rec.path.startswith(path_prefix) or rec.path.startswith(relative)
            return True

        return [rec for rec in self.requests if keep(rec)]

    def reset_log(self) -> None:
        """Forget logged requests and the dropped counter (state and faults are kept)."""
        with self._lock:
            self._log.clear()
            self._dropped = 0

    @property
    def dropped(self) -> int:
        """Requests that got no answer because of :meth:`down` (``"drop"`` mode or pooled)."""
        with self._lock:
            return self._dropped

    # ------------------------------------------------------------ fault injection
    def inject(
        self,
        status: int,
        count: int = 1,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (queued after earlier injections).

        ``body`` defaults to the vendor's error body for that status (:meth:`fault_body`).
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        forced = _Forced(status, count, body, dict(headers or {}))
        with self._lock:
            self._forced.append(forced)

    def fail_rate(
        self, fraction: float, statuses: Sequence[int] = (429, 500), seed: int | None = 0
    ) -> None:
        """Fail this fraction of requests at random with one of ``statuses``; 0 disables."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        if fraction and not statuses:
            raise ValueError("statuses must not be empty")
        with self._lock:
            self._fail_fraction = fraction
            self._fail_statuses = tuple(statuses)
            self._rng = random.Random(seed)

    def latency(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (0 disables)."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        with self._lock:
            self._latency = seconds

    def down(self, mode: OutageMode = "refuse") -> None:
        """Simulate an outage until :meth:`up` (see the module docstring for the modes)."""
        if mode not in ("refuse", "drop"):
            raise ValueError("mode must be 'refuse' or 'drop'")
        with self._lock:
            if not self._running:
                raise RuntimeError(f"{type(self).__name__} is not running")
            previous, self._outage = self._outage, mode
            if previous == "refuse" and mode == "drop":
                self._bind()
            server = self._server
        if mode == "refuse" and previous != "refuse":
            self._unbind()
        elif server is not None:
            server.close_connections()

    def up(self) -> None:
        """End an outage; in ``"refuse"`` mode the same port is bound again."""
        with self._lock:
            if not self._running:
                raise RuntimeError(f"{type(self).__name__} is not running")
            previous, self._outage = self._outage, None
            if previous == "refuse":
                self._bind()

    def clear_faults(self) -> None:
        """Drop queued injections, random failures and latency; end any outage."""
        with self._lock:
            self._forced.clear()
            self._fail_fraction = 0.0
            self._latency = 0.0
        if self._outage is not None:
            self.up()

    # ------------------------------------------------------------- vendor hooks
    def handle(self, request: Incoming) -> Reply:
        """Vendor logic. Called with the state lock held."""
        raise NotImplementedError

    def fault_body(self, status: int) -> Any:
        """The vendor's error body for a failure answered with ``status``."""
        raise NotImplementedError

    def fault_headers(self, status: int) -> dict[str, str]:
        """Extra headers for an injected failure with no explicit headers."""
        return {}

    # ------------------------------------------------------------------ plumbing
    def _next_fault(self) -> Reply | None:
        if self._forced:
            forced = self._forced[0]
            forced.remaining -= 1
            if forced.remaining <= 0:
                self._forced.popleft()
            body = self.fault_body(forced.status) if forced.body is None else forced.body
            headers = forced.headers or self.fault_headers(forced.status)
            return Reply(forced.status, body, headers, route="fault")
        if self._fail_fraction and self._rng.random() < self._fail_fraction:
            status = self._rng.choice(self._fail_statuses)
            return Reply(status, self.fault_body(status), self.fault_headers(status), "fault")
        return None

    def _process(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> Reply | None:
        arrived = time.monotonic()
        with self._lock:
            delay = self._latency
        if delay:
            time.sleep(delay)
        path, _, query_string = target.partition("?")
        query = parse_qs(query_string, keep_blank_values=True)
        with self._lock:
            if self._outage is not None or not self._running:
                self._dropped += 1
                return None
            body, json_error = parse_json(raw)
            request = Incoming(method, path, query, headers, raw, body, json_error)
            reply = self._next_fault()
            if reply is None:
                try:
                    reply = self.handle(request)
                except Exception as exc:  # a bug in the emulator: answer 500, keep serving
                    print(f"{type(self).__name__}: {exc!r}", file=sys.stderr)
                    reply = Reply(500, self.fault_body(500), route="emulator-bug")
            self._log.append(
                Recorded(
                    method=method,
                    path=path,
                    query=query,
                    headers=headers,
                    body=body,
                    raw_body=raw,
                    status=reply.status,
                    response=reply.body,
                    at=arrived,
                    route=reply.route,
                )
            )
            return reply


def serve_until_interrupted(
    emulator: LoopbackEmulator, describe: Callable[[], Iterable[str]]
) -> None:
    """Run an emulator in the foreground for manual demos (Ctrl-C stops it).

    ``describe`` is called once the server is bound; its lines are printed to stdout.
    """
    with emulator:
        for line in describe():
            print(line, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
