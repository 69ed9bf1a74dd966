"""One config model per destination type: what a `destinations.<name>` block may contain."""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    field_validator,
    model_validator,
)

from ._base import ConfigModel, NonEmptyStr, Problem, Secret
from .spec import (
    CRISP_REQUESTS_PER_DAY,
    DESTINATION_TYPES,
    DestinationTypeSpec,
    RateLimit,
    RetrySettings,
)
from .urls import check_http_url, insecure_url_problems


def _rate(type_name: str) -> RateLimit | None:
    return DESTINATION_TYPES[type_name].default_rate_limit


def _base_url(type_name: str) -> str:
    url = DESTINATION_TYPES[type_name].default_base_url
    assert url is not None
    return url


class HttpDestination(ConfigModel):
    """Keys shared by every destination reached over the network."""

    type: str
    base_url: str
    rate_limit: RateLimit | None = None
    """None (`null` in YAML) = unlimited."""
    timeout_s: PositiveFloat = 30.0
    retry: RetrySettings = RetrySettings()
    dry_run: bool = False
    dry_run_path: str | None = None
    """JSON lines file of a dry run; None = stdout."""
    allow_insecure_http: bool = False

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return check_http_url(value)

    @property
    def spec(self) -> DestinationTypeSpec:
        return DESTINATION_TYPES[self.type]

    def problems(self) -> list[Problem]:
        """Checks that need several keys; paths are relative to the destination."""
        return insecure_url_problems("base_url", self.base_url, self.allow_insecure_http)


class CrispDestination(HttpDestination):
    type: Literal["crisp"]
    website_id: NonEmptyStr
    identifier: Secret
    key: Secret
    tier: Literal["website", "plugin"] = "plugin"
    requests_per_day: PositiveInt | None = None
    """Daily request budget; defaults by tier (website 10000, plugin 5000); null = none."""
    base_url: str = _base_url("crisp")
    rate_limit: RateLimit | None = _rate("crisp")

    @model_validator(mode="before")
    @classmethod
    def _default_daily_budget(cls, data: Any) -> Any:
        if isinstance(data, dict) and "requests_per_day" not in data:
            quota = CRISP_REQUESTS_PER_DAY.get(str(data.get("tier", "plugin")))
            if quota is not None:
                return {**data, "requests_per_day": quota}
        return data


class BatchDestination(HttpDestination):
    type: Literal["batch"]
    rest_api_key: Secret
    project_key: Secret
    api_version: str = Field(default="2.11", pattern=r"^\d+(?:\.\d+)*$")
    base_url: str = _base_url("batch")
    """Without the version: requests go to `{base_url}/{api_version}/profiles/update`."""
    rate_limit: RateLimit | None = _rate("batch")

    @field_validator("base_url")
    @classmethod
    def _no_version_in_base_url(cls, value: str) -> str:
        last = urlsplit(value).path.rstrip("/").rpartition("/")[2]
        if re.fullmatch(r"v?\d+(?:\.\d+)*", last):
            raise ValueError("must not include the API version (set api_version instead)")
        return value


class AttioDestination(HttpDestination):
    type: Literal["attio"]
    token: Secret
    matching_attribute: NonEmptyStr = "email_addresses"
    """Unique People attribute used to match records on upsert."""
    base_url: str = _base_url("attio")
    """Routes are under `{base_url}/v2/`."""
    rate_limit: RateLimit | None = _rate("attio")


class EmarsysDestination(HttpDestination):
    type: Literal["emarsys"]
    auth: Literal["wsse", "oauth2"] = "wsse"
    """wsse → `{base_url}/api/v2/`; oauth2 (client credentials) → `{base_url}/api/v3/`."""
    username: NonEmptyStr
    """WSSE user name, or the OAuth2 client id."""
    secret: Secret
    """WSSE secret, or the OAuth2 client secret."""
    token_url: str = "https://auth.emarsys.net/oauth2/token"
    contact_list_id: PositiveInt | None = None
    """List that new contacts join; required by upsert and mirror activations."""
    base_url: str = _base_url("emarsys")
    rate_limit: RateLimit | None = _rate("emarsys")

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        return check_http_url(value)

    def problems(self) -> list[Problem]:
        return super().problems() + insecure_url_problems(
            "token_url", self.token_url, self.allow_insecure_http
        )


SPLIO_FILE_PLACEHOLDERS = frozenset({"universe", "scope", "subsequence", "date", "seq"})


class SplioSftp(ConfigModel):
    """Splio Datahub drop box (transport `sftp`)."""

    host: NonEmptyStr
    port: int = Field(default=22, ge=1, le=65535)
    username: NonEmptyStr
    password: Secret | None = None
    private_key_path: str | None = None
    private_key_passphrase: Secret | None = None
    known_hosts_path: str | None = None
    """None = the SSH library's default known hosts."""
    directory: str = "."
    separator: str = Field(default=";", min_length=1, max_length=1)
    subsequence: NonEmptyStr = "1"
    file_name_pattern: str = "{universe}_{scope}_{subsequence}_{date}_{seq}.csv"
    """Placeholders: universe, scope (contacts | deletecontacts), subsequence, date
    (YYYYMMDD) and seq (a suffix unique within the day)."""

    @field_validator("file_name_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError:
            raise ValueError("has unbalanced braces") from None
        unknown = sorted(names - SPLIO_FILE_PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join(unknown)}; use "
                + ", ".join(sorted(SPLIO_FILE_PLACEHOLDERS))
            )
        if "/" in value:
            raise ValueError("must be a file name, not a path (see directory)")
        return value


class SplioDestination(HttpDestination):
    type: Literal["splio"]
    transport: Literal["api", "sftp"] = "api"
    api_key: Secret | None = None
    """Required with transport api."""
    universe: NonEmptyStr | None = None
    """Required with transport sftp (it starts every file name)."""
    sftp: SplioSftp | None = None
    """Required with transport sftp."""
    base_url: str = _base_url("splio")
    rate_limit: RateLimit | None = _rate("splio")

    def problems(self) -> list[Problem]:
        found = super().problems()
        if self.transport == "api" and self.api_key is None:
            found.append(("api_key", "required when transport is api"))
        if self.transport == "sftp":
            if self.sftp is None:
                found.append(("sftp", "required when transport is sftp"))
            elif self.sftp.password is None and self.sftp.private_key_path is None:
                found.append(("sftp", "needs password or private_key_path"))
            if self.universe is None:
                found.append(("universe", "required when transport is sftp"))
        return found


class TestDestination(HttpDestination):
    """The project's own fault-injecting destination (a local HTTP server)."""

    __test__ = False  # not a pytest test class

    type: Literal["test"]
    base_url: str
    token: Secret | None = None
    rate_limit: RateLimit | None = None


class LogDestination(ConfigModel):
    """No network at all: every operation is written as a JSON line (a permanent dry run)."""

    type: Literal["log"]
    dry_run_path: str | None = None
    """None = stdout."""

    # The common destination keys, fixed for this type, so code can treat all alike.
    @property
    def spec(self) -> DestinationTypeSpec:
        return DESTINATION_TYPES["log"]

    @property
    def base_url(self) -> None:
        return None

    @property
    def rate_limit(self) -> None:
        return None

    @property
    def timeout_s(self) -> float:
        return 30.0

    @property
    def retry(self) -> RetrySettings:
        return RetrySettings()

    @property
    def dry_run(self) -> bool:
        return True

    @property
    def allow_insecure_http(self) -> bool:
        return False

    def problems(self) -> list[Problem]:
        return []


Destination = Annotated[
    CrispDestination
    | BatchDestination
    | AttioDestination
    | EmarsysDestination
    | SplioDestination
    | LogDestination
    | TestDestination,
    Field(discriminator="type"),
]

DESTINATION_ADAPTER: TypeAdapter[Destination] = TypeAdapter(Destination)

SECRET_KEYS = frozenset(
    {
        "identifier",
        "key",
        "token",
        "secret",
        "api_key",
        "rest_api_key",
        "project_key",
        "password",
        "private_key_passphrase",
    }
)
"""Keys whose values are credentials inside a destination block."""
