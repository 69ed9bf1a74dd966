"""Structured JSON logs on stderr (structlog), librdkafka's own lines included."""

from __future__ import annotations

import logging
import re
import sys
import time

import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Drops a record identical to one let through less than ``window_s`` ago.

    librdkafka repeats a failing connection's error many times a second; one line per cause
    and window is enough, and keeps the logs readable.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        # the broker/thread prefix varies; the cause does not
        cause = _DIGITS.sub("#", text.split(": ", 1)[-1])[:200]
        key = f"{record.name}:{record.levelno}:{cause}"
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self.window_s:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = now
        return True


def configure(debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
        )
    )
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
