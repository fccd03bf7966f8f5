"""Nobody acts in a member's name (issue 12, security), end to end over SMTP on loopback.

Before: two mails to the plain `checkin@DOMAIN` with a forged `From: Ada <ada@...>` and the
body `stop` ended her partnership. A From header proves nothing. Now a member's commands run
only from a reply to a token-bound address we sent to her (or with the trusted MTA's DMARC
verdict); from the plain address they are held, she is asked at her stored address (never a
Reply-To the mail carried) with a reply address bound to the request, and they run only when
she answers yes from her own mailbox. A report to the plain address still counts, and she
always gets a receipt at her real address. An admin's `quarantine release` of a forgery is no
proof either: its report counts, its commands wait for her yes the same way.

The world is test_e2e_loop's: the real listener, a recording relay, real TinyDB files, the CLI;
the service's MTA is named by `[listener] trusted_authserv_id` ("mx.example.org").
"""

from __future__ import annotations

import json
import smtplib
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import DOMAIN, SettableClock
from smtp_recorder import RecordedMessage, RecordingSMTPServer, text_of
from test_e2e_loop import ADMIN, MONDAY, World, accepted, plain, reply

from mailflow.app import App
from mailflow.inbox import Listener

MTA = "mx.example.org"
ATTACKER = "mallory@evil.example"
FORGED_FROM = "Ada <ada@example.com>"


@pytest.fixture
def app_settings() -> dict[str, dict[str, object]]:
    return {
        "service": {"admin_address": ADMIN},
        "schedule": {"digest_delay_minutes": 0, "consent_days": 5},
        "listener": {"trusted_authserv_id": MTA},
    }


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(MONDAY - timedelta(days=7))


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


def forged(body: str, *, to: str = f"checkin@{DOMAIN}", headers: str = "") -> EmailMessage:
    """Mail in Ada's name from someone else: her From, the attacker's Reply-To."""
    msg = plain(FORGED_FROM, "my week", body)
    del msg["To"]
    msg["To"] = to
    msg["Reply-To"] = ATTACKER
    for line in filter(None, headers.splitlines()):
        name, _, value = line.partition(":")
        msg[name.strip()] = value.strip()
    return msg


def running(world: World) -> int:
    """An accepted partnership whose first check-in went out (Monday 09:00)."""
    pid = accepted(world)
    world.tick(MONDAY)
    world.now = MONDAY + timedelta(hours=1)
    return pid


def after_mail(world: World, msg: EmailMessage) -> list[RecordedMessage]:
    """Send `msg`, run a tick, and return what went out because of it."""
    before = len(world.relay.messages)
    world.send(msg)
    world.tick(world.now)
    return world.relay.messages[before:]


def state(world: World, pid: int) -> tuple[str, str | None, str | None]:
    shown = world.show(pid)
    return shown["status"], shown["paused_until"], shown["goals"][0]["done_on"]


# Each state change a member can ask for, how to set the stage for it, and what it comes to.
CHANGES = {
    "pause 2 weeks": (None, lambda s: s[0] == "paused" and s[1] == "2026-12-14"),
    "resume": ("pause", lambda s: s[0] == "active" and s[1] is None),
    "goal 1 done": (None, lambda s: s[2] == "2026-11-30"),
    "stop": (None, lambda s: s[0] == "ended"),
}


SHOWN = {
    "pause 2 weeks": "pause until 2026-12-14",
    "resume": "resume: check-ins start again",
    "goal 1 done": "mark goal 1 achieved: give the all-hands talk",
    "stop": "stop: end this partnership",
}


@pytest.mark.parametrize("command", list(CHANGES))
def test_a_forged_command_to_the_plain_address_runs_only_when_she_confirms(
    world: World, command: str
) -> None:
    pid = running(world)
    stage, done = CHANGES[command]
    if stage == "pause":
        world.cli("partnerships", "pause", str(pid), "--until", "2027-01-31")
    before = state(world, pid)
    for _ in range(2):  # the attack: two mails (a second stop used to end it)
        out = after_mail(world, forged(command))
        assert state(world, pid) == before
        assert all(m.rcpt_tos == ("ada@example.com",) for m in out), out
    assert not any(ATTACKER in m.rcpt_tos for m in world.relay.messages)
    asks = world.mail_to("ada@example.com", "please confirm")
    assert len(asks) == 2  # one request per mail, each with its own number
    ask = asks[0]
    assert str(ask.message["Reply-To"]).startswith("checkin+v")
    assert str(ask.message["Reply-To"]) != str(asks[1].message["Reply-To"])
    assert ATTACKER not in str(ask.message)
    assert SHOWN[command] in text_of(ask).lower()  # in words, what a yes will do
    # Her yes from her own mailbox runs exactly what the mail showed her.
    world.send(reply(ask, "ada@example.com", "yes"))
    lines = world.tick(world.now + timedelta(minutes=1))
    assert done(state(world, pid)), (state(world, pid), lines)
    assert any(line.startswith(f"partnership {pid}: ") for line in lines), lines
    # The other request is still hers to answer; a no to it changes nothing more.
    after = state(world, pid)
    world.send(reply(asks[1], "ada@example.com", "no"))
    world.tick(world.now + timedelta(minutes=2))
    assert state(world, pid) == after


def test_a_no_cancels_and_a_late_yes_changes_nothing(world: World) -> None:
    pid = running(world)
    after_mail(world, forged("stop"))
    ask = world.last_to("ada@example.com", "please confirm")
    world.send(reply(ask, "ada@example.com", "No, that was not me."))
    world.tick(world.now)
    assert "cancelled" in text_of(world.last_to("ada@example.com")).lower()
    world.send(reply(ask, "ada@example.com", "yes"))
    world.tick(world.now + timedelta(minutes=1))
    assert "already cancelled" in text_of(world.last_to("ada@example.com"))
    assert world.show(pid)["status"] == "active"


def test_a_request_lapses_after_seven_days(world: World) -> None:
    pid = running(world)
    after_mail(world, forged("stop"))
    ask = world.last_to("ada@example.com", "please confirm")
    world.now = world.now + timedelta(days=8)
    world.send(reply(ask, "ada@example.com", "yes"))
    world.tick(world.now)
    assert "lapsed" in text_of(world.last_to("ada@example.com"))
    assert world.show(pid)["status"] == "active"


def test_only_her_own_mailbox_can_answer_the_confirmation(world: World) -> None:
    pid = running(world)
    after_mail(world, forged("stop"))
    ask = world.last_to("ada@example.com", "please confirm")
    # Someone who saw the request (a forwarded mail) answers it from another address.
    out = after_mail(world, reply(ask, f"Mallory <{ATTACKER}>", "yes"))
    assert out == []
    assert world.show(pid)["status"] == "active"
    assert world.status()["quarantined"] == 1


def test_a_flood_of_forged_mail_asks_her_at_most_three_times(world: World) -> None:
    pid = running(world)
    for _ in range(6):
        world.send(forged("pause 2 weeks"))
    lines = world.tick(world.now)
    assert len(world.mail_to("ada@example.com", "please confirm")) == 3
    assert any("not asked to confirm: 3 requests still open" in line for line in lines)
    assert world.show(pid)["status"] == "active"


def test_a_report_to_the_plain_address_counts_and_she_gets_a_receipt_at_home(
    world: World,
) -> None:
    pid = running(world)
    out = after_mail(world, forged("Done: booked the big room\nSetback: none\nNext: rehearse"))
    [report] = world.show(pid)["reports"]
    assert "booked the big room" in report["text"]
    [receipt] = [m for m in out if "grace@example.com" not in m.rcpt_tos]  # she has a digest
    assert receipt.rcpt_tos == ("ada@example.com",)  # never the Reply-To it carried
    assert "booked the big room" in text_of(receipt)
    assert str(receipt.message["Subject"]).startswith("Your public speaking report")


def test_a_report_with_a_command_is_stored_and_the_command_waits(world: World) -> None:
    pid = running(world)
    out = after_mail(world, forged("Done: one rehearsal\n\npause 2 weeks"))
    [ask] = [m for m in out if "grace@example.com" not in m.rcpt_tos]
    assert "stored as your report" in text_of(ask)
    shown = world.show(pid)
    assert shown["status"] == "active"
    assert "one rehearsal" in shown["reports"][0]["text"]


def _addresses(world: World, pid: int) -> dict[str, str]:
    """Every address that takes mail, with the token-bound ones minted for this partnership."""
    checkin = world.last_to("ada@example.com", "check-in")
    intro = world.mail_to("grace@example.com", "partner")[0]
    return {
        "plain": f"checkin@{DOMAIN}",
        "bounces": f"bounces@{DOMAIN}",
        "check-in reply": str(checkin.message["Reply-To"]),
        "introduction reply": str(intro.message["Reply-To"]),
    }


@pytest.mark.parametrize("where", ["plain", "bounces", "check-in reply", "introduction reply"])
@pytest.mark.parametrize("command", list(CHANGES))
def test_no_address_takes_a_command_from_someone_else(
    world: World, where: str, command: str
) -> None:
    """A stranger's mail (her From is not Ada's) to any address changes nothing, and one
    in Ada's name changes nothing before she confirms it from her own mailbox (except
    through her own check-in's reply address: that token is the proof)."""
    pid = running(world)
    stage, _ = CHANGES[command]
    if stage == "pause":
        world.cli("partnerships", "pause", str(pid), "--until", "2027-01-31")
    before = state(world, pid)
    address = _addresses(world, pid)[where]
    stranger = forged(command, to=address)
    del stranger["From"]
    stranger["From"] = f"Mallory <{ATTACKER}>"
    after_mail(world, stranger)
    if where != "check-in reply":
        after_mail(world, forged(command, to=address))
    assert state(world, pid) == before
    assert world.show(pid)["consent"] == "accepted"
    assert not any(ATTACKER in m.rcpt_tos for m in world.relay.messages)


def _release_forgery(world: World, pid: int, body: str) -> tuple[str, list[RecordedMessage]]:
    """Mallory writes `body` to Ada's own check-in address (set aside: sender mismatch), and
    an admin releases it; the CLI's output and what went out because of the release."""
    msg = forged(body, to=_addresses(world, pid)["check-in reply"])
    del msg["From"]
    msg["From"] = f"Mallory <{ATTACKER}>"
    assert after_mail(world, msg) == []  # a stranger's mail: nobody is answered
    [item] = json.loads(world.cli("quarantine", "list", "--json"))
    assert item["reason"].startswith(f"sender mismatch: from {ATTACKER}")
    before = len(world.relay.messages)
    out = world.cli("quarantine", "release", item["id"])
    assert out.startswith(f"released {item['id']}\n")
    return out, world.relay.messages[before:]


@pytest.mark.parametrize("command", list(CHANGES))
def test_a_released_forgery_counts_its_report_and_its_command_waits_for_her_yes(
    world: World, command: str
) -> None:
    """Issue 10's release meets issue 12's rule: the admin vouches that the report counts,
    never that Mallory may act in Ada's name. Ada is asked at her stored address, the mail
    names who sent it, only her own mailbox can answer, and her yes runs the command."""
    pid = running(world)
    stage, done = CHANGES[command]
    if stage == "pause":
        world.cli("partnerships", "pause", str(pid), "--until", "2027-01-31")
    before = state(world, pid)
    out, sent = _release_forgery(world, pid, f"Done: booked the big room\n\n{command}")
    assert f"not run (sent from {ATTACKER}): {command}" in out
    assert f"partnership {pid}: asked ada@example.com to confirm: {command}" in out
    assert state(world, pid) == before  # the release ran nothing
    [report] = world.show(pid)["reports"]
    assert "booked the big room" in report["text"] and command not in report["text"]
    assert not any(ATTACKER in m.rcpt_tos for m in world.relay.messages)
    [ask] = [m for m in sent if "please confirm" in str(m.message["Subject"]).lower()]
    [told] = [m for m in sent if "counts after all" in str(m.message["Subject"])]
    assert ask.rcpt_tos == told.rcpt_tos == ("ada@example.com",)
    asked = " ".join(text_of(ask).split())
    assert f"The program admin released a mail from {ATTACKER}" in asked
    assert SHOWN[command] in asked.lower()
    assert str(ask.message["Reply-To"]).startswith("checkin+v")  # bound to this request
    said = " ".join(text_of(told).split())
    assert f"It came from {ATTACKER}, not from ada@example.com" in said
    assert f"- {command}" in text_of(told) and "They wait for your answer" in said
    # Mallory answering the confirmation (say, a copy she was forwarded) does nothing.
    assert after_mail(world, reply(ask, f"Mallory <{ATTACKER}>", "yes")) == []
    assert state(world, pid) == before
    # Ada's yes from her own mailbox runs exactly what the mail showed her.
    world.send(reply(ask, "ada@example.com", "yes"))
    lines = world.tick(world.now + timedelta(minutes=1))
    assert done(state(world, pid)), (state(world, pid), lines)


def test_a_released_forgery_of_commands_alone_is_cancelled_by_her_no(world: World) -> None:
    """Commands alone count for nothing, yet the release goes through (it is the admin's
    call) and they wait for Ada like any others; her no cancels them."""
    pid = running(world)
    out, sent = _release_forgery(world, pid, "stop")
    assert f"not run (sent from {ATTACKER}): stop" in out
    assert world.show(pid)["reports"] == []
    assert not [m for m in sent if "grace@example.com" in m.rcpt_tos]  # no report, no digest
    [ask] = sent
    assert ask.rcpt_tos == ("ada@example.com",) and "stop" in str(ask.message["Subject"])
    world.send(reply(ask, "ada@example.com", "no"))
    world.tick(world.now + timedelta(minutes=1))
    assert "cancelled" in text_of(world.last_to("ada@example.com")).lower()
    assert world.show(pid)["status"] == "active"
    assert json.loads(world.cli("quarantine", "list", "--json")) == []


def test_consent_counts_only_from_the_partner_through_her_introduction(world: World) -> None:
    pid = world.add()
    intro = world.last_to("grace@example.com", "partner")
    # In the partner's name to the plain address, to the bounce address, and from a stranger
    # to her introduction's reply address: none of them is her yes.
    for to, sender in (
        (f"checkin@{DOMAIN}", "Grace <grace@example.com>"),
        (f"bounces@{DOMAIN}", "Grace <grace@example.com>"),
        (str(intro.message["Reply-To"]), f"Mallory <{ATTACKER}>"),
    ):
        msg = plain(sender, "Re: " + str(intro.message["Subject"]), "Yes, I accept.")
        del msg["To"]
        msg["To"] = to
        world.send(msg)
        world.tick(world.now)
        assert world.show(pid)["consent"] == "pending", to
    world.send(reply(intro, "Grace <grace@example.com>", "Yes, I accept."))
    world.tick(world.now)
    assert world.show(pid)["consent"] == "accepted"


AR_PASS = f"Authentication-Results: {MTA}; spf=pass; dmarc=pass (p=reject) header.from=example.com"


@pytest.mark.parametrize(
    ("headers", "runs_at_once"),
    [
        (AR_PASS, True),
        # Anybody else's verdict is ignored, however it is spelt.
        (AR_PASS.replace(MTA, "mx.evil.example"), False),
        (AR_PASS.replace(MTA, f"{MTA}.evil.example"), False),
        (AR_PASS.replace("dmarc=pass", "dmarc=fail"), False),
        (AR_PASS.replace("header.from=example.com", "header.from=evil.example"), False),
        # The MTA puts its own on top; a pass below it was written by the sender.
        (f"Authentication-Results: {MTA}; dmarc=fail header.from=example.com\n{AR_PASS}", False),
        ("", False),
    ],
    ids=["trusted pass", "other id", "lookalike id", "fail", "other domain", "below", "none"],
)
def test_dmarc_pass_from_the_trusted_mta_is_proof(
    world: World, headers: str, runs_at_once: bool
) -> None:
    pid = running(world)
    out = after_mail(world, forged("pause 2 weeks", headers=headers))
    assert (world.show(pid)["status"] == "paused") is runs_at_once
    asked = [m for m in out if "please confirm" in str(m.message["Subject"]).lower()]
    assert bool(asked) is not runs_at_once


def test_two_from_addresses_are_never_proof(world: World) -> None:
    pid = running(world)
    msg = forged("pause 2 weeks", headers=AR_PASS)
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")).replace(
        b"From: ", b"From: Ada <ada@example.com>\r\nFrom: ", 1
    )
    with smtplib.SMTP("127.0.0.1", world.listen, timeout=10) as smtp:
        smtp.sendmail(ATTACKER, [f"checkin@{DOMAIN}"], raw)
    world.tick(world.now)
    assert world.show(pid)["status"] == "active"


def test_the_partner_and_strangers_hear_nothing_of_a_forgery(world: World) -> None:
    running(world)
    before = len(world.mail_to("grace@example.com"))
    after_mail(world, forged("stop"))
    after_mail(world, forged("pause 2 weeks"))
    assert len(world.mail_to("grace@example.com")) == before
