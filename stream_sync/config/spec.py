"""The table of per-destination-type facts that adapters and the engine read.

Modes, batch maximum, default rate limit, whether the limit counts records, naming rules.
Vendor facts come from `destinations/*.md` of the design.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import PositiveFloat, PositiveInt, model_validator

from ._base import MODES, ConfigModel, Mode


class RateLimit(ConfigModel):
    """A token bucket: `per_second` sustained, at most `burst` at once.

    `burst` defaults to `per_second` rounded up.
    """

    per_second: PositiveFloat
    burst: PositiveInt

    @model_validator(mode="before")
    @classmethod
    def _default_burst(cls, data: Any) -> Any:
        if isinstance(data, dict) and "burst" not in data:
            try:
                rate = float(data["per_second"])
            except (KeyError, TypeError, ValueError):
                return data
            if rate > 0 and math.isfinite(rate):
                return {**data, "burst": max(1, math.ceil(rate))}
        return data


class RetrySettings(ConfigModel):
    """Retry policy knobs: exponential backoff with full jitter, capped."""

    max_backoff_s: PositiveFloat = 60.0


# --- the per-type table ------------------------------------------------------------------

ANY_NAME = re.compile(r"^\S(?:[^\x00-\x1f\x7f]*\S)?$")
"""Names of destinations without a published rule: non-empty, printable, trimmed."""

BATCH_NATIVE_ATTRIBUTES: tuple[str, ...] = (
    "$email_address",
    "$phone_number",
    "$language",
    "$region",
    "$timezone",
    "$email_marketing",
    "$sms_marketing",
)
BATCH_FIELD_ALIASES: MappingProxyType[str, str] = MappingProxyType(
    {
        "email": "$email_address",
        "phone": "$phone_number",
        "language": "$language",
        "region": "$region",
        "timezone": "$timezone",
        "email_marketing": "$email_marketing",
        "sms_marketing": "$sms_marketing",
    }
)
"""Friendly names accepted in `fields` for Batch: `email` → `$email_address`, ..."""

CRISP_STANDARD_FIELD = re.compile(
    r"^(?:email|segments|notepad"
    r"|person\.(?:nickname|avatar|gender|phone|address|description|website|timezone|locales)"
    r"|person\.(?:employment|geolocation)\.[a-z_]+(?:\.[a-z_]+)*"
    r"|company\.[a-z_]+(?:\.[a-z_]+)*)$"
)

CRISP_REQUESTS_PER_DAY: MappingProxyType[str, int] = MappingProxyType(
    {"website": 10_000, "plugin": 5_000}
)
"""Crisp's documented daily quota by token tier (default of `requests_per_day`)."""


@dataclass(frozen=True)
class DestinationTypeSpec:
    """What stream-sync knows about one destination type, independent of any account."""

    name: str
    modes: frozenset[Mode]
    max_batch_size: int
    """Largest number of persons in one batch (the vendor's maximum; 1 = no batch endpoint)."""
    default_rate_limit: RateLimit | None
    """From the vendor's documented limit; None = unlimited."""
    weighted_rate_limit: bool
    """True when the vendor counts records, not requests: acquire one token per person."""
    custom_attribute_pattern: re.Pattern[str]
    custom_attribute_rule: str
    """`custom_attribute_pattern` in words, for error messages."""
    default_base_url: str | None
    network: bool = True
    field_pattern: re.Pattern[str] | None = None
    """When set, every `fields` target must match it (after alias normalisation)."""
    field_rule: str = ""
    field_aliases: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))


_ALL_MODES = frozenset(MODES)
_ANY_RULE = "a non-empty name without control characters or surrounding spaces"

DESTINATION_TYPES: MappingProxyType[str, DestinationTypeSpec] = MappingProxyType(
    {
        "crisp": DestinationTypeSpec(
            name="crisp",
            modes=_ALL_MODES,
            max_batch_size=100,
            # No per-second figure is published (the quota is per day): the design's default.
            default_rate_limit=RateLimit(per_second=10, burst=10),
            weighted_rate_limit=False,
            custom_attribute_pattern=re.compile(r"^[a-z0-9_-]+$"),
            custom_attribute_rule="lower-case letters, digits, '_' and '-' only",
            default_base_url="https://api.crisp.chat/v1",
            field_pattern=CRISP_STANDARD_FIELD,
            field_rule=(
                "a Crisp profile field: email, segments, notepad, person.nickname, person.avatar,"
                " person.gender, person.phone, person.address, person.description, person.website,"
                " person.timezone, person.locales, person.employment.*, person.geolocation.*,"
                " company.*"
            ),
        ),
        "attio": DestinationTypeSpec(
            name="attio",
            modes=_ALL_MODES,
            max_batch_size=1,
            default_rate_limit=RateLimit(per_second=25, burst=25),  # 25 writes/s per workspace
            weighted_rate_limit=False,
            custom_attribute_pattern=re.compile(r"^[a-z0-9_-]+$"),
            custom_attribute_rule="an Attio attribute slug: lower-case letters, digits, '_', '-'",
            default_base_url="https://api.attio.com",
        ),
        "emarsys": DestinationTypeSpec(
            name="emarsys",
            modes=_ALL_MODES,
            max_batch_size=1000,
            # ~1000 requests/minute per API user: 16/s with burst 16 stays under it in any minute.
            default_rate_limit=RateLimit(per_second=16, burst=16),
            weighted_rate_limit=False,
            custom_attribute_pattern=ANY_NAME,
            custom_attribute_rule=_ANY_RULE,
            default_base_url="https://api.emarsys.net",
        ),
        "splio": DestinationTypeSpec(
            name="splio",
            modes=_ALL_MODES,
            max_batch_size=1000,
            default_rate_limit=RateLimit(per_second=20, burst=20),  # data/contacts: 20 req/s
            weighted_rate_limit=False,
            custom_attribute_pattern=ANY_NAME,
            custom_attribute_rule=_ANY_RULE,
            default_base_url="https://api.splio.com",
        ),
        "batch": DestinationTypeSpec(
            name="batch",
            modes=frozenset({"upsert"}),
            max_batch_size=200,
            default_rate_limit=RateLimit(per_second=300, burst=1000),  # profiles, not requests
            weighted_rate_limit=True,
            custom_attribute_pattern=re.compile(r"^[a-z0-9_]{1,30}$"),
            custom_attribute_rule="lower-case letters, digits and '_' only, at most 30 characters",
            default_base_url="https://api.batch.com",
            field_pattern=re.compile(
                "^(?:" + "|".join(re.escape(n) for n in BATCH_NATIVE_ATTRIBUTES) + ")$"
            ),
            field_rule="a Batch native attribute: "
            + ", ".join(f"{n} ({alias})" for alias, n in BATCH_FIELD_ALIASES.items()),
            field_aliases=BATCH_FIELD_ALIASES,
        ),
        "log": DestinationTypeSpec(
            name="log",
            modes=_ALL_MODES,
            max_batch_size=1000,
            default_rate_limit=None,
            weighted_rate_limit=False,
            custom_attribute_pattern=ANY_NAME,
            custom_attribute_rule=_ANY_RULE,
            default_base_url=None,
            network=False,
        ),
        "test": DestinationTypeSpec(
            name="test",
            modes=_ALL_MODES,
            max_batch_size=1000,
            default_rate_limit=None,
            weighted_rate_limit=False,
            custom_attribute_pattern=ANY_NAME,
            custom_attribute_rule=_ANY_RULE,
            default_base_url=None,
        ),
    }
)
