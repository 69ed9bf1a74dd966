"""Destination adapters, one module per type; :func:`build_adapter` picks one from config."""

from __future__ import annotations

from typing import Any

from stream_sync.destinations.base import Adapter
from stream_sync.http import DailyBudget, DestinationHttp, RateLimit


def http_for(name: str, dest: Any, **kwargs: Any) -> DestinationHttp:
    """The shared HTTP client of a configured destination (limits, retries, timeouts)."""
    limit = dest.rate_limit
    return DestinationHttp(
        name,
        dest.base_url,
        timeout_s=dest.timeout_s,
        rate_limit=RateLimit(limit.per_second, limit.burst) if limit is not None else None,
        max_backoff_s=dest.retry.max_backoff_s,
        **kwargs,
    )


def build_adapter(name: str, dest: Any) -> Adapter:
    kind = dest.type
    if kind == "log":
        from stream_sync.destinations.log import LogAdapter

        return LogAdapter(name)
    if kind == "test":
        from stream_sync.destinations.test import TestAdapter

        headers = {}
        if dest.token is not None:
            headers["Authorization"] = f"Bearer {dest.token.get_secret_value()}"
        return TestAdapter(name, http_for(name, dest, headers=headers))
    if kind == "crisp":
        from stream_sync.destinations.crisp import CrispAdapter

        budget = DailyBudget(dest.requests_per_day) if dest.requests_per_day else None
        return CrispAdapter(name, dest, http_for(name, dest, daily_budget=budget))
    if kind == "batch":
        from stream_sync.destinations.batch import BatchAdapter

        return BatchAdapter(name, dest, http_for(name, dest))
    raise NotImplementedError(f"destination type {kind!r} is not implemented yet")


__all__ = ["Adapter", "build_adapter", "http_for"]
