"""Issue 13: under `serve`, what ingest queues leaves within seconds, not at the next tick.

`serve` runs for real in a thread (listener on a free loopback port, ingest thread, sender,
scheduler) with `tick_seconds` set to an hour, so only the sender woken by ingest can deliver
the partner's consent receipt before the test's bounded wait runs out. The clock is the
test's simulated one; the waits are real (bounded) time.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import MailWorld, SettableClock, answer, next_monday

from mailflow.app import serve

ADA, GRACE = "ada@example.com", "grace@example.com"
WAIT_SECONDS = 20  # the bound of every wait here (the sender wakes within about a second)


@pytest.fixture
def app_settings(port: int) -> dict[str, dict[str, Any]]:
    return {
        "listener": {"host": "127.0.0.1", "port": port},
        "schedule": {"tick_seconds": 3600, "digest_delay_minutes": 0},
    }


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(next_monday(11) - timedelta(days=3))  # a Friday, 11:00 UTC


@pytest.fixture
def listening(port: int) -> Any:
    """No separate listener: `serve` starts its own on the configured port."""
    return SimpleNamespace(options=SimpleNamespace(port=port))


def wait_for(condition: Any) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture
def serving(mailworld: MailWorld, app: Any, clock: SettableClock) -> Iterator[MailWorld]:
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(app, clock, stop, ready.set)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="test-serve", daemon=True)
    thread.start()
    try:
        assert ready.wait(WAIT_SECONDS) and not errors, errors
        yield mailworld
    finally:
        stop.set()
        thread.join(WAIT_SECONDS)
        assert not thread.is_alive()


def test_the_consent_receipt_leaves_seconds_after_the_answer(serving: MailWorld) -> None:
    world = serving
    world.add_person(ADA, "Eng")
    world.add_person(GRACE, "Sales", "UTC", "--offers", "public speaking")
    pid = world.add(ADA, GRACE)
    intro = world.last_to(GRACE)
    before = len(world.relay.messages)
    with smtplib.SMTP("127.0.0.1", world.port, timeout=10) as smtp:
        assert smtp.send_message(answer(intro, GRACE, "Yes, happy to help.")) == {}
    # No tick is due for an hour: only the sender that ingest woke delivers these.
    assert wait_for(lambda: len(world.mail_to(GRACE)) == 2), [
        str(m.message["Subject"]) for m in world.relay.messages[before:]
    ]
    assert wait_for(lambda: len(world.mail_to(ADA)) == 2)  # she hears the partner said yes
    assert world.show(pid)["consent"] == "accepted"
