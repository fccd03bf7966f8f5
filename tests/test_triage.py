"""Inbound mail routed, then decided: pure, no disk, no network.

`route` sees only the parsed message, its envelope, the keys and a roster; `decide` only the
parsed message, the routed target and the facts the use case read for it. Every outcome is a
value to compare with `==`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from email.message import EmailMessage

from mailflow.commands import ACCEPT, Command
from mailflow.models import CONSENT_PENDING, ENDED, Goal, Inbound, Partnership, Person, Roster
from mailflow.parse import ParsedMessage, parse_message
from mailflow.tokens import AGREE, CHECKIN, DIGEST, Keys, Token
from mailflow.triage import (
    Ambiguous,
    Consent,
    Envelope,
    Facts,
    Note,
    Quarantine,
    Record,
    Reply,
    Target,
    decide,
    records,
    route,
)

DOMAIN = "hot.example.com"
KEYS = Keys(b"triage-test-key", DOMAIN)
AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
ADA, GRACE, LINUS = "ada@example.com", "grace@example.com", "linus@example.com"
PEOPLE = {
    e: Person(e, e.split("@")[0].title(), d, None, "Europe/Berlin")
    for e, d in ((ADA, "Eng"), (GRACE, "Sales"), (LINUS, "Ops"))
}


def partnership(pid: int, member: str, partner: str, skill: str, **changes: object) -> Partnership:
    return Partnership(
        id=pid, member=member, partner=partner, skill=skill,
        goals=(Goal(1, date(2027, 3, 31), "talk"),), why="w", saddle="s",
        start=date(2026, 11, 30), created_at=datetime(2026, 11, 20, tzinfo=UTC),
    ).with_changes(**changes)  # fmt: skip


P1 = partnership(1, ADA, GRACE, "public speaking")
P2 = partnership(2, ADA, LINUS, "sql")
P3 = partnership(3, LINUS, GRACE, "go", status=ENDED)
ROSTER = Roster(PEOPLE, {1: P1, 3: P3})
BOTH = Roster(PEOPLE, {1: P1, 2: P2, 3: P3})
FACTS = Facts(current="2026-W49", report_period="2026-W49", local_today=date(2026, 12, 1))


def mail(sender: str, body: str, subject: str = "Re: check-in", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "someone"
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@example.com>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


def envelope(raw: bytes, *rcpts: str, mail_from: str = ADA) -> Envelope:
    return Envelope("E1", mail_from, rcpts, AT, raw)


def routed(raw: bytes, *rcpts: str, roster: Roster = ROSTER, mail_from: str = ADA) -> object:
    return route(parse_message(raw), envelope(raw, *rcpts, mail_from=mail_from), KEYS, roster)


def checkin_address(pid: int = 1, period: str = "2026-W49", kind: str = CHECKIN) -> str:
    return KEYS.address(kind, pid, period)


# -- route ------------------------------------------------------------------------------------


def test_reply_to_a_checkin_address_is_routed_to_its_partnership() -> None:
    raw = mail(f"Ada <{ADA}>", "Done: two runs")
    target = routed(raw, checkin_address())
    assert isinstance(target, Target)
    assert target.partnership == P1 and target.sender == ADA
    assert target.token == Token(CHECKIN, 1, "2026-W49")
    assert target.message_id == "<m1@example.com>"


def test_reply_from_someone_else_is_quarantined() -> None:
    raw = mail("Eve <eve@x.example>", "Done: all of it")
    assert routed(raw, checkin_address()) == Quarantine(
        "sender mismatch: from eve@x.example, expected the member ada@example.com",
        partnership_id=1,
        period="2026-W49",
    )
    # A partner's token answered by the member is just as wrong.
    assert routed(raw, checkin_address(kind=DIGEST)).reason.endswith(  # type: ignore[attr-defined]
        "expected the partner grace@example.com"
    )


def test_ended_and_unknown_partnerships() -> None:
    raw = mail(LINUS, "Done: x")
    ended = routed(raw, checkin_address(3), mail_from=LINUS)
    assert ended == Quarantine("partnership 3 has ended", partnership_id=3, tell_member=True)
    assert routed(raw, checkin_address(77)) == Quarantine("unknown partnership 77")


def test_no_token_anywhere_is_quarantined() -> None:
    raw = mail(ADA, "hello")
    got = routed(raw, f"checkin+not-a-token@{DOMAIN}")
    assert got == Quarantine("no check-in token in the address or references")


def test_a_reference_to_our_message_id_finds_the_token() -> None:
    token = KEYS.token(CHECKIN, 1, "2026-W48")
    raw = mail(ADA, "Done: late", In_Reply_To=f"<reminder.{token}@{DOMAIN}>")
    target = routed(raw, f"checkin@{DOMAIN}")
    assert isinstance(target, Target) and target.token == Token(CHECKIN, 1, "2026-W48")


def test_plain_address_picks_the_members_one_partnership() -> None:
    target = routed(mail(ADA, "Done: x"), f"checkin@{DOMAIN}")
    assert isinstance(target, Target) and target.partnership == P1 and target.token is None


def test_plain_address_with_several_asks_which_unless_a_skill_line_says() -> None:
    got = routed(mail(ADA, "Done: x"), f"checkin@{DOMAIN}", roster=BOTH)
    assert isinstance(got, Ambiguous)
    assert (got.pid, got.skills, got.running) == (1, ("public speaking", "sql"),
                                                  ("public speaking", "sql"))  # fmt: skip
    assert got.reason == "which partnership: public speaking, sql"
    assert got.inbound.kind == "ambiguous" and got.inbound.raw_ref == "mail/in/2026-W49/E1.eml"
    picked = routed(mail(ADA, "skill: sql\nDone: x"), f"checkin@{DOMAIN}", roster=BOTH)
    assert isinstance(picked, Target) and picked.partnership == P2
    by_subject = routed(mail(ADA, "Done: x", "My SQL week"), f"checkin@{DOMAIN}", roster=BOTH)
    assert isinstance(by_subject, Target) and by_subject.partnership == P2


def test_plain_address_before_the_partner_said_yes() -> None:
    roster = Roster(PEOPLE, {1: P1.with_changes(consent=CONSENT_PENDING)})
    got = routed(mail(ADA, "Done: x"), f"checkin@{DOMAIN}", roster=roster)
    assert got == Quarantine("the partner of ada@example.com has not accepted yet", 1)
    stranger = routed(mail("bob@x.example", "hi"), f"checkin@{DOMAIN}", mail_from="bob@x.example")
    assert stranger == Quarantine("no active partnership with member bob@x.example")


DSN = (
    b"From: MAILER-DAEMON@mx.example\r\nTo: bounces@hot.example.com\r\nSubject: failure\r\n"
    b"Message-ID: <dsn@mx.example>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nnot delivered\r\n"
    b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
    b"Final-Recipient: rfc822; grace@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n--B--\r\n"
)


def test_a_bounce_is_recorded_with_the_servers_words() -> None:
    got = routed(DSN, f"bounces@{DOMAIN}", mail_from="")
    assert isinstance(got, Record)
    assert got.reason == "bounce: 550 5.1.1 user unknown"
    assert got.bounced == ("grace@example.com",)
    assert got.inbound.kind == "bounce" and got.inbound.extra == {"recipients": [GRACE]}


def test_other_mail_to_the_return_path_is_recorded_not_answered() -> None:
    raw = mail(ADA, "I am out of office", Auto_Submitted="auto-replied")
    got = routed(raw, f"bounces@{DOMAIN}")
    assert isinstance(got, Record) and got.reason.startswith("to bounce address: ")
    assert got.bounced == ()


# -- decide -----------------------------------------------------------------------------------


def target_for(raw: bytes, token: Token | None, p: Partnership = P1, sender: str = ADA) -> Target:
    return Target(p, token, sender, "<m1@example.com>", envelope(raw))


TOKEN = Token(CHECKIN, 1, "2026-W49")


def decided(body: str, token: Token | None = TOKEN, facts: Facts = FACTS, **kw: str) -> object:
    raw = mail(ADA, body, **kw)
    parsed: ParsedMessage = parse_message(raw)
    return decide(parsed, target_for(raw, token), facts)


def test_a_members_reply_is_a_report_for_the_period_the_facts_give() -> None:
    got = decided("Done: two runs\nSetback: missed Thursday\nNext: book the room")
    assert isinstance(got, Reply) and got.reason == "reply"
    assert got.report is not None and got.inbound is None
    r = got.report
    assert (r.partnership_id, r.period, r.sender, r.setback) == (1, "2026-W49", ADA, True)
    assert (r.done, r.next) == ("two runs", "book the room")
    assert r.raw_ref == "mail/in/2026-W49/E1.eml" and r.received_at == AT
    assert records(got) == (r,)


def test_commands_are_taken_out_of_the_report() -> None:
    got = decided("Done: a run\npause until 2026-12-20\ngoal 1 done")
    assert isinstance(got, Reply) and got.report is not None
    assert got.report.text == "Done: a run"
    assert got.commands == (
        Command("pause_until", until=date(2026, 12, 20), line="pause until 2026-12-20"),
        Command("goal_done", goal=1, line="goal 1 done"),
    )
    only = decided("resume")
    assert isinstance(only, Reply) and only.reason == "commands" and only.report is None
    assert only.inbound == Inbound(
        "<m1@example.com>", AT, "commands", ADA, "commands only", 1, "2026-W49",
        "mail/in/2026-W49/E1.eml",
    )  # fmt: skip
    # A line that starts like a command but does not parse stays in the report (it may be
    # prose) and is reported back.
    unclear = decided("pause til friday")
    assert isinstance(unclear, Reply) and unclear.report is not None
    assert unclear.report.text == "pause til friday" and not unclear.commands
    assert unclear.problems == (
        'not understood: "pause til friday" (write "pause until YYYY-MM-DD" or "pause N weeks")',
    )


def test_an_empty_reply_is_quarantined() -> None:
    got = decided("")
    assert got == Quarantine(
        "empty reply: no new text outside the quoted check-in", partnership_id=1, period="2026-W49"
    )


def test_a_stale_token_is_refused_and_the_member_told() -> None:
    got = decided("Done: x", token=Token(CHECKIN, 1, "2026-W30"))
    assert got == Quarantine(
        "stale token: it is for 2026-W30, more than 8 weeks before 2026-W49",
        partnership_id=1,
        period="2026-W30",
        tell_member=True,
    )


def test_a_note_before_the_start_is_recorded_not_counted() -> None:
    early = Facts("2026-W49", "2026-W48", local_today=date(2026, 11, 29))
    got = decided("Done: getting ready", facts=early)
    assert isinstance(got, Record) and got.reason == "before the start date 2026-11-30: not counted"
    assert got.inbound.kind == "early_note" and got.period is None


def test_an_auto_reply_is_recorded() -> None:
    got = decided("I am away", Auto_Submitted="auto-replied")
    assert isinstance(got, Record) and got.reason.startswith("auto-reply: ")
    assert got.period == "2026-W49"


def test_a_partners_answers() -> None:
    raw = mail(GRACE, "Yes, happy to help!")
    consent = decide(parse_message(raw), target_for(raw, Token(AGREE, 1, "2026-W48")), FACTS)
    assert isinstance(consent, Consent)
    assert (consent.answer, consent.period, consent.reason) == (
        ACCEPT, "2026-W48", "consent: accepted"
    )  # fmt: skip
    raw = mail(GRACE, "Well done, keep going.")
    note = decide(parse_message(raw), target_for(raw, Token(DIGEST, 1, "2026-W49")), FACTS)
    assert isinstance(note, Note) and note.note == "Well done, keep going."
    assert note.inbound.kind == "partner_note"
    raw = mail(GRACE, "")
    empty = decide(parse_message(raw), target_for(raw, Token(DIGEST, 1, "2026-W49")), FACTS)
    assert empty == Quarantine(
        "empty reply: no new text outside the quoted digest", partnership_id=1, period="2026-W49"
    )


# -- an admin's release (route with vouch=True, decide with Facts.released) --------------------

RELEASED = Facts("2026-W49", "2026-W49", date(2026, 12, 1), released=True)


def test_a_release_routes_a_stranger_but_does_not_take_him_for_the_member() -> None:
    raw = mail("Ada at home <ada@home.example>", "Done: two joins")
    env = envelope(raw, checkin_address(), mail_from="ada@home.example")
    target = route(parse_message(raw), env, KEYS, ROSTER, vouch=True)
    assert isinstance(target, Target)
    assert target.partnership == P1 and target.proven is False
    assert target.sender == "ada@home.example"  # the record says who really sent it
    mine = route(parse_message(mail(ADA, "x")), envelope(raw, checkin_address()), KEYS, ROSTER,
                 vouch=True)  # fmt: skip
    assert isinstance(mine, Target) and mine.proven is True
    # Without a partnership there is still nothing to count for.
    assert route(parse_message(raw), envelope(raw, checkin_address(77)), KEYS, ROSTER,
                 vouch=True) == Quarantine("unknown partnership 77")  # fmt: skip


def test_a_release_vouches_for_the_text_never_for_the_commands() -> None:
    raw = mail("ada@home.example", "Rough week, I fell behind.\n\npause 2 weeks\ngoal 1 done")
    target = Target(P1, TOKEN, "ada@home.example", "<m1@example.com>", envelope(raw),
                    person=ADA, proven=False)  # fmt: skip
    got = decide(parse_message(raw), target, RELEASED)
    assert isinstance(got, Reply) and got.report is not None
    assert got.report.text == "Rough week, I fell behind." and got.report.setback is True
    assert got.report.sender == "ada@home.example"
    # Nothing runs: her commands wait for her yes to a confirmation mail, as any command
    # that came in her name without proof (the same rule as mail to the plain address).
    assert got.commands == () and got.problems == () and got.proven is False
    assert got.not_run == ("pause 2 weeks", "goal 1 done")
    assert [c.line for c in got.to_confirm] == ["pause 2 weeks", "goal 1 done"]
    assert got.unbound is False  # it came through her check-in's token
    # Commands alone are released too: nothing counts, and they wait for her yes.
    only = mail("ada@home.example", "stop")
    target = Target(P1, TOKEN, "ada@home.example", "<m1@example.com>", envelope(only),
                    person=ADA, proven=False)  # fmt: skip
    held = decide(parse_message(only), target, RELEASED)
    assert isinstance(held, Reply) and held.report is None and held.inbound is not None
    assert held.commands == () and [c.line for c in held.to_confirm] == ["stop"]


def test_a_release_counts_for_the_tokens_week_however_old() -> None:
    old = Token(CHECKIN, 1, "2026-W30")
    got = decided("Done: x\ngoal 1 done", token=old, facts=RELEASED)
    assert isinstance(got, Reply) and got.report is not None
    assert got.period == got.report.period == "2026-W30"
    assert got.report.raw_ref == "mail/in/2026-W30/E1.eml"
    assert [c.line for c in got.commands] == ["goal 1 done"]  # her own address: they run
    # Not released, the same reply to a recent week counts where the facts say.
    recent = decided("Done: x", token=Token(CHECKIN, 1, "2026-W48"))
    assert isinstance(recent, Reply) and recent.period == "2026-W49"


def test_a_released_yes_from_another_address_is_no_consent() -> None:
    raw = mail("grace@home.example", "Yes!")
    target = Target(P1, Token(AGREE, 1, "2026-W48"), "grace@home.example", "<m1@x>",
                    envelope(raw), person=GRACE, proven=False)  # fmt: skip
    got = decide(parse_message(raw), target, RELEASED)
    assert isinstance(got, Quarantine) and "only from the partner's own address" in got.reason
