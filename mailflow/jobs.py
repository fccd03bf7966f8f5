"""The week's jobs at `now`: introductions, consent reminders to the admin, lapsed pauses,
check-ins, reminders, no-report digests, digests, and the closing of finished partnerships.

The scheduler's memory is the store: what is due is computed from stored records and `now`
alone (`schedule.due_jobs`, pure), each mail is built by its `letters` builder (pure), and
the mailroom renders and writes them, then records each with the `Mark` of its job in one
write per period file, so nothing is sent twice and a crash loses nothing. A tick of 10,000
partnerships commits in chunks of `COMMIT_CHUNK`; `run_and_deliver` hands each committed
chunk to a sender thread while the next one renders.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import letters, status
from mailflow import partnerships as pships
from mailflow.errors import CorruptFileError, MailflowError, StoreError
from mailflow.letters import Letter, Pair, ServiceInfo
from mailflow.mailroom import Mailroom, Prepared, TickReport, sum_results
from mailflow.models import (
    ACTIVE,
    CONSENT_ACCEPTED,
    CONSENT_PENDING,
    ENDED,
    PAUSED,
    Partnership,
    PeriodSummary,
    Report,
    Roster,
    Week,
)
from mailflow.outbox import FlushResult
from mailflow.schedule import (
    CHECKIN,
    NO_REPORT,
    REMINDER,
    Job,
    Period,
    PeriodState,
    current_period,
    due_jobs,
    previous_period,
    upcoming_period,
)
from mailflow.store import Store, WeekView

log = logging.getLogger("mailflow")

COMMIT_CHUNK = 500  # messages recorded per write while a tick's fan-out is under way
ROLES = ("member", "partner")

Periods = tuple[Period | None, Period | None, Period | None]  # current, previous, upcoming
States = dict[str, dict[int, PeriodState]]  # period label -> partnership id -> state
Updates = dict[int, dict[str, Any]]  # partnership id -> changes written after the run
Summaries = dict[str, dict[int, PeriodSummary]]  # period label -> strips' input, once per run


class Jobs:
    """Runs the week's jobs; one run at a time per process (the store locks across them)."""

    def __init__(self, store: Store, mailroom: Mailroom, svc: ServiceInfo) -> None:
        self.store = store
        self.mailroom = mailroom
        self.svc = svc
        self._lock = threading.Lock()

    def introduce(self, pid: int, now: datetime) -> TickReport:
        """Queue the introductions of one new partnership and deliver them.

        Reads only that partnership and its two people, so it costs the same in any
        directory size. StoreError when one of them is missing.
        """
        out = TickReport()
        core = self.store.core()
        p = core.partnership(pid)
        if p is not None and p.introduced_at is None and not p.approval:
            member, partner = core.person(p.member), core.person(p.partner)
            if member is None or partner is None:
                raise StoreError(f"partnership {pid}: {p.member} or {p.partner} does not exist")
            pair = Pair(p, member, partner, self._strip(p, member.timezone, now))
            self.mailroom.post(
                (letters.intro(pair, role, self.svc, now) for role in ROLES), now, out
            )
            with self.store.core_tx() as tx:
                current = tx.partnership(pid)
                if current is not None and current.introduced_at is None:
                    tx.put_partnership(current.with_changes(introduced_at=now))
        out.extend(self.mailroom.flush(now, self.svc))
        return out

    def run(self, now: datetime, on_commit: Callable[[], None] | None = None) -> TickReport:
        """Queue every message due at `now` (once each, ever).

        Records are committed in chunks; `on_commit` is called after each, so a sender can
        deliver one chunk while the next is rendered. A job that fails is reported as an
        `error` line and retried at the next run; it never stops the others.
        """
        out = TickReport()
        with self._lock:
            # Objects of this run only (not the store's cached maps, which ingest keeps): a
            # tick of 10,000 partnerships holds its period views at the same time, and serve's
            # peak memory is that moment.
            core = self.store.core()
            roster = Roster(core.directory, {p.id: p for p in core.partnerships()})
            updates: Updates = {}
            summaries: Summaries = {}
            prepared: list[Prepared] = []
            plans: list[tuple[Partnership, Periods]] = []
            for p in roster.partnerships.values():
                if p.status == ENDED or not roster.has_both(p):
                    continue
                try:
                    prepared.extend(self._life_cycle(p, roster, now, updates, summaries))
                except Exception as exc:  # noqa: BLE001 - one bad partnership must not stop others
                    _log_failure(exc, "life-cycle job failed for partnership %s", p.id)
                    out.error(f"partnership {p.id}: {exc}")
                plans.append((p, self._periods(p, roster, now)))
            labels = {x.label for _, periods in plans for x in periods if x}
            views, broken = self._views(labels)
            states = {label: _states(view.weeks(), view.reports()) for label, view in views.items()}
            for p, periods in plans:
                if any(x and x.label in broken for x in periods):
                    # Only the jobs of a period whose file cannot be read wait (what it sent
                    # is unknown: nothing rather than twice), and no closing without it.
                    known = _without(periods, broken)
                    prepared.extend(
                        self._due(p, known, roster, views, states, now, None, out, summaries)
                    )
                    continue
                prepared.extend(
                    self._due(p, periods, roster, views, states, now, updates, out, summaries)
                )
                if len(prepared) >= COMMIT_CHUNK:
                    self.mailroom.commit(prepared, out)
                    prepared = []
                    if on_commit is not None:
                        on_commit()
            self.mailroom.commit(prepared, out)
            if on_commit is not None:
                on_commit()
            self._update(updates, out)
        return out

    def _views(self, labels: Iterable[str]) -> tuple[dict[str, WeekView], set[str]]:
        """A snapshot of each period file, and the labels whose file cannot be read (the
        store names each in `take_problems`; only the jobs that need it wait)."""
        views: dict[str, WeekView] = {}
        broken: set[str] = set()
        for label in labels:
            try:
                views[label] = self.store.week(label)
            except CorruptFileError:
                broken.add(label)
        return views, broken

    def run_and_deliver(self, now: datetime) -> TickReport:
        """Queue what is due and deliver it, sending each committed chunk while the next
        one renders (the relay's round trips overlap our own work)."""
        kick = threading.Event()
        done = threading.Event()
        results: list[FlushResult] = []

        def sender() -> None:
            while True:
                kick.wait()
                kick.clear()
                results.append(self.mailroom.outbox.flush(now))
                if done.is_set() and not kick.is_set():
                    return

        thread = threading.Thread(target=sender, name="mailflow-send", daemon=True)
        thread.start()
        try:
            out = self.run(now, on_commit=kick.set)
        finally:
            done.set()
            kick.set()
            thread.join()
        total = sum_results(results)
        out.add_flush(total)
        self.mailroom.after_flush(total, self.svc, now, out)
        return out

    # -- one partnership --------------------------------------------------------------------

    def _tz(self, p: Partnership, roster: Roster) -> ZoneInfo:
        return ZoneInfo(roster.people[p.member].timezone)

    def _strip(
        self, p: Partnership, tz: str, now: datetime, summaries: Summaries | None = None
    ) -> tuple[dict[str, str], ...]:
        return status.strip(self.store, p, ZoneInfo(tz), self.svc.settings, now, summaries)

    def _pair(self, p: Partnership, roster: Roster, now: datetime, summaries: Summaries) -> Pair:
        member, partner = roster.people[p.member], roster.people[p.partner]
        return Pair(p, member, partner, self._strip(p, member.timezone, now, summaries))

    def _prepare(self, items: Iterable[Letter | None], now: datetime) -> list[Prepared]:
        return [self.mailroom.prepare(letter, now) for letter in items if letter]

    def _periods(self, p: Partnership, roster: Roster, now: datetime) -> Periods:
        tz, s = self._tz(p, roster), self.svc.settings
        cur = current_period(p, tz, s, now)
        prev = previous_period(p, tz, s, cur) if cur else None
        return cur, prev, upcoming_period(p, tz, s, now, cur)

    def _life_cycle(
        self,
        p: Partnership,
        roster: Roster,
        now: datetime,
        updates: Updates,
        summaries: Summaries,
    ) -> list[Prepared]:
        """Introductions, a consent nobody gave, and a dated pause that has lapsed.

        Each change is noted in `updates` only once its mail is prepared (rendered and
        written), so a template that fails leaves the job to the next run.
        """
        items: list[Prepared] = []
        local_today = now.astimezone(self._tz(p, roster)).date()
        if p.status == PAUSED and p.paused_until is not None and local_today >= p.paused_until:
            updates.setdefault(p.id, {}).update(status=ACTIVE, paused_until=None)
        if p.approval:
            return items  # asked by self-service: nothing goes out before an admin approves
        if p.introduced_at is None:
            pair = self._pair(p, roster, now, summaries)
            items.extend(self._prepare([letters.intro(pair, r, self.svc, now) for r in ROLES], now))
            updates.setdefault(p.id, {})["introduced_at"] = now
        since = p.introduced_at or p.created_at
        if (
            p.consent == CONSENT_PENDING
            and p.consent_overdue_at is None
            and now >= since + timedelta(days=self.svc.consent_days)
        ):
            member, partner = roster.people[p.member], roster.people[p.partner]
            notice = letters.consent_notice(p, member, partner, "no_answer", "", self.svc, now)
            items.extend(self._prepare([notice], now))
            updates.setdefault(p.id, {})["consent_overdue_at"] = now
        return items

    def _due(
        self,
        p: Partnership,
        periods: Periods,
        roster: Roster,
        views: dict[str, WeekView],
        states: States,
        now: datetime,
        updates: Updates | None,
        out: TickReport,
        summaries: Summaries,
    ) -> list[Prepared]:
        """The prepared mail of every job due for one partnership, or its closing (not when
        `updates` is None: a period it needs to know of could not be read)."""
        cur, prev, nxt = periods
        tz = self._tz(p, roster)
        current = _state_of(cur, states, p.id)
        others = (_state_of(prev, states, p.id), _state_of(nxt, states, p.id))
        jobs = due_jobs(p, tz, self.svc.settings, now, current, *others)
        reason = pships.closing_reason(p, now.astimezone(tz).date())
        if (
            reason is not None
            and updates is not None
            and _may_close(reason, current, prev, nxt, states, p.id)
        ):
            # Any digest still owed goes out first, and a last week still open runs to its
            # deadline; the summary follows at a later tick.
            try:
                return self._closing(p, roster, now, reason, updates, summaries)
            except Exception as exc:  # noqa: BLE001
                _log_failure(exc, "closing failed for partnership %s", p.id)
                out.error(f"closing partnership {p.id}: {exc}")
                return []
        prepared: list[Prepared] = []
        pair: Pair | None = None
        for job in jobs:
            period = next(x for x in periods if x and x.label == job.period)
            try:
                pair = pair or self._pair(p, roster, now, summaries)
                letter = self._job_letter(job, pair, period, views[period.label], now)
                prepared.append(self.mailroom.prepare(letter, now))
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop others
                _log_failure(exc, "%s failed for partnership %s", job.kind, p.id)
                out.error(f"{job.kind} for partnership {p.id} {job.period}: {exc}")
        return prepared

    def _job_letter(
        self, job: Job, pair: Pair, period: Period, view: WeekView, now: datetime
    ) -> Letter:
        pid, svc = pair.p.id, self.svc
        if job.kind == CHECKIN:
            # An early report turns the check-in into a short "got it" note.
            reports = view.reports(pid)
            if reports:
                return letters.checkin_ack(pair, period, reports, svc, now)
            return letters.checkin(pair, period, svc, now)
        if job.kind == REMINDER:
            return letters.reminder(pair, period, view.week(pid), svc, now)
        if job.kind == NO_REPORT:
            return letters.no_report(pair, period, view.week(pid), svc, now)
        return letters.digest(pair, period, view.week(pid), view.reports(pid), svc, now)

    def _closing(
        self,
        p: Partnership,
        roster: Roster,
        now: datetime,
        reason: str,
        updates: Updates,
        summaries: Summaries,
    ) -> list[Prepared]:
        """Both people get a closing summary (once the partner had accepted); it ends."""
        items: list[Prepared] = []
        if p.consent == CONSENT_ACCEPTED:
            pair = self._pair(p, roster, now, summaries)
            closings = [letters.summary(pair, role, reason, self.svc, now) for role in ROLES]
            items = self._prepare(closings, now)
        updates.setdefault(p.id, {}).update(
            status=ENDED, ended_at=now, paused_until=None, end_reason=f"completed: {reason}"
        )
        return items

    def _update(self, updates: Updates, out: TickReport) -> None:
        """Write the run's changes to partnerships, on their current records."""
        if not updates:
            return
        with self.store.core_tx() as tx:
            for pid, changes in updates.items():
                current = tx.partnership(pid)
                if current is not None and current.status != ENDED:
                    tx.put_partnership(current.with_changes(**changes))
                    if changes.get("status") == ENDED:
                        out.add(f"partnership {pid} {changes['end_reason']}")


def _log_failure(exc: Exception, what: str, *args: object) -> None:
    """One log line for a job that failed; the traceback only for a bug. Bad data (a
    record no header can carry, a template error) is a ValueError or a MailflowError."""
    bug = not isinstance(exc, ValueError | MailflowError)
    log.error(what + ": %s", *args, exc, exc_info=bug)


def _without(periods: Periods, broken: set[str]) -> Periods:
    cur, prev, nxt = (None if x is not None and x.label in broken else x for x in periods)
    return cur, prev, nxt


def _may_close(
    reason: str,
    current: tuple[Period, PeriodState] | None,
    prev: Period | None,
    nxt: Period | None,
    states: States,
    pid: int,
) -> bool:
    """No digest owed for any recent period, and no last week left waiting on its report."""
    for item in (current, _state_of(prev, states, pid), _state_of(nxt, states, pid)):
        if item is None:
            continue
        state = item[1]
        if state.report_count > (state.week.digested_reports if state.week else 0):
            return False
    if reason.startswith("the last due date") and current is not None:
        state = current[1]
        week = state.week
        if week and week.checkin_at and not state.report_count and not week.no_report_at:
            return False
    return True


def _state_of(period: Period | None, states: States, pid: int) -> tuple[Period, PeriodState] | None:
    if period is None:
        return None
    return period, states[period.label].get(pid, PeriodState(None))


def _states(weeks: Iterable[Week], reports: Iterable[Report]) -> dict[int, PeriodState]:
    by_pid: dict[int, list[Report]] = defaultdict(list)
    for r in reports:
        by_pid[r.partnership_id].append(r)
    week_by_pid = {w.partnership_id: w for w in weeks}
    out: dict[int, PeriodState] = {}
    for pid in set(by_pid) | set(week_by_pid):
        rs = by_pid.get(pid, [])
        out[pid] = PeriodState(
            week_by_pid.get(pid), len(rs), max((r.received_at for r in rs), default=None)
        )
    return out
