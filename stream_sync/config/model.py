"""The root `Config` model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, NonNegativeFloat, model_validator

from ._base import ConfigModel, NonEmptyStr, order_problems
from .activation import Activation
from .checks import semantic_problems
from .destinations import Destination
from .errors import ConfigError
from .settings import HttpSettings, KafkaSettings, Topics
from .spec import DESTINATION_TYPES, DestinationTypeSpec


class Config(ConfigModel):
    """The whole service configuration (design §7).

    Validating a Config also runs the cross-checks: field errors raise pydantic's
    ValidationError, cross-check problems raise ConfigError. `load_config` turns both into
    one ConfigError listing everything.
    """

    kafka: KafkaSettings
    topics: Topics = Topics()
    destinations: dict[NonEmptyStr, Destination] = {}
    activations: tuple[Activation, ...] = ()
    http: HttpSettings = HttpSettings()
    shutdown_grace_s: NonNegativeFloat = 30.0

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        return resolve_type_defaults(data)

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        problems = semantic_problems(
            kafka=self.kafka,
            topics=self.topics,
            destination_types={name: d.type for name, d in self.destinations.items()},
            destinations=self.destinations,
            activations=list(enumerate(self.activations)),
        )
        if problems:
            raise ConfigError(order_problems(problems, list(self.destinations)))
        return self

    def activation(self, activation_id: str) -> Activation:
        """The activation with this id (KeyError if none)."""
        for activation in self.activations:
            if activation.id == activation_id:
                return activation
        raise KeyError(activation_id)

    def destination_of(self, activation: Activation) -> Destination:
        return self.destinations[activation.destination]

    def spec_of(self, activation: Activation) -> DestinationTypeSpec:
        return DESTINATION_TYPES[self.destinations[activation.destination].type]


def raw_destination_types(destinations: Any) -> dict[str, str | None]:
    """Configured destination names → their type when it is a known one (raw input)."""
    if not isinstance(destinations, dict):
        return {}
    found: dict[str, str | None] = {}
    for name, block in destinations.items():
        if isinstance(block, BaseModel):
            type_name = getattr(block, "type", None)
        else:
            type_name = block.get("type") if isinstance(block, dict) else None
        known = isinstance(type_name, str) and type_name in DESTINATION_TYPES
        found[str(name)] = type_name if known else None
    return found


def resolve_type_defaults(data: Any) -> Any:
    """Fill in what depends on an activation's destination type, on raw input.

    `batch.max_size` defaults to the type's maximum, and `fields` aliases (Batch `email`)
    become the vendor's names. Malformed input is left for validation to report.
    """
    if not isinstance(data, dict):
        return data
    activations = data.get("activations")
    if not isinstance(activations, list | tuple):
        return data
    types = raw_destination_types(data.get("destinations"))
    return {**data, "activations": [_resolve_activation(item, types) for item in activations]}


def _resolve_activation(item: Any, types: dict[str, str | None]) -> Any:
    if isinstance(item, Activation):
        item = item.model_dump(exclude_unset=True)
        if "deletion_guard" in item and item["deletion_guard"] is None:
            item["deletion_guard"] = False  # disabled, in its YAML spelling
    if not isinstance(item, dict):
        return item
    destination = item.get("destination")
    type_name = types.get(destination) if isinstance(destination, str) else None
    if type_name is None:
        return item
    spec = DESTINATION_TYPES[type_name]
    resolved = dict(item)
    batch = resolved.get("batch", {})
    if isinstance(batch, dict) and "max_size" not in batch:
        resolved["batch"] = {**batch, "max_size": spec.max_batch_size}
    fields = resolved.get("fields")
    if isinstance(fields, dict) and spec.field_aliases:
        resolved["fields"] = {
            source: spec.field_aliases.get(target, target) if isinstance(target, str) else target
            for source, target in fields.items()
        }
    return resolved
