"""Partners and members in the loop, end to end over SMTP on loopback (issue 6).

Each test drives the product as people would: the CLI creates people and partnerships, the
real listener (aiosmtpd on a free loopback port) receives replies sent with smtplib to the
addresses our mails carry, a recording SMTP relay receives what we send, and the store is
real TinyDB files under tmp_path. Only the clock is simulated: ticks run at chosen instants.
"""

from __future__ import annotations

import csv
import io
import json
import smtplib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import DOMAIN, OnClock, SettableClock
from smtp_recorder import RecordedMessage, RecordingSMTPServer, html_of, text_of

from mailflow.app import App
from mailflow.cli import main
from mailflow.inbox import Listener

ADMIN = "admin@example.com"
MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def app_settings() -> dict[str, dict[str, object]]:
    return {
        "service": {"admin_address": ADMIN},
        "schedule": {"digest_delay_minutes": 0, "consent_days": 5},
    }


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(MONDAY - timedelta(days=7))


class World(OnClock):
    """The CLI and the shared app world (conftest): its listener, relay and settable clock."""

    def __init__(
        self,
        app: App,
        listening: Listener,
        relay: RecordingSMTPServer,
        config_file: Path,
        environ: dict[str, str],
        clock: SettableClock,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.service = app
        self.relay = relay
        self.capsys = capsys
        self.listen = listening.options.port
        self.config_path = config_file
        self.environ = environ
        self.clock = clock
        for email, name, dept in (
            ("ada@example.com", "Ada", "Eng"),
            ("grace@example.com", "Grace", "Sales"),
            ("linus@example.com", "Linus", "Ops"),
        ):
            self.cli(
                "people",
                "add",
                email,
                "--name",
                name,
                "--department",
                dept,
                "--offers",
                "public speaking",
            )

    def cli(self, *args: str, code: int = 0) -> str:
        self.capsys.readouterr()
        # The CLI runs on the world's clock, like the service and the listener.
        argv = ["--config", str(self.config_path), *args]
        got = main(argv, clock=lambda: self.now, environ=self.environ)
        out, err = self.capsys.readouterr()
        assert got == code, err
        assert "Traceback" not in err
        return out if code == 0 else err

    def add(
        self,
        member: str = "ada@example.com",
        partner: str = "grace@example.com",
        skill: str = "public speaking",
        *extra: str,
    ) -> int:
        out = self.cli(
            "partnerships",
            "add",
            "--member",
            member,
            "--partner",
            partner,
            "--skill",
            skill,
            "--goal",
            "2026-12-31 Give the all-hands talk",
            "--goal",
            "2027-01-31 Speak at the meetup",
            "--why",
            "I want to lead design reviews",
            "--saddle",
            "Book the room again",
            "--start",
            "2026-11-30",
            *extra,
        )
        return int(out.strip().splitlines()[-1])

    def tick(self, when: datetime) -> list[str]:
        self.now = when
        return self.service.tick(when).lines

    def send(self, msg: EmailMessage) -> None:
        with smtplib.SMTP("127.0.0.1", self.listen, timeout=10) as smtp:
            assert smtp.send_message(msg) == {}

    def mail_to(self, address: str, subject_part: str = "") -> list[RecordedMessage]:
        return [
            m
            for m in self.relay.messages
            if m.rcpt_tos == (address,)
            and subject_part.lower() in str(m.message["Subject"]).lower()
        ]

    def last_to(self, address: str, subject_part: str = "") -> RecordedMessage:
        found = self.mail_to(address, subject_part)
        assert found, f"nothing to {address} with {subject_part!r}: " + ", ".join(
            f"{m.rcpt_tos[0]}: {m.message['Subject']}" for m in self.relay.messages
        )
        return found[-1]

    def find(self, address: str, words: str) -> RecordedMessage:
        """The latest message to `address` whose text contains `words`."""
        for m in reversed(self.mail_to(address)):
            if words.lower() in text_of(m).lower():
                return m
        raise AssertionError(f"no mail to {address} containing {words!r}")

    def show(self, pid: int) -> dict:
        return json.loads(self.cli("partnerships", "show", str(pid), "--json"))

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json", "--now", self.now.isoformat()))


_counter = iter(range(1, 1_000_000))


def reply(to: RecordedMessage, sender: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to.message["Reply-To"]
    msg["Subject"] = "Re: " + str(to.message["Subject"])
    msg["Message-ID"] = f"<r{next(_counter)}@example.com>"
    msg["In-Reply-To"] = to.message["Message-ID"]
    quoted = "\n".join("> " + line for line in text_of(to).splitlines())
    msg.set_content(f"{body}\n\nOn Monday, mailflow wrote:\n{quoted}\n")
    return msg


def plain(sender: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f"checkin@{DOMAIN}"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<p{next(_counter)}@example.com>"
    msg.set_content(body)
    return msg


@pytest.fixture
def world(
    app: App,
    listening: Listener,
    relay: RecordingSMTPServer,
    config_file: Path,
    environ: dict[str, str],
    clock: SettableClock,
    capsys: pytest.CaptureFixture[str],
) -> World:
    return World(app, listening, relay, config_file, environ, clock, capsys)


def accepted(world: World, **kw: str) -> int:
    """A partnership whose partner said yes by email."""
    pid = world.add(**kw)
    intro = world.last_to(kw.get("partner", "grace@example.com"), "partner")
    world.send(reply(intro, "Grace <grace@example.com>", "Yes, happy to help!"))
    world.tick(world.now)
    return pid


def test_introduction_and_consent_by_email_start_the_checkins(world: World) -> None:
    pid = world.add()
    member_intro = world.last_to("ada@example.com")
    partner_intro = world.last_to("grace@example.com")
    for intro in (member_intro, partner_intro):
        text = text_of(intro)
        assert "Give the all-hands talk" in text and "2026-12-31" in text
        assert "I want to lead design reviews" in text
        assert "Book the room again" in text
    assert 'reply "yes"' in text_of(partner_intro).lower()
    assert "pause until" in text_of(member_intro)
    # Not accepted yet: no check-in at the check-in moment.
    assert not any("checkin" in line for line in world.tick(MONDAY))
    assert world.status()["consent_pending"] == [pid]
    world.send(reply(partner_intro, "Grace <grace@example.com>", "Yes, I accept.\n\nGrace"))
    lines = world.tick(MONDAY + timedelta(minutes=5))
    assert f"partnership {pid}: partner accepted" in lines
    receipt = world.last_to("grace@example.com")
    assert "accepted" in text_of(receipt).lower()
    assert any(line.startswith("queued checkin to ada@example.com") for line in lines)
    assert world.show(pid)["consent"] == "accepted"
    told = world.find("ada@example.com", "Grace accepted")
    assert "first check-in" in text_of(told)


def test_decline_and_no_answer_are_told_to_the_admin(world: World) -> None:
    declined = world.add()
    world.send(
        reply(
            world.last_to("grace@example.com"),
            "grace@example.com",
            "No, sorry - I am on leave until March.",
        )
    )
    world.tick(world.now)
    notice = world.last_to(ADMIN)
    assert "declined" in text_of(notice).lower()
    assert "on leave until March" in text_of(notice)
    silent = world.add("ada@example.com", "linus@example.com", "sql")
    world.tick(world.now + timedelta(days=4))
    assert len(world.mail_to(ADMIN)) == 1
    world.tick(world.now + timedelta(days=2))
    assert len(world.mail_to(ADMIN)) == 2
    status = world.status()
    assert status["consent_declined"] == [declined]
    assert status["consent_overdue"] == [silent]
    world.tick(world.now + timedelta(days=1))
    assert len(world.mail_to(ADMIN)) == 2  # told once


def test_pause_by_reply_gives_receipt_partner_notice_and_keeps_the_report(world: World) -> None:
    pid = accepted(world)
    world.tick(MONDAY)
    checkin = world.last_to("ada@example.com", "check-in")
    world.now = MONDAY + timedelta(hours=3)
    world.send(
        reply(
            checkin,
            "Ada <ada@example.com>",
            "Done: drafted the outline\nSetback: none\nNext: rehearse\n\n"
            "pause until 2026-12-20\npause til friday",
        )
    )
    lines = world.tick(world.now + timedelta(minutes=1))
    assert any("Paused until 2026-12-20" in line for line in lines)
    receipt = world.last_to("ada@example.com", "")
    assert receipt is not checkin
    text = text_of(receipt)
    assert "2026-12-20" in text
    assert "pause til friday" in text  # not understood, said so
    notice = world.find("grace@example.com", "paused")
    assert "2026-12-20" in text_of(notice)
    shown = world.show(pid)
    assert shown["status"] == "paused" and shown["paused_until"] == "2026-12-20"
    [report] = shown["reports"]
    assert "drafted the outline" in report["text"]
    assert "pause until" not in report["text"]
    assert report["setback"] is False
    # Paused: no check-in next Monday; after the date, check-ins resume by themselves.
    assert not any("checkin" in line for line in world.tick(MONDAY + timedelta(days=7)))
    assert any("queued checkin" in line for line in world.tick(MONDAY + timedelta(days=21)))


def test_goal_done_stop_twice_and_malformed_commands(world: World) -> None:
    pid = accepted(world)
    world.tick(MONDAY)
    checkin = world.last_to("ada@example.com", "check-in")
    world.now = MONDAY + timedelta(hours=1)
    world.send(reply(checkin, "ada@example.com", "goal 1 done\ngoal 7 done"))
    world.tick(world.now)
    receipt = text_of(world.last_to("ada@example.com"))
    assert "Goal 1 marked achieved" in receipt
    assert "there is no goal 7" in receipt
    assert world.show(pid)["goals"][0]["done_on"] == "2026-11-30"
    world.send(reply(checkin, "ada@example.com", "stop"))
    world.tick(world.now)
    assert "stop" in text_of(world.last_to("ada@example.com")).lower()
    assert world.show(pid)["status"] == "active"
    world.send(reply(checkin, "ada@example.com", "stop"))
    world.tick(world.now)
    assert world.show(pid)["status"] == "ended"
    world.find("grace@example.com", "has ended")
    # A reply after the end is kept for a human and she is told it was not counted.
    world.send(reply(checkin, "ada@example.com", "Done: one more week"))
    world.tick(world.now)
    assert "not counted" in text_of(world.last_to("ada@example.com"))
    assert world.status()["quarantined"] == 1


def test_partner_answer_to_a_digest_reaches_the_member_only(world: World) -> None:
    pid = accepted(world)
    world.tick(MONDAY)
    checkin = world.last_to("ada@example.com", "check-in")
    world.now = MONDAY + timedelta(hours=2)
    world.send(
        reply(
            checkin,
            "ada@example.com",
            "Done: nothing\nSetback: I fell behind on practice\nNext: two sessions",
        )
    )
    world.tick(world.now + timedelta(minutes=1))
    digest = world.last_to("grace@example.com", "setback")
    assert "Book the room again" in text_of(digest)
    before = len(world.relay.messages)
    world.send(
        reply(
            digest,
            "Grace Hopper <grace@example.com>",
            "Ada, one bad week is data. Thursday 8am, room 4? <b>You got this</b>\n\n-- \nGrace",
        )
    )
    world.tick(world.now + timedelta(minutes=2))
    new = world.relay.messages[before:]
    assert [m.rcpt_tos for m in new] == [("ada@example.com",)]  # nobody else sees it
    note = new[0]
    assert "Grace" in str(note.message["From"]) and f"@{DOMAIN}" in str(note.message["From"])
    assert str(note.message["Reply-To"]).startswith("checkin+")
    assert "Thursday 8am, room 4?" in text_of(note)
    assert "-- \nGrace" not in text_of(note)  # signature stripped
    assert "&lt;b&gt;You got this&lt;/b&gt;" in html_of(note)
    assert "wrote:" not in text_of(note)
    # The member's answer to the note goes back through us and counts as her report.
    world.send(reply(note, "ada@example.com", "Done: booked room 4 for Thursday"))
    world.tick(world.now + timedelta(minutes=3))
    assert len(world.show(pid)["reports"]) == 2


def test_early_report_to_the_plain_address_turns_the_checkin_into_a_note(world: World) -> None:
    pid = accepted(world)
    # Friday check-ins: she reports on Wednesday, before the week's check-in.
    world.cli("partnerships", "pause", str(pid))
    world.cli("partnerships", "resume", str(pid))
    store_add = world.add(
        "linus@example.com", "grace@example.com", "sql", "--accepted", "--checkin-day", "friday"
    )
    wednesday = MONDAY + timedelta(days=2)
    world.now = wednesday
    world.send(
        plain(
            "Linus <linus@example.com>",
            "my week",
            "Done: wrote three queries\nSetback: none\nNext: window functions",
        )
    )
    world.tick(wednesday + timedelta(minutes=1))
    shown = world.show(store_add)
    assert [r["period"] for r in shown["reports"]] == ["2026-W49"]
    lines = world.tick(MONDAY + timedelta(days=4))  # Friday 09:00
    assert f"queued checkin_ack to linus@example.com (checkin:{store_add}:2026-W49)" in lines
    ack = world.last_to("linus@example.com")
    assert "anything to add" in text_of(ack).lower()
    assert "wrote three queries" in text_of(ack)
    # The partner gets the digest once the week's check-in has come.
    digest = world.last_to("grace@example.com", "sql")
    assert "wrote three queries" in text_of(digest)


def test_ambiguous_plain_report_asks_and_skill_line_picks(world: World) -> None:
    first = world.add("ada@example.com", "grace@example.com", "public speaking", "--accepted")
    second = world.add("ada@example.com", "linus@example.com", "sql", "--accepted")
    world.tick(MONDAY)
    world.now = MONDAY + timedelta(hours=1)
    world.send(plain("ada@example.com", "update", "Done: some practice"))
    world.tick(world.now)
    question = text_of(world.last_to("ada@example.com"))
    assert "skill:" in question and "sql" in question and "public speaking" in question
    assert world.show(first)["reports"] == [] and world.show(second)["reports"] == []
    world.send(plain("ada@example.com", "update", "skill: sql\nDone: a join a day"))
    world.tick(world.now)
    [report] = world.show(second)["reports"]
    assert report["text"] == "Done: a join a day"
    world.send(plain("ada@example.com", "Public speaking week", "Done: one talk"))
    world.tick(world.now)
    assert len(world.show(first)["reports"]) == 1


def test_all_goals_done_sends_both_a_closing_summary(world: World) -> None:
    pid = accepted(world)
    world.tick(MONDAY)
    checkin = world.last_to("ada@example.com", "check-in")
    world.now = MONDAY + timedelta(hours=1)
    world.send(
        reply(
            checkin,
            "ada@example.com",
            "Done: gave the talk!\nSetback: none\n\ngoal 1 done\ngoal 2 done",
        )
    )
    lines = world.tick(world.now + timedelta(minutes=1))
    assert any(line.startswith("queued digest") for line in lines)  # the last digest first
    lines = world.tick(world.now + timedelta(minutes=2))
    assert f"partnership {pid} completed: all goals achieved" in lines
    for who in ("ada@example.com", "grace@example.com"):
        summary = world.last_to(who, "")
        text = text_of(summary)
        assert "2 of 2" in text or ("2" in text and "goals" in text.lower())
        assert "W49" in html_of(summary)
    assert world.show(pid)["status"] == "ended"
    assert not world.tick(MONDAY + timedelta(days=7))


def test_suggest_and_export(world: World) -> None:
    pid = accepted(world)
    out = json.loads(
        world.cli(
            "partners",
            "suggest",
            "--member",
            "ada@example.com",
            "--skill",
            "public speaking",
            "--json",
        )
    )
    assert [s["email"] for s in out] == ["linus@example.com"]  # grace already partners her
    world.tick(MONDAY)
    checkin = world.last_to("ada@example.com", "check-in")
    world.now = MONDAY + timedelta(hours=1)
    world.send(reply(checkin, "ada@example.com", "Done: a, b\nSetback: missed one session"))
    world.tick(world.now)
    rows = list(csv.DictReader(io.StringIO(world.cli("export", "--format", "csv"))))
    assert len(rows) == 1
    assert rows[0]["partnership"] == str(pid) and rows[0]["setback"] == "true"
    assert rows[0]["done"] == "a, b"
    data = json.loads(world.cli("export", "--format", "json", "--since", "2026-12-01"))
    assert data == []
    assert world.cli("export", "--since", "yesterday", code=1).startswith("error: --since")


def test_partner_answer_to_a_no_report_digest_reaches_the_member(world: World) -> None:
    accepted(world)
    world.tick(MONDAY)
    lines = world.tick(MONDAY + timedelta(hours=97))
    assert any(line.startswith("queued no_report to grace@example.com") for line in lines)
    no_report = world.last_to("grace@example.com")
    assert str(no_report.message["Reply-To"]).startswith("checkin+d")
    world.send(reply(no_report, "grace@example.com", "Ada, how did the week go? Call me."))
    world.tick(world.now + timedelta(minutes=1))
    note = world.last_to("ada@example.com")
    assert "how did the week go? Call me." in text_of(note)
