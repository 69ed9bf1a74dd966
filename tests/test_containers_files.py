"""Static checks of the container files (no Docker needed): compose.yaml wiring, the
Dockerfile's instructions, .dockerignore and the sample config they run."""

from __future__ import annotations

import inspect
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"

CONFIG_IN_CONTAINER = "/etc/stream-sync/config.yaml"
DEFAULT_TOPICS = {"memberships": "segment-memberships", "attributes": "person-attributes"}
SYNC_MODES = {"upsert", "update_only", "mirror"}
DESTINATION_TYPES = {"crisp", "attio", "emarsys", "splio", "batch", "log"}
_VAR_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}$")
_SECRETISH = re.compile(r"(?i)(key|secret|token|password|identifier|credential)")


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def example_config() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever form (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _command_text(service: dict[str, Any]) -> str:
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, list):
            parts.extend(str(v) for v in value)
        elif value:
            parts.append(str(value))
    return " ".join(parts)


def _created_topics(service: dict[str, Any]) -> dict[str, int]:
    """topic -> partitions of every `kafka-topics.sh --create` in the service's command."""
    created: dict[str, int] = {}
    for segment in re.split(r"&&|;|\n|\|\|", _command_text(service)):
        words = shlex.split(segment)
        tool = [n for n, w in enumerate(words) if w.endswith("kafka-topics.sh")]
        if not tool or "--create" not in words:
            continue
        words = words[tool[0] :]
        opts = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        created[opts["--topic"]] = int(opts["--partitions"])
    return created


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _healthcheck_cmd(service: dict[str, Any]) -> str:
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), "healthcheck disabled"
    test = check.get("test")
    assert test, "no healthcheck test"
    return " ".join(test) if isinstance(test, list) else str(test)


def _listeners(value: str) -> dict[str, str]:
    """'NAME://host:port,...' -> {NAME: 'host:port'}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        out[name] = address
    return out


def test_kafka_service_is_single_node_kraft_apache(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    image = kafka["image"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", image), image
    env = _env(kafka)
    assert env["KAFKA_NODE_ID"] == "1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env.get("KAFKA_CONTROLLER_QUORUM_VOTERS") or env.get(
        "KAFKA_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS"
    )
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert "CONTROLLER" in listeners and "CONTROLLER" not in advertised
    assert set(advertised) <= set(listeners)
    mapped = {item.split(":")[0] for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert set(listeners) <= mapped, (listeners, mapped)
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert "kafka-broker-api-versions.sh" in _healthcheck_cmd(kafka)
    assert "--bootstrap-server localhost:9092" in _healthcheck_cmd(kafka)


def _internal_bootstrap(services: dict[str, dict[str, Any]]) -> str:
    """The address other containers reach the broker at: an advertised listener whose host is
    the kafka service's name (or hostname)."""
    kafka = services["kafka"]
    hosts = {"kafka", kafka.get("hostname", "kafka")}
    advertised = _listeners(_env(kafka)["KAFKA_ADVERTISED_LISTENERS"]).values()
    internal = [a for a in advertised if a.rsplit(":", 1)[0] in hosts]
    assert len(internal) == 1, f"no single internal listener among {advertised}"
    return internal[0]


def test_init_service_creates_copartitioned_input_topics(
    services: dict[str, dict[str, Any]], example_config: dict[str, Any]
) -> None:
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    assert _depends(init) == {"kafka": "service_healthy"}
    created = _created_topics(init)
    topics = {**DEFAULT_TOPICS, **(example_config.get("topics") or {})}
    inputs = {topics["memberships"], topics["attributes"]}
    assert inputs <= set(created), f"init creates {created}, config reads {inputs}"
    counts = {created[t] for t in inputs}
    assert len(counts) == 1 and counts.pop() >= 1, f"not co-partitioned: {created}"
    assert "--if-not-exists" in _command_text(init)
    assert f"--bootstrap-server {_internal_bootstrap(services)}" in _command_text(init)


def test_stream_sync_service_wiring(services: dict[str, dict[str, Any]]) -> None:
    app = services["stream-sync"]
    assert app["image"] == "stream-sync:latest"
    build = app["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (COMPOSE.parent / context / "Dockerfile").is_file()
    command = app["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    assert command == ["run", "-c", CONFIG_IN_CONTAINER]
    assert _depends(app) == {
        "kafka": "service_healthy",
        "kafka-init": "service_completed_successfully",
    }
    assert any(str(p).split(":")[-1].split("/")[0] == "8080" for p in app["ports"])
    health = _healthcheck_cmd(app)
    assert "python" in health and "http://localhost:8080/healthz" in health
    assert "curl" not in health and "wget" not in health


def _config_mount(app: dict[str, Any]) -> tuple[str, str, bool]:
    for volume in app.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            read_only = bool(mode) and "ro" in mode[0].split(",")
        else:
            source, target = volume["source"], volume["target"]
            read_only = bool(volume.get("read_only"))
        if target == CONFIG_IN_CONTAINER:
            return source, target, read_only
    raise AssertionError(f"no volume mounted at {CONFIG_IN_CONTAINER}")


def test_config_is_mounted_read_only_and_matches_the_broker(
    services: dict[str, dict[str, Any]],
) -> None:
    source, _, read_only = _config_mount(services["stream-sync"])
    assert read_only, "config mount must be read-only"
    path = (COMPOSE.parent / source).resolve()
    assert path == EXAMPLE_CONFIG.resolve()
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert config["kafka"]["bootstrap_servers"] == _internal_bootstrap(services) == "kafka:9092"
    assert config.get("http", {}).get("port", 8080) == 8080


def test_secrets_are_passed_through_never_written(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["stream-sync"])
    assert env, "no environment passthrough for secrets"
    for name, value in env.items():
        if _SECRETISH.search(name):
            assert _VAR_REF.match(value), f"{name} must be a ${{VAR}} passthrough, not {value!r}"
            assert value.startswith("${" + name), f"{name} passes another variable: {value}"
    # nothing anywhere in the file looks like a literal credential assignment
    text = COMPOSE.read_text(encoding="utf-8")
    literal = re.findall(
        r"(?im)^\s*[A-Z_]*(?:KEY|SECRET|TOKEN|PASSWORD)[A-Z_]*:\s*([^$\s#].*)$", text
    )
    assert not literal, literal


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str

    @property
    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None

    @property
    def words(self) -> list[str]:
        return self.exec_form or shlex.split(self.args)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their build stage (0-based), joining `\\` line continuations and
    dropping comments and blank lines, including comment lines inside a continuation."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def _flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    flags = {}
    rest = []
    for word in words:
        if word.startswith("--") and not rest:
            name, _, value = word[2:].partition("=")
            flags[name] = value
        else:
            rest.append(word)
    return flags, rest


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_dockerfile_parser_handles_continuations() -> None:
    parsed = parse_dockerfile(
        'FROM a AS b\n# c\nRUN x \\\n  # inside\n  && y\nCMD ["p", \\\n "q"]\nfrom d\nUSER 1\n'
    )
    assert [(i.stage, i.keyword, i.args) for i in parsed] == [
        (0, "FROM", "a AS b"),
        (0, "RUN", "x && y"),
        (0, "CMD", '["p", "q"]'),
        (1, "FROM", "d"),
        (1, "USER", "1"),
    ]
    assert parsed[2].exec_form == ["p", "q"]


def test_dockerfile_bases_are_slim_python(dockerfile: list[Instruction]) -> None:
    stage_names = set()
    for ins in dockerfile:
        if ins.keyword != "FROM":
            continue
        _, words = _flags(ins.words)
        image = words[0]
        if image in stage_names:
            continue
        assert re.fullmatch(r"python:3\.1[2-9](\.\d+)?-slim(-[a-z]+)?", image), image
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])


def test_dockerfile_runtime_stage(dockerfile: list[Instruction]) -> None:
    last = max(i.stage for i in dockerfile)
    final = [i for i in dockerfile if i.stage == last]
    keywords = [i.keyword for i in final]

    user_at = [n for n, k in enumerate(keywords) if k == "USER"]
    assert user_at, "the runtime stage has no USER"
    user = final[user_at[-1]].args.split(":")[0]
    assert user not in {"root", "0"}, f"runs as {user}"
    assert user_at[-1] < keywords.index("ENTRYPOINT"), "USER must come before ENTRYPOINT"

    (entrypoint,) = [i for i in final if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i for i in final if i.keyword == "CMD"]
    assert entrypoint.exec_form == ["stream-sync"]
    assert cmd.exec_form == ["run", "-c", CONFIG_IN_CONTAINER]

    exposed = {w.split("/")[0] for i in final if i.keyword == "EXPOSE" for w in i.words}
    assert "8080" in exposed

    (health,) = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert health.args.upper() != "NONE"
    assert "/healthz" in health.args and "urllib" in health.args


def test_dockerfile_installs_the_project(dockerfile: list[Instruction]) -> None:
    copied: set[str] = set()
    for ins in dockerfile:
        if ins.keyword in {"COPY", "ADD"}:
            flags, words = _flags(ins.words)
            if "from" not in flags:
                copied.update(w.rstrip("/") for w in words[:-1])
    assert "pyproject.toml" in copied
    assert "stream_sync" in copied or "." in copied
    installs = [i.args for i in dockerfile if i.keyword == "RUN" and "pip install" in i.args]
    assert any("--no-cache-dir" in cmd and re.search(r"(^|\s)\.(\s|$)", cmd) for cmd in installs), (
        installs
    )


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    for required in (".venv", ".cache", "var", ".git"):
        assert required in patterns, required
    assert any("__pycache__" in p for p in patterns)
    assert not {"pyproject.toml", "stream_sync", "stream_sync/"} & patterns


# --------------------------------------------------------------------------- example config


def test_example_config_has_the_required_keys(example_config: dict[str, Any]) -> None:
    assert isinstance(example_config["kafka"]["bootstrap_servers"], str)
    destinations = example_config["destinations"]
    assert isinstance(destinations, dict) and destinations
    for name, dest in destinations.items():
        assert dest["type"] in DESTINATION_TYPES, name
    activations = example_config["activations"]
    assert isinstance(activations, list) and activations
    ids = [a["id"] for a in activations]
    assert len(ids) == len(set(ids))
    for act in activations:
        for key in ("id", "segment", "destination", "mode", "identifier"):
            assert isinstance(act[key], str) and act[key], key
        assert act["destination"] in destinations
        assert act["mode"] in SYNC_MODES
        assert isinstance(act.get("fields", {}), dict)
    upserts = [a for a in activations if a["mode"] == "upsert" and a["identifier"] == "email"]
    assert upserts and len(upserts[0].get("fields", {})) >= 2
    assert "${" not in EXAMPLE_CONFIG.read_text(encoding="utf-8"), (
        "the sample must run with no secret set in the environment"
    )


def test_example_config_loads_with_the_service_loader() -> None:
    config_module = pytest.importorskip("stream_sync.config")
    load_config = getattr(config_module, "load_config", None)
    if load_config is None:
        pytest.skip("stream_sync.config.load_config not available yet")
    # an empty environment: the sample must validate with no secret set
    if "env" in inspect.signature(load_config).parameters:
        config = load_config(EXAMPLE_CONFIG, env={})
    else:
        config = load_config(EXAMPLE_CONFIG)
    assert config is not None
