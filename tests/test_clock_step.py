"""A clock step cannot stall the scheduler (issue 12, "passing errors stay passing").

Before: the wall clock stepping back an hour, or the host zone leaving DST, stalled `serve`'s
ticks for that hour: the `schedule` library (a fixed choice) compares naive local time, so its
next run lay an hour ahead. Now `serve` watches the local wall clock against the monotonic
clock (`clock.JumpWatch`) and re-arms the library's jobs when it jumps.

The step is made with time-machine (the one part that cannot run here: nobody may set this
machine's clock); everything else is real: `serve` in a thread, its listener, the store, a
recording relay.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from conftest import SettableClock

from mailflow.app import App, serve
from mailflow.cli import main
from mailflow.clock import JumpWatch

MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def test_the_watch_sees_steps_but_not_time_passing() -> None:
    mono = Ticks()
    wall = datetime(2026, 11, 30, 10, 0)
    watch = JumpWatch(lambda: wall, mono)
    assert watch.jumped() is None  # the first reading only starts it
    for seconds in (1.0, 1.0, 0.1, 30.0):  # time passing, seen a little late: no jump
        mono.value += seconds
        wall += timedelta(seconds=seconds + 0.5)
        assert watch.jumped() is None
    mono.value += 1
    wall -= timedelta(hours=1)  # stepped back by an hour within that second
    assert watch.jumped() == timedelta(hours=-1, seconds=-1)
    mono.value += 1
    wall += timedelta(minutes=10, seconds=1)
    assert watch.jumped() == timedelta(minutes=10)


def test_the_watch_sees_the_dst_change_of_local_time() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    instant = datetime(2026, 10, 25, 0, 59, 59, tzinfo=UTC)  # 02:59:59 CEST
    mono = Ticks()
    watch = JumpWatch(lambda: instant.astimezone(berlin).replace(tzinfo=None), mono)
    watch.jumped()
    instant += timedelta(seconds=1)  # 02:00:00 CET
    mono.value += 1
    assert watch.jumped() == timedelta(hours=-1)


@pytest.fixture
def app_settings(port: int) -> dict[str, dict[str, Any]]:
    return {"listener": {"port": port}, "schedule": {"tick_seconds": 1}}


def _cli(config_file: Path, environ: dict[str, str], clock: SettableClock, *args: str) -> None:
    assert main(["--config", str(config_file), *args], clock=clock, environ=environ) == 0


def _checkins(relay: Any) -> list[Any]:
    return [m for m in relay.messages if "check-in" in str(m.message["Subject"]).lower()]


@pytest.mark.parametrize("step", [timedelta(hours=-1), timedelta(hours=-25)])
def test_serve_keeps_ticking_after_the_wall_clock_steps_back(
    app: App, relay: Any, config_file: Path, environ: dict[str, str], step: timedelta
) -> None:
    clock = SettableClock(MONDAY - timedelta(days=1))
    for email, name, dept in (("ada@example.com", "Ada", "Eng"), ("gr@example.com", "Gr", "Ops")):
        _cli(config_file, environ, clock, "people", "add", email, "--name", name,
             "--department", dept)  # fmt: skip
    _cli(config_file, environ, clock, "partnerships", "add", "--member", "ada@example.com",
         "--partner", "gr@example.com", "--skill", "sql", "--goal", "2027-01-31 A join a day",
         "--why", "reports", "--saddle", "practice", "--start", "2026-11-30",
         "--accepted")  # fmt: skip
    stop, ready = threading.Event(), threading.Event()
    with time_machine.travel(datetime.now(UTC), tick=True) as traveller:
        thread = threading.Thread(
            target=serve, args=(app, clock, stop, ready.set), kwargs={"ingest_process": False}
        )
        thread.start()
        try:
            assert ready.wait(30), "serve did not start"
            time.sleep(1.5)  # a scheduled tick or two on the old wall clock
            traveller.shift(step)
            clock.now = MONDAY + timedelta(minutes=1)  # the check-in is due now
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not _checkins(relay):
                time.sleep(0.1)
            assert [m.rcpt_tos for m in _checkins(relay)] == [("ada@example.com",)]
        finally:
            stop.set()
            thread.join(30)
    assert not thread.is_alive()
