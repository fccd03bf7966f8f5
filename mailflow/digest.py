"""What each outgoing mail says: template contexts built from plain domain data (pure).

The digest is the heart of it: the partner sees the goals with their deadlines, every report
of the period (done / setback / next) and, on a setback, the agreed back-in-the-saddle text
with the why. Check-ins, reminders and the no-report digest share the same goal list so both
people always look at the same facts. `compose` renders these contexts; nothing here formats
HTML or reads the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailflow.models import Partnership, Person, Report
from mailflow.schedule import days_left, parse_period
from mailflow.tokens import REPLY_MARKER


def period_label(period: str) -> str:
    year, week = parse_period(period)
    return f"week {week} of {year}"


def local_time(dt: datetime, tz: str) -> str:
    """'Monday 23 November, 09:00 (Europe/Berlin)' in the reader's zone."""
    local = dt.astimezone(ZoneInfo(tz))
    return f"{local:%A} {local.day} {local:%B}, {local:%H:%M} ({tz})"


def goal_items(p: Partnership, today: date) -> list[dict[str, Any]]:
    return [
        {
            "n": g.n,
            "due": g.due.isoformat(),
            "text": g.text,
            "days_left": days_left(g.due, today),
            "overdue": g.done_on is None and g.due < today,
            "done": g.done_on is not None,
        }
        for g in p.goals
    ]


def base_context(
    *,
    p: Partnership,
    member: Person,
    partner: Person,
    period: str,
    service: dict[str, str],
    reply_address: str,
    today: date,
) -> dict[str, Any]:
    return {
        "service": service,
        "member": {"name": member.name, "email": member.email, "timezone": member.timezone},
        "partner": {"name": partner.name, "email": partner.email},
        "partnership": {
            "id": p.id,
            "skill": p.skill,
            "why": p.why,
            "saddle": p.saddle,
            "start": p.start.isoformat(),
        },
        "goals": goal_items(p, today),
        "period": period,
        "period_label": period_label(period),
        "reply_marker": REPLY_MARKER,
        "reply_address": reply_address,
    }


def checkin_context(base: dict[str, Any], checkin_at: datetime, tz: str) -> dict[str, Any]:
    """Check-in and reminder: the base plus when the check-in was due."""
    return {**base, "checkin_at": local_time(checkin_at, tz)}


def report_items(reports: Sequence[Report], tz: str) -> list[dict[str, Any]]:
    return [
        {
            "received_at": local_time(r.received_at, tz),
            "text": r.text,
            "done": r.done,
            "setback_text": r.setback_text,
            "next": r.next,
            "setback": r.setback,
        }
        for r in sorted(reports, key=lambda r: r.received_at)
    ]


def digest_context(
    base: dict[str, Any], reports: Sequence[Report], partner_tz: str, updated: bool
) -> dict[str, Any]:
    """The partner's digest: every report of the period; setback if any report is one."""
    items = report_items(reports, partner_tz)
    return {
        **base,
        "reports": items,
        "setback": any(item["setback"] for item in items),
        "updated": updated,
    }


def no_report_context(
    base: dict[str, Any], checkin_at: datetime, tz: str, deadline_hours: int
) -> dict[str, Any]:
    return {**base, "checkin_at": local_time(checkin_at, tz), "deadline_hours": deadline_hours}


def bounce_context(
    service: dict[str, str], address: str, reason: str, period: str
) -> dict[str, Any]:
    return {"service": service, "address": address, "reason": reason, "period": period}
