"""Sample data for `templates check` and `templates preview`: every template in every variant.

`sample_context(name, ...)` gives the context a template is rendered with when no real mail
is at hand; `variants(name)` every variant with a short label, which the check renders.
"""

from __future__ import annotations

from typing import Any

from mailflow.errors import TemplateError
from mailflow.letters import require_template
from mailflow.tokens import REPLY_MARKER


def _sample_goals() -> list[dict[str, Any]]:
    return [
        {
            "n": 1,
            "due": "2026-11-20",
            "text": "Finish the online course on structuring a talk (all 6 modules).",
            "days_left": -3,
            "overdue": True,
            "done": False,
        },
        {
            "n": 2,
            "due": "2026-11-16",
            "text": "Record myself giving a 5-minute talk and watch it back.",
            "days_left": -7,
            "overdue": False,
            "done": True,
        },
        {
            "n": 3,
            "due": "2026-12-18",
            "text": "Give a 10-minute talk at the team meeting, without notes & with Q&A.",
            "days_left": 25,
            "overdue": False,
            "done": False,
        },
        {
            "n": 4,
            "due": "2026-11-24",
            "text": "Book a slot on the team meeting agenda.",
            "days_left": 1,
            "overdue": False,
            "done": False,
        },
    ]


def _sample_reports(setback: bool, updated: bool) -> list[dict[str, Any]]:
    good = {
        "received_at": "Tuesday 24 November, 18:42 (Europe/Berlin)",
        "text": (
            "Done: Practised the talk twice in front of the mirror and once for my flatmate.\n"
            "Setback: none\n"
            "Next: Ask Bruno for 10 minutes of Q&A practice on Thursday."
        ),
        "done": "Practised the talk twice in front of the mirror and once for my flatmate.",
        "setback_text": "none",
        "next": "Ask Bruno for 10 minutes of Q&A practice on Thursday.",
        "setback": False,
    }
    bad = {
        "received_at": "Thursday 26 November, 21:05 (Europe/Berlin)",
        "text": (
            "Done: One practice run on Monday.\n"
            "Setback: Missed my Wednesday slot, the release slipped and I stayed late "
            "<again>.\n"
            "Next: Two short runs before Friday, one with Bruno."
        ),
        "done": "One practice run on Monday.",
        "setback_text": "Missed my Wednesday slot, the release slipped and I stayed late <again>.",
        "next": "Two short runs before Friday, one with Bruno.",
        "setback": True,
    }
    free_text = {
        "received_at": "Saturday 28 November, 10:15 (Europe/Berlin)",
        "text": "Quick update: I booked the team meeting slot for 16 December.",
        "done": "",
        "setback_text": "",
        "next": "",
        "setback": False,
    }
    reports = [bad] if setback else [good]
    if updated:
        reports = [good, bad] if setback else [good, free_text]
    return reports


def _sample_history(period: str, current: str) -> list[dict[str, Any]]:
    """Week-by-week states from the sample start (2026-W45) up to ``period``, oldest first.

    ``current`` is the state of ``period`` itself (e.g. "pending" before a report arrives).
    """
    states = ["reported", "setback", "paused", "reported", "missed", "reported", "setback"]
    last = int(period.rsplit("W", 1)[1])
    history = []
    for week, state in zip(range(45, last + 1), states, strict=False):
        history.append({"period": f"2026-W{week}", "label": f"W{week}", "state": state})
    history[-1]["state"] = current
    return history


def _intro_goals() -> list[dict[str, Any]]:
    """The sample goals as they stand on the partnership's first day (2026-11-02)."""
    days = {1: 18, 2: 14, 3: 46, 4: 22}
    return [
        {**goal, "days_left": days[goal["n"]], "overdue": False, "done": False}
        for goal in _sample_goals()
    ]


_SAMPLE_VARIANTS: dict[str, tuple[str, ...]] = {
    "intro": ("member", "member accepted", "partner", "partner accepted"),
    "checkin_ack": ("report", "setback", "updated"),
    "receipt": ("done", "problems", "question", "partner"),
    "pause_notice": ("paused", "paused open", "resumed", "stopped"),
    "partner_note": ("note",),
    "summary": ("member", "partner"),
    "consent_notice": ("declined", "declined silently", "no answer"),
}
"""The named sample variants of the newer templates; the first is the default."""


def sample_variants(name: str) -> tuple[str, ...]:
    """The named sample variants of ``name`` (``sample_context(name, variant=...)``)."""
    require_template(name)
    return _SAMPLE_VARIANTS.get(name, ())


def sample_context(
    name: str, setback: bool = False, updated: bool = False, variant: str | None = None
) -> dict[str, Any]:
    """Realistic sample data for template ``name``, in exactly the shape the sender passes.

    ``setback`` and ``updated`` select the digest variants (a report admitting a setback; an
    update of a digest already sent this period). ``variant`` selects one of
    :func:`sample_variants` for the newer templates (default: the first). Unknown ``name`` or
    ``variant``: :class:`TemplateError`.
    """
    require_template(name)
    variants = _SAMPLE_VARIANTS.get(name, ())
    if variant is None or variant == "":
        variant = variants[0] if variants else ""
    elif variant not in variants:
        valid = ", ".join(variants) if variants else "none"
        raise TemplateError(f"unknown variant {variant!r} of {name}; valid variants: {valid}")
    service = {
        "name": "mailflow",
        "domain": "mailflow.example.com",
        "from_address": "mailflow@mailflow.example.com",
    }
    if name == "bounce_notice":
        return {
            "service": service,
            "address": "bruno.keller@example.com",
            "reason": "550 5.1.1 <bruno.keller@example.com>: Recipient address rejected: "
            "User unknown in virtual mailbox table",
            "period": "2026-W48",
        }
    if name == "consent_notice":
        declined = variant != "no answer"
        return {
            "service": service,
            "partnership": {"id": 7, "skill": "public speaking"},
            "member": {"name": "Zoë Adler", "email": "zoe.adler@example.com"},
            "partner": {"name": "Bruno Keller", "email": "bruno.keller@example.com"},
            "state": "declined" if declined else "no_answer",
            "days": 2 if declined else 7,
            "text": (
                "Sorry, I can't take this on right now: I'm away most of December <travel>."
                if variant == "declined"
                else ""
            ),
        }
    context: dict[str, Any] = {
        "service": service,
        "member": {
            "name": "Zoë Adler",
            "email": "zoe.adler@example.com",
            "timezone": "Europe/Berlin",
        },
        "partner": {"name": "Bruno Keller", "email": "bruno.keller@example.com"},
        "partnership": {
            "id": 7,
            "skill": "public speaking",
            "why": (
                "I want to present my own team's work at the quarterly review instead of "
                "asking someone else to do it, and to stop dreading the Monday stand-up."
            ),
            "saddle": (
                "One missed week is not a pattern. Pick the smallest next step (five minutes "
                "of practice today) and tell me when it's done. You've done harder things."
            ),
            "start": "2026-11-02",
        },
        "goals": _sample_goals(),
        "period": "2026-W48",
        "period_label": "week 48 of 2026",
        "reply_marker": REPLY_MARKER,
        "reply_address": "checkin+q7Hk2VxP9mR4tW8zL3nB5cD6fG1jA0sE@mailflow.example.com",
    }
    if name in ("checkin", "reminder"):
        context["checkin_at"] = "Monday 23 November, 09:00 (Europe/Berlin)"
    elif name == "digest":
        reports = _sample_reports(setback, updated)
        context["reports"] = reports
        context["setback"] = any(r["setback"] for r in reports)
        context["updated"] = updated
        context["history"] = _sample_history("2026-W48", "setback" if setback else "reported")
    elif name == "no_report":
        context["checkin_at"] = "Monday 23 November, 09:00 (Europe/Berlin)"
        context["deadline_hours"] = 96
        context["history"] = _sample_history("2026-W48", "missed")
    elif name == "intro":
        context["goals"] = _intro_goals()
        context["period"] = "2026-W45"
        context["period_label"] = "week 45 of 2026"
        context["role"] = "partner" if variant.startswith("partner") else "member"
        context["accepted"] = variant.endswith("accepted")
        context["checkin_day"] = "Monday"
        context["checkin_time"] = "09:00"
        context["first_checkin"] = "Monday 9 November, 09:00 (Europe/Berlin)"
    elif name == "checkin_ack":
        context["checkin_at"] = "Monday 23 November, 09:00 (Europe/Berlin)"
        reports = _sample_reports(variant == "setback", variant == "updated")
        # An early report: it arrived before this period's check-in was due.
        times = [
            "Sunday 22 November, 19:58 (Europe/Berlin)",
            "Monday 23 November, 07:41 (Europe/Berlin)",
        ]
        for report, received_at in zip(reports, times, strict=False):
            report["received_at"] = received_at
        context["reports"] = reports
    elif name == "receipt":
        if variant == "done":
            context["done_items"] = ["Paused until 2026-12-14", "Goal 2 marked achieved"]
            context["problems"] = []
            context["question"] = ""
            context["report_stored"] = True
        elif variant == "problems":
            context["done_items"] = ["Goal 2 marked achieved"]
            context["problems"] = [
                'Not understood: "pause til friday" — write "pause until YYYY-MM-DD" or '
                '"pause N weeks"',
                'Not understood: "goal 9 done" — there is no goal 9 (goals 1 to 4)',
            ]
            context["question"] = ""
            context["report_stored"] = True
        elif variant == "question":
            context["done_items"] = []
            context["problems"] = []
            context["question"] = "Reply stop again within 7 days to end this partnership."
            context["report_stored"] = False
        else:  # the partner answered the invitation
            context["done_items"] = ["You accepted. Check-ins for Zoë Adler start on Mondays."]
            context["problems"] = []
            context["question"] = ""
            context["report_stored"] = False
        context["role"] = "partner" if variant == "partner" else "member"
    elif name == "pause_notice":
        context["action"] = variant.split()[0]
        context["until"] = "2026-12-14" if variant == "paused" else ""
    elif name == "partner_note":
        context["received_at"] = "Thursday 26 November, 21:40 (Europe/Berlin)"
        context["note"] = (
            "Zoë, a missed slot in release week is normal. Two short runs are a good plan.\n"
            "I'm free Thursday at 16:00 for the Q&A practice if you want <really>."
        )
    elif name == "summary":
        context["role"] = variant
        if variant == "member":
            context["period"] = "2026-W51"
            context["period_label"] = "week 51 of 2026"
            context["goals"] = [
                {**goal, "days_left": days, "overdue": False, "done": True}
                for goal, days in zip(_sample_goals(), (-26, -30, 2, -22), strict=True)
            ]
            context["reason"] = "all goals achieved"
            context["history"] = _sample_history("2026-W51", "pending")
            context.update(weeks_asked=5, weeks_reported=4, setbacks=1)
            context.update(goals_achieved=4, goals_total=4)
        else:
            context["period"] = "2026-W51"
            context["period_label"] = "week 51 of 2026"
            goals = _sample_goals()
            context["goals"] = [
                {**goal, "days_left": days, "overdue": not goal["done"] and days < 0}
                for goal, days in zip(goals, (-29, -33, -1, -25), strict=True)
            ]
            context["reason"] = "the last due date has passed"
            context["history"] = _sample_history("2026-W51", "setback")
            context.update(weeks_asked=6, weeks_reported=5, setbacks=2)
            context.update(goals_achieved=1, goals_total=4)
    return context


def variants(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every sample variant of one template, each with a short label for problem reports."""
    if name == "digest":
        return [
            ("report", sample_context(name)),
            ("setback", sample_context(name, setback=True)),
            ("updated", sample_context(name, updated=True)),
            ("updated setback", sample_context(name, setback=True, updated=True)),
        ]
    labels = _SAMPLE_VARIANTS.get(name)
    if labels:
        return [(label, sample_context(name, variant=label)) for label in labels]
    return [("sample", sample_context(name))]
