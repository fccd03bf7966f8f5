"""Shared test helpers: free loopback ports, the shared corpus location, the clock guard, and
one real-parts world for in-process end-to-end tests.

The world: `relay` (a recording SMTP server), `config_file` (tmp_path/mailflow.toml: the test
domain, data in `data_dir`, the relay, plus what the module's `app_settings` fixture adds),
`app` (`mailflow.app.build` of it, signing with `SECRET` from `environ`), `clock` (a settable
clock the listener reads) and `listening` (the app's SMTP listener started on a free port).
A test module configures it by overriding `app_settings`, `clock`, `data_dir` or `environ`.

The clock guard: with `MAILFLOW_TEST_SHIFT_DAYS=N` in the environment (CI's second run), every
in-process wall clock (`time.time`, `datetime.now`, `date.today`, ...) starts N days ahead of
today for the whole session and keeps ticking, through `time-machine`. A test that reads the
wall clock somewhere and a simulated clock elsewhere then sees the two disagree by N days and
fails, so a time bomb shows up today instead of on the day it goes off. Monotonic clocks are
left alone (timeouts and waits stay real). Subprocesses get the test's clock explicitly, with
the global `mailflow --now` option: see `clitools.now_args`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHIFT_ENV = "MAILFLOW_TEST_SHIFT_DAYS"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


def shift_days() -> int:
    """How far CI's guard run moves the wall clock ahead (0: not moved)."""
    raw = os.environ.get(SHIFT_ENV, "").strip()
    return int(raw) if raw else 0


@pytest.fixture(scope="session", autouse=True)
def _shifted_wall_clock() -> Iterator[None]:
    days = shift_days()
    if not days:
        yield
        return
    import time_machine

    traveller = time_machine.travel(datetime.now(UTC) + timedelta(days=days), tick=True)
    traveller.start()
    try:
        yield
    finally:
        traveller.stop()


def pytest_report_header(config: pytest.Config) -> str:
    days = shift_days()
    if not days:
        return "wall clock: real"
    return f"wall clock: shifted {days} days ahead ({SHIFT_ENV})"


def now_args(now: datetime | None = None) -> list[str]:
    """The global `--now` for a `mailflow` subprocess, so it shares the test's clock.

    Default: this process's wall clock, which CI's guard run shifts; a subprocess that read its
    own wall clock instead would then be 400 days behind the test and fail it.
    """
    return ["--now", (now or datetime.now(UTC)).isoformat()]


def die_with_parent() -> None:
    """`preexec_fn` for long-running `mailflow` subprocesses: SIGKILL them when the test
    process goes away, so a test killed by its timeout leaves no `serve` running behind it."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


# -- the shared world ---------------------------------------------------------------------------

DOMAIN = "hot.example.com"
SECRET = "crash-and-hostile-test-secret-0123456789"


class SettableClock:
    """A clock that says what the test sets (`clock.now = ...`)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class OnClock:
    """A test world whose `now` is its `clock`'s (setting it moves the listener's time too)."""

    clock: SettableClock

    @property
    def now(self) -> datetime:
        return self.clock.now

    @now.setter
    def now(self, value: datetime) -> None:
        self.clock.now = value


@pytest.fixture
def relay() -> Iterator[Any]:
    from smtp_recorder import RecordingSMTPServer

    with RecordingSMTPServer() as server:
        yield server


@pytest.fixture
def app_settings() -> dict[str, dict[str, Any]]:
    """Config keys a test module adds to the world's config, by section (override me)."""
    return {}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def environ() -> dict[str, str]:
    """The environment the world's app and CLI read: the token key."""
    return {"MAILFLOW_SECRET": SECRET}


@pytest.fixture
def config_file(
    tmp_path: Path, data_dir: Path, relay: Any, app_settings: dict[str, dict[str, Any]]
) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "service": {"domain": DOMAIN, "data_dir": str(data_dir)},
        "relay": {"host": "127.0.0.1", "port": relay.port, "timeout_seconds": 5},
    }
    for name, values in app_settings.items():
        sections.setdefault(name, {}).update(values)
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path = tmp_path / "mailflow.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def app(config_file: Path, environ: dict[str, str]) -> Any:
    from mailflow.app import build
    from mailflow.config import load

    return build(load(config_file, environ))


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))


@pytest.fixture
def listening(app: Any, port: int, clock: SettableClock) -> Iterator[Any]:
    listener = app.listener(clock, host="127.0.0.1", port=port)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


# -- the browser (admin-site tests) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright (never a browser of Playwright's own).

    One per test module: the sync API keeps an event loop on this thread while it runs, which
    must not outlive the module into tests that run their own loops.
    """
    from playwright.sync_api import expect, sync_playwright
    from webtools import launch_browser

    # expect() waits 5 s by default; the live preview runs `templates check` (~0.7 s alone),
    # and this machine is shared: give every assertion the same bounded 15 s.
    expect.set_options(timeout=15_000)

    with sync_playwright() as pw:
        chromium = launch_browser(pw)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()
