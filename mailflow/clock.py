"""The clock: the one module that reads the system's wall clock.

Domain code never asks what time it is; it is handed `now` (a timezone-aware UTC datetime).
The edges (the command line, `serve`, the tests) hold a `Clock` and call it where a use case
starts. `mailflow --now ISO8601` runs a command as of that instant: one-shot commands see
exactly that instant (`fixed_clock`), while `serve` and `web` start their clock there and let it
run on (`shifted_clock`), which is what rehearsals and subprocess tests need.

`JumpWatch` is for the `schedule` library, which `serve` drives (a fixed choice): it compares
naive local time, so a wall clock stepped back (by hand, by NTP after a long drift) or the
host zone leaving DST would leave its next run an hour ahead and stall every tick. The watch
compares the local wall clock with the monotonic clock; `serve` re-arms the library's jobs
when the two disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def local_wall_clock() -> datetime:
    """Naive local time: what the `schedule` library reads (and only it needs)."""
    return datetime.now()


JUMP_TOLERANCE_SECONDS = 2.0  # far above scheduling jitter, far below a DST hour


@dataclass
class JumpWatch:
    """Notices a jump of the local wall clock against the monotonic clock.

    `jumped()` answers, each time it is asked, how far the wall clock moved since the last
    time beyond what really elapsed (None: less than the tolerance). Steps back and forth,
    and a change of the host zone's UTC offset (DST), all show; a slow NTP slew does not.
    """

    wall: Callable[[], datetime] = local_wall_clock
    monotonic: Callable[[], float] = time.monotonic
    tolerance: float = JUMP_TOLERANCE_SECONDS
    _last: tuple[datetime, float] | None = field(default=None, init=False, repr=False)

    def jumped(self) -> timedelta | None:
        wall, mono = self.wall(), self.monotonic()
        last, self._last = self._last, (wall, mono)
        if last is None:
            return None
        drift = (wall - last[0]).total_seconds() - (mono - last[1])
        return timedelta(seconds=drift) if abs(drift) > self.tolerance else None


def _aware_utc(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("a clock needs a timezone-aware instant")
    return instant.astimezone(UTC)
