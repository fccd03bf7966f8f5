"""The read side: what `status` shows, and the week-by-week strip of one partnership.

Nothing here writes. `status` reads the core file, the current period file of each running
partnership, the spool and the outbox; `strip` reads the per-period summaries (cached by the
store per file version) that the strip of one partnership needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import letters
from mailflow.models import CONSENT_ACCEPTED, CONSENT_PENDING, ENDED, PAUSED, Partnership, Person
from mailflow.outbox import Outbox
from mailflow.schedule import Settings, current_period
from mailflow.spool import Spool
from mailflow.store import Store, WeekView

QUARANTINE_SHOWN = 20  # status lists the most recent quarantined messages only


def strip(
    store: Store, p: Partnership, tz: ZoneInfo, settings: Settings, now: datetime
) -> tuple[dict[str, str], ...]:
    """The partnership's week-by-week strip at `now` (see `letters.history`)."""
    window = letters.history_window(p, tz, settings, now)
    if window is None:
        return ()
    weeks = {}
    for label in window.labels:
        info = store.period_summary(label).get(p.id)
        if info is not None:
            weeks[label] = info
    return letters.history(window, weeks)


def pair(
    store: Store, p: Partnership, people: dict[str, Person], settings: Settings, now: datetime
) -> letters.Pair:
    """The partnership with its two people (who must exist) and its strip at `now`."""
    member, partner = people[p.member], people[p.partner]
    return letters.Pair(
        p, member, partner, strip(store, p, ZoneInfo(member.timezone), settings, now)
    )


def status(
    store: Store, spool: Spool, outbox: Outbox, settings: Settings, now: datetime
) -> dict[str, Any]:
    """This period of every running partnership, with the totals, consent, bounces, the
    quarantine and the outgoing queue: the dict `status --json` prints."""
    core = store.core()
    people = core.directory  # only the shards of running partnerships' members are read
    totals = dict.fromkeys(
        ("partnerships", "sent", "replied", "setbacks", "missing", "waiting", "paused"), 0
    )
    consent: dict[str, list[int]] = {"pending": [], "declined": [], "overdue": []}
    views: dict[str, WeekView] = {}
    rows = []
    for p in core.partnerships():
        if p.status == ENDED or p.member not in people:
            continue
        totals["partnerships"] += 1
        if p.consent != CONSENT_ACCEPTED:
            consent["declined" if p.consent == "declined" else "pending"].append(p.id)
            if p.consent == CONSENT_PENDING and p.consent_overdue_at is not None:
                consent["overdue"].append(p.id)
        if p.status == PAUSED:
            totals["paused"] += 1
        rows.append(
            _row(store, views, p, ZoneInfo(people[p.member].timezone), settings, now, totals)
        )
    quarantined = spool.quarantined()
    held = spool.held()  # what the listener's quotas count (waiting or quarantined)
    failed = outbox.failed()
    return {
        "now": now.isoformat(),
        **totals,
        "consent_pending": consent["pending"],
        "consent_declined": consent["declined"],
        "consent_overdue": consent["overdue"],
        "bouncing": sorted(core.bouncing()),
        "quarantined": len(quarantined),
        "quarantine": [{"id": i, "reason": r} for i, r in quarantined[-QUARANTINE_SHOWN:]],
        "spooled": spool.count_pending(),
        "held": {"messages": held.messages, "bytes": held.bytes},
        "refused": spool.refusals(),  # by the running listener, by reason ({}: none recorded)
        "outgoing_queued": len(outbox.pending()),
        "outgoing_failed": len(failed),
        "failed": [{"key": o.key, "to": o.to, "error": o.error} for o in failed],
        "partnerships_detail": rows,
    }


def _row(
    store: Store,
    views: dict[str, WeekView],
    p: Partnership,
    tz: ZoneInfo,
    settings: Settings,
    now: datetime,
    totals: dict[str, int],
) -> dict[str, Any]:
    """One partnership's line of the status, counted into `totals`."""
    cur = current_period(p, tz, settings, now)
    row: dict[str, Any] = {
        "id": p.id,
        "member": p.member,
        "partner": p.partner,
        "status": p.status,
        "consent": p.consent,
        "period": cur.label if cur else None,
    }
    if cur is None:
        row["state"] = "not started"
        return row
    view = views.get(cur.label) or views.setdefault(cur.label, store.week(cur.label))
    week = view.week(p.id)
    reports = view.reports(p.id)
    sent = bool(week and week.checkin_at)
    setback = any(r.setback for r in reports)
    row.update(checkin_sent=sent, reports=len(reports), setback=setback)
    totals["sent"] += sent
    if reports:
        totals["replied"] += 1
        totals["setbacks"] += setback
        row["state"] = "setback" if setback else "reported"
    elif week and week.no_report_at:
        totals["missing"] += 1
        row["state"] = "missing"
    elif sent:
        totals["waiting"] += 1
        row["state"] = "waiting"
    else:
        row["state"] = "not sent yet"
    return row
