"""The clock: the one module that reads the system's wall clock.

Domain code never asks what time it is; it is handed `now` (a timezone-aware UTC datetime).
The edges (the command line, `serve`, the tests) hold a `Clock` and call it where a use case
starts. `mailflow --now ISO8601` runs a command as of that instant: one-shot commands see
exactly that instant (`fixed_clock`), while `serve` and `web` start their clock there and let it
run on (`shifted_clock`), which is what rehearsals and subprocess tests need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The wall clock, timezone-aware UTC. The only `datetime.now` in the package."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class FixedClock:
    """Always the same instant (aware UTC). A value, so it can cross to another process."""

    instant: datetime

    def __call__(self) -> datetime:
        return self.instant


@dataclass(frozen=True)
class ShiftedClock:
    """The system clock moved by a fixed offset: starts at an instant and runs on from there.

    A value (picklable), so `serve` can hand it to its ingest process, which then keeps the same
    time as the parent.
    """

    offset: timedelta

    def __call__(self) -> datetime:
        return system_clock() + self.offset


def fixed_clock(instant: datetime) -> FixedClock:
    """A clock that stays at `instant` (must be timezone-aware; kept as UTC)."""
    return FixedClock(_aware_utc(instant))


def shifted_clock(start: datetime, base: Clock = system_clock) -> ShiftedClock:
    """A clock that reads `start` now and advances in step with the system clock."""
    return ShiftedClock(_aware_utc(start) - base())


def _aware_utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("a clock needs a timezone-aware instant")
    return instant.astimezone(UTC)
