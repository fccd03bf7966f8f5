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


def shift_days() -> float:
    """How far CI's guard run moves the wall clock ahead (0: not moved). A fraction moves the
    time of day too (`400.5`: 400 days and 12 hours), to rehearse a run at night."""
    raw = os.environ.get(SHIFT_ENV, "").strip()
    return float(raw) if raw else 0


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


# -- a simulated week, relative to the wall clock ------------------------------------------------


def next_monday(hour: int = 0, zone: str = "UTC") -> datetime:
    """The first Monday after today (the wall clock's, shifted in CI's guard run), at `hour`
    in `zone`, as UTC: the one simulated "now" a test builds its dates on, so every date it
    uses moves with the guard run's clock."""
    from zoneinfo import ZoneInfo

    today = datetime.now(UTC).date()
    monday = today + timedelta(days=7 - today.weekday())
    return datetime(monday.year, monday.month, monday.day, hour, tzinfo=ZoneInfo(zone)).astimezone(
        UTC
    )


class MailWorld(OnClock):
    """The shared world driven as people would: the CLI in-process (`main(argv, clock=...)`),
    the app's listener on loopback, the recording relay, one settable clock for all of them.

    `cli(...)` runs a command (stdout, or stderr when `code` is not 0); `add_person`,
    `add(...)` make people and partnerships (goals relative to the clock); `tick(when)` runs
    the app's jobs at `when`; `send(msg)` speaks SMTP to the listener; `mail_to`, `last_to`
    and `find` read what the relay got.
    """

    def __init__(
        self,
        app: Any,
        listening: Any,
        relay: Any,
        config_file: Path,
        environ: dict[str, str],
        clock: SettableClock,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.app = app
        self.relay = relay
        self.capsys = capsys
        self.port = listening.options.port
        self.config_path = config_file
        self.environ = environ
        self.clock = clock

    def cli(self, *args: str, code: int = 0) -> str:
        from mailflow.cli import main

        self.capsys.readouterr()
        got = main(
            ["--config", str(self.config_path), *args], clock=lambda: self.now, environ=self.environ
        )
        out, err = self.capsys.readouterr()
        assert got == code, (out, err)
        assert "Traceback" not in err
        return out if code == 0 else err

    def add_person(self, email: str, dept: str, zone: str = "UTC", *extra: str) -> None:
        name = email.split("@")[0].title()
        self.cli("people", "add", email, "--name", name, "--department", dept, "--timezone", zone,
                 *extra)  # fmt: skip

    def add(self, member: str, partner: str, *extra: str, skill: str = "public speaking") -> int:
        """A partnership whose goals are due 30 and 60 days from now; its id."""
        today = self.now.date()
        out = self.cli(
            "partnerships", "add", "--member", member, "--partner", partner, "--skill", skill,
            "--goal", f"{today + timedelta(days=30)} Give the all-hands talk",
            "--goal", f"{today + timedelta(days=60)} Speak at the meetup",
            "--why", "I want to lead design reviews", "--saddle", "Book the room again", *extra,
        )  # fmt: skip
        return int(out.strip().splitlines()[-1])

    def tick(self, when: datetime | None = None) -> list[str]:
        if when is not None:
            self.now = when
        return list(self.app.tick(self.now).lines)

    def send(self, msg: Any, rcpt: str | None = None) -> None:
        import smtplib

        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
            refused = smtp.send_message(msg, to_addrs=[rcpt] if rcpt else None)
            assert refused == {}

    def mail_to(self, address: str, subject_part: str = "") -> list[Any]:
        return [
            m
            for m in self.relay.messages
            if m.rcpt_tos == (address,)
            and subject_part.lower() in str(m.message["Subject"]).lower()
        ]

    def last_to(self, address: str, subject_part: str = "") -> Any:
        found = self.mail_to(address, subject_part)
        assert found, f"nothing to {address} with {subject_part!r}: " + ", ".join(
            f"{m.rcpt_tos[0]}: {m.message['Subject']}" for m in self.relay.messages
        )
        return found[-1]

    def find(self, address: str, words: str) -> Any:
        """The latest message to `address` whose text contains `words`."""
        from smtp_recorder import text_of

        for m in reversed(self.mail_to(address)):
            if words.lower() in text_of(m).lower():
                return m
        raise AssertionError(f"no mail to {address} containing {words!r}")

    def show(self, pid: int) -> dict[str, Any]:
        return dict(json.loads(self.cli("partnerships", "show", str(pid), "--json")))

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "--json")))


_message_numbers = iter(range(1, 10**9))


def answer(to: Any, sender: str, body: str) -> Any:
    """A reply from a mail client to a recorded message: to its Reply-To (else its From),
    quoting it, with In-Reply-To."""
    from email.message import EmailMessage

    from smtp_recorder import text_of

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to.message["Reply-To"] or to.message["From"]
    msg["Subject"] = "Re: " + str(to.message["Subject"])
    msg["Message-ID"] = f"<a{next(_message_numbers)}@example.com>"
    msg["In-Reply-To"] = to.message["Message-ID"]
    quoted = "\n".join("> " + line for line in text_of(to).splitlines())
    msg.set_content(f"{body}\n\nOn Monday, Hot Team wrote:\n{quoted}\n")
    return msg


def letter(sender: str, to: str, subject: str, body: str, **headers: str) -> Any:
    """A new message (no reply) from `sender` to `to`."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<n{next(_message_numbers)}@example.com>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


@pytest.fixture
def mailworld(
    app: Any,
    listening: Any,
    relay: Any,
    config_file: Path,
    environ: dict[str, str],
    clock: SettableClock,
    capsys: pytest.CaptureFixture[str],
) -> MailWorld:
    return MailWorld(app, listening, relay, config_file, environ, clock, capsys)
