"""Strict emulators of destination APIs: real HTTP servers on loopback, used as test fixtures.

Each emulator follows its contract page in ``/work/shared/destinations/`` (never adapter
code), so an adapter passing its tests behaves against the real API::

    from tests.emulators import CrispEmulator

    with CrispEmulator(daily_quota=100) as crisp:
        ...  # point the adapter at crisp.base_url; assert on crisp.people / crisp.calls()

Exports are imported lazily so ``python -m tests.emulators.crisp`` runs without warnings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import LoopbackEmulator, Recorded
    from .batch import BatchEmulator, Profile
    from .crisp import CrispEmulator, Person

__all__ = [
    "BatchEmulator",
    "CrispEmulator",
    "LoopbackEmulator",
    "Person",
    "Profile",
    "Recorded",
]

_HOMES = {
    "BatchEmulator": "batch",
    "CrispEmulator": "crisp",
    "LoopbackEmulator": "base",
    "Person": "crisp",
    "Profile": "batch",
    "Recorded": "base",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)
