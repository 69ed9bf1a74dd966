"""A loopback stand-in for Confluent Schema Registry, enough for ``GET /schemas/ids/{id}``.

Usage::

    with SchemaRegistryStub() as registry:
        registry.register(1, MEMBERSHIP_SCHEMA)
        decoder = Decoder(registry.url)

Answers like the real registry: ``200 {"schema": "<schema json string>"}`` (plus
``"schemaType"`` for a non-Avro schema), ``404 {"error_code": 40403, "message": "Schema not
found"}`` for an unknown id. ``fail_with = 500`` makes every answer that error instead.
``requests`` counts the GETs per path, to check client-side caching.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryStub:
    def __init__(self) -> None:
        self.schemas: dict[int, tuple[str, str]] = {}
        self.requests: Counter[str] = Counter()
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def register(self, schema_id: int, schema: str, schema_type: str = "AVRO") -> None:
        with self._lock:
            self.schemas[schema_id] = (schema, schema_type)

    def start(self) -> SchemaRegistryStub:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="schema-registry-stub",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> SchemaRegistryStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests[path] += 1
            if self.fail_with is not None:
                return self.fail_with, {"error_code": 50001, "message": "Internal Server Error"}
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                found = self.schemas.get(int(parts[2]))
                if found is None:
                    return 404, {"error_code": 40403, "message": "Schema not found"}
                schema, schema_type = found
                body: dict[str, Any] = {"schema": schema}
                if schema_type != "AVRO":
                    body["schemaType"] = schema_type
                return 200, body
            return 404, {"error_code": 404, "message": "HTTP 404 Not Found"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status, body = stub._answer(urlsplit(self.path).path)
                payload = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", _CONTENT_TYPE)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
