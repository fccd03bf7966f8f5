"""Issue 13, mail identity: a display name in our From, and mail written to our From address.

End to end on the shared world (conftest): the CLI in-process, the real listener on loopback
(smtplib speaks to it), the recording relay, real TinyDB files, one simulated clock.
"""

from __future__ import annotations

import smtplib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from clitools import Mailflow
from conftest import DOMAIN, MailWorld, SettableClock, answer, letter, next_monday
from smtp_recorder import text_of

ADMIN = "admin@example.com"
FROM = "Hot Team <hotteam@acme.example>"
ADA, GRACE = "ada@example.com", "grace@example.com"
MONDAY = next_monday(9)  # 09:00 UTC: everybody here lives in UTC, in daytime


@pytest.fixture
def app_settings() -> dict[str, dict[str, Any]]:
    return {
        "service": {"from_address": FROM, "admin_address": ADMIN},
        "schedule": {"digest_delay_minutes": 0},
    }


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(MONDAY - timedelta(days=3))  # the Friday before


@pytest.fixture
def world(mailworld: MailWorld) -> MailWorld:
    mailworld.add_person(ADA, "Eng")
    mailworld.add_person(GRACE, "Sales", "UTC", "--offers", "public speaking")
    return mailworld


# -- the display name ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "error"),
    [
        ('from_address = "Hot Team <hotteam@acme.example>"', None),
        ('from_address = "\\"Team, Hot\\" <hotteam@acme.example>"', None),
        ('from_address = "hotteam@acme.example"\nfrom_name = "Hot Team"', None),
        ('from_address = "Hot Team <hotteam>"', "error: service.from_address: not a valid address"),
        ('from_address = "Hot Team <>"', "error: service.from_address: no address in"),
        ('from_address = "Hot\\u0007Team <ht@acme.example>"', "error: service.from_address: the"),
        (
            'from_address = "Hot Team <ht@acme.example>"\nfrom_name = "Other"',
            'error: service.from_name: from_address already carries the display name "Hot Team"',
        ),
    ],
)
def test_from_address_takes_a_display_name_and_checks_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], service: str, error: str | None
) -> None:
    mf = Mailflow(tmp_path, capsys, extra=service + "\n")
    if error is None:
        assert mf.ok("templates", "check").out == "templates ok\n"
    else:
        assert mf.bad("templates", "check").startswith(error)


def test_every_mail_carries_the_display_name(world: MailWorld) -> None:
    pid = world.add(ADA, GRACE)
    intros = [world.last_to(ADA), world.last_to(GRACE)]
    world.send(answer(intros[1], f"Grace <{GRACE}>", "Yes, happy to help."))
    world.tick()
    world.tick(MONDAY)
    checkin = world.last_to(ADA, "check-in")
    world.now = MONDAY + timedelta(hours=2)
    world.send(
        answer(checkin, f"Ada <{ADA}>", "Done: outline\nSetback: I fell behind\n\npause 1 week")
    )
    world.tick(world.now + timedelta(minutes=1))
    digest = world.last_to(GRACE, "setback")
    world.send(answer(digest, GRACE, "One bad week is data. Thursday?"))
    world.tick(world.now + timedelta(minutes=2))
    note = world.find(ADA, "One bad week is data")
    sent = world.relay.messages
    assert {m.message["Subject"] for m in sent} >= {
        checkin.message["Subject"],
        digest.message["Subject"],
    }
    assert len(sent) >= 8  # intros, receipts, consent news, check-in, receipt, digest, note
    for m in sent:
        if m is note:
            assert str(m.message["From"]) == "Grace via Hot Team <hotteam@acme.example>"
        else:
            assert str(m.message["From"]) == FROM, m.message["Subject"]
        assert m.mail_from == f"bounces@{DOMAIN}"  # the envelope stays our return path
    assert "Sent by Hot Team" in text_of(world.last_to(ADA, "partnership"))
    assert world.show(pid)["consent"] == "accepted"


def test_from_name_alone_names_the_default_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, extra='domain = "hot.example.com"\nfrom_name = "Hot Team"\n')
    mf.add_person("ada@example.com", "Eng")
    mf.add_person("grace@example.com", "Sales")
    mf.now = next_monday(10)
    today = mf.now.date()
    mf.ok(
        "partnerships", "add", "--member", "ada@example.com", "--partner", "grace@example.com",
        "--skill", "sql", "--goal", f"{today + timedelta(days=9)} Ship it", "--why", "w",
        "--saddle", "s",
    )  # fmt: skip
    [intro, *_] = sorted((tmp_path / "data" / "outbox").glob("intro*.eml"))
    assert b"From: Hot Team <mailflow@hot.example.com>\r\n" in intro.read_bytes()


# -- mail to our From address ----------------------------------------------------------------------


def test_mail_to_the_from_address_is_accepted_and_forwarded_to_the_admin(world: MailWorld) -> None:
    world.now = MONDAY + timedelta(hours=1)
    with smtplib.SMTP("127.0.0.1", world.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("ines@example.org")
        assert smtp.rcpt("HotTeam@Acme.Example")[0] == 250  # any case
        assert smtp.rcpt("hotteam2@acme.example")[0] == 550  # still never a relay
        smtp.rset()
    question = letter(
        "Inès Moreau <ines@example.org>",
        FROM,
        "How do I join?",
        "Hello,\nhow do I sign up?\n\nInès",
    )
    world.send(question)
    lines = world.tick()
    assert any(line.startswith("forwarded ") and "ines@example.org" in line for line in lines)
    forward = world.last_to(ADMIN)
    assert str(forward.message["Reply-To"]) == "ines@example.org"  # the admin answers her
    assert "How do I join?" in str(forward.message["Subject"])
    text = text_of(forward)
    assert "how do I sign up?" in text and "Inès" in text
    assert "hotteam@acme.example" in text and "mail/in/" in text
    assert world.mail_to("ines@example.org") == []  # never an automatic answer
    assert world.status()["quarantined"] == 0


def test_an_auto_reply_to_the_from_address_is_only_recorded(world: MailWorld) -> None:
    ooo = letter(
        "Grace <grace@example.com>", FROM, "Out of office", "I am away until Monday.",
        Auto_Submitted="auto-replied",
    )  # fmt: skip
    world.send(ooo)
    before = len(world.relay.messages)
    world.tick()
    assert len(world.relay.messages) == before  # neither forwarded nor answered


@pytest.mark.parametrize("app_settings", [{"service": {"from_address": FROM}}])
def test_without_an_admin_mail_to_the_from_address_is_quarantined(world: MailWorld) -> None:
    world.send(letter("ines@example.org", "hotteam@acme.example", "Hello", "Anyone there?"))
    world.tick()
    status = world.status()
    assert status["quarantined"] == 1
    assert "no admin_address to forward it to" in status["quarantine"][0]["reason"]
    assert world.mail_to("ines@example.org") == []


@pytest.mark.parametrize(
    "app_settings",
    [{"service": {"from_address": f"Hot Team <checkin@{DOMAIN}>", "admin_address": ADMIN}}],
)
def test_from_address_on_the_program_mailbox_handles_members_and_forwards_the_rest(
    world: MailWorld,
) -> None:
    """The seam for self-service: when our From address is the mailbox members write to,
    a member's mail there is hers to count, and anyone else's reaches the admin."""
    pid = world.add(ADA, GRACE, "--accepted")
    world.tick(MONDAY)
    world.now = MONDAY + timedelta(hours=1)
    world.send(letter(ADA, f"checkin@{DOMAIN}", "my week", "Done: two rehearsals"))
    world.send(letter("ines@example.org", f"checkin@{DOMAIN}", "Join?", "How do I join?"))
    world.tick()
    [report] = world.show(pid)["reports"]
    assert report["text"] == "Done: two rehearsals"
    assert "How do I join?" in text_of(world.last_to(ADMIN))
    assert world.status()["quarantined"] == 0
