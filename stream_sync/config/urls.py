"""Base URL rules: http(s) only, and plain http only towards loopback (design §7)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from ._base import Problem


def is_loopback_host(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 and ::1 (design §7)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_http_url(value: str) -> str:
    """Validate an http(s) base URL and return it without trailing slashes.

    Messages never repeat the value: a URL may carry credentials.
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must include a host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (use the destination's keys)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return value.rstrip("/")


def insecure_url_problems(key: str, url: str, allowed: bool) -> list[Problem]:
    parts = urlsplit(url)
    if parts.scheme == "http" and not allowed and not is_loopback_host(parts.hostname or ""):
        return [
            (
                key,
                "http:// is allowed only for loopback hosts (localhost, 127.0.0.0/8,"
                " ::1); use https:// or set allow_insecure_http: true",
            )
        ]
    return []
