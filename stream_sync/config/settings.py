"""The `kafka`, `topics` and `http` sections."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, field_validator

from ._base import ConfigModel, NonEmptyStr, Problem

ENGINE_OWNED_KAFKA_KEYS = frozenset(
    {
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "partition.assignment.strategy",
        "group.protocol",
    }
)
"""librdkafka properties the engine sets itself; `kafka.client` must not override them."""

ClientValue = str | bool | int | float | SecretStr


def is_secret_client_key(key: str) -> bool:
    """librdkafka properties holding credentials (sasl.password, ssl.key.password, ...)."""
    lowered = key.lower()
    return (
        "password" in lowered
        or "secret" in lowered
        or lowered in ("ssl.key.pem", "sasl.oauthbearer.config")
    )


class KafkaSettings(ConfigModel):
    bootstrap_servers: NonEmptyStr
    group_id: NonEmptyStr = "stream-sync"
    client: dict[str, ClientValue] = {}
    """Extra librdkafka properties for every client (consumer, producer, admin).

    Credential-like values are `SecretStr`; `client_config()` reveals them for librdkafka."""
    schema_registry_url: str | None = None
    commit_interval_ms: PositiveInt = 1000
    catch_up_commit_interval_ms: PositiveInt = 10_000
    """Commit interval while assigned partitions catch up (after a start, a rebalance or a
    replay nothing is reconciled until the end offsets seen at assignment are reached, so
    nothing waits for these commits): a backlog's person records are coalesced over this
    longer window instead of being written again every ``commit_interval_ms``. Never below
    ``commit_interval_ms``."""
    startup_timeout_s: PositiveFloat = 60.0

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _join_server_list(cls, value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        return value

    @field_validator("client", mode="before")
    @classmethod
    def _wrap_client_values(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        wrapped: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(item, dict | list | tuple) or item is None:
                raise ValueError(f"value of {str(key)!r} must be a string, number or boolean")
            if isinstance(key, str) and is_secret_client_key(key) and isinstance(item, str):
                item = SecretStr(item)
            wrapped[key] = item
        return wrapped

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    def client_config(self) -> dict[str, str | bool | int | float]:
        """`client` for librdkafka, secrets revealed. Keep the result out of logs."""
        return {
            key: value.get_secret_value() if isinstance(value, SecretStr) else value
            for key, value in self.client.items()
        }

    def problems(self) -> list[Problem]:
        return [
            (
                f"client.{key}",
                "is set by stream-sync itself and cannot be overridden"
                + (" (use kafka.group_id)" if key == "group.id" else ""),
            )
            for key in self.client
            if key in ENGINE_OWNED_KAFKA_KEYS
        ]


_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class Topics(ConfigModel):
    memberships: str = "segment-memberships"
    attributes: str = "person-attributes"
    state: str = "stream-sync-state"
    warnings: str = "stream-sync-warnings"

    @field_validator("memberships", "attributes", "state", "warnings")
    @classmethod
    def _check_topic_name(cls, value: str) -> str:
        if not _TOPIC_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(
                "is not a valid Kafka topic name (1-249 of letters, digits, '.', '_', '-')"
            )
        return value

    def problems(self) -> list[Problem]:
        seen: dict[str, str] = {}
        found: list[Problem] = []
        for key in ("memberships", "attributes", "state", "warnings"):
            name = getattr(self, key)
            if name in seen:
                found.append((key, f"same topic as topics.{seen[name]} ({name!r})"))
            else:
                seen[name] = key
        return found


class HttpSettings(ConfigModel):
    """/healthz /readyz /metrics listener; port 0 disables it."""

    host: NonEmptyStr = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
