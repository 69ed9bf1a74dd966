"""The deletion guard of mirror activations (``deletion_guard`` in design §7).

A reconcile that would delete more than ``max_fraction`` of an activation's synced members —
counting the deletions already sent in the last hour plus those pending, against the synced
count an hour ago, so a segment emptied slowly is caught too — is held: deletions wait, creates
and updates go on. The hold is written to the state topic (it survives restarts) and is released
by ``stream-sync approve-deletes`` (or by raising the limit and restarting).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

WINDOW_S = 3600.0
SAMPLE_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Hold:
    since: str
    deletes: int  # deletions sent in the window plus pending, when held
    synced: int  # the synced count the fraction was measured against

    def to_record(self) -> dict[str, Any]:
        return {"held": True, "since": self.since, "deletes": self.deletes, "synced": self.synced}


class DeletionGuard:
    def __init__(
        self,
        max_fraction: float,
        min_members: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_fraction = max_fraction
        self.min_members = min_members
        self._clock = clock
        self._deleted: deque[tuple[float, int]] = deque()  # (time, count) of applied deletes
        self._samples: deque[tuple[float, int]] = deque()  # (time, synced count)
        self.hold: Hold | None = None
        self._allowance = 0  # deletions approved by the operator, not counted
        self._exempt = 0  # approved deletions sent, whose outcomes are not counted either

    @property
    def held(self) -> bool:
        return self.hold is not None

    def observe_synced(self, synced: int) -> None:
        """Record the synced count now and then, for "the synced count an hour ago"."""
        now = self._clock()
        if not self._samples or now - self._samples[-1][0] >= SAMPLE_EVERY_S:
            self._samples.append((now, synced))
        while len(self._samples) > 1 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()

    def baseline(self, synced_now: int) -> int:
        """The synced count about an hour ago (the oldest sample in the window)."""
        return self._samples[0][1] if self._samples else synced_now

    def deleted_in_window(self) -> int:
        now = self._clock()
        while self._deleted and now - self._deleted[0][0] >= WINDOW_S:
            self._deleted.popleft()
        return sum(n for _, n in self._deleted)

    def note_deleted(self, count: int) -> None:
        exempt = min(count, self._exempt)
        self._exempt -= exempt
        count -= exempt
        if count:
            self._deleted.append((self._clock(), count))

    def allows(self, batch_deletes: int, waiting: int, synced_now: int) -> bool:
        """Whether this batch's deletions may go (``waiting`` more are owed after them).

        Sets the hold when they may not.
        """
        if batch_deletes and batch_deletes <= self._allowance:
            self._allowance -= batch_deletes
            self._exempt += batch_deletes
            return True
        if self.hold is not None:
            return False
        self.observe_synced(synced_now)
        baseline = self.baseline(synced_now)
        if baseline < self.min_members:
            return True
        deletes = self.deleted_in_window() + batch_deletes + waiting
        if deletes <= self.max_fraction * baseline:
            return True
        self.hold = Hold(
            datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            deletes,
            baseline,
        )
        return False

    def restore(self, record: dict[str, Any]) -> None:
        """A hold read back from state: kept unless the limit has been raised above it."""
        if not record.get("held"):
            return
        deletes = int(record.get("deletes", 0))
        synced = int(record.get("synced", 0))
        if synced >= self.min_members and deletes > self.max_fraction * synced:
            self.hold = Hold(str(record.get("since", "")), deletes, synced)

    def release(self, approved: int) -> None:
        """Approved: ``approved`` held deletions go; the window starts again after them."""
        self.hold = None
        self._allowance = approved
        self._deleted.clear()
        self._samples.clear()
