"""Reading a configuration: file → YAML → `${ENV}` interpolation → validated `Config`."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from ._base import Problem, order_problems
from ._translate import translate_validation_error
from .activation import Activation
from .checks import ActivationRef, semantic_problems
from .destinations import DESTINATION_ADAPTER, SECRET_KEYS, Destination
from .errors import ConfigError
from .interpolation import interpolate
from .model import Config, raw_destination_types, resolve_type_defaults
from .settings import KafkaSettings, Topics, is_secret_client_key


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the YAML file at `path`; `env` defaults to `os.environ`.

    Raises ConfigError listing every problem found (render() for the CLI).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([(str(file), "configuration file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([(str(file), "is a directory, not a configuration file")]) from None
    except UnicodeDecodeError:
        raise ConfigError([(str(file), "is not valid UTF-8 text")]) from None
    except OSError as error:
        raise ConfigError([(str(file), f"cannot be read ({error.strerror})")]) from None
    return parse_config_text(text, env, source=str(file))


def parse_config_text(
    text: str, env: Mapping[str, str] | None = None, *, source: str = "<config>"
) -> Config:
    """Like `load_config` for YAML already in memory; `source` names it in messages."""
    return config_from_data(_parse_yaml(text, source), env, source=source)


def config_from_data(
    data: Any, env: Mapping[str, str] | None = None, *, source: str = "<config>"
) -> Config:
    """Interpolate and validate parsed YAML (a dict), collecting every problem."""
    if data is None:
        raise ConfigError([(source, "is empty (kafka.bootstrap_servers at least is required)")])
    if not isinstance(data, dict):
        raise ConfigError([(source, "must be a mapping of sections (kafka, destinations, ...)")])
    interpolated = interpolate(data, os.environ if env is None else env)
    data, unresolved = interpolated.data, interpolated.problems
    problems: list[Problem]
    try:
        config = Config.model_validate(data)
    except ConfigError as error:
        problems = error.problems
    except ValidationError as error:
        problems = translate_validation_error(error, Config, interpolated.substituted)
        problems += _semantic_problems_of_valid_parts(data)
    else:
        if not unresolved:
            return config
        problems = []
    # A value whose interpolation failed was kept as written: its own errors are noise.
    bad_paths = {path for path, _ in unresolved}
    problems = [p for p in problems if not _is_under(p[0], bad_paths)]
    destinations = data.get("destinations")
    names = [str(name) for name in destinations] if isinstance(destinations, dict) else []
    ordered = order_problems(unresolved + problems, names)
    raise ConfigError(_redact(ordered, _secret_values(data)))


def _secret_values(data: dict[Any, Any]) -> set[str]:
    """Credential values of the document, to be masked should a message quote one."""
    found: set[str] = set()

    def collect(node: Any, secret_key: Callable[[str], bool]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and isinstance(key, str) and secret_key(key):
                    found.add(value)
                else:
                    collect(value, secret_key)
        elif isinstance(node, list):
            for item in node:
                collect(item, secret_key)

    collect(data.get("destinations"), SECRET_KEYS.__contains__)
    kafka = data.get("kafka")
    if isinstance(kafka, dict):
        collect(kafka.get("client"), is_secret_client_key)
    return {value for value in found if len(value) >= _MIN_REDACTED_LENGTH}


_MIN_REDACTED_LENGTH = 6  # shorter values would mask ordinary words of the messages


def _redact(problems: list[Problem], secrets: set[str]) -> list[Problem]:
    def mask(text: str) -> str:
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    return [(mask(path), mask(message)) for path, message in problems]


def _is_under(path: str, bases: set[str]) -> bool:
    return any(path == base or path.startswith((base + ".", base + "[")) for base in bases)


def _semantic_problems_of_valid_parts(data: dict[Any, Any]) -> list[Problem]:
    """Cross-checks over the sections that validate, so that one bad key does not hide
    the problems of the rest. A block whose only errors are unknown keys is checked
    without them."""
    data = resolve_type_defaults(data)
    raw_destinations = data.get("destinations")
    destinations: dict[str, Destination] = {}
    if isinstance(raw_destinations, dict):
        for name, block in raw_destinations.items():
            destination = _lenient(DESTINATION_ADAPTER.validate_python, block)
            if destination is not None:
                destinations[str(name)] = destination
    activations: list[tuple[int, Activation]] = []
    refs: list[ActivationRef] = []
    raw_activations = data.get("activations")
    if isinstance(raw_activations, list):
        for index, item in enumerate(raw_activations):
            activation = _lenient(Activation.model_validate, item)
            if activation is not None:
                activations.append((index, activation))
            if isinstance(item, dict):
                refs.append(
                    (index, _str_or_none(item.get("id")), _str_or_none(item.get("destination")))
                )
    return semantic_problems(
        kafka=_lenient(KafkaSettings.model_validate, data.get("kafka")),
        topics=_lenient(Topics.model_validate, data.get("topics", {})),
        destination_types=raw_destination_types(raw_destinations),
        destinations=destinations,
        activations=activations,
        activation_refs=refs,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


T = TypeVar("T")


def _lenient(validate: Callable[[Any], T], data: Any) -> T | None:
    """`validate(data)`; if only unknown keys fail, validate again without them."""
    try:
        return validate(data)
    except ValidationError as error:
        unknown = [tuple(e["loc"]) for e in error.errors() if e["type"] == "extra_forbidden"]
        if len(unknown) != error.error_count():
            return None
    pruned = copy.deepcopy(data)
    for loc in unknown:
        _drop(pruned, loc)
    try:
        return validate(pruned)
    except ValidationError:
        return None


def _drop(data: Any, loc: tuple[str | int, ...]) -> None:
    """Remove the key at `loc`, skipping parts that are not in the data (union tags)."""
    *parents, last = loc
    for part in parents:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_dict or in_list:
            data = data[part]
    if isinstance(data, dict):
        data.pop(last, None)


# --- YAML --------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the second would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: SafeLoader reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        # Built by hand: str(error) quotes the offending line, which may hold a secret.
        mark = error.problem_mark or error.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        message = error.problem or error.context or "invalid YAML"
        details = [f"column {mark.column + 1}"] if mark is not None else []
        if error.context and error.problem:
            details.append(error.context)
        raise ConfigError(
            [(where, f"{message} ({', '.join(details)})" if details else message)]
        ) from None
    except yaml.YAMLError as error:
        position = getattr(error, "position", None)
        suffix = f" at character {position}" if position is not None else ""
        raise ConfigError([(source, f"is not valid YAML{suffix}")]) from None
