"""Issue 13, recovering from mistakes: a bounced introduction sent again, a consent recorded
by the admin, a person removed from the directory.

End to end on the shared world (conftest): the CLI in-process, the real listener on loopback
(a DSN arrives over SMTP), the recording relay, real TinyDB files, one simulated clock.
"""

from __future__ import annotations

import smtplib
from datetime import timedelta
from typing import Any

import pytest
from conftest import DOMAIN, MailWorld, SettableClock, answer, next_monday
from smtp_recorder import text_of

ADMIN = "admin@example.com"
ADA, GRACE, LIN = "ada@example.com", "grace@example.com", "lin@example.com"
MONDAY = next_monday(9)  # 09:00 UTC: everybody here lives in UTC, in daytime


@pytest.fixture
def app_settings() -> dict[str, dict[str, Any]]:
    return {"service": {"admin_address": ADMIN}, "schedule": {"digest_delay_minutes": 0}}


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(MONDAY - timedelta(days=3))  # the Friday before, 09:00


@pytest.fixture
def world(mailworld: MailWorld) -> MailWorld:
    mailworld.add_person(ADA, "Eng")
    mailworld.add_person(GRACE, "Sales", "UTC", "--offers", "public speaking")
    mailworld.add_person(LIN, "Ops", "UTC", "--manager", GRACE)
    return mailworld


def dsn(failed: str, returned_message_id: str) -> bytes:
    """A delivery status notification as Postfix writes it, returning our mail's headers."""
    return (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        f"To: bounces@{DOMAIN}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn.1@mx.example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: mailflow <mailflow@{DOMAIN}>\r\nTo: {failed}\r\n"
        f"Message-ID: {returned_message_id}\r\nSubject: an introduction\r\n"
        "--B--\r\n"
    ).encode()


def send_dsn(world: MailWorld, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", world.port, timeout=10) as smtp:
        assert smtp.sendmail("", [f"bounces@{DOMAIN}"], raw) == {}


def test_a_bounced_introduction_is_named_and_sent_again(world: MailWorld) -> None:
    pid = world.add(ADA, GRACE)
    intro = world.last_to(GRACE)
    send_dsn(world, dsn(GRACE, str(intro.message["Message-ID"])))
    lines = world.tick()
    assert f"{GRACE} marked bouncing (intro, partnership {pid})" in lines
    notice = text_of(world.last_to(ADMIN, "bounc"))
    assert "The introduction to grace@example.com for partnership" in notice
    assert f"mailflow partnerships resend-intro {pid}" in notice
    assert f"mailflow partnerships consent {pid} --accepted" in notice

    # The mailbox works again: the admin sends the introduction again, and Grace answers it.
    world.now += timedelta(hours=1)
    out = world.cli("partnerships", "resend-intro", str(pid))
    assert f"note: {GRACE} is marked bouncing" in out  # told, not refused
    assert f"queued intro to {GRACE}" in out
    again = world.mail_to(GRACE, str(intro.message["Subject"]))
    assert len(again) == 2 and again[-1].message["Message-ID"] != intro.message["Message-ID"]
    world.send(answer(again[-1], GRACE, "Yes, happy to help."))
    world.tick()
    assert world.show(pid)["consent"] == "accepted"
    # The member may have lost hers too.
    ada_before = len(world.mail_to(ADA))
    out = world.cli("partnerships", "resend-intro", str(pid), "--to", "member")
    [resent] = world.mail_to(ADA)[ada_before:]
    assert resent.message["Subject"] == world.mail_to(ADA)[0].message["Subject"]
    err = world.cli("partnerships", "resend-intro", str(pid), "--to", "x", code=2)
    assert err.startswith("error: Invalid value for '--to'")
    assert world.cli("partnerships", "resend-intro", "99", code=1).startswith("error: ")


def test_a_bounced_checkin_names_the_checkin_and_the_clear_command(world: MailWorld) -> None:
    world.add(ADA, GRACE, "--accepted")
    world.tick(MONDAY)
    checkin = world.last_to(ADA, "check-in")
    send_dsn(world, dsn(ADA, str(checkin.message["Message-ID"])))
    world.tick(MONDAY + timedelta(minutes=5))
    notice = text_of(world.last_to(ADMIN, "bounc"))
    assert "The check-in to ada@example.com" in notice
    assert f"mailflow people update {ADA} --clear-bouncing" in notice
    assert "resend-intro" not in notice


def test_the_admin_records_a_consent_that_came_another_way(world: MailWorld) -> None:
    pid = world.add(ADA, GRACE)
    before = len(world.relay.messages)
    out = world.cli("partnerships", "consent", str(pid), "--accepted")
    assert f"partnership {pid}: consent recorded as accepted" in out
    assert world.show(pid)["consent"] == "accepted"
    told_ada = world.find(ADA, "accepted")
    told_grace = world.find(GRACE, "The program admin recorded your answer")
    assert {told_ada, told_grace} <= set(world.relay.messages[before:])
    assert "first check-in" in text_of(told_ada).lower()

    err = world.cli("partnerships", "consent", str(pid), "--accepted", code=1)
    assert err == f"error: partnership {pid}: the partner's consent is already accepted\n"
    # She changed her mind, on the phone: recorded, and check-ins stop.
    world.now += timedelta(hours=1)
    out = world.cli("partnerships", "consent", str(pid), "--declined", "--note", "No time.")
    assert "consent recorded as declined" in out
    assert world.show(pid)["consent"] == "declined"
    told = len(world.mail_to(ADA))
    world.tick(MONDAY)
    assert len(world.mail_to(ADA)) == told  # no check-in
    assert "--accepted or --declined" in world.cli("partnerships", "consent", str(pid), code=2)
    world.cli("partnerships", "end", str(pid))
    assert "has ended" in world.cli("partnerships", "consent", str(pid), "--accepted", code=1)


def test_people_remove_refuses_a_running_partnership_unless_it_ends(world: MailWorld) -> None:
    pid = world.add(ADA, GRACE, "--accepted")
    err = world.cli("people", "remove", ADA, code=1)
    assert err.startswith(f"error: {ADA} is in running partnership(s) {pid}: end them first")
    err = world.cli("people", "remove", GRACE, "--end-partnerships", code=1)
    assert f"{GRACE} is the manager of {LIN}" in err  # reporting lines need her
    assert world.show(pid)["status"] == "active"  # nothing changed
    out = world.cli("people", "remove", ADA, "--end-partnerships")
    assert out == f"ended partnership {pid}\nremoved {ADA}\n"
    assert world.show(pid)["status"] == "ended"
    assert ADA not in world.cli("people", "list")
    assert world.cli("people", "remove", ADA, code=1) == f"error: no such person {ADA}\n"
    world.cli("people", "remove", "LIN@Example.com")
    world.tick(MONDAY)  # the scheduler runs on without them
    assert world.mail_to(ADA, "check-in") == []
