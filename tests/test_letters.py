"""The letter builders, without disk or network: what each mail says, to whom, under which key.

The last test holds every builder to the template context keys that mail has always had:
`fixtures/upgrade/context_keys.json` records the keys of every context the code before the
structure step (1909e74) rendered while it made the upgrade fixture. Admins' templates are
written against those keys, so a builder may not drop or rename one; a key (or a template)
is added only by listing it in `ADDED` below, with the issue that added it, and a new
template only by recording its keys in `fixtures/new_context_keys.json`, so each addition is
a decision, never an accident.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mailflow import letters, samples
from mailflow.config import ScheduleConfig
from mailflow.letters import DigestMark, Mark, Pair, Recipient, ServiceInfo, Told
from mailflow.models import CONSENT_PENDING, Goal, Partnership, PeriodSummary, Person, Report, Week
from mailflow.schedule import Settings, current_period
from mailflow.tokens import AGREE, CHECKIN, DIGEST, REPLY_MARKER, Keys, hash16

KEYS = Keys(b"letters-test-key", "hot.example.com")
SVC = ServiceInfo(
    KEYS, "mailflow@hot.example.com", Settings.from_config(ScheduleConfig()), "admin@x.example"
)
ADA = Person("ada@example.com", "Ada Lovelace", "Eng", None, "Europe/Berlin")
GRACE = Person("grace@example.com", "Grace Hopper", "Sales", None, "America/New_York")
P = Partnership(
    id=1,
    member=ADA.email,
    partner=GRACE.email,
    skill="public speaking",
    goals=(Goal(1, date(2026, 12, 31), "Give the talk"), Goal(2, date(2027, 1, 31), "Meetup")),
    why="lead reviews",
    saddle="book the room",
    start=date(2026, 11, 30),
    created_at=datetime(2026, 11, 20, 9, tzinfo=UTC),
)
STRIP = ({"period": "2026-W49", "label": "W49", "state": "pending"},)
PAIR = Pair(P, ADA, GRACE, STRIP)
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # Monday 09:00 in Berlin: 2026-W49's check-in
PERIOD = current_period(P, ZoneInfo("Europe/Berlin"), SVC.settings, NOW)
assert PERIOD is not None
SENT = Week(1, "2026-W49", checkin_at=NOW)
REPORT = Report(1, "2026-W49", datetime(2026, 12, 1, 18, tzinfo=UTC), "<r@x>", ADA.email, "Done: x",
                setback=True, done="x", setback_text="y")  # fmt: skip


def test_checkin_is_to_the_member_with_her_token() -> None:
    letter = letters.checkin(PAIR, PERIOD, SVC, NOW)
    token = KEYS.token(CHECKIN, 1, "2026-W49")
    assert letter.template == "checkin"
    assert letter.key == "checkin:1:2026-W49"
    assert letter.to == Recipient(ADA.email, "Ada Lovelace")
    assert letter.period == "2026-W49"
    assert letter.reply_to == letter.ctx["reply_address"] == KEYS.address(CHECKIN, 1, "2026-W49")
    assert letter.message_id == f"<checkin.{token}@hot.example.com>"
    assert letter.mark == Mark("checkin_at")
    assert letter.ctx["checkin_at"] == "Monday 30 November, 09:00 (Europe/Berlin)"
    assert letter.ctx["reply_marker"] == REPLY_MARKER
    assert letter.ctx["goals"][0] == {
        "n": 1, "due": "2026-12-31", "text": "Give the talk", "days_left": 31, "overdue": False,
        "done": False,
    }  # fmt: skip
    assert letter.ctx["history"] == [dict(STRIP[0])]
    assert letter.ctx["history"][0] is not STRIP[0]  # a copy: a builder may change its own


def test_an_early_report_makes_the_checkin_a_got_it_note() -> None:
    letter = letters.checkin_ack(PAIR, PERIOD, [REPORT], SVC, NOW)
    assert letter.template == "checkin_ack"
    assert letter.key == "checkin:1:2026-W49"  # the same job: one check-in per period
    assert letter.mark == Mark("checkin_at")
    assert letter.ctx["reports"][0]["received_at"] == "Tuesday 1 December, 19:00 (Europe/Berlin)"


def test_reminder_counts_from_when_the_checkin_went_out() -> None:
    later = datetime(2026, 12, 2, 9, tzinfo=UTC)
    letter = letters.reminder(PAIR, PERIOD, SENT, SVC, later)
    assert letter.ctx["checkin_at"] == "Monday 30 November, 09:00 (Europe/Berlin)"
    assert letter.mark == Mark("reminder_at", only_without_reports=True)
    assert letter.message_id.startswith("<reminder.c1-2026w49-")  # type: ignore[union-attr]


def test_no_report_goes_to_the_partner_and_marks_the_week_missed() -> None:
    letter = letters.no_report(PAIR, PERIOD, SENT, SVC, NOW)
    assert letter.to.address == GRACE.email
    assert letter.reply_to == KEYS.address(DIGEST, 1, "2026-W49")
    assert letter.ctx["history"] == [{"period": "2026-W49", "label": "W49", "state": "missed"}]
    assert letter.ctx["checkin_at"] == "Monday 30 November, 03:00 (America/New_York)"
    assert letter.ctx["deadline_hours"] == SVC.deadline_hours
    assert letter.mark == Mark("no_report_at", only_without_reports=True)


def test_digest_is_keyed_by_its_report_count_and_says_when_it_updates() -> None:
    first = letters.digest(PAIR, PERIOD, SENT, [REPORT], SVC, NOW)
    assert first.key == "digest:1:2026-W49:1"
    assert first.message_id.startswith("<digest1.d1-2026w49-")  # type: ignore[union-attr]
    assert first.mark == DigestMark(1)
    assert first.ctx["setback"] is True and first.ctx["updated"] is False
    second = letters.digest(PAIR, PERIOD, Week(1, "2026-W49", digested_reports=1),
                            [REPORT, REPORT], SVC, NOW)  # fmt: skip
    assert second.key == "digest:1:2026-W49:2" and second.ctx["updated"] is True


def test_intro_asks_the_partner_and_tells_the_member() -> None:
    pending = Pair(P.with_changes(consent=CONSENT_PENDING), ADA, GRACE)
    at = datetime(2026, 11, 25, 10, tzinfo=UTC)
    partner = letters.intro(pending, "partner", SVC, at)
    assert partner.key == "intro:1:partner" and partner.to.address == GRACE.email
    assert partner.reply_to == KEYS.address(AGREE, 1, "2026-W48")
    assert partner.ctx["accepted"] is False and partner.ctx["role"] == "partner"
    assert partner.ctx["first_checkin"] == "Monday 30 November, 09:00 (Europe/Berlin)"
    member = letters.intro(pending, "member", SVC, at)
    assert member.reply_to == KEYS.plain_address
    assert member.ctx["checkin_day"] == "Monday" and member.ctx["checkin_time"] == "09:00"
    assert partner.message_id is None  # <intro.hash16(key)@domain>, made by the mailroom


def test_summary_counts_the_strip() -> None:
    strip = tuple(
        {"period": f"2026-W{n}", "label": f"W{n}", "state": s}
        for n, s in ((49, "reported"), (50, "paused"), (51, "setback"), (52, "missed"))
    )
    letter = letters.summary(Pair(P, ADA, GRACE, strip), "partner", "done", SVC, NOW)
    assert (letter.ctx["weeks_asked"], letter.ctx["weeks_reported"]) == (3, 2)
    assert letter.ctx["setbacks"] == 1 and letter.ctx["goals_total"] == 2
    assert letter.key == "summary:1:partner" and letter.reply_to is None


def test_receipt_role_only_for_the_partner() -> None:
    told = Told("receipt:k", "a@x", None, done=("Paused",), report_stored=True)
    member = letters.receipt(PAIR, told, SVC, NOW)
    assert "role" not in member.ctx and member.to.address == ADA.email
    assert member.ctx["done_items"] == ["Paused"] and member.reply_to is None
    partner = letters.receipt(PAIR, Told("receipt:k", "a@x", "a@x", to_partner=True), SVC, NOW)
    assert partner.ctx["role"] == "partner" and partner.to.address == GRACE.email
    about = letters.receipt(PAIR, Told("k", "a@x", "a@x", period="2026-W45"), SVC, NOW)
    assert about.ctx["period"] == "2026-W45" and about.period == "2026-W49"


def test_notices_and_notes() -> None:
    note = letters.partner_note(PAIR, "Go!", "<n@x>", SVC, NOW)
    assert note.key == f"note:{hash16('<n@x>')}" and note.from_name == "Grace Hopper via mailflow"
    assert note.reply_to == KEYS.address(CHECKIN, 1, "2026-W49")
    pause = letters.pause_notice(PAIR, "paused", "2026-12-24", "<m@x>", "2026-W49", SVC, NOW)
    assert pause.key == f"pause_notice:{hash16('<m@x>')}:paused"
    assert pause.ctx["until"] == "2026-12-24" and pause.to.address == GRACE.email
    consent = letters.consent_notice(P, ADA, GRACE, "declined", "busy", SVC, NOW)
    assert consent is not None and consent.to == Recipient("admin@x.example")
    # The days since the invitation (P was created on 20 November), not consent_days.
    assert consent.ctx["days"] == 9 and consent.key == "consent_notice:1:declined"
    bounce = letters.bounce_notice("grace@example.com", "550 unknown", SVC, NOW)
    assert bounce is not None and bounce.key == "bounce_notice:grace@example.com:2026-W49"
    quiet = ServiceInfo(KEYS, "m@x", SVC.settings)  # no admin address: nobody to tell
    assert letters.consent_notice(P, ADA, GRACE, "declined", "", quiet, NOW) is None
    assert letters.bounce_notice("g@x", "r", quiet, NOW) is None


def test_history_strip_states() -> None:
    tz = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 12, 22, 9, tzinfo=UTC)  # 2026-W52
    window = letters.history_window(P, tz, SVC.settings, now)
    assert window == letters.Window("2026-W52", ("2026-W49", "2026-W50", "2026-W51", "2026-W52"))
    weeks = {
        "2026-W49": PeriodSummary(checkin_sent=True, reports=1, setback=True),
        "2026-W50": PeriodSummary(checkin_sent=True),
        "2026-W52": PeriodSummary(checkin_sent=True),
    }
    states = [w["state"] for w in letters.history(window, weeks)]
    assert states == ["setback", "missed", "paused", "pending"]
    assert letters.history(None, weeks) == ()
    # Weeks before the first check-in are not history.
    assert [w["label"] for w in letters.history(window, {"2026-W52": weeks["2026-W52"]})] == ["W52"]


# -- every builder emits exactly the keys mail has always had ------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
# What the old code rendered (the upgrade fixture), and the templates added since, recorded
# from their samples when they were added (`new_context_keys.json`; issue 10: released;
# issue 12: confirm, report_receipt, recorded again at the merge with issues 10 and 13, whose
# report parts and released requests they show; issue 13: forward): admins' copies of a
# template are written against these keys.
RECORDED = {
    **json.loads((FIXTURES / "upgrade" / "context_keys.json").read_text()),
    **json.loads((FIXTURES / "new_context_keys.json").read_text()),
}


def _paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a context (or of a recorded shape): `member.name`, `goals[].due`."""
    if isinstance(value, dict):
        out = set()
        for key, sub in value.items():
            out |= {f"{prefix}{key}"} | _paths(sub, f"{prefix}{key}.")
        return out
    if isinstance(value, list):
        out = set()
        for item in value:
            out |= _paths(item, prefix[:-1] + "[].")
        return out
    return set()


_REPORT_PARTS = {
    "reports[].free_text",
    "reports[].parts",
    "reports[].parts[].label",
    "reports[].parts[].text",
    "reports[].parts[].paragraphs",
}
# Keys added to a template since it was recorded. Admins' templates keep working: no recorded
# key is dropped or renamed, and every addition is listed here on purpose. Issue 10: the
# digest as a partner reads it, the summary's rate. Issue 13: the bounced mail and the
# command that helps in the bounce notice.
ADDED: dict[str, set[str]] = {
    "digest": {"released", *_REPORT_PARTS},
    "checkin_ack": _REPORT_PARTS,
    "summary": {"report_rate", "report_rate_level"},
    "bounce_notice": {"mail", "partnership", "partnership.id", "partnership.skill", "role",
                      "command"},
}  # fmt: skip


@pytest.mark.parametrize("name", letters.TEMPLATE_NAMES)
def test_builders_keep_every_recorded_context_key(name: str) -> None:
    built = [ctx for _, ctx in samples.variants(name)]
    added = ADDED.get(name, set())
    top_built = {tuple(sorted(set(ctx) - added)) for ctx in built}
    top_recorded = {tuple(sorted(shape)) for shape in RECORDED[name]}
    assert top_built == top_recorded
    paths_built = set().union(*(_paths(ctx) for ctx in built))
    paths_recorded = set().union(*(_paths(shape) for shape in RECORDED[name]))
    assert paths_built == paths_recorded | added  # nested keys too: goals[].days_left


def test_every_template_is_recorded_once() -> None:
    """A new template is recorded in new_context_keys.json, an old one is never re-recorded
    there (its additions go to ADDED instead)."""
    old = json.loads((FIXTURES / "upgrade" / "context_keys.json").read_text())
    new = json.loads((FIXTURES / "new_context_keys.json").read_text())
    assert not set(old) & set(new)
    assert set(old) | set(new) == set(letters.TEMPLATE_NAMES)


# -- a report as the partner reads it (issue 10) --------------------------------------------------


def _report(text: str, setback: bool, **sections: str) -> Report:
    return Report(1, "2026-W49", NOW, "<r@x>", ADA.email, text, setback, **sections)


def _shown(parts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(part["label"], part["text"]) for part in parts]


def test_free_text_and_only_some_labels_keep_every_word() -> None:
    report = _report("Rough week, I fell behind.\nNext week: catch up", True, next="catch up")
    parts = letters.report_parts(report)
    assert _shown(parts) == [("", "Rough week, I fell behind."), ("Next", "catch up")]
    [item] = letters.report_items([report], "Europe/Berlin")
    assert item["free_text"] == "Rough week, I fell behind."
    assert item["parts"] == parts and item["text"] == report.text  # the old keys stay


def test_a_setback_report_never_shows_setback_none() -> None:
    # Free text admits the setback, no Setback section: no "none" is made up for it.
    admits = _report("Done: a bit\nI missed Thursday", True, done="a bit\nI missed Thursday")
    assert [label for label, _ in _shown(letters.report_parts(admits))] == ["Done"]
    # A report without a setback that says "none" shows no section for it either: its
    # `setback` flag (false) is the "no setback" mark.
    calm = _report("Done: x\nSetback: none\nNext: y", False, done="x", setback_text="none",
                   next="y")  # fmt: skip
    assert _shown(letters.report_parts(calm)) == [("Done", "x"), ("Next", "y")]
    # "none" with a later line that admits one is real content.
    real = _report("Setback: none.\n\nActually I missed Thursday", True,
                   setback_text="none.\n\nActually I missed Thursday")  # fmt: skip
    assert _shown(letters.report_parts(real)) == [
        ("Setback", "none.\n\nActually I missed Thursday")
    ]
    # Whatever the mix, a digest with a setback shows no part "Setback: none".
    digest = letters.digest(PAIR, PERIOD, SENT, [admits, calm, real], SVC, NOW)
    assert digest.ctx["setback"] is True
    for item in digest.ctx["reports"]:
        for part in item["parts"]:
            assert not (part["label"] == "Setback" and part["text"].lower() == "none")


def test_unlabelled_report_is_one_part() -> None:
    report = _report("Quick update: booked the room.", False)
    assert _shown(letters.report_parts(report)) == [("", "Quick update: booked the room.")]


WRAPPED = (
    "I finished module 4 and recorded a practice run of the talk, then\n"
    "watched it back with the sound off to see what my hands were doing.\n"
    "\n"
    "Three things to fix:\n"
    "- fewer filler words, especially at the start of each new section\n"
    "- look at the room\n"
    "1. slow down\n"
    "Short line.\n"
    "Another short line."
)


def test_reflow_joins_what_a_client_wrapped_and_keeps_what_she_broke() -> None:
    assert letters.reflow(WRAPPED) == [
        "I finished module 4 and recorded a practice run of the talk, then watched it back "
        "with the sound off to see what my hands were doing.",
        "Three things to fix:\n- fewer filler words, especially at the start of each new "
        "section\n- look at the room\n1. slow down\nShort line.\nAnother short line.",
    ]


def test_reflow_leaves_short_lines_and_flowed_paragraphs_alone() -> None:
    # Nothing near a wrapping width: her line breaks are hers.
    assert letters.reflow("Done: a\nNext: b\nc") == ["Done: a\nNext: b\nc"]
    # format=flowed arrives unflowed (one line per paragraph): nothing to join.
    long = "word " * 30
    assert letters.reflow(f"{long}\n{long}\n\nend") == [f"{long.rstrip()}\n{long.rstrip()}", "end"]
    assert letters.reflow("") == []


def test_summary_rate_level() -> None:
    assert [letters.rate_level(r) for r in (None, 0, 49, 50, 79, 80, 100)] == [
        "none", "low", "low", "medium", "medium", "high", "high",
    ]  # fmt: skip
    strip = tuple(
        {"period": f"2026-W{n}", "label": f"W{n}", "state": s}
        for n, s in ((49, "reported"), (50, "missed"), (51, "setback"), (52, "missed"))
    )
    letter = letters.summary(Pair(P, ADA, GRACE, strip), "member", "done", SVC, NOW)
    assert (letter.ctx["report_rate"], letter.ctx["report_rate_level"]) == (50, "medium")
    empty = letters.summary(Pair(P, ADA, GRACE, ()), "member", "done", SVC, NOW)
    assert (empty.ctx["report_rate"], empty.ctx["report_rate_level"]) == (None, "none")


def test_released_tells_the_member_which_commands_did_not_run() -> None:
    at = datetime(2026, 12, 15, 9, tzinfo=UTC)
    letter = letters.released(
        PAIR, "2026-W49", REPORT.received_at, "sender mismatch: ...", "ada@home.example",
        ("pause 2 weeks",), "<r@x>", SVC, at,
    )  # fmt: skip
    assert letter.template == "released" and letter.to.address == ADA.email
    assert letter.key == f"released:{hash16('<r@x>')}"
    assert letter.ctx["period"] == "2026-W49" and letter.period == "2026-W51"
    assert letter.ctx["own_address"] is False and letter.ctx["not_run"] == ["pause 2 weeks"]
    assert letter.reply_to == KEYS.address(CHECKIN, 1, "2026-W51")  # the current check-in's


def test_a_flowed_reply_reaches_the_digest_as_its_paragraphs() -> None:
    """format=flowed (RFC 3676): the parser joins the soft breaks (a trailing space) before the
    text is stored, so the digest shows her paragraphs and keeps her hard breaks."""
    from mailflow.parse import parse_message

    raw = (
        b"From: ada@example.com\r\nTo: x@hot.example.com\r\nSubject: Re: check-in\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n\r\n"
        b"I rehearsed twice this week and recorded the second run, which went \r\n"
        b"much better than the first one.\r\n"
        b"Next week: book the room\r\n"
        b"and ask Grace to watch.\r\n"
    )
    parsed = parse_message(raw)
    report = _report(parsed.text, bool(parsed.setback), **{
        "done": parsed.sections["done"], "next": parsed.sections["next"]})  # fmt: skip
    [free, nxt] = letters.report_parts(report)
    assert free["paragraphs"] == [
        "I rehearsed twice this week and recorded the second run, which went much better "
        "than the first one."
    ]
    assert nxt["label"] == "Next" and nxt["paragraphs"] == [
        "book the room\nand ask Grace to watch."
    ]
