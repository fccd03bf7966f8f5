"""`mailflow demo`: one whole week in simulated time, in a temporary data directory.

It runs the real parts: the store, the scheduler, the templates, the outbox (writing .eml
files), and the SMTP listener on a free loopback port, to which the member's reply is sent
with smtplib. Only the clock is simulated, by passing `now` to each tick.
"""

from __future__ import annotations

import smtplib
import socket
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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


def run_demo(echo: Callable[[str], None]) -> None:
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
        today = datetime.now(UTC).astimezone(berlin).date()
        monday = today + timedelta(days=14 - today.weekday())
        at = datetime(monday.year, monday.month, monday.day, 9, 0, tzinfo=berlin)
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
                now=at - timedelta(days=3),
                start=monday.isoformat(),
            )
            core.put_partnership(p)
        echo(f"demo data dir: {tmp}/data (removed afterwards)")
        echo(f"[{at:%a %d %b %H:%M %Z}] tick")
        for line in service.tick(at).lines:
            echo(f"  {line}")
        outbox = service.data_dir / "outbox"
        checkin = _show(echo, "check-in to the member", next(outbox.glob("checkin*.eml")))

        stop = threading.Event()
        replied_at = at + timedelta(hours=25, minutes=30)
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
            lambda: replied_at,
        )
        listener.start()
        try:
            reply = EmailMessage()
            reply["From"] = f"Ada Lovelace <{ada.email}>"
            reply["To"] = checkin["Reply-To"]
            reply["Subject"] = "Re: " + str(checkin["Subject"])
            reply["Message-ID"] = "<demo-reply-1@demo.example.com>"
            reply["In-Reply-To"] = checkin["Message-ID"]
            _, checkin_text = _text_of(next(outbox.glob("checkin*.eml")))
            quoted = "\n".join("> " + line for line in checkin_text.splitlines())
            reply.set_content(
                "Done: rehearsed the all-hands talk twice, once in front of a mirror.\n"
                "Setback: I missed Thursday's practice slot - a release went wrong.\n"
                "Next: book the room for Thursday and run it with two colleagues.\n\n"
                "Sent from my iPhone\n\n"
                f"On Mon, {monday:%d %b %Y} at 09:00, mailflow wrote:\n{quoted}\n"
            )
            echo(
                f"\n=== [{replied_at:%a %d %b %H:%M %Z}] the member replies (smtplib to the "
                "Reply-To, through the listener) ==="
            )
            echo(reply.get_content().split("\n\nSent from")[0])
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.send_message(reply)
        finally:
            listener.stop()
            stop.set()
        later = replied_at + timedelta(minutes=1)
        echo(f"\n[{later:%a %d %b %H:%M %Z}] tick")
        for line in service.tick(later).lines:
            echo(f"  {line}")
        digest_time = later + timedelta(minutes=config.schedule.digest_delay_minutes)
        echo(f"[{digest_time:%a %d %b %H:%M %Z}] tick")
        for line in service.tick(digest_time).lines:
            echo(f"  {line}")
        _show(echo, "digest to the partner", next(outbox.glob("digest*.eml")))
        end = at + timedelta(days=6)
        echo(f"\n[{end:%a %d %b %H:%M %Z}] tick (rest of the week)")
        for line in service.tick(end).lines or ["nothing due"]:
            echo(f"  {line}")
