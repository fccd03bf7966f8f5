"""Issue 15, self-service by email, end to end: offer a skill, find a partner, agree, start.

Everything goes through the real listener on loopback (smtplib speaks to it), the recording
relay, real TinyDB files and one simulated clock (the shared MailWorld in conftest); the CLI
sees the same records.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from conftest import DOMAIN, MailWorld, SettableClock, answer, letter, next_monday
from smtp_recorder import text_of

ADMIN = "admin@example.com"
PROGRAM = f"hotteam@{DOMAIN}"
ADA, GRACE, LIN, OTTO, EVE, BOSS = (
    "ada@example.com",
    "grace@example.com",
    "lin@example.com",
    "otto@example.com",
    "eve@example.com",
    "boss@example.com",
)
MONDAY = next_monday(9)


@pytest.fixture
def app_settings(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    program = dict(getattr(request, "param", {}))
    service = {"admin_address": ADMIN, **program.pop("service", {})}
    return {
        "service": service,
        "listener": {"trusted_authserv_id": "mx.example.com"},
        "schedule": {"quiet_hours": ""},
        "program": program,
    }


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(MONDAY)


@pytest.fixture
def world(mailworld: MailWorld) -> MailWorld:
    w = mailworld
    w.add_person(BOSS, "Board", "UTC", "--offers", "public speaking")
    w.add_person(ADA, "Eng", "UTC", "--manager", BOSS)
    w.add_person(GRACE, "Sales", "UTC", "--offers", "public speaking")
    w.add_person(LIN, "Legal", "UTC", "--offers", "public speaking", "--offers", "negotiation")
    w.add_person(OTTO, "Eng", "UTC", "--offers", "public speaking")  # ADA's department
    w.add_person(EVE, "Finance", "UTC", "--offers", "public speaking")
    return w


def said(mail: Any) -> str:
    """A mail's text with its lines joined: what it says, however it is wrapped."""
    return " ".join(text_of(mail).split())


def write(w: MailWorld, sender: str, body: str, subject: str = "hello") -> None:
    """A new mail to the program's address, taken in by the next tick."""
    w.send(letter(sender, PROGRAM, subject, body))
    w.tick()


def reply(w: MailWorld, to: Any, sender: str, body: str) -> None:
    w.send(answer(to, sender, body))
    w.tick()


def block(w: MailWorld, *, goal: bool = True, saddle: bool = True, day: str = "") -> str:
    lines = []
    if saddle:
        lines.append("Saddle: Remind me that one missed week is not a pattern.")
    if goal:
        lines.append(f"Goal: {w.now.date() + timedelta(days=40)} Give the all-hands talk")
    lines.append("Why: I want to lead design reviews")
    if day:
        lines.append(f"Day: {day}")
    return "\n".join(lines)


def people(w: MailWorld) -> dict[str, dict[str, Any]]:
    return {p["email"]: p for p in json.loads(w.cli("people", "list", "--json"))}


# -- offer -------------------------------------------------------------------------------------


def test_offer_takes_effect_when_she_confirms_from_her_own_mailbox(world: MailWorld) -> None:
    write(world, ADA, "offer Public   Speaking\noffer Negotiation")
    confirm = world.last_to(ADA, "confirm")
    assert people(world)[ADA]["offers"] == []  # a From header proves nothing
    text = said(confirm)
    assert "offer public speaking" in text and "offer negotiation" in text
    token_address = str(confirm.message["Reply-To"])
    assert token_address.startswith("checkin+s") and token_address.endswith("@" + DOMAIN)

    reply(world, confirm, ADA, "yes")
    receipt = world.last_to(ADA, "your offers")
    assert "You offer: public speaking, negotiation." in said(receipt)
    assert people(world)[ADA]["offers"] == ["public speaking", "negotiation"]
    # The CLI and `partners suggest` see the same record.
    assert ADA in world.cli("partners", "suggest", "--member", GRACE, "--skill", "negotiation")

    write(world, ADA, "offer stop negotiation")
    confirm = world.last_to(ADA, "confirm")
    reply(world, confirm, ADA, "Yes please")
    assert people(world)[ADA]["offers"] == ["public speaking"]
    assert "You offer: public speaking." in said(world.last_to(ADA, "your offers"))


def test_an_offer_vouched_for_by_the_trusted_mta_takes_effect_at_once(world: MailWorld) -> None:
    ar = "mx.example.com; spf=pass; dmarc=pass (p=reject) header.from=example.com"
    world.send(letter(ADA, PROGRAM, "offer", "offer negotiation", Authentication_Results=ar))
    world.tick()
    assert people(world)[ADA]["offers"] == ["negotiation"]
    assert "You offer: negotiation." in said(world.last_to(ADA, "your offers"))
    assert not world.mail_to(ADA, "confirm")
    # Another server's verdict (or none) proves nothing: she is asked.
    forged = "evil.example; dmarc=pass header.from=example.com"
    world.send(
        letter(ADA, PROGRAM, "offer", "offer stop negotiation", Authentication_Results=forged)
    )
    world.tick()
    assert people(world)[ADA]["offers"] == ["negotiation"]
    assert world.last_to(ADA, "confirm")


def test_offer_near_miss_and_no_then_a_forged_answer(world: MailWorld) -> None:
    write(world, ADA, "offer public-speaking\noffer stop chess")
    text = said(world.last_to(ADA, "your offers"))
    assert 'nobody offers "public-speaking" yet (did you mean "public speaking"?)' in text
    assert 'you do not offer "chess"' in text
    assert "You offer nothing at the moment" in text

    write(world, ADA, "offer negotiaton")  # one letter short
    assert 'did you mean "negotiation"' in said(world.last_to(ADA, "your offers"))

    write(world, ADA, "offer mentoring")
    confirm = world.last_to(ADA, "confirm")
    # Someone else answering her confirmation (it was forwarded to them) changes nothing.
    before = len(world.relay.messages)
    reply(world, confirm, EVE, "yes")
    assert people(world)[ADA]["offers"] == []
    assert len(world.relay.messages) == before
    reply(world, confirm, ADA, "no")
    assert people(world)[ADA]["offers"] == []
    assert "Dropped: nothing changed." in said(world.last_to(ADA, "your offers"))


# -- find, ask, start ----------------------------------------------------------------------------


def test_find_lists_up_to_three_eligible_people_fewest_partnerships_first(
    world: MailWorld,
) -> None:
    world.add(LIN, EVE, skill="negotiation")  # Eve carries one partnership
    write(world, ADA, "partner for  PUBLIC speaking")
    mail = world.last_to(ADA, "partners for public speaking")
    text = said(mail)
    # Otto shares her department, Boss is her manager: neither is suggested. Eve carries one
    # partnership, so she comes after Grace and Lin (none each, by address).
    assert "Otto" not in text and "Boss" not in text
    assert text.index("1. Grace") < text.index("2. Lin") < text.index("3. Eve")
    assert "carries 1 partnership now" in text and "reply with: ask 2" in text
    assert str(mail.message["Reply-To"]).startswith("checkin+s")
    # The same rule as the CLI's.
    listed = json.loads(
        world.cli("partners", "suggest", "--member", ADA, "--skill", "public speaking", "--json")
    )
    assert [p["email"] for p in listed] == [GRACE, LIN, EVE]


def test_nobody_eligible_says_so_and_who_to_ask(world: MailWorld) -> None:
    write(world, ADA, "partner for juggling")
    text = said(world.last_to(ADA, "partners for juggling"))
    assert 'Nobody offers "juggling" yet.' in text and ADMIN in text
    write(world, ADA, "partner for negociation")
    assert 'did you mean "negotiation"' in said(world.last_to(ADA, "partners for negociation"))


def test_ask_with_an_incomplete_then_a_complete_block_starts_a_pending_partnership(
    world: MailWorld,
) -> None:
    write(world, ADA, "partner for public speaking")
    suggestions = world.last_to(ADA, "partners for public speaking")

    # Incomplete: no Saddle, and a goal without a date. Quoted, in another order.
    body = "ask 2\n\n> Why: I want to lead design reviews\n> Goal: next month give a talk"
    reply(world, suggestions, ADA, body)
    receipt = world.last_to(ADA, "your partner for public speaking")
    text = said(receipt)
    assert "Saddle: missing" in text
    assert 'goal: expected "YYYY-MM-DD TEXT", got "next month give a talk"' in text
    assert "Why: I want to lead design reviews" in text  # what was understood
    assert 'Reply to this mail with "ask 2" and the whole block' in text
    assert json.loads(world.cli("partnerships", "list", "--json")) == []
    assert not world.mail_to(GRACE)  # ask 2: Eve, Grace, Lin by address

    # Complete, in reply to the receipt (it carries the same token), any order, quoted.
    full = "ask 2\n" + "\n".join(
        "> " + line for line in block(world, day="Tuesday 08:30").split("\n")
    )
    reply(world, receipt, ADA, full)
    done = said(world.last_to(ADA, "your partner for public speaking"))
    assert "You asked Grace to be your partner for public speaking (partnership 1)." in done
    shown = world.show(1)
    assert (shown["member"], shown["partner"], shown["skill"]) == (ADA, GRACE, "public speaking")
    assert shown["consent"] == "pending" and shown["why"] == "I want to lead design reviews"
    assert (shown["checkin_day"], shown["checkin_time"]) == ("tuesday", "08:30")
    intro = world.last_to(GRACE)  # the introduction: Lin answers yes or no, as today
    assert str(intro.message["Reply-To"]).startswith("checkin+a1-")
    assert world.last_to(ADA, "")  # and Ada has her introduction
    reply(world, intro, GRACE, "Yes, happy to help.")
    assert world.show(1)["consent"] == "accepted"

    # The suggestions mail is spent: a second ask makes nothing.
    reply(world, suggestions, ADA, "ask 1\n" + block(world))
    assert "was used already" in said(world.last_to(ADA, "your partner for"))
    assert len(json.loads(world.cli("partnerships", "list", "--json"))) == 1


def test_only_a_reply_to_our_suggestions_mail_can_ask(world: MailWorld) -> None:
    # A forged From writing "ask 1" to the program address creates nothing: Ada is told.
    write(world, ADA, "ask 1\n" + block(world))
    text = said(world.last_to(ADA, "how to use"))
    assert "works only in a reply to the mail that suggested partners" in text
    # A forged "partner for" only sends the real Ada her own suggestions.
    write(world, ADA, "partner for public speaking")
    suggestions = world.last_to(ADA, "partners for public speaking")
    assert suggestions.rcpt_tos == (ADA,)
    # Somebody else answering Ada's suggestions (forwarded to them) creates nothing.
    reply(world, suggestions, EVE, "ask 1\n" + block(world))
    assert json.loads(world.cli("partnerships", "list", "--json")) == []


@pytest.mark.parametrize("app_settings", [{"self_service": "approval"}], indirect=True)
def test_with_approval_the_admin_approves_before_the_introductions(world: MailWorld) -> None:
    write(world, ADA, "partner for public speaking")
    reply(world, world.last_to(ADA, "partners for"), ADA, "ask 1\n" + block(world))
    asked = said(world.last_to(ADA, "your partner for"))
    assert "The program admin approves new partnerships first" in asked
    notice = world.last_to(ADMIN, "approve partnership 1")
    assert "mailflow partnerships approve 1" in said(notice)
    assert not world.mail_to(EVE)  # no introduction yet (ask 1: Eve, first by address)
    world.tick(world.now + timedelta(days=8))  # nor at later ticks, nor a consent notice
    assert not world.mail_to(EVE) and not world.mail_to(ADMIN, "no answer")
    assert world.status()["awaiting_approval"] == [1]
    # Nobody is introduced yet: a resend or a recorded consent would go round the approval.
    for command in (("resend-intro", "1"), ("consent", "1", "--accepted")):
        err = world.cli("partnerships", *command, code=1)
        assert "waits for an admin's approval" in err and "partnerships approve 1" in err
    assert not world.mail_to(EVE) and world.show(1)["consent"] == "pending"

    out = world.cli("partnerships", "approve", "1")
    assert "partnership 1 approved" in out
    assert world.last_to(EVE) and world.show(1)["introduced_at"] is not None
    assert world.status()["awaiting_approval"] == []
    assert "waits for no approval" in world.cli("partnerships", "approve", "1", code=1)


@pytest.mark.parametrize("app_settings", [{"self_service": "off"}], indirect=True)
def test_with_self_service_off_nobody_is_suggested(world: MailWorld) -> None:
    write(world, ADA, "partner for public speaking")
    text = said(world.last_to(ADA, "partners for public speaking"))
    assert "switched off" in text and ADMIN in text and "ask 1" not in text


# -- the cap -----------------------------------------------------------------------------------


@pytest.mark.parametrize("app_settings", [{"max_partnerships_per_partner": 1}], indirect=True)
def test_partners_at_the_cap_are_skipped_and_an_admin_add_past_it_warns(
    world: MailWorld,
) -> None:
    world.add(EVE, GRACE)  # Grace now carries one: the cap
    write(world, ADA, "partner for public speaking")
    suggestions = world.last_to(ADA, "partners for public speaking")
    text = said(suggestions)
    assert "Grace" not in text and "1. Eve" in text and "2. Lin" in text
    assert GRACE not in world.cli("partners", "suggest", "--member", ADA, "--skill",
                                  "public speaking")  # fmt: skip
    # Eve reaches the cap after the suggestions went out: the ask is refused, nothing made.
    world.add(LIN, EVE, skill="negotiation")
    reply(world, suggestions, ADA, "ask 1\n" + block(world))
    assert "can no longer take this partnership" in said(world.last_to(ADA, "your partner"))
    assert len(json.loads(world.cli("partnerships", "list", "--json"))) == 2

    # The admin may go past the cap: it succeeds, with a warning.
    from mailflow.cli import main

    world.capsys.readouterr()
    argv = ["--config", str(world.config_path), "partnerships", "add", "--member", ADA,
            "--partner", GRACE, "--skill", "public speaking",
            "--goal", f"{world.now.date() + timedelta(days=30)} Talk", "--why", "w",
            "--saddle", "s"]  # fmt: skip
    assert main(argv, clock=lambda: world.now, environ=world.environ) == 0
    out, err = world.capsys.readouterr()
    assert out.strip().splitlines()[-1] == "3"
    assert f"warning: {GRACE} now carries 2 partnerships as partner, more than " in err
    assert "max_partnerships_per_partner (1)" in err


# -- strangers, help, status -------------------------------------------------------------------


def test_mail_from_outside_the_directory_gets_no_answer_and_is_counted(world: MailWorld) -> None:
    stranger = "mallory@evil.example"
    before = len(world.relay.messages)
    write(world, stranger, "partner for public speaking\nstatus\nhelp")
    write(world, stranger, "offer lockpicking")
    assert len(world.relay.messages) == before  # no backscatter
    strangers = world.status()["program_strangers"]
    assert strangers["count"] == 2 and strangers["senders"] == [stranger]
    assert "from outside the directory" in world.cli("status")
    assert world.cli("quarantine", "list").strip().count(stranger) == 0  # recorded, not held


def test_help_and_status_by_mail(world: MailWorld) -> None:
    write(world, ADA, "Hi, how does this work?")
    text = said(world.last_to(ADA, "how to use"))
    assert "We found no command in your mail." in text
    assert "partner for SKILL" in text and "offer stop SKILL" in text
    write(world, ADA, "help")
    assert "ask N" in said(world.last_to(ADA, "how to use"))

    pid = world.add(ADA, GRACE)
    world.add(LIN, ADA, skill="negotiation")
    write(world, ADA, "status")
    text = said(world.last_to(ADA, "your partnerships"))
    member_part, partner_part = text.split("You are partner in:")
    assert f"public speaking with Grace (partnership {pid}, active)" in member_part
    assert "partner's consent: pending" in member_part
    assert "next check-in: after Grace accepts" in member_part
    assert "Give the all-hands talk" in member_part
    assert "negotiation with Lin" in partner_part
    reply(world, world.last_to(GRACE), GRACE, "yes")
    write(world, ADA, "status")
    text = said(world.last_to(ADA, "your partnerships"))
    assert "partner's consent: accepted" in text and "next check-in: Monday" in text


@pytest.mark.parametrize(
    "app_settings", [{"service": {"from_address": f"Hot Team <{PROGRAM}>"}}], indirect=True
)
def test_program_address_shared_with_our_from_address(world: MailWorld) -> None:
    """Commands go to the program; anything else written there reaches the admin."""
    write(world, ADA, "status")
    assert "You have no running partnerships." in said(world.last_to(ADA, "your partnerships"))
    write(world, ADA, "Who do I talk to about the offsite?", subject="offsite")
    forward = world.last_to(ADMIN, "offsite")
    assert "Who do I talk to about the offsite?" in said(forward)
    assert str(forward.message["Reply-To"]) == ADA
    write(world, "stranger@else.example", "partner for public speaking", subject="join")
    assert world.last_to(ADMIN, "join")  # a person writing to us: forwarded, never answered
    assert not world.mail_to("stranger@else.example")
