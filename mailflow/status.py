"""The read side: what `status` shows, and the week-by-week strip of one partnership.

Nothing here writes. Both read the per-period summaries and outgoing tallies the store keeps
per file version (never an object per record): `status` those of the current period of each
running partnership and of the outbox's latest periods, with the core file, the spool and
the quarantine (whose sidecars name each message's sender); `strip` those of the weeks one
partnership's strip shows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import letters
from mailflow.models import (
    CONSENT_ACCEPTED,
    CONSENT_PENDING,
    ENDED,
    PAUSED,
    QUEUED,
    Partnership,
    PeriodSummary,
    Person,
)
from mailflow.outbox import Outbox
from mailflow.schedule import Settings, current_period, utc_week
from mailflow.spool import Spool
from mailflow.store import Store

QUARANTINE_SHOWN = 20  # status lists the most recent quarantined messages only
STRANGER_DAYS = 28  # mail to the program's address from outside the directory: counted this far
STRANGERS_META = "program_strangers"  # {UTC week: {sender: count}}, kept by intake
NOTHING_YET = PeriodSummary()  # a partnership the period file has no record of


def strip(
    store: Store,
    p: Partnership,
    tz: ZoneInfo,
    settings: Settings,
    now: datetime,
    summaries: dict[str, dict[int, PeriodSummary]] | None = None,
) -> tuple[dict[str, str], ...]:
    """The partnership's week-by-week strip at `now` (see `letters.history`).

    `summaries` (period -> summary), when given, is filled and reused: a tick asks for the
    same few periods once per partnership, and a look at each file's version costs more
    than the rest of a strip."""
    window = letters.history_window(p, tz, settings, now)
    if window is None:
        return ()
    weeks = {}
    for label in window.labels:
        if summaries is None:
            summary = store.period_summary(label)
        else:
            summary = summaries.get(label)
            if summary is None:
                summary = summaries[label] = store.period_summary(label)
        info = summary.get(p.id)
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
    # The store's objects of this version of core.json (a site asks again and again), and
    # per-period summaries instead of the period files' records: no object per record.
    # People are looked up in their shards: only running partnerships' members are read.
    roster = store.roster()
    people = roster.people
    totals = dict.fromkeys(
        ("partnerships", "sent", "replied", "setbacks", "missing", "waiting", "paused"), 0
    )
    consent: dict[str, list[int]] = {"pending": [], "declined": [], "overdue": [], "approval": []}
    summaries: dict[str, dict[int, PeriodSummary]] = {}  # one file version per status
    rows = []
    for p in roster.partnerships.values():
        if p.status == ENDED or p.member not in people:
            continue
        totals["partnerships"] += 1
        if p.approval:
            consent["approval"].append(p.id)
        if p.consent != CONSENT_ACCEPTED:
            consent["declined" if p.consent == "declined" else "pending"].append(p.id)
            if p.consent == CONSENT_PENDING and p.consent_overdue_at is not None:
                consent["overdue"].append(p.id)
        if p.status == PAUSED:
            totals["paused"] += 1
        tz = ZoneInfo(people[p.member].timezone)
        rows.append(_row(store, summaries, p, tz, settings, now, totals))
    quarantined = [(qid, spool.sidecar(qid)) for qid, _ in spool.quarantined()]
    held = spool.held()  # what the listener's quotas count (waiting or quarantined)
    failed = outbox.failed()
    return {
        "now": now.isoformat(),
        **totals,
        "consent_pending": consent["pending"],
        "consent_declined": consent["declined"],
        "consent_overdue": consent["overdue"],
        "awaiting_approval": consent["approval"],
        "program_strangers": strangers(store, now),
        "bouncing": sorted(store.core().bouncing()),  # the index: no shard read
        "quarantined": len(quarantined),
        "quarantined_senders": sorted({car.sender or "(nobody)" for _, car in quarantined}),
        "quarantine": [
            {
                "id": qid,
                "reason": car.reason,
                "sender": car.sender,
                "partnership": car.partnership_id,
            }
            for qid, car in quarantined[-QUARANTINE_SHOWN:]
        ],
        "spooled": spool.count_pending(),
        "held": {"messages": held.messages, "bytes": held.bytes},
        "refused": spool.refusals(),  # by the running listener, by reason ({}: none recorded)
        "outgoing_queued": outbox.count(QUEUED),
        "outgoing_failed": len(failed),
        "failed": [{"key": o.key, "to": o.to, "error": o.error} for o in failed],
        "partnerships_detail": rows,
    }


def _row(
    store: Store,
    summaries: dict[str, dict[int, PeriodSummary]],
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
    summary = summaries.get(cur.label)
    if summary is None:
        summary = summaries[cur.label] = store.period_summary(cur.label)
    week = summary.get(p.id, NOTHING_YET)
    sent, reports, setback = week.checkin_sent, week.reports, week.setback
    row.update(checkin_sent=sent, reports=reports, setback=setback)
    totals["sent"] += sent
    if reports:
        totals["replied"] += 1
        totals["setbacks"] += setback
        row["state"] = "setback" if setback else "reported"
    elif week.no_report_sent:
        totals["missing"] += 1
        row["state"] = "missing"
    elif sent:
        totals["waiting"] += 1
        row["state"] = "waiting"
    else:
        row["state"] = "not sent yet"
    return row


def strangers(store: Store, now: datetime) -> dict[str, Any]:
    """Mail to the program's address from people not in the directory (never answered), in
    the UTC weeks of the last `STRANGER_DAYS` days: {since (a UTC week), count, senders}.
    Counted by `intake` in the core file's meta (`program_strangers`), so this reads no
    period file."""
    since = utc_week(now - timedelta(days=STRANGER_DAYS))
    weeks = store.core().meta(STRANGERS_META) or {}
    senders: set[str] = set()
    count = 0
    for label, by_sender in weeks.items():
        if label >= since:
            senders |= set(by_sender)
            count += sum(by_sender.values())
    return {"since": since, "count": count, "senders": sorted(senders)}
