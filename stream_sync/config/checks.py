"""Checks that span several keys or sections, all collected (never first-error-only)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ._base import Problem, join_path
from .activation import Activation
from .destinations import Destination, EmarsysDestination
from .settings import KafkaSettings, Topics
from .spec import DESTINATION_TYPES

if TYPE_CHECKING:
    from .model import Config

ActivationRef = tuple[int, str | None, str | None]
"""(index in `activations`, its id, its destination name), from raw input when invalid."""


def _prefixed(prefix: str, problems: Sequence[Problem]) -> list[Problem]:
    return [(join_path(prefix, path), message) for path, message in problems]


def semantic_problems(
    *,
    kafka: KafkaSettings | None,
    topics: Topics | None,
    destination_types: Mapping[str, str | None],
    destinations: Mapping[str, Destination],
    activations: Sequence[tuple[int, Activation]],
    activation_refs: Sequence[ActivationRef] | None = None,
) -> list[Problem]:
    """Every cross-check of design §7 over the parts that are individually valid.

    `destination_types` names every configured destination (with its type when known, even
    if the block has other errors); `destinations` holds the blocks that validated;
    `activations` the activations that validated, with their index in the list;
    `activation_refs` the id and destination of every activation, valid or not (default:
    those of `activations`).
    """
    if activation_refs is None:
        activation_refs = [(i, a.id, a.destination) for i, a in activations]
    found: list[Problem] = []
    if kafka is not None:
        found += _prefixed("kafka", kafka.problems())
    if topics is not None:
        found += _prefixed("topics", topics.problems())
    for name, block in destinations.items():
        found += _prefixed(f"destinations.{name}", block.problems())

    first_index: dict[str, int] = {}
    for index, activation_id, target in activation_refs:
        path = f"activations[{index}]"
        if activation_id is not None:
            if activation_id in first_index:
                found.append(
                    (
                        f"{path}.id",
                        f"duplicate activation id {activation_id!r}"
                        f" (also activations[{first_index[activation_id]}])",
                    )
                )
            else:
                first_index[activation_id] = index
        if target is not None and target not in destination_types:
            known = ", ".join(sorted(destination_types)) or "none is configured"
            found.append(
                (f"{path}.destination", f"unknown destination {target!r} (known: {known})")
            )
    for index, activation in activations:
        found += _activation_problems(f"activations[{index}]", activation, destination_types)

    found += _emarsys_list_problems(destinations, activations)
    return found


def _activation_problems(
    path: str, activation: Activation, destination_types: Mapping[str, str | None]
) -> list[Problem]:
    found: list[Problem] = []
    type_name = destination_types.get(activation.destination)
    spec = DESTINATION_TYPES.get(type_name) if type_name is not None else None

    if spec is not None:
        if activation.mode not in spec.modes:
            found.append((f"{path}.mode", f"{activation.mode!r} is not supported by {spec.name}"))
        if activation.batch.max_size > spec.max_batch_size:
            found.append(
                (
                    f"{path}.batch.max_size",
                    f"{activation.batch.max_size} exceeds the maximum of"
                    f" {spec.max_batch_size} for {spec.name}",
                )
            )

    seen_custom: set[str] = set()
    for position, name in enumerate(activation.custom_attributes):
        item = f"{path}.custom_attributes[{position}]"
        if name in seen_custom:
            found.append((item, f"{name!r} is listed twice"))
        seen_custom.add(name)
        if spec is not None and not spec.custom_attribute_pattern.fullmatch(name):
            found.append(
                (
                    item,
                    f"{name!r} is not a valid {spec.name} custom attribute name"
                    f" ({spec.custom_attribute_rule})",
                )
            )

    targets: dict[str, str] = {}
    for source, target in activation.fields.items():
        item = f"{path}.fields.{source}"
        if (
            spec is not None
            and spec.field_pattern is not None
            and not spec.field_pattern.fullmatch(target)
        ):
            found.append(
                (item, f"{target!r} is not a {spec.name} field (expected {spec.field_rule})")
            )
        if target in targets:
            found.append((item, f"{target!r} is already mapped from {targets[target]!r}"))
        else:
            targets[target] = source

    mapped = activation.mapped_attributes
    for name in activation.attribute_types:
        if name not in mapped:
            found.append(
                (
                    f"{path}.attribute_types.{name}",
                    f"{name!r} is neither mapped in fields nor listed in custom_attributes",
                )
            )
    return found


def _emarsys_list_problems(
    destinations: Mapping[str, Destination], activations: Sequence[tuple[int, Activation]]
) -> list[Problem]:
    found: list[Problem] = []
    for name, destination in destinations.items():
        if not isinstance(destination, EmarsysDestination):
            continue
        if destination.contact_list_id is not None:
            continue
        creating = [
            a.id for _, a in activations if a.destination == name and a.mode in ("upsert", "mirror")
        ]
        if creating:
            found.append(
                (
                    f"destinations.{name}.contact_list_id",
                    "required: new contacts join this list (activations creating"
                    f" contacts: {', '.join(creating)})",
                )
            )
    return found


def overlapping_activations(config: Config) -> list[str]:
    """Warnings for `check`: destinations written by several activations.

    Activations are not coordinated (design §4): a person in several of their segments is
    written by each, and a mirror activation may delete a person another one writes.
    """
    by_destination: dict[str, list[Activation]] = defaultdict(list)
    for activation in config.activations:
        by_destination[activation.destination].append(activation)
    warnings: list[str] = []
    for name, group in by_destination.items():
        if len(group) < 2:
            continue
        ids = ", ".join(a.id for a in group)
        text = (
            f"destination {name!r} is written by several activations ({ids}):"
            " a person in more than one of their segments is written by each,"
            " without coordination"
        )
        mirrors = [a.id for a in group if a.mode == "mirror"]
        if mirrors:
            text += (
                f"; mirror activation(s) {', '.join(mirrors)} may delete people the others write"
            )
        warnings.append(text)
    return warnings
