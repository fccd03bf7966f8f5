"""What a message asks, applied to the partnership as stored now: pure, no disk.

Each handler gets the decision, the partnership with its people and strip, and the `Desk`
(when the message arrived, its ids); it returns the changed record, the letters to send and
the lines to report. Nothing is written here: intake writes the record in its transaction.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from mailflow import actions
from mailflow.actions import Desk, Outcome
from mailflow.commands import ACCEPT, DECLINE, PAUSE_UNTIL, Command, extract_commands
from mailflow.config import ScheduleConfig
from mailflow.letters import Pair, ServiceInfo
from mailflow.models import (
    CONSENT_ACCEPTED,
    CONSENT_DECLINED,
    CONSENT_PENDING,
    ENDED,
    PAUSED,
    Goal,
    Inbound,
    Partnership,
    Person,
    Report,
)
from mailflow.schedule import Settings
from mailflow.tokens import AGREE, CHECKIN, DIGEST, Keys, hash16
from mailflow.triage import Ambiguous, Consent, Note, Quarantine, Record, Reply

KEYS = Keys(b"actions-test-key", "hot.example.com")
SVC = ServiceInfo(
    KEYS, "mailflow@hot.example.com", Settings.from_config(ScheduleConfig()), "admin@x.example"
)
AT = datetime(2026, 12, 1, 10, tzinfo=UTC)  # Tuesday of 2026-W49
DESK = Desk(SVC, AT, "<reply@x>", "SPOOL-ID")
ADA = Person("ada@example.com", "Ada", "Eng", None, "Europe/Berlin")
GRACE = Person("grace@example.com", "Grace", "Sales", None, "America/New_York")
P = Partnership(
    id=1, member=ADA.email, partner=GRACE.email, skill="sql",
    goals=(Goal(1, date(2027, 1, 31), "joins"),), why="w", saddle="s",
    start=date(2026, 11, 30), created_at=datetime(2026, 11, 20, tzinfo=UTC),
)  # fmt: skip
PAIR = Pair(P, ADA, GRACE)
INBOUND = Inbound("<reply@x>", AT, "consent", GRACE.email)


def reply(*commands: Command, problems: tuple[str, ...] = (), report: bool = True) -> Reply:
    stored = Report(1, "2026-W49", AT, "<reply@x>", ADA.email, "Done: x", False) if report else None
    return Reply("reply", 1, "2026-W49", ADA.email, stored, None, commands, problems)


def test_what_needs_the_record() -> None:
    assert actions.subject(reply()) is None  # a plain report: only stored
    assert actions.subject(reply(problems=("x",))) == 1
    assert actions.subject(Quarantine("sender mismatch", 1)) is None  # a stranger: no answer
    assert actions.subject(Quarantine("stale", 1, tell_member=True)) == 1
    assert actions.subject(Record("auto-reply: ooo", INBOUND)) is None
    assert actions.apply(reply(problems=("x",)), None, DESK) == Outcome()  # record gone


def test_a_pause_by_reply_changes_the_record_and_tells_both() -> None:
    pause = Command(PAUSE_UNTIL, until=date(2026, 12, 20), line="pause until 2026-12-20")
    out = actions.apply(reply(pause, problems=('"x": not understood',)), PAIR, DESK)
    assert out.partnership is not None and out.partnership.status == PAUSED
    receipt, notice = out.letters
    assert receipt.template == "receipt" and receipt.key == f"receipt:{hash16('<reply@x>')}"
    assert receipt.to.address == ADA.email
    assert receipt.reply_to == KEYS.address(CHECKIN, 1, "2026-W49")
    assert receipt.ctx["done_items"] == ["Paused until 2026-12-20: no check-ins before then."]
    assert receipt.ctx["problems"] == ['"x": not understood'] and receipt.ctx["report_stored"]
    assert notice.template == "pause_notice" and notice.to.address == GRACE.email
    assert notice.ctx["action"] == "paused" and notice.ctx["until"] == "2026-12-20"
    assert notice.reply_to == KEYS.address(DIGEST, 1, "2026-W49")
    assert out.lines == ("partnership 1: Paused until 2026-12-20: no check-ins before then.",)


def consent(answer: str | None, note: str = "") -> Consent:
    return Consent(1, "2026-W48", answer, note, GRACE.email, INBOUND)


def test_a_yes_starts_the_partnership_and_both_hear_it() -> None:
    pending = Pair(P.with_changes(consent=CONSENT_PENDING), ADA, GRACE)
    out = actions.apply(consent(ACCEPT), pending, DESK)
    assert out.partnership is not None and out.partnership.consent == CONSENT_ACCEPTED
    assert out.partnership.consent_at == AT
    to_member, to_partner = out.letters
    assert to_member.key == "consent_told:1" and to_member.to.address == ADA.email
    assert to_member.ctx["done_items"][0].startswith("Grace accepted. Your first check-in")
    assert to_partner.to.address == GRACE.email and to_partner.ctx["role"] == "partner"
    assert to_partner.reply_to == KEYS.address(AGREE, 1, "2026-W49")
    assert out.lines == ("partnership 1: partner accepted",)


def test_a_no_is_told_to_the_admin_too() -> None:
    pending = Pair(P.with_changes(consent=CONSENT_PENDING), ADA, GRACE)
    out = actions.apply(consent(DECLINE, "No, away until March"), pending, DESK)
    assert out.partnership is not None and out.partnership.consent == CONSENT_DECLINED
    assert out.partnership.consent_note == "No, away until March"
    notice = out.letters[0]
    assert notice.template == "consent_notice" and notice.to.address == "admin@x.example"
    assert notice.ctx["text"] == "No, away until March" and notice.ctx["state"] == "declined"
    assert [letter.template for letter in out.letters] == ["consent_notice", "receipt", "receipt"]


def test_an_unclear_or_second_answer_changes_nothing() -> None:
    pending = Pair(P.with_changes(consent=CONSENT_PENDING), ADA, GRACE)
    unclear = actions.apply(consent(None), pending, DESK)
    assert unclear.partnership is None and len(unclear.letters) == 1
    assert "yes or a no" in unclear.letters[0].ctx["question"]
    answered = Pair(P.with_changes(consent_at=datetime(2026, 11, 21, tzinfo=UTC)), ADA, GRACE)
    second = actions.apply(consent(DECLINE), answered, DESK)
    assert second.partnership is None
    assert second.letters[0].reply_to is None
    assert second.letters[0].ctx["question"] == (
        "You already accepted on 2026-11-21; that answer stands. To change it, please write "
        "to admin@x.example."
    )
    assert second.lines == ("partnership 1: consent answer ignored, already accepted",)


def test_a_partners_note_goes_to_the_member() -> None:
    out = actions.apply(Note(1, "2026-W49", "Go Ada!", GRACE.email, INBOUND), PAIR, DESK)
    [note] = out.letters
    assert note.template == "partner_note" and note.to.address == ADA.email
    assert note.ctx["note"] == "Go Ada!" and out.partnership is None


def test_an_ambiguous_mail_is_answered_with_a_question() -> None:
    d = Ambiguous(ADA.email, 1, ("sql",), ("public speaking", "sql"), INBOUND)
    [question] = actions.apply(d, PAIR, DESK).letters
    assert question.reply_to == KEYS.plain_address
    assert question.ctx["question"] == (
        'Which partnership is this for? Reply with a line "skill: SKILL" '
        "(yours: public speaking, sql)."
    )


def test_a_member_hears_her_reply_was_not_counted() -> None:
    ended = Pair(P.with_changes(status=ENDED), ADA, GRACE)
    d = Quarantine("partnership 1 has ended", 1, tell_member=True)
    [receipt] = actions.apply(d, ended, DESK).letters
    assert receipt.key == f"receipt:{hash16('SPOOL-ID')}"
    assert receipt.reply_to is None and receipt.ctx["reply_address"] == KEYS.plain_address
    assert receipt.ctx["problems"] == ["Your reply was not counted: this partnership has ended."]
    stale = Quarantine("stale token: ...", 1, "2026-W30", tell_member=True)
    [receipt] = actions.apply(stale, PAIR, DESK).letters
    assert receipt.reply_to == KEYS.address(CHECKIN, 1, "2026-W49")
    assert "more than 8 weeks ago" in receipt.ctx["problems"][0]


# -- an admin's release -----------------------------------------------------------------------


def test_a_release_sends_the_digest_of_its_period_and_tells_the_member() -> None:
    from mailflow.letters import DigestMark
    from mailflow.models import Week
    from mailflow.schedule import period_named

    report = Report(1, "2026-W49", AT, "<reply@x>", "ada@home.example", "Missed it", True)
    stop = extract_commands("stop", date(2026, 12, 1)).commands
    d = Reply("reply", 1, "2026-W49", "ada@home.example", report, to_confirm=stop, proven=False)
    later = datetime(2026, 12, 15, 9, tzinfo=UTC)  # 2026-W51: W49 has passed
    period = period_named(P, ZoneInfo(ADA.timezone), SVC.settings, "2026-W49")
    desk = Desk(SVC, later, "<reply@x>", "Q-ID")
    out = actions.on_release(
        d, PAIR, period, Week(1, "2026-W49"), [report], "sender mismatch", desk
    )
    digest, told = out.letters
    assert digest.template == "digest" and digest.to.address == GRACE.email
    assert digest.key == "digest:1:2026-W49:1" and digest.mark == DigestMark(1)
    assert digest.ctx["released"] is True and digest.ctx["setback"] is True
    assert told.template == "released" and told.to.address == ADA.email
    assert told.ctx["not_run"] == ["stop"] and told.ctx["reason"] == "sender mismatch"
    assert out.partnership is None  # a release changes no partnership by itself
    assert out.lines == ("partnership 1: released report for 2026-W49 (setback) counts",)
    assert actions.on_release(reply(report=False), PAIR, period, None, [], "x", desk) == Outcome()


def test_a_released_mail_from_another_address_asks_her_to_confirm_its_commands() -> None:
    """The commands of a release from another address are held like those of a mail to the
    plain address: she is asked at her stored address, and the mail says who sent them."""
    report = Report(1, "2026-W49", AT, "<reply@x>", "ada@home.example", "Missed it", True)
    stop = extract_commands("stop", date(2026, 12, 1)).commands
    d = Reply("reply", 1, "2026-W49", "ada@home.example", report, to_confirm=stop, proven=False)
    later = datetime(2026, 12, 15, 9, tzinfo=UTC)
    out = actions.apply(d, PAIR, Desk(SVC, later, "<reply@x>", "Q-ID", next_n=7))
    [letter] = out.letters
    assert letter.template == "confirm" and letter.to.address == ADA.email
    assert letter.ctx["released"] is True and letter.ctx["sender"] == "ada@home.example"
    assert out.partnership is not None and out.partnership.status == P.status  # held only
    assert [x.n for x in out.partnership.pending] == [7] and out.numbered == 7
