"""`mailflow demo`: one whole week in simulated time, in a temporary data directory.

It runs the real parts: the store, the scheduler, the templates, the outbox (writing .eml
files), and the SMTP listener on a free loopback port, to which the member's reply is sent
with smtplib. Only the clock is simulated, by passing `now` to each tick.
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

from mailflow.config import from_mapping
from mailflow.models import Person
from mailflow.partnerships import new_partnership
from mailflow.service import Service


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


def run_demo(echo: Callable[[str], None], now: datetime) -> None:
    """The demo week, set two weeks after `now` (the CLI's clock), in a temporary data dir."""
    from mailflow.inbox import Listener, ListenerOptions

    with tempfile.TemporaryDirectory(prefix="mailflow-demo-") as tmp:
        port = _free_port()
        config = from_mapping(
            {
                "service": {
                    "domain": "demo.mailflow.localhost",
                    "data_dir": str(Path(tmp) / "data"),
                    "timezone": "Europe/Berlin",
                },
                "listener": {"port": port},
            }
        )
        service = Service(config)
        # Monday 09:00 in Berlin of the week after next: a fresh, whole week.
        berlin = ZoneInfo("Europe/Berlin")
        today = now.astimezone(berlin).date()
        monday = today + timedelta(days=14 - today.weekday())
        at = datetime(monday.year, monday.month, monday.day, 9, 0, tzinfo=berlin)
        clock = [at - timedelta(days=3)]
        ada = Person("ada@demo.example.com", "Ada Lovelace", "Engineering", None, "Europe/Berlin")
        grace = Person(
            "grace@demo.example.com",
            "Grace Hopper",
            "Sales",
            None,
            "America/New_York",
            offers=("public speaking",),
        )
        with service.store.core_tx() as core:
            core.put_person(ada)
            core.put_person(grace)
            people = {p.email: p for p in core.people()}
            p = new_partnership(
                pid=1,
                member=ada.email,
                partner=grace.email,
                skill="public speaking",
                goals=[
                    f"{monday + timedelta(days=30)} Give a 10-minute talk at the all-hands",
                    f"{monday + timedelta(days=60)} Speak at the regional meetup",
                ],
                why="I want to lead the design reviews, and that means speaking up.",
                saddle="Ada, one bad week is data, not a verdict. Book the room for Thursday.",
                people=people,
                existing=[],
                now=clock[0],
                start=monday.isoformat(),
            )
            core.put_partnership(p)
        outbox = service.data_dir / "outbox"
        listener = Listener(
            ListenerOptions(
                host="127.0.0.1",
                port=port,
                max_message_bytes=1 << 20,
                timeout_seconds=10,
                max_connections=10,
                hostname=config.service.domain,
            ),
            service.spool,
            service.rcpt_policy,
            lambda _id: None,
            lambda: clock[0],
        )

        def tick(when: datetime, note: str = "") -> None:
            clock[0] = when
            echo(f"\n[{when:%a %d %b %H:%M %Z}] tick{note}")
            for line in service.tick(when).lines or ["nothing due"]:
                echo(f"  {line}")

        echo(f"demo data dir: {tmp}/data (removed afterwards)")
        listener.start()
        try:
            tick(clock[0], " (partnership just created)")
            intro = _show(echo, "introduction to the partner", next(outbox.glob("intro*partner*")))
            clock[0] += timedelta(hours=2)
            echo(
                f"\n=== [{clock[0]:%a %d %b %H:%M %Z}] the partner replies: Yes, happy to help ==="
            )
            _send(
                port,
                _reply(
                    intro,
                    f"Grace Hopper <{grace.email}>",
                    "<demo-yes@example.com>",
                    "Yes, happy to help!",
                    _text_of(next(outbox.glob("intro*partner*")))[1],
                ),
            )
            tick(clock[0])
            tick(at)
            checkin = _show(echo, "check-in to the member", next(outbox.glob("checkin*.eml")))
            clock[0] = at + timedelta(hours=25, minutes=30)
            body = (
                "Done: rehearsed the all-hands talk twice, once in front of a mirror.\n"
                "Setback: I missed Thursday's practice slot - a release went wrong.\n"
                "Next: book the room for Thursday and run it with two colleagues.\n\n"
                "Sent from my iPhone"
            )
            echo(
                f"\n=== [{clock[0]:%a %d %b %H:%M %Z}] the member replies (smtplib to the "
                "Reply-To, through the listener) ==="
            )
            echo(body.split("\n\nSent from")[0])
            _send(
                port,
                _reply(
                    checkin,
                    f"Ada Lovelace <{ada.email}>",
                    "<demo-reply-1@example.com>",
                    body,
                    _text_of(next(outbox.glob("checkin*.eml")))[1],
                ),
            )
            tick(clock[0] + timedelta(minutes=1))
            tick(clock[0] + timedelta(minutes=1 + config.schedule.digest_delay_minutes))
            _show(echo, "digest to the partner", next(outbox.glob("digest*.eml")))
            tick(at + timedelta(days=6), " (rest of the week)")
        finally:
            listener.stop()
