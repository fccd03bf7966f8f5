"""Scheduling: what is due at `now`, computed from stored state alone (pure functions).

A partnership's *period* is the ISO week (in the member's zone) of its check-in moment; it
runs until the next check-in moment. Within the current period the week's timeline applies:
check-in, reminder after `remind_after` without a report, no-report digest after
`deadline_after`, digest `digest_delay` after the latest report. Reminder and deadline count
from when the check-in actually went out, so a check-in sent late after downtime still gives
the member her full time. Only the current period's jobs are due (plus a pending digest of the
period just ended), so a service that was down sends what is due now once and nothing for a
past period. The loop in `serve` holds no memory: everything comes from `Week` records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from mailflow.config import WEEKDAYS, ScheduleConfig, parse_hhmm, parse_quiet_hours
from mailflow.models import CONSENT_ACCEPTED, ENDED, Partnership, Week
from mailflow.partnerships import is_paused

CHECKIN = "checkin"
REMINDER = "reminder"
NO_REPORT = "no_report"
DIGEST = "digest"

# A check-in that goes out within this long after its moment is "at the time she chose" (a
# tick or a short restart later); a later one was caught up (after downtime, or a consent
# given later) and, like other mail, waits for the end of her quiet hours.
ON_TIME = timedelta(hours=1)

QuietHours = tuple[time, time]  # (start, end) in the recipient's wall time; may span midnight


@dataclass(frozen=True)
class Settings:
    checkin_day: str
    checkin_time: time
    remind_after: timedelta
    deadline_after: timedelta
    digest_delay: timedelta
    quiet: QuietHours | None = None

    @classmethod
    def from_config(cls, sc: ScheduleConfig) -> Settings:
        return cls(
            checkin_day=sc.checkin_day,
            checkin_time=parse_hhmm(sc.checkin_time),
            remind_after=timedelta(hours=sc.remind_after_hours),
            deadline_after=timedelta(hours=sc.deadline_after_hours),
            digest_delay=timedelta(minutes=sc.digest_delay_minutes),
            quiet=parse_quiet_hours(sc.quiet_hours),
        )


def quiet_until(now: datetime, tz: ZoneInfo, quiet: QuietHours | None) -> datetime | None:
    """When the quiet hours that `now` falls in end, in zone `tz`; None outside them.

    The window is wall time, so it follows the zone's DST changes; an end that does not exist
    on a spring-forward night resolves as zoneinfo resolves it (shifted by the gap).
    """
    if quiet is None:
        return None
    start, end = quiet
    local = now.astimezone(tz)
    wall = local.time()
    if start < end:
        inside, day = start <= wall < end, local.date()
    else:  # past midnight: 21:00-07:00
        inside = wall >= start or wall < end
        day = local.date() + timedelta(days=1) if wall >= start else local.date()
    if not inside:
        return None
    return datetime.combine(day, end, tzinfo=tz)


@dataclass(frozen=True)
class Period:
    label: str  # "2026-W48"
    checkin_at: datetime  # the scheduled moment, aware
    ends_at: datetime  # the next period's check-in moment


@dataclass(frozen=True)
class PeriodState:
    """What is stored about one partnership in one period."""

    week: Week | None
    report_count: int = 0
    last_report_at: datetime | None = None


@dataclass(frozen=True)
class Job:
    kind: str
    partnership_id: int
    period: str


def period_label(d: date) -> str:
    year, week, _ = d.isocalendar()
    return f"{year}-W{week:02d}"


def parse_period(label: str) -> tuple[int, int]:
    year, week = label.split("-W")
    return int(year), int(week)


def utc_week(now: datetime) -> str:
    """The period label of `now`'s ISO week in UTC: where mail that is nobody's week goes."""
    return period_label(now.astimezone(UTC).date())


def weeks_between(older: str, newer: str) -> int:
    """Whole weeks from period `older` to period `newer` (negative when newer is older)."""

    def monday(label: str) -> date:
        year, week = parse_period(label)
        return date.fromisocalendar(year, week, 1)

    return (monday(newer) - monday(older)).days // 7


def checkin_moment(p: Partnership, tz: ZoneInfo, s: Settings, year: int, week: int) -> datetime:
    """The check-in moment of ISO week (year, week) in the member's zone, DST-correct.

    A wall time that does not exist (spring forward) resolves to the same instant zoneinfo
    gives fold=0, i.e. shifted by the gap; an ambiguous one (fall back) takes the first.
    """
    day = WEEKDAYS.index(p.checkin_day or s.checkin_day) + 1
    at = parse_hhmm(p.checkin_time) if p.checkin_time else s.checkin_time
    local_day = date.fromisocalendar(year, week, day)
    return datetime.combine(local_day, at, tzinfo=tz)


def _period_of(p: Partnership, tz: ZoneInfo, s: Settings, d: date) -> Period:
    year, week, _ = d.isocalendar()
    start = checkin_moment(p, tz, s, year, week)
    nxt = d + timedelta(days=7)
    ny, nw, _ = nxt.isocalendar()
    return Period(f"{year}-W{week:02d}", start, checkin_moment(p, tz, s, ny, nw))


def period_named(p: Partnership, tz: ZoneInfo, s: Settings, label: str) -> Period:
    """The period with label `label` ("2026-W48"), past or future."""
    year, week = parse_period(label)
    return _period_of(p, tz, s, date.fromisocalendar(year, week, 1))


def current_period(p: Partnership, tz: ZoneInfo, s: Settings, now: datetime) -> Period | None:
    """The period `now` falls in, or None before the partnership's first check-in."""
    local = now.astimezone(tz)
    period = _period_of(p, tz, s, local.date())
    if now < period.checkin_at:
        period = _period_of(p, tz, s, local.date() - timedelta(days=7))
    if period.checkin_at.astimezone(tz).date() < p.start:
        return None
    return period


def previous_period(p: Partnership, tz: ZoneInfo, s: Settings, period: Period) -> Period:
    d = period.checkin_at.astimezone(tz).date() - timedelta(days=7)
    return _period_of(p, tz, s, d)


def wants_checkin(p: Partnership, tz: ZoneInfo, period: Period, now: datetime) -> bool:
    """Accepted, active, not paused, and the period starts by the last goal's due date.

    A period whose check-in moment came before the partnership was created is not asked:
    created on Monday evening, the first check-in is next Monday's, not one within seconds.
    (One whose moment passed while the service was down is still caught up.)
    """
    if p.status == ENDED or p.consent != CONSENT_ACCEPTED:
        return False
    if is_paused(p, now.astimezone(tz).date()):
        return False
    if period.checkin_at < p.created_at:
        return False
    checkin_day = period.checkin_at.astimezone(tz).date()
    return p.start <= checkin_day <= max(g.due for g in p.goals)


def due_jobs(
    p: Partnership,
    tz: ZoneInfo,
    s: Settings,
    now: datetime,
    current: tuple[Period, PeriodState] | None,
    *others: tuple[Period, PeriodState] | None,
) -> list[Job]:
    """Every job due for one partnership at `now`, given what is stored for its periods.

    `others` are the period just ended and, for early reports, the ISO week under way when
    its check-in is still to come: only a digest owed for them can be due.
    """
    jobs: list[Job] = []
    if p.status == ENDED or p.consent != CONSENT_ACCEPTED:
        return jobs  # a partner who has not said yes gets nothing, not even a digest
    paused = is_paused(p, now.astimezone(tz).date())
    for other in others:
        if other is not None and _digest_due(other[1], s, now):
            jobs.append(Job(DIGEST, p.id, other[0].label))
    if current is None:
        return jobs
    period, state = current
    week = state.week
    sent_at = week.checkin_at if week else None
    if sent_at is None:
        if wants_checkin(p, tz, period, now):
            jobs.append(Job(CHECKIN, p.id, period.label))
    elif state.report_count == 0 and not paused:
        assert week is not None
        deadline = sent_at + s.deadline_after
        if now >= deadline:
            if week.no_report_at is None:
                jobs.append(Job(NO_REPORT, p.id, period.label))
        elif now >= sent_at + s.remind_after and week.reminder_at is None:
            jobs.append(Job(REMINDER, p.id, period.label))
    if _digest_due(state, s, now):
        jobs.append(Job(DIGEST, p.id, period.label))
    return jobs


def _digest_due(state: PeriodState, s: Settings, now: datetime) -> bool:
    if state.report_count == 0 or state.last_report_at is None:
        return False
    digested = state.week.digested_reports if state.week else 0
    return state.report_count > digested and now >= state.last_report_at + s.digest_delay


def upcoming_period(
    p: Partnership, tz: ZoneInfo, s: Settings, now: datetime, current: Period | None
) -> Period | None:
    """The ISO week under way when its check-in is still ahead (early reports land there)."""
    period = _period_of(p, tz, s, now.astimezone(tz).date())
    if current is not None and period.label == current.label:
        return None
    return period


def report_period(
    p: Partnership,
    tz: ZoneInfo,
    s: Settings,
    now: datetime,
    token_period: str | None,
    current_open: bool,
) -> str:
    """Which period a member's report counts for.

    A reply to the current check-in counts for its period, and so does any report while the
    current check-in is out and still unanswered (whatever address it was sent to). Otherwise
    (the current period is answered, or its check-in has not gone out) it counts for the ISO
    week under way in her zone, which may still be waiting for its check-in: an early report.
    """
    current = current_period(p, tz, s, now)
    if current is not None and (token_period == current.label or current_open):
        return current.label
    return period_label(now.astimezone(tz).date())


def first_checkin(p: Partnership, tz: ZoneInfo, s: Settings, now: datetime) -> datetime:
    """When the first check-in goes out (once accepted): the first check-in moment on or
    after the start and after the partnership was created. A moment already passed (the
    partner accepted after it) is caught up at the next tick, so it is `now`, or the end of
    the member's quiet hours when `now` falls in them."""
    period = _period_of(p, tz, s, max(p.start, now.astimezone(tz).date()))
    while period.checkin_at.astimezone(tz).date() < p.start or period.checkin_at < p.created_at:
        period = _period_of(p, tz, s, period.checkin_at.astimezone(tz).date() + timedelta(7))
    if period.checkin_at >= now - ON_TIME:
        return max(period.checkin_at, now)
    return quiet_until(now, tz, s.quiet) or now


def days_left(due: date, today: date) -> int:
    return (due - today).days
