"""Sample mail for `templates check` and `templates preview`, made by the real letter builders.

A sample program (Zoë Adler learns public speaking from Bruno Keller, partnership 7, started
in week 45 of 2026) is described as domain objects: people, a partnership with goals, reports,
period summaries for the week-by-week strip, the service's settings. Every variant of every
template is the output of its `letters` builder for one moment of that program, so a template
is checked against exactly the context the sender gives it; there is no second description
of the context to keep in step.

`sample_context(name, ...)` is one context; `variants(name)` every variant with a short label
(what `Templates.check` renders); `sample_variants(name)` the labels `preview --variant` takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import letters
from mailflow.commands import describe, extract_commands
from mailflow.config import ScheduleConfig
from mailflow.errors import TemplateError
from mailflow.letters import Bounced, Letter, Pair, ServiceInfo, Told, Written
from mailflow.models import (
    CONSENT_ACCEPTED,
    CONSENT_PENDING,
    Goal,
    Partnership,
    Pending,
    PeriodSummary,
    Person,
    Report,
    Week,
)
from mailflow.schedule import Period, Settings, current_period
from mailflow.tokens import AGREE, CHECKIN, Keys

BERLIN = ZoneInfo("Europe/Berlin")
SETTINGS = Settings.from_config(ScheduleConfig())
SVC = ServiceInfo(
    keys=Keys(
        b"sample key: not a secret", "mailflow.example.com", "", "hotteam@mailflow.example.com"
    ),
    from_address="mailflow@mailflow.example.com",
    settings=SETTINGS,
    admin="admin@mailflow.example.com",
    consent_days=7,
    deadline_hours=96,
    checkin_time="09:00",
    default_tz="Europe/Berlin",
)
ZOE = Person("zoe.adler@example.com", "Zoë Adler", "Engineering", None, "Europe/Berlin")
BRUNO = Person("bruno.keller@example.com", "Bruno Keller", "Sales", None, "Europe/Berlin")


def _at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """An instant of 2026 in Berlin, where both sample people live."""
    return datetime(2026, month, day, hour, minute, tzinfo=BERLIN)


GOALS = (
    Goal(1, date(2026, 11, 20), "Finish the online course on structuring a talk (all 6 modules)."),
    Goal(2, date(2026, 11, 16), "Record myself giving a 5-minute talk and watch it back."),
    Goal(
        3,
        date(2026, 12, 18),
        "Give a 10-minute talk at the team meeting, without notes & with Q&A.",
    ),
    Goal(4, date(2026, 11, 24), "Book a slot on the team meeting agenda."),
)
# Started on a Tuesday: the first check-in is the next Monday's (9 November).
NEW = Partnership(
    id=7,
    member=ZOE.email,
    partner=BRUNO.email,
    skill="public speaking",
    goals=GOALS,
    why=(
        "I want to present my own team's work at the quarterly review instead of "
        "asking someone else to do it, and to stop dreading the Monday stand-up."
    ),
    saddle=(
        "One missed week is not a pattern. Pick the smallest next step (five minutes "
        "of practice today) and tell me when it's done. You've done harder things."
    ),
    start=date(2026, 11, 3),
    created_at=_at(11, 2, 10),
    consent=CONSENT_PENDING,
)
RUNNING = NEW.with_changes(
    consent=CONSENT_ACCEPTED,
    goals=tuple(replace(g, done_on=date(2026, 11, 14)) if g.n == 2 else g for g in GOALS),
)
ALL_DONE = RUNNING.with_changes(
    goals=tuple(replace(g, done_on=g.done_on or date(2026, 12, 15)) for g in GOALS)
)

GOOD = Report(
    7, "2026-W48", _at(11, 24, 18, 42), "<good@example.com>", ZOE.email,
    "Done: Practised the talk twice in front of the mirror and once for my flatmate.\n"
    "Setback: none\nNext: Ask Bruno for 10 minutes of Q&A practice on Thursday.",
    setback=False,
    done="Practised the talk twice in front of the mirror and once for my flatmate.",
    setback_text="none",
    next="Ask Bruno for 10 minutes of Q&A practice on Thursday.",
)  # fmt: skip
BAD = Report(
    7, "2026-W48", _at(11, 26, 21, 5), "<bad@example.com>", ZOE.email,
    "Done: One practice run on Monday.\n"
    "Setback: Missed my Wednesday slot, the release slipped and I stayed late <again>.\n"
    "Next: Two short runs before Friday, one with Bruno.",
    setback=True,
    done="One practice run on Monday.",
    setback_text="Missed my Wednesday slot, the release slipped and I stayed late <again>.",
    next="Two short runs before Friday, one with Bruno.",
)  # fmt: skip
# A mail client that wraps at 72 columns without format=flowed, and only a "Next week:" label.
WRAPPED = Report(
    7, "2026-W48", _at(11, 26, 22, 30), "<wrapped@example.com>", ZOE.email,
    "Rough week, I fell behind: the release slipped twice and I stayed late\n"
    "three evenings, so the Wednesday practice slot went too. I did read the\n"
    "chapter on openings.\n\n"
    "Next week: two short runs before Friday, one of them with Bruno.",
    setback=True,
    next="two short runs before Friday, one of them with Bruno.",
)  # fmt: skip
FREE_TEXT = Report(
    7, "2026-W48", _at(11, 28, 10, 15), "<free@example.com>", ZOE.email,
    "Quick update: I booked the team meeting slot for 16 December.", setback=False,
)  # fmt: skip

# What the period files say about weeks 45-51: reported, setback, (paused), reported,
# missed, reported; week 48's entry depends on the moment shown.
WEEKS = {
    "2026-W45": PeriodSummary(checkin_sent=True, reports=1),
    "2026-W46": PeriodSummary(checkin_sent=True, reports=1, setback=True),
    "2026-W48": PeriodSummary(checkin_sent=True, reports=1),
    "2026-W49": PeriodSummary(checkin_sent=True, no_report_sent=True),
    "2026-W50": PeriodSummary(checkin_sent=True, reports=1),
}

_SAMPLE_VARIANTS: dict[str, tuple[str, ...]] = {
    "intro": ("member", "member accepted", "partner", "partner accepted"),
    "checkin_ack": ("report", "setback", "updated"),
    "digest": ("report", "released"),
    "receipt": ("done", "problems", "question", "partner"),
    "pause_notice": ("paused", "paused open", "resumed", "stopped"),
    "partner_note": ("note",),
    "summary": ("member", "partner"),
    "consent_notice": ("declined", "declined silently", "no answer"),
    "released": ("another address", "own address"),
    "bounce_notice": ("introduction", "check-in", "unknown"),
    "forward": ("person", "unknown sender"),
    "program": (
        "suggestions",
        "nobody",
        "ask incomplete",
        "asked",
        "offers",
        "confirm offer",
        "status",
        "help",
    ),
    "confirm": ("commands", "with report", "not understood"),
    "report_receipt": ("report", "not asked"),
}
"""The named sample variants of the newer templates; the first is the default."""

SETBACK_TEMPLATES = ("digest",)
"""The templates whose sample `setback` changes (`templates preview NAME --setback`)."""


def _pair(p: Partnership, now: datetime, weeks: dict[str, PeriodSummary] | None = None) -> Pair:
    """Partnership 7 with its people and its strip at `now` (`weeks` overrides WEEKS)."""
    summaries = {**WEEKS, **(weeks or {})}
    window = letters.history_window(p, BERLIN, SETTINGS, now)
    return Pair(p, ZOE, BRUNO, letters.history(window, summaries))


def _period(now: datetime) -> Period:
    period = current_period(RUNNING, BERLIN, SETTINGS, now)
    assert period is not None
    return period


WEEK_48 = Week(7, "2026-W48", checkin_at=_at(11, 23, 9))  # its check-in is out


# -- one function per template: the Letter of one moment of the sample program ---------------


def _checkin(variant: str, setback: bool, updated: bool) -> Letter:
    now = _at(11, 23, 9)
    return letters.checkin(_pair(RUNNING, now), _period(now), SVC, now)


def _reminder(variant: str, setback: bool, updated: bool) -> Letter:
    now = _at(11, 25, 9)
    return letters.reminder(_pair(RUNNING, now), _period(now), WEEK_48, SVC, now)


def _digest(variant: str, setback: bool, updated: bool) -> Letter:
    reports = [BAD] if setback else [GOOD]
    if updated:
        reports = [GOOD, BAD] if setback else [GOOD, FREE_TEXT]
    if variant == "released":  # free text, one label, hard-wrapped by her mail client
        reports, setback = [WRAPPED], True
    now = _at(11, 23, 10)  # the goals as they stood on Monday of week 48
    week = replace(WEEK_48, digested_reports=1 if updated else 0)
    summary = PeriodSummary(checkin_sent=True, reports=len(reports), setback=setback)
    pair = _pair(RUNNING, now, {"2026-W48": summary})
    released = variant == "released"
    return letters.digest(pair, _period(now), week, reports, SVC, now, released=released)


def _no_report(variant: str, setback: bool, updated: bool) -> Letter:
    now = _at(11, 27, 9)
    pair = _pair(RUNNING, now, {"2026-W48": PeriodSummary(checkin_sent=True)})
    return letters.no_report(pair, _period(now), WEEK_48, SVC, now)


def _checkin_ack(variant: str, setback: bool, updated: bool) -> Letter:
    # Early reports: they arrived before this period's check-in was due.
    early = [replace(BAD if variant == "setback" else GOOD, received_at=_at(11, 22, 19, 58))]
    if variant == "updated":
        early.append(replace(FREE_TEXT, received_at=_at(11, 23, 7, 41)))
    now = _at(11, 23, 9)
    pair = _pair(RUNNING, now, {"2026-W48": PeriodSummary(reports=len(early))})
    return letters.checkin_ack(pair, _period(now), early, SVC, now)


def _bounce_notice(variant: str, setback: bool, updated: bool) -> Letter | None:
    reason = (
        "550 5.1.1 <bruno.keller@example.com>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )
    bounced = {
        "introduction": Bounced("intro", 7, NEW.skill, "intro:7:partner"),
        "check-in": Bounced("checkin", 7, NEW.skill, "checkin:7:2026-W48"),
        "unknown": None,
    }[variant]
    return letters.bounce_notice(BRUNO.email, reason, SVC, _at(11, 24, 8), bounced)


def _forward(variant: str, setback: bool, updated: bool) -> Letter | None:
    known = variant == "person"
    written = Written(
        sender="ines.moreau@example.com" if known else "",
        subject="Can I join the Hot Team <too>?" if known else "",
        text="Hello,\n\nI heard about the partnerships from Zoë. How do I sign up?\n\nInès",
        message_id="<sample.forward@example.com>",
        received_at=_at(11, 24, 23, 40),
        to=SVC.from_address,
        reply_to="ines.moreau@example.com" if known else None,
        kept_at="mail/in/2026-W48/1764024000.0001.eml",
    )
    return letters.forward(written, SVC)


def _intro(variant: str, setback: bool, updated: bool) -> Letter:
    p = RUNNING.with_changes(goals=GOALS) if variant.endswith("accepted") else NEW
    now = _at(11, 2, 10)
    return letters.intro(_pair(p, now), variant.split()[0], SVC, now)


_TOLD: dict[str, dict[str, Any]] = {
    "done": {"done": ("Paused until 2026-12-14", "Goal 2 marked achieved"), "report_stored": True},
    "problems": {
        "done": ("Goal 2 marked achieved",),
        "problems": (
            'Not understood: "pause til friday" — write "pause until YYYY-MM-DD" or '
            '"pause N weeks"',
            'Not understood: "goal 9 done" — there is no goal 9 (goals 1 to 4)',
        ),
        "report_stored": True,
    },
    "question": {"question": "Reply stop again within 7 days to end this partnership."},
    "partner": {
        "done": ("You accepted. Check-ins for Zoë Adler start on Mondays.",),
        "to_partner": True,
    },
}


def _receipt(variant: str, setback: bool, updated: bool) -> Letter:
    now = _at(11, 23, 12)
    kind = AGREE if variant == "partner" else CHECKIN
    reply = SVC.keys.address(kind, 7, "2026-W48")
    told = Told("receipt:sample", reply, reply, **_TOLD[variant])
    return letters.receipt(_pair(RUNNING, now), told, SVC, now)


def _pause_notice(variant: str, setback: bool, updated: bool) -> Letter:
    now = _at(11, 23, 12)
    until = "2026-12-14" if variant == "paused" else ""
    action = variant.split()[0]
    return letters.pause_notice(
        _pair(RUNNING, now), action, until, "<sample@example.com>", "2026-W48", SVC, now
    )


def _partner_note(variant: str, setback: bool, updated: bool) -> Letter:
    note = (
        "Zoë, a missed slot in release week is normal. Two short runs are a good plan.\n"
        "I'm free Thursday at 16:00 for the Q&A practice if you want <really>."
    )
    now = _at(11, 26, 21, 40)
    return letters.partner_note(_pair(RUNNING, now), note, "<note@example.com>", SVC, now)


def _summary(variant: str, setback: bool, updated: bool) -> Letter:
    if variant == "member":  # all goals achieved; the last week still open
        now = _at(12, 16, 10)
        pair = _pair(ALL_DONE, now, {"2026-W51": PeriodSummary(checkin_sent=True)})
        return letters.summary(pair, "member", "all goals achieved", SVC, now)
    now = _at(12, 19, 10)  # the last due date has passed; a setback in the last week
    last = PeriodSummary(checkin_sent=True, reports=1, setback=True)
    pair = _pair(RUNNING, now, {"2026-W51": last})
    return letters.summary(pair, "partner", "the last due date has passed", SVC, now)


def _consent_notice(variant: str, setback: bool, updated: bool) -> Letter | None:
    now = _at(11, 5, 10)
    if variant == "no answer":  # consent_days (7) after the invitation
        return letters.consent_notice(NEW, ZOE, BRUNO, "no_answer", "", SVC, _at(11, 9, 10))
    text = (
        "Sorry, I can't take this on right now: I'm away most of December <travel>."
        if variant == "declined"
        else ""
    )
    # `days` is the days since the invitation went out (NEW was created on 2 November).
    return letters.consent_notice(NEW, ZOE, BRUNO, "declined", text, SVC, now)


def _released(variant: str, setback: bool, updated: bool) -> Letter:
    now = _at(11, 27, 11)
    sender = ZOE.email if variant == "own address" else "zoe.adler.home@example.net"
    if variant == "own address":
        reason = "stale token: it is for 2026-W38, more than 8 weeks before 2026-W48"
        not_run: tuple[str, ...] = ()
    else:
        reason = f"sender mismatch: from {sender}, expected the member {ZOE.email}"
        not_run = ("pause 2 weeks", "goal 4 done")
    pair = _pair(RUNNING, now)
    at = _at(11, 26, 22, 30)
    return letters.released(pair, "2026-W48", at, reason, sender, not_run, "<r@x>", SVC, now)


INES = Person("ines.moreau@example.com", "Inès Moreau", "Finance", None, "Europe/Paris")
_ANSWERS: dict[str, dict[str, Any]] = {
    "suggestions": {
        "topic": "Partners for public speaking",
        "request": 12,
        "skill": "public speaking",
        "suggestions": tuple(
            {"n": i, "name": name, "department": dept, "partnerships": n, "ask": f"ask {i}"}
            for i, (name, dept, n) in enumerate(
                [
                    ("Bruno Keller", "Sales", 0),
                    ("Inès Moreau", "Finance", 1),
                    ("Yuki Tanaka", "Legal <EU>", 2),
                ],
                start=1,
            )
        ),
    },
    "nobody": {
        "topic": "Partners for negotiation",
        "skill": "negotiation",
        "nobody": 'Nobody offers "negociation" yet (did you mean "negotiation"?). Please ask '
        "admin@mailflow.example.com.",
    },
    "ask incomplete": {
        "topic": "Your partner for public speaking",
        "request": 12,
        "problems": ("Saddle: missing", 'goal: expected "YYYY-MM-DD TEXT", got "next month"'),
        "block": {
            "goals": ["2026-12-18 Give a 10-minute talk at the team meeting"],
            "why": "I want to present my own work <myself>.",
            "saddle": "",
            "day": "tuesday 08:30",
            "ask": "ask 2",
        },
    },
    "asked": {
        "topic": "Your partner for public speaking",
        "done": (
            "You asked Inès Moreau to be your partner for public speaking (partnership 8).",
            "We introduced you both; Inès Moreau answers yes or no, and your check-ins start "
            "once the answer is yes.",
        ),
    },
    "offers": {
        "topic": "Your offers",
        "done": ("Done: offer negotiation",),
        "problems": ('"offer stop chess": you do not offer "chess"',),
        "offers": ("public speaking", "negotiation"),
    },
    "confirm offer": {
        "topic": "Please confirm your offer",
        "request": 13,
        "confirm": ("offer negotiation", "stop offering excel"),
    },
    "status": {"topic": "Your partnerships"},
    "help": {
        "topic": "How to use hotteam@mailflow.example.com",
        "problems": ("We found no command in your mail.",),
        "show_help": True,
    },
}


def _program(variant: str, setback: bool, updated: bool) -> Letter:
    now = _at(11, 24, 12)
    fields = dict(_ANSWERS[variant])
    if variant == "status":
        people = {p.email: p for p in (ZOE, BRUNO, INES)}
        mine = RUNNING.with_changes(goals=GOALS)
        theirs = NEW.with_changes(id=9, member=INES.email, skill="excel", partner=ZOE.email)
        fields["status"] = letters.status_rows(ZOE, (mine, theirs), people, SVC, now)
    answer = letters.Answer(key="program:sample", **fields)
    return letters.program_answer(ZOE, answer, SVC, now)


def _approval(variant: str, setback: bool, updated: bool) -> Letter | None:
    now = _at(11, 24, 12)
    p = NEW.with_changes(id=8, partner=INES.email, approval="waiting", created_at=now)
    return letters.approval(Pair(p, ZOE, INES), SVC, now)


def _confirm(variant: str, setback: bool, updated: bool) -> Letter:
    # Written to the plain address from Zoë's address on Tuesday evening of week 48.
    now = _at(11, 24, 19, 30)
    lines = ("pause 2 weeks", "goal 4 done")
    asked = Pending(12, "<plain@example.com>", now, now.date(), lines)
    commands = extract_commands("\n".join(lines), asked.asked_on).commands
    problems = ('not understood: "pause til friday" (write "pause until YYYY-MM-DD")',)
    asking = letters.Asking(
        asked,
        tuple(describe(c, RUNNING) for c in commands),
        problems if variant == "not understood" else (),
        variant == "with report",
        "2026-W48",
    )
    return letters.confirm(_pair(RUNNING, now), asking, SVC, now)


def _report_receipt(variant: str, setback: bool, updated: bool) -> Letter:
    report = replace(FREE_TEXT, received_at=_at(11, 28, 10, 15))
    why = (
        "The commands in it (pause 2 weeks) were not run: 3 earlier requests from "
        "checkin@mailflow.example.com still wait for your answer. Answer those, or write the "
        "commands in a reply to your check-in.",
    )
    problems = why if variant == "not asked" else ()
    return letters.report_receipt(
        _pair(RUNNING, report.received_at), report, SVC, report.received_at, problems
    )


_BUILDERS: dict[str, Callable[[str, bool, bool], Letter | None]] = {
    "checkin": _checkin,
    "reminder": _reminder,
    "digest": _digest,
    "no_report": _no_report,
    "bounce_notice": _bounce_notice,
    "intro": _intro,
    "checkin_ack": _checkin_ack,
    "receipt": _receipt,
    "pause_notice": _pause_notice,
    "partner_note": _partner_note,
    "summary": _summary,
    "consent_notice": _consent_notice,
    "released": _released,
    "forward": _forward,
    "program": _program,
    "approval": _approval,
    "confirm": _confirm,
    "report_receipt": _report_receipt,
}


def sample_variants(name: str) -> tuple[str, ...]:
    """The named sample variants of ``name`` (``sample_context(name, variant=...)``)."""
    letters.require_template(name)
    return _SAMPLE_VARIANTS.get(name, ())


def sample_letter(
    name: str, setback: bool = False, updated: bool = False, variant: str | None = None
) -> Letter:
    """The sample Letter of template ``name``: what its builder makes for the sample program.

    ``setback`` and ``updated`` select the digest variants (a report admitting a setback; an
    update of a digest already sent this period). ``variant`` selects one of
    :func:`sample_variants` for the newer templates (default: the first). Unknown ``name`` or
    ``variant``: :class:`TemplateError`.
    """
    letters.require_template(name)
    names = _SAMPLE_VARIANTS.get(name, ())
    if variant is None or variant == "":
        variant = names[0] if names else ""
    elif variant not in names:
        valid = ", ".join(names) if names else "none"
        raise TemplateError(f"unknown variant {variant!r} of {name}; valid variants: {valid}")
    letter = _BUILDERS[name](variant, setback, updated)
    assert letter is not None  # the sample service has an admin address
    return letter


def sample_context(
    name: str, setback: bool = False, updated: bool = False, variant: str | None = None
) -> dict[str, Any]:
    """The template context of :func:`sample_letter` (a fresh dict: callers may change it)."""
    return dict(sample_letter(name, setback, updated, variant).ctx)


def variants(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every sample variant of one template, each with a short label for problem reports."""
    if name == "digest":
        return [
            ("report", sample_context(name)),
            ("setback", sample_context(name, setback=True)),
            ("updated", sample_context(name, updated=True)),
            ("updated setback", sample_context(name, setback=True, updated=True)),
            ("released", sample_context(name, variant="released")),
        ]
    labels = _SAMPLE_VARIANTS.get(name)
    if labels:
        return [(label, sample_context(name, variant=label)) for label in labels]
    return [("sample", sample_context(name))]
