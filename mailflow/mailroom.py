"""The mailroom: a `Letter` becomes queued mail, recorded with the job it does.

`prepare` renders a letter (compose), turns it into wire bytes (mime) and writes them to the
outbox without syncing; `commit` syncs once for the whole batch, then in one transaction per
period file records each message as queued together with its `Mark` (the job done: a week's
check-in, reminder, no-report or digest), skipping any key already recorded; `flush` lets the
outbox deliver. So a crash before the commit leaves at most unreferenced files (re-rendered
under the same key by the next run), and a crash after it leaves queued mail that is sent once.
Every promise about outgoing mail (one message per key, ever; rendered with a template that
passed the check) holds here, whoever wrote the letter: the week's jobs, a reply, an admin.

Quiet hours live here too. A letter that would reach its reader inside her quiet hours
(`[schedule] quiet_hours`, her own zone) is queued with its first attempt at their end: the
`next_attempt_at` the outbox already honours for retries, and a Date header of that moment.
Every writer of mail (jobs, intake, the admin's commands, the web) gets the rule by going
through here, the job is done (marked) when the mail is queued so no scheduler re-decides
it, and the hold survives a restart because it is in the record. Exempt (`Letter.anytime`):
her check-in and reminder at the time she chose, and an answer to the person who just wrote.
A held digest that a newer digest of the same week replaces is dropped (`superseded`), so a
partner wakes up to one digest, not two.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from mailflow import letters
from mailflow.addresses import canonical
from mailflow.compose import Templates
from mailflow.letters import Bounced, DigestMark, Letter, Mark, ServiceInfo
from mailflow.mime import Rendered, message_bytes
from mailflow.models import QUEUED, SUPERSEDED, Outgoing, Week
from mailflow.outbox import FlushResult, Outbox
from mailflow.schedule import quiet_until, utc_week
from mailflow.store import Problem, Store, WeekView
from mailflow.tokens import letter_message_id
from mailflow.wording import count

log = logging.getLogger("mailflow")

BOUNCE_LOOKBACK_PERIODS = 4  # period files searched for the mail a bounce returns


@dataclass(frozen=True)
class Line:
    """One line of what a run did: `done` (queued, sent, recorded, ...), `error` (something
    failed and waits for a retry or a human: `tick` exits non-zero) or `warning`."""

    kind: Literal["done", "error", "warning"]
    text: str


@dataclass
class TickReport:
    """What a tick, an ingest or a delivery did, line by line (the CLI prints `lines`)."""

    entries: list[Line] = field(default_factory=list)
    queued: int = 0  # messages queued by this run (`serve` wakes its sender when > 0)

    def add(self, text: str) -> None:
        """One thing done (also logged)."""
        self.entries.append(Line("done", text))
        log.info(text)

    def error(self, text: str) -> None:
        """A job that failed (it is retried at the next run); printed as `error: TEXT`."""
        self.entries.append(Line("error", f"error: {text}"))
        log.info("error: %s", text)  # where it happened already logged it, with its level

    def warning(self, text: str) -> None:
        """Something a human should look at that stopped nothing; `warning: TEXT`."""
        self.entries.append(Line("warning", f"warning: {text}"))
        log.info("warning: %s", text)

    def add_flush(self, result: FlushResult) -> None:
        """What a delivery did: sent, deferred and failed messages, and its errors (marks
        that could not be written, a delivery cut short) as `error` lines."""
        for line in flush_lines(result):
            self.add(line)
        for text in result.errors:
            self.error(text)

    def add_problems(self, problems: Iterable[Problem]) -> None:
        """What the store noticed while reading (a corrupt file: error; a stray one: warning)."""
        for problem in problems:
            (self.error if problem.error else self.warning)(str(problem))

    def extend(self, other: TickReport) -> None:
        """Another run's lines, after these."""
        self.entries.extend(other.entries)
        self.queued += other.queued

    @property
    def lines(self) -> list[str]:
        """Every line as printed, in order."""
        return [line.text for line in self.entries]

    @property
    def errors(self) -> list[str]:
        """The lines of jobs that failed."""
        return [line.text for line in self.entries if line.kind == "error"]

    @property
    def done(self) -> list[str]:
        """The lines of what was done (the CLI prints them on stdout, the rest on stderr)."""
        return [line.text for line in self.entries if line.kind == "done"]


@dataclass(frozen=True)
class Prepared:
    """A rendered message on disk, waiting to be recorded with its job in one write."""

    outgoing: Outgoing
    mark: Mark | DigestMark | None = None
    replaces: tuple[str, ...] = ()  # keys of earlier letters this one makes moot if still held


class Mailroom:
    """Render, write, record and deliver letters; shared by every use case that writes mail."""

    def __init__(
        self, store: Store, outbox: Outbox, templates: Templates, svc: ServiceInfo
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.templates = templates
        self.svc = svc
        self.sender = svc.from_address  # the From address (its display name: svc.from_name)
        self.domain = svc.domain  # of our Message-IDs
        # Body lines already encoded (quoted-printable), by their bytes: the lines of a
        # template that do not depend on the person are encoded once, not once per message.
        self._qp_memo: dict[bytes, str] = {}

    def hold(self, letter: Letter, now: datetime) -> datetime | None:
        """When a letter may go out at the earliest: the end of its reader's quiet hours if
        `now` falls in them (None: at once)."""
        if letter.anytime:
            return None
        zone = ZoneInfo(letter.tz or self.svc.default_tz)
        return quiet_until(now, zone, self.svc.settings.quiet)

    def prepare(self, letter: Letter, now: datetime) -> Prepared:
        """Render and write one letter (not yet synced or recorded); TemplateError if its
        template does not render."""
        return self.prepare_rendered(
            letter, self.templates.render(letter.template, letter.ctx), now
        )

    def prepare_rendered(self, letter: Letter, rendered: Rendered, now: datetime) -> Prepared:
        """Write one letter whose text is already rendered (not yet synced or recorded).

        For mail that is not one of the program's templates (the admin site's sign-in link, a
        test of a template as typed): `letter.template` then only names its kind, and the
        rest (wire bytes, outbox file, the record under its key) is what every letter gets.
        """
        mid = letter.message_id or letter_message_id(letter.template, letter.key, self.domain)
        held = self.hold(letter, now)
        data = message_bytes(
            rendered,
            from_address=self.sender,
            from_name=letter.from_name or self.svc.from_name,
            to_address=letter.to.address,
            to_name=letter.to.name,
            message_id=mid,
            date=held or now,  # the moment it is sent: a held mail is not dated 01:00
            reply_to=letter.reply_to,
            qp_memo=self._qp_memo,
        )
        path = self.outbox.write_bytes(letter.key, letter.period, data, sync=False)
        outgoing = Outgoing(
            key=letter.key,
            kind=letter.template,
            to=letter.to.address,
            message_id=mid,
            path=path,
            created_at=now,
            partnership_id=letter.partnership_id,
            period=letter.period,
            next_attempt_at=held,
        )
        return Prepared(outgoing, letter.mark, letter.replaces)

    def commit(self, items: list[Prepared], out: TickReport) -> int:
        """Record prepared messages with their jobs: one sync, one write per period file.

        Returns how many were queued (a key already recorded, or a mark that no longer
        applies, queues nothing).
        """
        if not items:
            return 0
        self.outbox.sync()
        by_period: dict[str, list[Prepared]] = defaultdict(list)
        for item in items:
            by_period[item.outgoing.period or utc_week(item.outgoing.created_at)].append(item)
        queued = 0
        for period, group in sorted(by_period.items()):
            with self.store.week_tx(period) as week:
                for item in group:
                    o = item.outgoing
                    if week.outgoing(o.key) is not None:
                        continue
                    if item.mark is not None and not apply_mark(week, item.mark, o):
                        continue
                    week.put_outgoing(o)
                    queued += 1
                    when = (
                        f", held until {o.next_attempt_at.isoformat()}" if o.next_attempt_at else ""
                    )
                    out.add(f"queued {o.kind} to {o.to} ({o.key}{when})")
                    _supersede(week, item.replaces, o.created_at, out)
        out.queued += queued
        return queued

    def post(self, letters: Iterable[Letter | None], now: datetime, out: TickReport) -> int:
        """Prepare and commit letters (None entries are skipped: "nothing to send")."""
        return self.commit([self.prepare(letter, now) for letter in letters if letter], out)

    def post_rendered(
        self, items: Iterable[tuple[Letter, Rendered]], now: datetime, out: TickReport
    ) -> int:
        """Write and commit letters already rendered (see `prepare_rendered`)."""
        return self.commit([self.prepare_rendered(lt, r, now) for lt, r in items], out)

    def flush(self, now: datetime, svc: ServiceInfo | None = None) -> TickReport:
        """Deliver what is queued and due at `now`; with `svc`, the admin hears of each
        address that mail could not be sent to (`after_flush`)."""
        out = TickReport()
        result = self.outbox.flush(now)
        out.add_flush(result)
        if svc is not None:
            self.after_flush(result, svc, now, out)
        return out

    def after_flush(
        self, result: FlushResult, svc: ServiceInfo, now: datetime, out: TickReport
    ) -> None:
        """A recipient mail cannot travel to (a non-ASCII local part without SMTPUTF8) is
        flagged bouncing with the reason, once, and the admin is told (and the notice sent)."""
        if result.undeliverable and self.mark_bouncing(result.undeliverable, svc, now, out):
            out.add_flush(self.outbox.flush(now))

    def mark_bouncing(
        self,
        bounced: Iterable[tuple[str, str, tuple[str, ...]]],
        svc: ServiceInfo,
        now: datetime,
        out: TickReport,
    ) -> int:
        """Flag each failed address once; the admin hears of each newly bouncing one, with
        the mail that bounced (found by the Message-IDs `returned`) and the command that
        helps. Each entry is (address, reason, returned). Returns how many notices were queued."""
        newly: list[tuple[str, str, tuple[str, ...]]] = []
        with self.store.core_tx() as core:
            for addr, reason, returned in bounced:
                person = core.person(addr)
                if person is not None and not person.bouncing:
                    core.put_person(replace(person, bouncing=True, bounce_reason=reason[:200]))
                    newly.append((person.email, reason, returned))
        notices = []
        for addr, reason, returned in newly:
            what = self.what_bounced(addr, returned)
            named = f" ({what.template}, partnership {what.partnership_id})" if what else ""
            out.add(f"{addr} marked bouncing{named}")
            notices.append(letters.bounce_notice(addr, reason, svc, now, what))
        return self.post(notices, now, out)

    def what_bounced(self, address: str, returned: tuple[str, ...]) -> Bounced | None:
        """Which of our mails bounced: the one whose Message-ID the bounce returns, else the
        latest one we sent to `address` (either spelling of it: a bounce that quotes no
        headers); None if neither is in the recent period files."""
        found: Outgoing | None = None
        latest: Outgoing | None = None
        person = canonical(address)
        for label in reversed(self.store.periods()[-BOUNCE_LOOKBACK_PERIODS:]):
            for o in self.store.week(label).outgoings():
                if o.message_id.lower() in returned:
                    found = o
                elif canonical(o.to) == person and (
                    latest is None or o.created_at > latest.created_at
                ):
                    latest = o
        mail = found or latest
        if mail is None:
            return None
        p = self.store.core().partnership(mail.partnership_id or 0)
        return Bounced(mail.kind, mail.partnership_id, p.skill if p else "", mail.key)


def _supersede(week: WeekView, keys: tuple[str, ...], now: datetime, out: TickReport) -> None:
    """Drop the earlier letters `keys` that are still held (queued, never tried, not yet due):
    the new one says all they said."""
    for key in keys:
        old = week.outgoing(key)
        if (
            old is not None
            and old.status == QUEUED
            and old.attempts == 0
            and old.next_attempt_at is not None
            and old.next_attempt_at > now
        ):
            week.put_outgoing(replace(old, status=SUPERSEDED, next_attempt_at=None))
            out.add(f"dropped held {old.kind} to {old.to} ({old.key}): a newer one replaces it")


def apply_mark(week: WeekView, mark: Mark | DigestMark, o: Outgoing) -> bool:
    """Record in the period file the job a message does; False when it is done already (or,
    for a reminder or no-report digest, moot because a report arrived).

    The job's time is when the mail goes out: a check-in held for quiet hours counts its
    reminder and deadline from the end of the hold, not from when it was queued.
    """
    pid, at = o.partnership_id, o.next_attempt_at or o.created_at
    assert pid is not None and o.period is not None  # marks are only on a partnership's jobs
    current = week.week(pid) or Week(pid, o.period)
    if isinstance(mark, DigestMark):
        if current.digested_reports >= mark.count:
            return False
        week.put_week(replace(current, digest_at=at, digested_reports=mark.count))
        return True
    if getattr(current, mark.field) is not None:
        return False
    if mark.only_without_reports and week.report_count(pid):
        return False
    week.put_week(replace(current, **{mark.field: at}))
    return True


def sum_results(results: Iterable[FlushResult]) -> FlushResult:
    """Several deliveries' results as one."""
    total = FlushResult()
    for r in results:
        total.sent += r.sent
        total.failed += r.failed
        total.deferred += r.deferred
        total.failures.extend(r.failures)
        total.errors.extend(e for e in r.errors if e not in total.errors)
        total.undeliverable.extend(r.undeliverable)
        total.unmarked = r.unmarked  # the last delivery's count is the current one
        total.busy = total.busy or r.busy
    return total


def flush_lines(result: FlushResult) -> list[str]:
    """What a delivery did, as report lines: sent, deferred, each failure."""
    lines = []
    if result.sent:
        lines.append(f"sent {count(result.sent, 'message')}")
    if result.deferred:
        lines.append(
            f"deferred {count(result.deferred, 'message')} (relay unavailable; will retry)"
        )
    for key, error in result.failures:
        lines.append(f"failed {key}: {error}")
    return lines
