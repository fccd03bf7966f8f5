"""The scheduler's pure rules: periods, DST, catch-up, and each job's due time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from mailflow.config import ScheduleConfig
from mailflow.models import ENDED, PAUSED, Goal, Partnership, Week
from mailflow.schedule import (
    CHECKIN,
    DIGEST,
    NO_REPORT,
    REMINDER,
    PeriodState,
    Settings,
    current_period,
    due_jobs,
    previous_period,
)

S = Settings.from_config(ScheduleConfig())
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def make(**changes: object) -> Partnership:
    p = Partnership(
        id=1,
        member="m@example.com",
        partner="p@example.com",
        skill="sql",
        goals=(Goal(1, date(2027, 6, 30), "ship it"),),
        why="why",
        saddle="saddle",
        start=date(2026, 11, 1),
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    return p.with_changes(**changes)


def jobs_at(
    p: Partnership,
    tz: ZoneInfo,
    now: datetime,
    state: PeriodState | None = None,
    prev: PeriodState | None = None,
) -> list[tuple[str, str]]:
    cur = current_period(p, tz, S, now)
    current = (cur, state or PeriodState(None)) if cur else None
    previous = (previous_period(p, tz, S, cur), prev) if cur and prev else None
    return [(j.kind, j.period) for j in due_jobs(p, tz, S, now, current, previous)]


def test_checkin_due_at_local_monday_nine() -> None:
    p = make()
    before = datetime(2026, 11, 23, 7, 59, tzinfo=UTC)  # 08:59 in Berlin
    at = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
    assert jobs_at(p, BERLIN, at) == [(CHECKIN, "2026-W48")]
    # Before Monday 09:00 the current period is still last week's.
    assert current_period(p, BERLIN, S, before).label == "2026-W47"  # type: ignore[union-attr]


def test_per_partnership_day_and_time_override() -> None:
    p = make(checkin_day="wednesday", checkin_time="17:30")
    period = current_period(p, NEW_YORK, S, datetime(2026, 11, 25, 22, 31, tzinfo=UTC))
    assert period is not None
    assert period.checkin_at == datetime(2026, 11, 25, 17, 30, tzinfo=NEW_YORK)
    assert period.label == "2026-W48"


def test_dst_both_sides_in_local_time() -> None:
    p = make()
    # Berlin leaves summer time on 25 Oct 2026: 09:00 local is 07:00 UTC before, 08:00 after.
    summer = current_period(
        p.with_changes(start=date(2026, 10, 1)), BERLIN, S, datetime(2026, 10, 19, 7, 0, tzinfo=UTC)
    )
    winter = current_period(
        p.with_changes(start=date(2026, 10, 1)), BERLIN, S, datetime(2026, 10, 26, 8, 0, tzinfo=UTC)
    )
    assert summer is not None and winter is not None
    assert summer.checkin_at.astimezone(UTC) == datetime(2026, 10, 19, 7, 0, tzinfo=UTC)
    assert winter.checkin_at.astimezone(UTC) == datetime(2026, 10, 26, 8, 0, tzinfo=UTC)
    # The week that contains the change is 169 hours long in real time.
    elapsed = winter.checkin_at.astimezone(UTC) - summer.checkin_at.astimezone(UTC)
    assert elapsed == timedelta(hours=169)
    # New York springs forward on 8 Mar 2026: a Sunday 02:30 check-in does not exist there.
    q = make(checkin_day="sunday", checkin_time="02:30", start=date(2026, 3, 1))
    period = current_period(q, NEW_YORK, S, datetime(2026, 3, 8, 12, 0, tzinfo=UTC))
    assert period is not None
    assert period.label == "2026-W10"
    assert period.checkin_at.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_no_checkin_before_start_paused_ended_or_after_last_goal() -> None:
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert jobs_at(make(start=date(2026, 11, 24)), BERLIN, now) == []
    assert jobs_at(make(status=PAUSED), BERLIN, now) == []
    assert jobs_at(make(status=PAUSED, paused_until=date(2026, 11, 23)), BERLIN, now) == [
        (CHECKIN, "2026-W48")
    ]
    assert jobs_at(make(status=ENDED), BERLIN, now) == []
    assert jobs_at(make(goals=(Goal(1, date(2026, 11, 20), "x"),)), BERLIN, now) == []


def test_checkin_once_per_period() -> None:
    p = make()
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    sent = Week(1, "2026-W48", checkin_at=datetime(2026, 11, 23, 8, 0, tzinfo=UTC))
    assert jobs_at(p, BERLIN, now, PeriodState(sent)) == []


def test_reminder_then_no_report_timeline() -> None:
    p = make()
    sent_at = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    week = Week(1, "2026-W48", checkin_at=sent_at)
    assert jobs_at(p, BERLIN, sent_at + timedelta(hours=47), PeriodState(week)) == []
    assert jobs_at(p, BERLIN, sent_at + timedelta(hours=48), PeriodState(week)) == [
        (REMINDER, "2026-W48")
    ]
    reminded = week.__class__(**{**week.__dict__, "reminder_at": sent_at + timedelta(hours=48)})
    assert jobs_at(p, BERLIN, sent_at + timedelta(hours=95), PeriodState(reminded)) == []
    assert jobs_at(p, BERLIN, sent_at + timedelta(hours=96), PeriodState(reminded)) == [
        (NO_REPORT, "2026-W48")
    ]
    # Down through the reminder time and past the deadline: no late reminder, just the digest.
    assert jobs_at(p, BERLIN, sent_at + timedelta(hours=100), PeriodState(week)) == [
        (NO_REPORT, "2026-W48")
    ]
    # A report stops both.
    replied = PeriodState(week, 1, sent_at + timedelta(hours=1))
    kinds = [k for k, _ in jobs_at(p, BERLIN, sent_at + timedelta(hours=100), replied)]
    assert REMINDER not in kinds and NO_REPORT not in kinds


def test_reminder_counts_from_a_late_checkin() -> None:
    p = make()
    late = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)  # sent on Wednesday after downtime
    week = Week(1, "2026-W48", checkin_at=late)
    assert jobs_at(p, BERLIN, late + timedelta(hours=47), PeriodState(week)) == []


def test_digest_after_delay_and_again_for_a_later_reply() -> None:
    p = make()
    sent_at = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    reply_at = sent_at + timedelta(hours=3)
    week = Week(1, "2026-W48", checkin_at=sent_at)
    state = PeriodState(week, 1, reply_at)
    assert jobs_at(p, BERLIN, reply_at + timedelta(minutes=29), state) == []
    assert jobs_at(p, BERLIN, reply_at + timedelta(minutes=30), state) == [(DIGEST, "2026-W48")]
    digested = Week(1, "2026-W48", checkin_at=sent_at, digest_at=reply_at, digested_reports=1)
    assert (
        jobs_at(p, BERLIN, reply_at + timedelta(hours=2), PeriodState(digested, 1, reply_at)) == []
    )
    later = reply_at + timedelta(hours=5)
    assert jobs_at(p, BERLIN, later + timedelta(minutes=30), PeriodState(digested, 2, later)) == [
        (DIGEST, "2026-W48")
    ]


def test_catch_up_sends_nothing_for_a_past_period() -> None:
    p = make()
    # Down from the W47 check-in until after the W48 one: only W48's check-in is due.
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert jobs_at(p, BERLIN, now) == [(CHECKIN, "2026-W48")]
    # A pending digest for the period just ended is still sent.
    prev = PeriodState(
        Week(1, "2026-W47", checkin_at=now - timedelta(days=7)), 1, now - timedelta(hours=1)
    )
    assert (DIGEST, "2026-W47") in jobs_at(p, BERLIN, now, None, prev)
