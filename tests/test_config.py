"""Unit tests of the configuration layer (design §7): no Kafka, no network."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import stream_sync.config as config_module
from stream_sync.config import (
    DESTINATION_TYPES,
    ENGINE_OWNED_KAFKA_KEYS,
    BatchDestination,
    Config,
    ConfigError,
    CrispDestination,
    DeletionGuard,
    LogDestination,
    RateLimit,
    TestDestination,
    config_from_data,
    is_loopback_host,
    load_config,
    overlapping_activations,
    parse_config_text,
)

DESIGN_EXAMPLE = """\
kafka:
  bootstrap_servers: localhost:9092
  group_id: stream-sync
  client: {}                    # extra librdkafka properties (security.protocol, sasl.*, ssl.*)
  schema_registry_url: null
  commit_interval_ms: 1000
  startup_timeout_s: 60         # Kafka unreachable for this long at start → exit 1
topics:
  memberships: segment-memberships
  attributes: person-attributes
  state: stream-sync-state
  warnings: stream-sync-warnings
destinations:
  crisp-eu:
    type: crisp                 # crisp | attio | emarsys | splio | batch | log
    website_id: 8c842203-...
    identifier: ${CRISP_IDENTIFIER}
    key: ${CRISP_KEY}
    tier: plugin
    base_url: https://api.crisp.chat/v1
    rate_limit: {per_second: 10, burst: 10}   # defaults per type from the vendor's limit
    timeout_s: 30
    retry: {max_backoff_s: 60}
    dry_run: false
    dry_run_path: null          # JSON lines; null = stdout
    allow_insecure_http: false  # http:// allowed only for loopback base_urls unless true
activations:
  - id: vip-to-crisp
    segment: vip
    destination: crisp-eu
    mode: mirror                # upsert | update_only | mirror
    identifier: email           # source attribute that identifies the person
    fields:                     # source attribute -> destination standard field
      first_name: person.nickname
      phone: person.phone
    custom_attributes: [plan, ltv]   # exported under the same name
    attribute_types: {ltv: number}   # optional: number | boolean | string | date | url | list,
    batch: {max_size: 100, max_wait_ms: 500}
    deletion_guard: {max_fraction: 0.2, min_members: 100}   # mirror only; `false` disables
http: {host: 0.0.0.0, port: 8080}   # /healthz /readyz /metrics; port 0 disables
shutdown_grace_s: 30
"""

ENV = {"CRISP_IDENTIFIER": "crisp-ident-7f3a", "CRISP_KEY": "crisp-key-9b21"}

# One minimal valid block per destination type.
MINIMAL_DESTINATIONS: dict[str, dict[str, Any]] = {
    "crisp": {"type": "crisp", "website_id": "w1", "identifier": "i", "key": "k"},
    "attio": {"type": "attio", "token": "t"},
    "emarsys": {"type": "emarsys", "username": "u", "secret": "s", "contact_list_id": 7},
    "splio": {"type": "splio", "api_key": "k"},
    "batch": {"type": "batch", "rest_api_key": "r", "project_key": "p"},
    "log": {"type": "log"},
    "test": {"type": "test", "base_url": "http://127.0.0.1:8000"},
}


def activation(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "vip",
        "segment": "vip",
        "destination": "dest",
        "mode": "upsert",
        "identifier": "email",
    }
    data.update(overrides)
    return data


def config_data(
    destination: dict[str, Any] | None = None, *activations: dict[str, Any]
) -> dict[str, Any]:
    """A valid config with one destination `dest` and the given activations."""
    return {
        "kafka": {"bootstrap_servers": "localhost:9092"},
        "destinations": {"dest": copy.deepcopy(destination or MINIMAL_DESTINATIONS["crisp"])},
        "activations": list(activations) or [activation()],
    }


def problems_of(data: Any, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        config_from_data(data, env or {})
    return info.value.problems


def lines_of(data: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_data(data, env or {})
    return info.value.render().splitlines()


# --- parsing and defaults ----------------------------------------------------------------


def test_design_example_parses_with_env(tmp_path: Path) -> None:
    path = tmp_path / "stream-sync.yaml"
    path.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    config = load_config(path, ENV)

    assert config.kafka.bootstrap_servers == "localhost:9092"
    assert config.topics.state == "stream-sync-state"
    crisp = config.destinations["crisp-eu"]
    assert isinstance(crisp, CrispDestination)
    assert crisp.identifier.get_secret_value() == "crisp-ident-7f3a"
    assert crisp.key.get_secret_value() == "crisp-key-9b21"
    assert crisp.rate_limit == RateLimit(per_second=10, burst=10)
    (vip,) = config.activations
    assert vip.fields == {"first_name": "person.nickname", "phone": "person.phone"}
    assert vip.custom_attributes == ("plan", "ltv")
    assert vip.attribute_types == {"ltv": "number"}
    assert vip.effective_deletion_guard == DeletionGuard(max_fraction=0.2, min_members=100)
    assert config.destination_of(vip) is crisp
    assert config.activation("vip-to-crisp") is vip
    assert config.spec_of(vip) is DESTINATION_TYPES["crisp"]


def test_design_example_equals_its_defaults() -> None:
    """Every optional key of the example shows its default: dropping them changes nothing."""
    full = parse_config_text(DESIGN_EXAMPLE, ENV)
    minimal = parse_config_text(
        """
kafka: {bootstrap_servers: localhost:9092}
destinations:
  crisp-eu: {type: crisp, website_id: 8c842203-..., identifier: "${CRISP_IDENTIFIER}",
             key: "${CRISP_KEY}"}
activations:
  - {id: vip-to-crisp, segment: vip, destination: crisp-eu, mode: mirror, identifier: email,
     fields: {first_name: person.nickname, phone: person.phone},
     custom_attributes: [plan, ltv], attribute_types: {ltv: number}}
""",
        ENV,
    )
    assert minimal == full


def test_minimal_config_gets_all_defaults() -> None:
    config = config_from_data(config_data(), {})
    kafka = config.kafka
    assert (kafka.group_id, kafka.client, kafka.schema_registry_url) == ("stream-sync", {}, None)
    assert (kafka.commit_interval_ms, kafka.startup_timeout_s) == (1000, 60)
    assert kafka.catch_up_commit_interval_ms == 10_000
    topics = config.topics
    assert (topics.memberships, topics.attributes, topics.state, topics.warnings) == (
        "segment-memberships",
        "person-attributes",
        "stream-sync-state",
        "stream-sync-warnings",
    )
    assert (config.http.host, config.http.port, config.shutdown_grace_s) == ("0.0.0.0", 8080, 30)

    crisp = config.destinations["dest"]
    assert isinstance(crisp, CrispDestination)
    assert crisp.base_url == "https://api.crisp.chat/v1"
    assert crisp.rate_limit == RateLimit(per_second=10, burst=10)
    assert (crisp.timeout_s, crisp.retry.max_backoff_s) == (30, 60)
    assert (crisp.dry_run, crisp.dry_run_path, crisp.allow_insecure_http) == (False, None, False)
    assert (crisp.tier, crisp.requests_per_day) == ("plugin", 5000)

    act = config.activations[0]
    assert (act.fields, act.custom_attributes, act.attribute_types) == ({}, (), {})
    assert (act.batch.max_size, act.batch.max_wait_ms) == (100, 500)
    assert act.deletion_guard == DeletionGuard(max_fraction=0.2, min_members=100)
    assert act.effective_deletion_guard is None  # upsert never deletes


def test_only_kafka_is_required() -> None:
    config = config_from_data({"kafka": {"bootstrap_servers": "k:9092"}}, {})
    assert (config.destinations, config.activations) == ({}, ())
    assert problems_of({}) == [("kafka", "required")]
    assert problems_of({"kafka": {}}) == [("kafka.bootstrap_servers", "required")]


@pytest.mark.parametrize(
    ("type_name", "max_size", "rate_limit"),
    [
        ("crisp", 100, RateLimit(per_second=10, burst=10)),
        ("attio", 1, RateLimit(per_second=25, burst=25)),
        ("emarsys", 1000, RateLimit(per_second=16, burst=16)),
        ("splio", 1000, RateLimit(per_second=20, burst=20)),
        ("batch", 200, RateLimit(per_second=300, burst=1000)),
        ("log", 1000, None),
        ("test", 1000, None),
    ],
)
def test_per_type_defaults(type_name: str, max_size: int, rate_limit: RateLimit | None) -> None:
    config = config_from_data(config_data(MINIMAL_DESTINATIONS[type_name]), {})
    assert config.activations[0].batch.max_size == max_size
    assert DESTINATION_TYPES[type_name].max_batch_size == max_size
    assert config.destinations["dest"].rate_limit == rate_limit
    assert DESTINATION_TYPES[type_name].default_rate_limit == rate_limit


def test_destination_type_table() -> None:
    assert set(DESTINATION_TYPES) == {"crisp", "attio", "emarsys", "splio", "batch", "log", "test"}
    assert DESTINATION_TYPES["batch"].modes == {"upsert"}
    for name in ("crisp", "attio", "emarsys", "splio", "log", "test"):
        assert DESTINATION_TYPES[name].modes == {"upsert", "update_only", "mirror"}
    weighted = {name for name, spec in DESTINATION_TYPES.items() if spec.weighted_rate_limit}
    assert weighted == {"batch"}
    assert not DESTINATION_TYPES["log"].network
    assert DESTINATION_TYPES["batch"].default_base_url == "https://api.batch.com"


def test_crisp_daily_budget_follows_tier() -> None:
    website = dict(MINIMAL_DESTINATIONS["crisp"], tier="website")
    assert config_from_data(config_data(website), {}).destinations["dest"] == CrispDestination(
        type="crisp",
        website_id="w1",
        identifier=SecretStr("i"),
        key=SecretStr("k"),
        tier="website",
        requests_per_day=10000,
    )
    raised = dict(MINIMAL_DESTINATIONS["crisp"], requests_per_day=20000)
    dest = config_from_data(config_data(raised), {}).destinations["dest"]
    assert isinstance(dest, CrispDestination) and dest.requests_per_day == 20000


def test_batch_defaults_and_aliases_normalised() -> None:
    data = config_data(
        MINIMAL_DESTINATIONS["batch"],
        activation(
            fields={"mail": "email", "tel": "phone", "opt": "$sms_marketing", "lang": "language"}
        ),
    )
    config = config_from_data(data, {})
    batch = config.destinations["dest"]
    assert isinstance(batch, BatchDestination)
    assert (batch.api_version, batch.base_url) == ("2.11", "https://api.batch.com")
    assert config.activations[0].fields == {
        "mail": "$email_address",
        "tel": "$phone_number",
        "opt": "$sms_marketing",
        "lang": "$language",
    }


def test_rate_limit_burst_default_and_unlimited() -> None:
    data = config_data(dict(MINIMAL_DESTINATIONS["attio"], rate_limit={"per_second": 2.5}))
    assert config_from_data(data, {}).destinations["dest"].rate_limit == RateLimit(
        per_second=2.5, burst=3
    )
    data = config_data(dict(MINIMAL_DESTINATIONS["attio"], rate_limit=None))
    assert config_from_data(data, {}).destinations["dest"].rate_limit is None


def test_deletion_guard_switches() -> None:
    off = config_from_data(config_data(None, activation(mode="mirror", deletion_guard=False)), {})
    assert off.activations[0].deletion_guard is None
    assert off.activations[0].effective_deletion_guard is None
    on = config_from_data(config_data(None, activation(mode="mirror", deletion_guard=True)), {})
    assert on.activations[0].effective_deletion_guard == DeletionGuard()
    custom = activation(mode="mirror", deletion_guard={"max_fraction": 0.5})
    guard = config_from_data(config_data(None, custom), {}).activations[0].deletion_guard
    assert guard == DeletionGuard(max_fraction=0.5, min_members=100)
    [(path, message)] = problems_of(config_data(None, activation(deletion_guard=None)))
    assert path == "activations[0].deletion_guard" and "false" in message
    [(path, _)] = problems_of(config_data(None, activation(deletion_guard={"max_fraction": 2})))
    assert path == "activations[0].deletion_guard.max_fraction"


def test_log_destination_has_no_network_keys() -> None:
    config = config_from_data(config_data({"type": "log", "dry_run_path": "/tmp/x.jsonl"}), {})
    log = config.destinations["dest"]
    assert isinstance(log, LogDestination)
    assert (log.dry_run, log.dry_run_path, log.base_url, log.rate_limit) == (
        True,
        "/tmp/x.jsonl",
        None,
        None,
    )
    assert problems_of(config_data({"type": "log", "base_url": "https://x"})) == [
        (
            "destinations.dest.base_url",
            "unknown key (a log destination takes only type and dry_run_path)",
        )
    ]


def test_test_destination() -> None:
    assert problems_of(config_data({"type": "test"})) == [
        ("destinations.dest.base_url", "required")
    ]
    data = config_data({"type": "test", "base_url": "http://localhost:9999/", "token": "tk"})
    test = config_from_data(data, {}).destinations["dest"]
    assert isinstance(test, TestDestination)
    assert test.base_url == "http://localhost:9999"
    assert test.token is not None and test.token.get_secret_value() == "tk"
    mirror = config_data({"type": "test", "base_url": "http://[::1]:1"}, activation(mode="mirror"))
    assert config_from_data(mirror, {}).activations[0].mode == "mirror"


def test_kafka_settings() -> None:
    data = config_data()
    data["kafka"] = {
        "bootstrap_servers": ["a:9092", "b:9092"],
        "client": {
            "security.protocol": "SASL_SSL",
            "sasl.username": "me",
            "sasl.password": "kafka-pass-3c4d",
            "linger.ms": 5,
        },
    }
    kafka = config_from_data(data, {}).kafka
    assert kafka.bootstrap_servers == "a:9092,b:9092"
    assert isinstance(kafka.client["sasl.password"], SecretStr)
    assert kafka.client_config() == {
        "security.protocol": "SASL_SSL",
        "sasl.username": "me",
        "sasl.password": "kafka-pass-3c4d",
        "linger.ms": 5,
    }
    assert "kafka-pass-3c4d" not in repr(kafka)


def test_numbers_accepted_where_strings_expected() -> None:
    data = config_data({"type": "crisp", "website_id": 12345, "identifier": 42, "key": 7})
    crisp = config_from_data(data, {}).destinations["dest"]
    assert isinstance(crisp, CrispDestination)
    assert (crisp.website_id, crisp.key.get_secret_value()) == ("12345", "7")


def test_models_are_frozen() -> None:
    config = config_from_data(config_data(), {})
    with pytest.raises(ValueError, match="frozen"):
        config.kafka.group_id = "other"


def test_public_names_exported() -> None:
    for name in config_module.__all__:
        assert hasattr(config_module, name), name


# --- interpolation -----------------------------------------------------------------------


def test_interpolation_rules() -> None:
    data = config_data(
        dict(
            MINIMAL_DESTINATIONS["crisp"],
            key="${KEY}",
            website_id="${SITE:-site-default}",
            dry_run_path="${EMPTY:-fallback}",
        ),
        activation(segment="$${NOT_A_VAR}", identifier="pre-${ID}-post $ and $$ stay"),
    )
    config = config_from_data(data, {"KEY": "k: # ' \" {x}", "ID": "mail", "EMPTY": ""})
    crisp = config.destinations["dest"]
    assert isinstance(crisp, CrispDestination)
    assert crisp.key.get_secret_value() == "k: # ' \" {x}"
    assert crisp.website_id == "site-default"
    assert crisp.dry_run_path == "fallback"
    assert config.activations[0].segment == "${NOT_A_VAR}"
    assert config.activations[0].identifier == "pre-mail-post $ and $$ stay"


def test_interpolation_after_yaml_parsing_keeps_special_characters() -> None:
    text = DESIGN_EXAMPLE.replace("website_id: 8c842203-...", "website_id: ${SITE}")
    env = dict(ENV, SITE="a: b\n- c # d", CRISP_KEY="}{'\"&*!|>%@`")
    config = parse_config_text(text, env)
    crisp = config.destinations["crisp-eu"]
    assert isinstance(crisp, CrispDestination)
    assert crisp.website_id == "a: b\n- c # d"
    assert crisp.key.get_secret_value() == "}{'\"&*!|>%@`"


def test_interpolated_numbers_are_converted() -> None:
    data = config_data()
    data["http"] = {"port": "${PORT}"}
    data["kafka"]["commit_interval_ms"] = "${COMMIT_MS:-250}"
    config = config_from_data(data, {"PORT": "9100"})
    assert (config.http.port, config.kafka.commit_interval_ms) == (9100, 250)


def test_unset_variables_are_all_reported_with_their_paths() -> None:
    data = config_data(
        dict(MINIMAL_DESTINATIONS["crisp"], key="${CRISP_KEY}"), activation(segment="${SEGMENT}")
    )
    data["http"] = {"port": "${PORT}"}
    assert problems_of(data) == [
        ("destinations.dest.key", "environment variable CRISP_KEY is not set"),
        ("activations[0].segment", "environment variable SEGMENT is not set"),
        ("http.port", "environment variable PORT is not set"),
    ]


def test_bad_references() -> None:
    data = config_data(None, activation(segment="${OOPS", identifier="${9LIVES}"))
    assert problems_of(data) == [
        ("activations[0].segment", "unterminated '${' (write '$${' for a literal '${')"),
        (
            "activations[0].identifier",
            "invalid environment variable reference: name '9LIVES'"
            " (write '$${' for a literal '${')",
        ),
    ]


def test_interpolation_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_SYNC_TEST_SEGMENT", "from-os")
    config = config_from_data(config_data(None, activation(segment="${STREAM_SYNC_TEST_SEGMENT}")))
    assert config.activations[0].segment == "from-os"


def test_keys_and_non_strings_are_not_interpolated() -> None:
    data = config_data(None, activation(fields={"${X}": "person.nickname"}))
    data["shutdown_grace_s"] = 5
    config = config_from_data(data, {"X": "replaced"})
    assert config.activations[0].fields == {"${X}": "person.nickname"}


# --- cross-checks ------------------------------------------------------------------------


def test_mode_not_supported_by_destination() -> None:
    data = config_data(MINIMAL_DESTINATIONS["batch"], activation(mode="mirror"))
    assert lines_of(data) == ["activations[0].mode: 'mirror' is not supported by batch"]
    data = config_data(MINIMAL_DESTINATIONS["batch"], activation(mode="update_only"))
    assert lines_of(data) == ["activations[0].mode: 'update_only' is not supported by batch"]


def test_unknown_destination() -> None:
    data = config_data(None, activation(destination="crisp-us"))
    assert problems_of(data) == [
        ("activations[0].destination", "unknown destination 'crisp-us' (known: dest)")
    ]


def test_batch_max_size_above_type_maximum() -> None:
    data = config_data(
        MINIMAL_DESTINATIONS["attio"], activation(), activation(id="second", batch={"max_size": 2})
    )
    assert problems_of(data) == [
        ("activations[1].batch.max_size", "2 exceeds the maximum of 1 for attio")
    ]
    ok = config_data(None, activation(batch={"max_size": 40, "max_wait_ms": 0}))
    assert config_from_data(ok, {}).activations[0].batch.max_size == 40


def test_duplicate_activation_ids() -> None:
    data = config_data(None, activation(), activation(segment="other"))
    assert problems_of(data) == [
        ("activations[1].id", "duplicate activation id 'vip' (also activations[0])")
    ]


def test_activation_id_must_be_usable_in_state_keys() -> None:
    [(path, message)] = problems_of(config_data(None, activation(id="a/b")))
    assert path == "activations[0].id" and "letters, digits" in message


@pytest.mark.parametrize(
    ("type_name", "good", "bad"),
    [
        ("crisp", ["plan", "ltv-2", "a_b"], ["Plan", "with space", "é"]),
        ("batch", ["plan", "a" * 30, "ltv_2"], ["Plan", "a" * 31, "ltv-2", "$plan"]),
        ("emarsys", ["Plan Name", "x"], [" padded", "tab\there"]),
    ],
)
def test_custom_attribute_names(type_name: str, good: list[str], bad: list[str]) -> None:
    destination = MINIMAL_DESTINATIONS[type_name]
    config_from_data(config_data(destination, activation(custom_attributes=good)), {})
    problems = problems_of(config_data(destination, activation(custom_attributes=bad)))
    assert [path for path, _ in problems] == [
        f"activations[0].custom_attributes[{i}]" for i in range(len(bad))
    ]
    for name, (_, message) in zip(bad, problems, strict=True):
        assert message.startswith(f"{name!r} is not a valid {type_name} custom attribute name")


def test_custom_attribute_listed_twice() -> None:
    data = config_data(None, activation(custom_attributes=["plan", "plan"]))
    assert problems_of(data) == [("activations[0].custom_attributes[1]", "'plan' is listed twice")]


def test_batch_fields_must_be_native_attributes() -> None:
    data = config_data(
        MINIMAL_DESTINATIONS["batch"],
        activation(fields={"mail": "email", "x": "emial", "plan": "$plan"}),
    )
    problems = problems_of(data)
    assert [path for path, _ in problems] == [
        "activations[0].fields.x",
        "activations[0].fields.plan",
    ]
    assert problems[0][1].startswith("'emial' is not a batch field (expected a Batch native")
    assert "$email_address (email)" in problems[0][1]


def test_one_destination_field_mapped_twice() -> None:
    data = config_data(
        MINIMAL_DESTINATIONS["batch"],
        activation(fields={"mail": "email", "work_mail": "$email_address"}),
    )
    assert problems_of(data) == [
        ("activations[0].fields.work_mail", "'$email_address' is already mapped from 'mail'")
    ]


def test_crisp_fields_must_be_profile_fields() -> None:
    ok = activation(
        fields={
            "a": "person.nickname",
            "b": "person.employment.title",
            "c": "company.name",
            "d": "segments",
        }
    )
    config_from_data(config_data(None, ok), {})
    [(path, message)] = problems_of(config_data(None, activation(fields={"a": "nickname"})))
    assert path == "activations[0].fields.a"
    assert message.startswith("'nickname' is not a crisp field")


def test_attribute_types_must_name_a_sent_attribute() -> None:
    data = config_data(
        None,
        activation(
            fields={"first_name": "person.nickname"},
            custom_attributes=["ltv"],
            attribute_types={
                "ltv": "number",
                "first_name": "string",
                "email": "string",
                "age": "number",
            },
        ),
    )
    assert problems_of(data) == [
        (
            "activations[0].attribute_types.email",
            "'email' is neither mapped in fields nor listed in custom_attributes",
        ),
        (
            "activations[0].attribute_types.age",
            "'age' is neither mapped in fields nor listed in custom_attributes",
        ),
    ]
    [(path, _)] = problems_of(
        config_data(None, activation(custom_attributes=["x"], attribute_types={"x": "money"}))
    )
    assert path == "activations[0].attribute_types.x"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080",
        "http://127.0.0.1",
        "http://127.9.9.9/v1",
        "http://[::1]:3000",
        "https://api.example.com",
    ],
)
def test_base_url_allowed(url: str) -> None:
    config_from_data(config_data({"type": "test", "base_url": url}), {})


@pytest.mark.parametrize("url", ["http://api.example.com", "http://10.0.0.1:80", "http://[::2]"])
def test_plain_http_only_for_loopback(url: str) -> None:
    [(path, message)] = problems_of(config_data({"type": "test", "base_url": url}))
    assert path == "destinations.dest.base_url"
    assert message.startswith("http:// is allowed only for loopback hosts")
    insecure = {"type": "test", "base_url": url, "allow_insecure_http": True}
    config_from_data(config_data(insecure), {})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x.example.com", "must be an http:// or https:// URL"),
        (
            "https://user:pw@x.example.com",
            "must not contain credentials (use the destination's keys)",
        ),
        ("https://x.example.com/?a=1", "must not have a query string or fragment"),
        ("https://", "must include a host name"),
    ],
)
def test_malformed_base_url(url: str, message: str) -> None:
    assert problems_of(config_data({"type": "test", "base_url": url})) == [
        ("destinations.dest.base_url", message)
    ]


def test_batch_base_url_without_version() -> None:
    dest = dict(MINIMAL_DESTINATIONS["batch"], base_url="https://api.batch.com/2.11")
    assert problems_of(config_data(dest)) == [
        ("destinations.dest.base_url", "must not include the API version (set api_version instead)")
    ]


def test_loopback_hosts() -> None:
    assert all(map(is_loopback_host, ["localhost", "127.0.0.1", "127.255.0.1", "::1", "[::1]"]))
    assert not any(map(is_loopback_host, ["example.com", "10.0.0.1", "::2", "localhost.example"]))


@pytest.mark.parametrize("key", sorted(ENGINE_OWNED_KAFKA_KEYS))
def test_engine_owned_kafka_keys_rejected(key: str) -> None:
    data = config_data()
    data["kafka"]["client"] = {key: "x", "linger.ms": 5}
    [(path, message)] = problems_of(data)
    assert path == f"kafka.client.{key}"
    assert "set by stream-sync" in message


def test_emarsys_contact_list_needed_to_create_contacts() -> None:
    no_list = {"type": "emarsys", "username": "u", "secret": "s"}
    config_from_data(config_data(no_list, activation(mode="update_only")), {})
    assert problems_of(config_data(no_list, activation(mode="upsert"))) == [
        (
            "destinations.dest.contact_list_id",
            "required: new contacts join this list (activations creating contacts: vip)",
        )
    ]


def test_splio_transport_requirements() -> None:
    assert problems_of(config_data({"type": "splio"})) == [
        ("destinations.dest.api_key", "required when transport is api")
    ]
    assert problems_of(config_data({"type": "splio", "transport": "sftp"})) == [
        ("destinations.dest.sftp", "required when transport is sftp"),
        ("destinations.dest.universe", "required when transport is sftp"),
    ]
    sftp = {
        "type": "splio",
        "transport": "sftp",
        "universe": "acme",
        "sftp": {"host": "127.0.0.1", "port": 2222, "username": "u", "password": "sftp-pw"},
    }
    config_from_data(config_data(sftp), {})
    bad = copy.deepcopy(sftp)
    bad["sftp"] = {"host": "h", "username": "u", "file_name_pattern": "{universe}_{when}.csv"}
    assert [path for path, _ in problems_of(config_data(bad))] == [
        "destinations.dest.sftp.file_name_pattern"
    ]


def test_topics_must_differ() -> None:
    data = config_data()
    data["topics"] = {"state": "person-attributes"}
    assert problems_of(data) == [
        ("topics.state", "same topic as topics.attributes ('person-attributes')")
    ]


def test_overlapping_activations_warning() -> None:
    data = config_data(None, activation(), activation(id="churn", segment="churn", mode="mirror"))
    data["destinations"]["other"] = MINIMAL_DESTINATIONS["log"]
    data["activations"].append(activation(id="solo", destination="other"))
    config = config_from_data(data, {})
    [warning] = overlapping_activations(config)
    assert "'dest'" in warning and "vip, churn" in warning and "churn may delete" in warning
    assert overlapping_activations(config_from_data(config_data(), {})) == []


def test_config_model_runs_cross_checks_itself() -> None:
    data = config_data(MINIMAL_DESTINATIONS["batch"], activation(mode="mirror"))
    with pytest.raises(ConfigError) as info:
        Config.model_validate(data)
    assert info.value.problems == [("activations[0].mode", "'mirror' is not supported by batch")]


# --- error reporting ---------------------------------------------------------------------


def test_unknown_keys_rejected_with_their_path() -> None:
    data = config_data(
        dict(MINIMAL_DESTINATIONS["crisp"], bse_url="https://x"), activation(batch={"max_sise": 5})
    )
    data["kafak"] = {}
    data["kafka"]["client_props"] = {}
    assert problems_of(data) == [
        ("kafka.client_props", "unknown key (did you mean 'client'?)"),
        ("destinations.dest.bse_url", "unknown key (did you mean 'base_url'?)"),
        ("activations[0].batch.max_sise", "unknown key (did you mean 'max_size'?)"),
        ("kafak", "unknown key (did you mean 'kafka'?)"),
    ]


def test_invalid_values_are_rendered_for_humans() -> None:
    data = config_data(
        dict(MINIMAL_DESTINATIONS["crisp"], tier="gold", timeout_s="soon"),
        activation(mode="mirrror", segment=""),
    )
    data["destinations"]["bad"] = {"type": "zendesk"}
    data["destinations"]["untyped"] = {"key": "k"}
    data["http"] = {"port": 70000}
    text = ConfigError(problems_of(data)).render()
    assert text.splitlines() == [
        "destinations.dest.timeout_s: must be a number",
        "destinations.dest.tier: must be 'website' or 'plugin' (got 'gold')",
        "destinations.bad.type: unknown destination type 'zendesk' "
        "(one of attio, batch, crisp, emarsys, log, splio, test)",
        "destinations.untyped.type: required (one of attio, batch, crisp, emarsys, log, splio, "
        "test)",
        "activations[0].segment: must not be empty",
        "activations[0].mode: must be 'upsert', 'update_only' or 'mirror' (got 'mirrror')",
        "http.port: must be less than or equal to 65535",
    ]
    assert "pydantic" not in text and "http" not in text.replace("http.port", "")


def test_several_problems_reported_at_once() -> None:
    data = {
        "kafka": {"bootstrap_servers": "k", "client": {"group.id": "g"}, "comit_ms": 1},
        "destinations": {
            "b": dict(MINIMAL_DESTINATIONS["batch"], base_url="http://batch.example.com"),
            "c": {"type": "crisp", "website_id": "w", "identifier": "i"},
        },
        "activations": [
            activation(
                destination="b", mode="mirror", custom_attributes=["Plan"], batch={"max_size": 500}
            ),
            activation(destination="nowhere", mode="nope"),
            activation(id="x", destination="c", custom_attributes=["Bad Name"]),
        ],
    }
    assert lines_of(data, {}) == [
        "kafka.comit_ms: unknown key (did you mean 'commit_interval_ms'?)",
        "kafka.client.group.id: is set by stream-sync itself and cannot be overridden "
        "(use kafka.group_id)",
        "destinations.b.base_url: http:// is allowed only for loopback hosts (localhost, "
        "127.0.0.0/8, ::1); use https:// or set allow_insecure_http: true",
        "destinations.c.key: required",
        "activations[0].mode: 'mirror' is not supported by batch",
        "activations[0].batch.max_size: 500 exceeds the maximum of 200 for batch",
        "activations[0].custom_attributes[0]: 'Plan' is not a valid batch custom attribute "
        "name (lower-case letters, digits and '_' only, at most 30 characters)",
        "activations[1].mode: must be 'upsert', 'update_only' or 'mirror' (got 'nope')",
        "activations[1].id: duplicate activation id 'vip' (also activations[0])",
        "activations[1].destination: unknown destination 'nowhere' (known: b, c)",
        "activations[2].custom_attributes[0]: 'Bad Name' is not a valid crisp custom "
        "attribute name (lower-case letters, digits, '_' and '-' only)",
    ]


SECRETS = {
    "CRISP_IDENTIFIER": "ident-SECRET-1111",
    "CRISP_KEY": "key-SECRET-2222",
    "ATTIO": "attio-SECRET-3333",
    "EMARSYS": "emarsys-SECRET-4444",
    "SPLIO": "splio-SECRET-5555",
    "BATCH_REST": "batch-SECRET-6666",
    "BATCH_PROJECT": "project-SECRET-7777",
    "SASL": "sasl-SECRET-8888",
    "SFTP": "sftp-SECRET-9999",
    "TEST": "test-SECRET-0000",
}


def secret_config(**extra_activation: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "k", "client": {"sasl.password": "${SASL}"}},
        "destinations": {
            "crisp": {
                "type": "crisp",
                "website_id": "w",
                "identifier": "${CRISP_IDENTIFIER}",
                "key": "${CRISP_KEY}",
            },
            "attio": {"type": "attio", "token": "${ATTIO}"},
            "emarsys": {"type": "emarsys", "username": "u", "secret": "${EMARSYS}"},
            "splio": {"type": "splio", "api_key": "${SPLIO}"},
            "splio-sftp": {
                "type": "splio",
                "transport": "sftp",
                "universe": "u",
                "sftp": {
                    "host": "h",
                    "username": "u",
                    "password": "${SFTP}",
                    "private_key_passphrase": "${SFTP}",
                },
            },
            "batch": {
                "type": "batch",
                "rest_api_key": "${BATCH_REST}",
                "project_key": "${BATCH_PROJECT}",
            },
            "test": {"type": "test", "base_url": "http://localhost:1", "token": "${TEST}"},
        },
        "activations": [activation(destination="crisp", **extra_activation)],
    }


def assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text


def test_secrets_absent_from_repr_and_str() -> None:
    config = config_from_data(secret_config(), SECRETS)
    assert_no_secret(repr(config))
    assert_no_secret(str(config))
    for destination in config.destinations.values():
        assert_no_secret(repr(destination))
    assert_no_secret(config.model_dump_json())
    crisp = config.destinations["crisp"]
    assert isinstance(crisp, CrispDestination)
    assert crisp.key.get_secret_value() == SECRETS["CRISP_KEY"]


def test_secrets_absent_from_errors() -> None:
    data = secret_config(mode="sideways")
    data["destinations"]["batch"]["rest_api_key"] = ["${BATCH_REST}"]  # wrong type
    data["destinations"]["attio"]["token"] = {"nested": "${ATTIO}"}
    data["destinations"]["crisp"]["tier"] = "${CRISP_KEY}"  # a secret where a choice goes
    data["destinations"]["test"]["base_url"] = "https://u:${TEST}@example.com"
    data["kafka"]["client"]["group.id"] = "g"
    data["activations"].append(activation(id="oops", destination="${CRISP_KEY}"))
    with pytest.raises(ConfigError) as info:
        config_from_data(data, SECRETS)
    error = info.value
    assert len(error.problems) >= 6
    assert (
        "activations[1].destination",
        "unknown destination '***' (known: attio, batch, crisp, emarsys, splio, splio-sftp, test)",
    ) in error.problems
    assert_no_secret(error.render())
    assert_no_secret(str(error))
    assert_no_secret(repr(error))
    assert error.__cause__ is None and error.__context__ is None


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kafka:\n  bootstrap_servers: k\n  key: hunter2-SECRET: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [line] = info.value.render().splitlines()
    assert re.fullmatch(re.escape(str(path)) + r":3: .+", line), line
    assert "hunter2" not in line


def test_yaml_duplicate_keys_rejected() -> None:
    text = "kafka: {bootstrap_servers: k}\ndestinations:\n  a: {type: log}\n  a: {type: log}\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, {}, source="dup.yaml")
    assert info.value.render() == "dup.yaml:4: duplicate key 'a' (column 3)"


def test_yaml_merge_keys_still_work() -> None:
    text = """
kafka: {bootstrap_servers: k}
destinations:
  base: &base {type: test, base_url: "http://localhost:1", timeout_s: 5}
  other: {<<: *base, timeout_s: 9}
"""
    config = parse_config_text(text, {})
    assert config.destinations["other"].timeout_s == 9


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.render() == f"{path}: configuration file not found"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.render() == f"{tmp_path}: is a directory, not a configuration file"


def test_empty_or_non_mapping_document() -> None:
    with pytest.raises(ConfigError, match="is empty"):
        parse_config_text("# nothing\n", {}, source="c.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config_text("- a\n- b\n", {}, source="c.yaml")
