"""`mailflow demo`: one whole week in simulated time, in a temporary data directory.

It runs the real parts (`app.build`): the store, the scheduler, the templates, the outbox
(writing .eml files), and the SMTP listener on a free loopback port, to which the member's
reply is sent with smtplib. Only the clock is simulated, by passing `now` to each tick.
"""

from __future__ import annotations

import smtplib
import socket
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

from mailflow.app import build
from mailflow.config import from_mapping
from mailflow.models import Person
from mailflow.partnerships import new_partnership


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _text_of(path: Path) -> tuple[EmailMessage, str]:
    msg = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    body = msg.get_body(preferencelist=("plain",))
    return msg, body.get_content() if body is not None else ""


def _show(echo: Callable[[str], None], title: str, path: Path) -> EmailMessage:
    msg, text = _text_of(path)
    echo(f"\n=== {title} ===")
    for name in ("From", "To", "Reply-To", "Subject"):
        if msg[name]:
            echo(f"{name}: {msg[name]}")
    echo("")
    echo(text.rstrip())
    return msg


def _send(port: int, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(msg)


def _reply(to: EmailMessage, sender: str, mid: str, body: str, quoted_text: str) -> EmailMessage:
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = to["Reply-To"]
    reply["Subject"] = "Re: " + str(to["Subject"])
    reply["Message-ID"] = mid
    reply["In-Reply-To"] = to["Message-ID"]
    quoted = "\n".join("> " + line for line in quoted_text.splitlines())
    reply.set_content(f"{body}\n\nOn Monday, mailflow wrote:\n{quoted}\n")
    return reply


class _Week:
    """The demo's world: one app on a temporary data dir, its listener, a settable clock."""

    def __init__(self, echo: Callable[[str], None], tmp: str, now: datetime) -> None:
        self.echo = echo
        self.port = _free_port()
        self.config = from_mapping(
            {
                "service": {
                    "domain": "demo.mailflow.localhost",
                    "data_dir": str(Path(tmp) / "data"),
                    "timezone": "Europe/Berlin",
                },
                "listener": {"port": self.port},
            }
        )
        self.app = build(self.config)
        # Monday 09:00 in Berlin of the week after next: a fresh, whole week.
        berlin = ZoneInfo("Europe/Berlin")
        today = now.astimezone(berlin).date()
        self.monday = today + timedelta(days=14 - today.weekday())
        self.at = datetime(
            self.monday.year, self.monday.month, self.monday.day, 9, 0, tzinfo=berlin
        )
        # Created on the Friday before at 15:00 in Berlin (09:00 for Grace in New York): the
        # introductions arrive in both people's daytime, outside their quiet hours.
        self.now = self.at - timedelta(days=3) + timedelta(hours=6)
        self.outbox = self.app.data_dir / "outbox"
        self.listener = self.app.listener(
            lambda: self.now, max_message_bytes=1 << 20, timeout_seconds=10, max_connections=10
        )

    def populate(self) -> None:
        """Ada (Berlin) learns public speaking from Grace (New York)."""
        with self.app.store.core_tx() as core:
            core.put_person(ADA)
            core.put_person(GRACE)
            people = core.directory
            p = new_partnership(
                pid=1,
                member=ADA.email,
                partner=GRACE.email,
                skill="public speaking",
                goals=[
                    f"{self.monday + timedelta(days=30)} Give a 10-minute talk at the all-hands",
                    f"{self.monday + timedelta(days=60)} Speak at the regional meetup",
                ],
                why="I want to lead the design reviews, and that means speaking up.",
                saddle="Ada, one bad week is data, not a verdict. Book the room for Thursday.",
                people=people,
                existing=[],
                now=self.now,
                start=self.monday.isoformat(),
            )
            core.put_partnership(p)

    def tick(self, when: datetime, note: str = "") -> None:
        self.now = when
        self.echo(f"\n[{when:%a %d %b %H:%M %Z}] tick{note}")
        for line in self.app.tick(when).lines or ["nothing due"]:
            self.echo(f"  {line}")

    def sent(self, pattern: str) -> Path:
        return next(self.outbox.glob(pattern))

    def answer(self, pattern: str, sender: str, mid: str, body: str) -> None:
        """Reply to the mail matching `pattern` from `sender`, through the listener."""
        mail = self.sent(pattern)
        _send(self.port, _reply(_text_of(mail)[0], sender, mid, body, _text_of(mail)[1]))


ADA = Person("ada@demo.example.com", "Ada Lovelace", "Engineering", None, "Europe/Berlin")
GRACE = Person(
    "grace@demo.example.com",
    "Grace Hopper",
    "Sales",
    None,
    "America/New_York",
    offers=("public speaking",),
)
REPORT = (
    "Done: rehearsed the all-hands talk twice, once in front of a mirror.\n"
    "Setback: I missed Thursday's practice slot - a release went wrong.\n"
    "Next: book the room for Thursday and run it with two colleagues.\n\n"
    "Sent from my iPhone"
)


def run_demo(echo: Callable[[str], None], now: datetime) -> None:
    """The demo week, set two weeks after `now` (the CLI's clock), in a temporary data dir."""
    with tempfile.TemporaryDirectory(prefix="mailflow-demo-") as tmp:
        week = _Week(echo, tmp, now)
        week.populate()
        echo(f"demo data dir: {tmp}/data (removed afterwards)")
        week.listener.start()
        try:
            _play(week)
        finally:
            week.listener.stop()


def _play(week: _Week) -> None:
    echo, at = week.echo, week.at
    week.tick(week.now, " (partnership just created)")
    _show(echo, "introduction to the partner", week.sent("intro*partner*"))
    week.now += timedelta(hours=2)
    echo(f"\n=== [{week.now:%a %d %b %H:%M %Z}] the partner replies: Yes, happy to help ===")
    grace = f"Grace Hopper <{GRACE.email}>"
    week.answer("intro*partner*", grace, "<demo-yes@example.com>", "Yes, happy to help!")
    week.tick(week.now)
    week.tick(at)
    _show(echo, "check-in to the member", week.sent("checkin*.eml"))
    week.now = at + timedelta(hours=30)  # Tuesday 15:00 in Berlin, 09:00 in New York
    echo(
        f"\n=== [{week.now:%a %d %b %H:%M %Z}] the member replies (smtplib to the "
        "Reply-To, through the listener) ==="
    )
    echo(REPORT.split("\n\nSent from")[0])
    week.answer("checkin*.eml", f"Ada Lovelace <{ADA.email}>", "<demo-reply-1@example.com>", REPORT)
    week.tick(week.now + timedelta(minutes=1))
    week.tick(week.now + timedelta(minutes=1 + week.config.schedule.digest_delay_minutes))
    _show(echo, "digest to the partner", week.sent("digest*.eml"))
    week.tick(at + timedelta(days=6), " (rest of the week)")
