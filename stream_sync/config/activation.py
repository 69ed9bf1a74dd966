"""The `activations` list: segment → destination, with mode and mappings."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator

from ._base import AttributeType, ConfigModel, Mode, NonEmptyStr

ACTIVATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Activation ids end up in state keys (`sync/<id>/<person>`): no '/' or spaces."""


class ActivationBatch(ConfigModel):
    max_size: PositiveInt = 1000
    """Defaults to the destination type's maximum (filled in when a Config is validated)."""
    max_wait_ms: NonNegativeInt = 500


class DeletionGuard(ConfigModel):
    """Hold mirror deletes when one flush would delete too large a part of the synced set."""

    max_fraction: float = Field(default=0.2, gt=0, le=1)
    min_members: NonNegativeInt = 100
    """Below this many synced members the guard does not apply."""


class Activation(ConfigModel):
    id: str
    segment: NonEmptyStr
    destination: NonEmptyStr
    mode: Mode
    identifier: NonEmptyStr
    """Source attribute that identifies the person in the destination."""
    fields: dict[NonEmptyStr, NonEmptyStr] = {}
    """Source attribute → destination field (vendor name; Batch aliases normalised)."""
    custom_attributes: tuple[NonEmptyStr, ...] = ()
    """Source attributes exported under the same name."""
    attribute_types: dict[NonEmptyStr, AttributeType] = {}
    batch: ActivationBatch = ActivationBatch()
    deletion_guard: DeletionGuard | None = DeletionGuard()
    """None when disabled (`deletion_guard: false`); see `effective_deletion_guard`."""

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not ACTIVATION_ID.fullmatch(value):
            raise ValueError(
                "must start with a letter or digit and contain only letters, digits,"
                " '_', '.' and '-'"
            )
        return value

    @field_validator("deletion_guard", mode="before")
    @classmethod
    def _guard_switch(cls, value: Any) -> Any:
        if value is False:
            return None
        if value is True:
            return {}
        if value is None:
            raise ValueError("write false to disable the deletion guard, or give its settings")
        return value

    @property
    def effective_deletion_guard(self) -> DeletionGuard | None:
        """The guard that applies: only mirror activations delete."""
        return self.deletion_guard if self.mode == "mirror" else None

    @property
    def mapped_attributes(self) -> frozenset[str]:
        """Source attributes whose values are sent (mapped fields and custom attributes)."""
        return frozenset(self.fields) | frozenset(self.custom_attributes)

    @property
    def source_attributes(self) -> frozenset[str]:
        """Every source attribute the activation reads, the identifier included."""
        return self.mapped_attributes | {self.identifier}
