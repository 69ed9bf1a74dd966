"""Configuration of stream-sync (design §7): YAML with `${ENV}` interpolation, validated
into frozen pydantic models; every problem is reported as `path: message`.

Entry points: `load_config(path)`; `ConfigError.render()` for the CLI; the
`DESTINATION_TYPES` table for adapters and the engine.
"""

from ._base import MODES, AttributeType, Mode, Problem
from .activation import Activation, ActivationBatch, DeletionGuard
from .checks import overlapping_activations
from .destinations import (
    AttioDestination,
    BatchDestination,
    CrispDestination,
    Destination,
    EmarsysDestination,
    HttpDestination,
    LogDestination,
    SplioDestination,
    SplioSftp,
    TestDestination,
)
from .errors import ConfigError
from .loader import config_from_data, load_config, parse_config_text
from .model import Config
from .settings import ENGINE_OWNED_KAFKA_KEYS, HttpSettings, KafkaSettings, Topics
from .spec import (
    BATCH_FIELD_ALIASES,
    BATCH_NATIVE_ATTRIBUTES,
    CRISP_REQUESTS_PER_DAY,
    DESTINATION_TYPES,
    DestinationTypeSpec,
    RateLimit,
    RetrySettings,
)
from .urls import is_loopback_host

__all__ = [
    "BATCH_FIELD_ALIASES",
    "BATCH_NATIVE_ATTRIBUTES",
    "CRISP_REQUESTS_PER_DAY",
    "DESTINATION_TYPES",
    "ENGINE_OWNED_KAFKA_KEYS",
    "MODES",
    "Activation",
    "ActivationBatch",
    "AttioDestination",
    "AttributeType",
    "BatchDestination",
    "Config",
    "ConfigError",
    "CrispDestination",
    "DeletionGuard",
    "Destination",
    "DestinationTypeSpec",
    "EmarsysDestination",
    "HttpDestination",
    "HttpSettings",
    "KafkaSettings",
    "LogDestination",
    "Mode",
    "Problem",
    "RateLimit",
    "RetrySettings",
    "SplioDestination",
    "SplioSftp",
    "TestDestination",
    "Topics",
    "config_from_data",
    "is_loopback_host",
    "load_config",
    "overlapping_activations",
    "parse_config_text",
]
