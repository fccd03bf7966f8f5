"""Intake: spooled mail becomes records, in batches.

For each batch: one roster snapshot and one snapshot per period file; per message: parse,
`triage.route`, read the `Facts` of the one routed partnership, `triage.decide`. Then, in the
order the durability promise needs:
1. side effects first, each idempotent (keyed by the message): what `actions` asks, applied
   in a core transaction on the partnership as stored now, and its letters queued;
2. the records, one write per period file (a Message-ID already stored is a duplicate);
3. the raw messages archived under mail/in/PERIOD/ (or quarantined with the reason), and the
   directories synced; then bounce flags.
A crash anywhere re-runs the batch harmlessly: side effects and records are keyed by the
message, and a message leaves the spool only after its record is on disk.

An admin's release of a quarantined message (`quarantine.release`) takes the same path for
one message, told it is a release: `decide_one(..., release=True)`, then `settle` (steps 1
and 2) and `archive` (step 3), under the same locks as an ingest.

Only mail that cannot be understood is quarantined. A failure that is not the message's
(`Wait`): the disk full, a database lock held by another process for longer than we wait, a
database file that cannot be read; leaves the message in the spool, untouched, and the next
ingest (serve: within a second; else the next tick) tries it again. A message whose side
effects met such a failure changed nothing: its letters are written before its partnership
is, in the same core transaction, so the retry starts from the same state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from filelock import FileLock

from mailflow import actions, letters, selfservice, status, triage
from mailflow.addresses import canonical
from mailflow.errors import CorruptFileError, is_transient
from mailflow.letters import Pair, ServiceInfo
from mailflow.mailroom import Mailroom, Prepared, TickReport
from mailflow.models import Partnership, Report, Roster
from mailflow.parse import parse_message
from mailflow.schedule import current_period, report_period, utc_week
from mailflow.spool import Spool, SpoolEntry
from mailflow.store import Store, WeekView, fsync_dir
from mailflow.triage import Decision, Forward, Quarantine, Record, Reply
from mailflow.wording import count

log = logging.getLogger("mailflow")

INGEST_BATCH = 500
CONFIRMATIONS = "confirmations"  # core meta: the last confirmation number given
LOCK_TIMEOUT_SECONDS = 120


def _stranger(d: Decision) -> bool:
    """Mail to the program's address from outside the directory (counted for `status`)."""
    return isinstance(d, Record) and d.inbound.kind == "program_stranger"


def _count_stranger(
    counted: dict[str, dict[str, int]], d: Decision, entry: SpoolEntry, at: datetime | None
) -> None:
    """One more stranger's mail in its UTC week; weeks past what `status` shows are dropped.
    (A batch run again after a crash may count one twice: it is a statistic.)"""
    assert isinstance(d, Record)
    when = at or entry.received_at
    week = counted.setdefault(utc_week(when), {})
    sender = d.inbound.sender or "(nobody)"
    week[sender] = week.get(sender, 0) + 1
    oldest = utc_week(when - timedelta(days=2 * status.STRANGER_DAYS))
    for label in [k for k in counted if k < oldest]:
        del counted[label]


@dataclass(frozen=True)
class Duplicate:
    """A message whose Message-ID is already stored: archived, nothing else."""

    decision: Decision


@dataclass(frozen=True)
class Wait:
    """A message met a failure that is not its own (see the module docstring): it stays in
    the spool for the next ingest."""

    reason: str


Fate = Decision | Duplicate | Wait


def passing(exc: BaseException) -> bool:
    """A failure that passes (disk full, a lock held too long) or that a human fixes in the
    data directory (a corrupt database file): the mail waits, it is not to blame."""
    return is_transient(exc) or isinstance(exc, CorruptFileError)


class Intake:
    """Turns spooled mail into records; safe to run from several threads and processes."""

    def __init__(
        self,
        store: Store,
        spool: Spool,
        mailroom: Mailroom,
        svc: ServiceInfo,
        data_dir: Path,
        trust: triage.Trust = triage.Trust(),  # noqa: B008 - frozen, shared on purpose
    ) -> None:
        self.trust = trust  # what besides our tokens proves a sender (see triage.proven)
        self.store = store
        self.spool = spool
        self.mailroom = mailroom
        self.svc = svc
        self.data_dir = data_dir
        self._lock = threading.Lock()

    def ingest(self, now: datetime, limit: int = INGEST_BATCH) -> TickReport:
        """Everything in the spool now, in batches of `limit`; what happened, line by line."""
        report = TickReport()
        with self.exclusive():
            for _ in range(10_000):  # bounded: each round removes what it read from the spool
                entries = self.spool.pending(limit)
                if not entries:
                    break
                try:
                    waiting = self._batch(entries, now, report)
                except Exception as exc:
                    if not passing(exc):
                        raise
                    # Writing the batch's letters or records met a full disk (or a lock, a
                    # broken file): all of it stays in the spool, and nothing is lost.
                    log.warning("ingest stopped; the spool keeps its mail: %s", exc)
                    report.error(f"{_waiting(len(entries))} in the spool: {exc}")
                    break
                if waiting or len(entries) < limit:
                    break  # what waits is tried again by the next ingest, not in a loop here
        return report

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One intake at a time, across threads and processes (`serve`, `tick`, an admin)."""
        lock = FileLock(str(self.spool.root / ".ingest.lock"), timeout=LOCK_TIMEOUT_SECONDS)
        with self._lock, lock:
            yield

    def roster(self) -> Roster:
        """People and partnerships as stored now (one snapshot for a batch)."""
        return Roster(self.store.people_map(), self.store.partnerships_map())

    def decide_one(self, entry: SpoolEntry, roster: Roster, *, release: bool = False) -> Decision:
        """What one message is; `release`: an admin releases it from the quarantine (the
        sender is vouched for, not proven; a report counts for its token's period)."""
        return self._decide(entry, roster, {}, release)

    def settle(
        self, entry: SpoolEntry, d: Decision, roster: Roster, now: datetime, out: TickReport
    ) -> Fate:
        """Steps 1 and 2 for one message decided elsewhere (a release): its side effects at
        `now`, then its records. A message already stored comes back as a `Duplicate`; one
        whose side effects met a passing failure (the disk, a lock) as a `Wait`."""
        prepared, fates = self._act([(entry, d)], roster, {}, out, at=now)
        self.mailroom.commit(prepared, out)
        self._record(fates)
        return fates[0][1]

    def archive(self, entry: SpoolEntry, fate: Fate, now: datetime, out: TickReport) -> None:
        """Step 3 for one message: archived under its period (from wherever it lies now)."""
        self._dispose([(entry, fate)], now, out)

    def _batch(self, entries: list[SpoolEntry], now: datetime, out: TickReport) -> int:
        """One batch, in the promised order; how many of its messages wait in the spool."""
        # The maps are built once per core file version, not per batch: serve's batches are
        # often small. One snapshot per period for the batch: a view indexes its tables on
        # first use, so a snapshot per message made every message cost a pass over the
        # period's records.
        roster = self.roster()
        views: dict[str, WeekView] = {}
        decided: list[tuple[SpoolEntry, Decision | Wait]] = []
        for entry in entries:
            decision: Decision | Wait
            try:
                decision = self._decide(entry, roster, views)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the rest
                decision = self._failed(entry, exc, "ingest")
            decided.append((entry, decision))
        prepared, fates = self._act(decided, roster, views, out)
        self.mailroom.commit(prepared, out)
        self._record(fates)
        self._dispose(fates, now, out)
        return sum(1 for _, fate in fates if isinstance(fate, Wait))

    def _failed(
        self, entry: SpoolEntry, exc: Exception, what: str, d: Decision | None = None
    ) -> Quarantine | Wait:
        """Quarantine for a message we cannot understand (with what `d`, its decision, knew
        of its partnership); `Wait` when it is not to blame."""
        reason = f"{type(exc).__name__}: {exc}"
        if passing(exc):
            log.warning("%s of %s waits in the spool: %s", what, entry.id, exc)
            return Wait(str(exc))
        log.exception("%s failed for %s", what, entry.id)
        sender = (triage.sender_of(d) if d is not None else "") or canonical(entry.mail_from)
        if d is None:
            return Quarantine(f"processing error: {reason}", sender=sender)
        return Quarantine(f"processing error: {reason}", triage.pid_of(d), d.period, sender=sender)

    def _decide(
        self,
        entry: SpoolEntry,
        roster: Roster,
        views: dict[str, WeekView],
        release: bool = False,
    ) -> Decision:
        parsed = parse_message(entry.raw)
        envelope = triage.Envelope(
            entry.id, entry.mail_from, entry.rcpt_tos, entry.received_at, entry.raw
        )
        target = triage.route(
            parsed, envelope, self.svc.keys, roster, trust=self.trust, vouch=release
        )
        if isinstance(target, triage.Mailbox):
            return triage.decide_mailbox(parsed, target, self.svc.admin)
        if not isinstance(target, triage.Target):
            return _signed(target, parsed.from_address or entry.mail_from)
        facts = self._facts(target, roster, views)
        if release:
            facts = replace(facts, released=True)
        decision = triage.decide(parsed, target, facts)
        return _signed(decision, parsed.from_address or entry.mail_from)

    def _facts(
        self, target: triage.Target, roster: Roster, views: dict[str, WeekView]
    ) -> triage.Facts:
        """The one read `decide` needs: the routed partnership's periods at receipt."""
        p, at, s = target.partnership, target.envelope.received_at, self.svc.settings
        tz = self.svc.tz_of(roster.people.get(p.member))
        cur = current_period(p, tz, s, at)
        label = cur.label if cur else None
        token_period = target.token.period if target.token else None
        # Is the current period's check-in out and still without a report? (A reply to the
        # current check-in needs no look-up.)
        is_open = False
        if label is not None and label != token_period:
            view = self._view(views, label)
            week = view.week(p.id)
            is_open = bool(week and week.checkin_at) and view.report_count(p.id) == 0
        where = report_period(p, tz, s, at, token_period, is_open)
        return triage.Facts(label, where, at.astimezone(tz).date())

    def _view(self, views: dict[str, WeekView], period: str) -> WeekView:
        view = views.get(period)
        if view is None:
            view = views[period] = self.store.week(period)
        return view

    # -- 1. side effects ----------------------------------------------------------------------

    def _act(
        self,
        decided: list[tuple[SpoolEntry, Decision | Wait]],
        roster: Roster,
        views: dict[str, WeekView],
        out: TickReport,
        at: datetime | None = None,
    ) -> tuple[list[Prepared], list[tuple[SpoolEntry, Fate]]]:
        """Side effects first, each idempotent (keyed by the message): a crash before the
        records re-runs them harmlessly and stores the record once. They happen at `at`
        (default: when each message arrived)."""
        prepared: list[Prepared] = []
        fates: list[tuple[SpoolEntry, Fate]] = []
        seen: set[str] = set()
        programs: list[int] = []  # indexes in `fates`: self-service, handled together below
        stalled: Wait | None = None  # once the disk or a lock fails, the rest waits too
        for entry, d in decided:
            if isinstance(d, Wait) or stalled is not None:
                fates.append((entry, stalled or d))
                continue
            if isinstance(d, Quarantine):
                fates.append((entry, d))
                try:
                    prepared.extend(self._apply(d, roster, entry, "", out, at))
                except Exception:  # noqa: BLE001 - the message is kept; the notice is a courtesy
                    log.exception("not-counted notice failed for %s", entry.id)
                continue
            mid = triage.message_id(d)
            fate: Fate = d
            try:
                view = self._view(views, triage.record_period(d, entry.received_at))
                if mid in seen or view.has_message(mid):
                    fates.append((entry, Duplicate(d)))
                    continue
                seen.add(mid)
                if isinstance(d, triage.Program) or _stranger(d):
                    programs.append(len(fates))  # handled together below
                    fates.append((entry, d))
                    continue
                prepared.extend(self._apply(d, roster, entry, mid, out, at))
            except Exception as exc:  # noqa: BLE001 - keep the message; a human looks at it
                fate = self._failed(entry, exc, "side effects", d)
                # The next message would only wait as long again (a lock) or fail the same
                # way (the disk): it waits without trying.
                stalled = fate if isinstance(fate, Wait) else None
            fates.append((entry, fate))
        if programs:
            prepared.extend(_programs(self, fates, programs, out, at))
        return prepared, fates

    def _apply(
        self,
        d: Decision,
        roster: Roster,
        entry: SpoolEntry,
        mid: str,
        out: TickReport,
        at: datetime | None = None,
    ) -> list[Prepared]:
        """What the message asks, on its partnership as stored now (read and written back in
        one core transaction, so no change is lost), then its letters prepared."""
        at = at or entry.received_at
        pid = actions.subject(d)
        if pid is None:
            desk = actions.Desk(self.svc, at, mid, entry.id)
            return [self.mailroom.prepare(letter, at) for letter in actions.unrouted(d, desk)]
        with self.store.core_tx() as tx:
            current = tx.partnership(pid)
            # Confirmation numbers are counted in the core file, read and written in this
            # transaction: two requests never share one (each mail confirms its own).
            next_n = int(tx.meta(CONFIRMATIONS) or 0) + 1
            desk = actions.Desk(self.svc, at, mid, entry.id, next_n)
            outcome = actions.apply(d, self.pair_of(current, roster, at), desk)
            # Its letters on disk before its change: a full disk here changes nothing, and
            # the message waits in the spool to be handled whole.
            prepared = [self.mailroom.prepare(letter, at) for letter in outcome.letters]
            if outcome.partnership is not None and outcome.partnership != current:
                tx.put_partnership(outcome.partnership)
            if outcome.numbered is not None:
                tx.set_meta(CONFIRMATIONS, outcome.numbered)
        for line in outcome.lines:
            out.add(line)
        return prepared

    def pair_of(self, p: Partnership | None, roster: Roster, at: datetime) -> Pair | None:
        """`p` with its people and its strip at `at`; None when it or one of them is gone."""
        if p is None or not roster.has_both(p):
            return None
        member, partner = roster.people[p.member], roster.people[p.partner]
        strip = status.strip(self.store, p, ZoneInfo(member.timezone), self.svc.settings, at)
        return letters.Pair(p, member, partner, strip)

    # -- 2. records, 3. archive ---------------------------------------------------------------

    def _record(self, fates: list[tuple[SpoolEntry, Fate]]) -> None:
        """The records of the batch: one write per period file."""
        by_period: dict[str, list[Decision]] = defaultdict(list)
        for entry, d in fates:
            if not isinstance(d, Quarantine | Duplicate | Wait):
                by_period[triage.record_period(d, entry.received_at)].append(d)
        for period, items in by_period.items():
            with self.store.week_tx(period) as week:
                for d in items:
                    for record in triage.records(d):
                        if isinstance(record, Report):
                            week.add_report(record)
                        else:
                            week.add_inbound(record)

    def _dispose(
        self, fates: list[tuple[SpoolEntry, Fate]], now: datetime, out: TickReport
    ) -> None:
        """Archive or quarantine each message (after its record is on disk), then bounces."""
        archived: set[Path] = set()
        bounced: list[tuple[str, str, tuple[str, ...]]] = []
        waiting = [entry.id for entry, d in fates if isinstance(d, Wait)]
        if waiting:
            reasons = sorted({d.reason for _, d in fates if isinstance(d, Wait)})
            out.error(
                f"{_waiting(len(waiting))} in the spool for the next ingest: " + "; ".join(reasons)
            )
        for entry, d in fates:
            if isinstance(d, Wait):
                continue
            if isinstance(d, Quarantine):
                self.spool.quarantine(
                    entry.id,
                    d.reason,
                    sender=d.sender,
                    partnership_id=d.partnership_id,
                    period=d.period,
                )
                out.add(f"quarantined {entry.id}: {d.reason}")
                continue
            decision = d.decision if isinstance(d, Duplicate) else d
            path = triage.archive_path(decision.period, entry.id, entry.received_at)
            dest = self.data_dir / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry.path, dest)
            archived |= {dest.parent, entry.path.parent}  # new/, or quarantine/ on a release
            out.add(_line(entry, d))
            if isinstance(d, Record):
                bounced.extend((addr, d.reason, d.returned) for addr in d.bounced)
        for folder in archived | {self.spool.root / "new"}:
            if folder.exists():
                fsync_dir(folder)
        if bounced:
            self._mark_bouncing(bounced, now, out)
        working = {triage.sender_of(d) for _, d in fates if not isinstance(d, Duplicate | Wait)}
        working.discard("")
        if working & self._bouncing():
            self._clear_bouncing(working, out)

    # -- bounces ------------------------------------------------------------------------------

    def _bouncing(self) -> set[str]:
        return set(self.store.core().bouncing())

    def _clear_bouncing(self, addresses: set[str], out: TickReport) -> None:
        """Mail that arrived from an address proves it works again."""
        with self.store.core_tx() as core:
            for addr in sorted(addresses):
                person = core.person(addr)
                if person is not None and person.bouncing:
                    core.put_person(replace(person, bouncing=False, bounce_reason=""))
                    out.add(f"{addr} no longer bouncing (mail arrived from it)")

    def _mark_bouncing(
        self, bounced: list[tuple[str, str, tuple[str, ...]]], now: datetime, out: TickReport
    ) -> None:
        """Flag each failed address once; the admin hears of each newly bouncing one, with
        the mail that bounced and the command that helps (`Mailroom.mark_bouncing`)."""
        self.mailroom.mark_bouncing(bounced, self.svc, now, out)


def _signed(d: Decision, sender: str) -> Decision:
    """A quarantine knows who sent it (status names the senders); other decisions already do."""
    if isinstance(d, Quarantine) and not d.sender:
        return replace(d, sender=canonical(sender))
    return d


def _line(entry: SpoolEntry, fate: Fate) -> str:
    match fate:
        case Duplicate():
            return f"duplicate {entry.id}: already stored, ignored"
        case Reply(report=Report() as r):
            setback = " (setback)" if r.setback else ""
            return f"report for partnership {r.partnership_id} {r.period}{setback} from {r.sender}"
        case Forward(written=w):
            return f"forwarded {entry.id} from {w.sender or 'nobody'} to the admin"
    return f"recorded {fate.reason} ({entry.id})"


def _programs(
    intake: Intake,
    fates: list[tuple[SpoolEntry, Fate]],
    indexes: list[int],
    out: TickReport,
    at: datetime | None,
) -> list[Prepared]:
    """Self-service mail of the batch, in one core transaction: each message sees the
    directory as stored now with the changes of the ones before it (read once, from the
    store's parsed snapshot, and written once). A message whose handling fails is
    quarantined with the reason; the others go on."""
    changes: list[tuple[actions.Desk, selfservice.Change]] = []
    with intake.store.core_tx() as tx:
        # The lock is held: the store's parsed maps are this transaction's data.
        people, pships = intake.store.people_map(), intake.store.partnerships_map()
        offered = tx.offered()
        world = selfservice.World(
            people, list(pships.values()), tx.requests(), tx.next_partnership_id(),
            tx.next_request_n(), frozenset(offered), intake.store.offer_index(offered),
        )  # fmt: skip
        counted = tx.meta(status.STRANGERS_META) or {}
        for i in indexes:
            entry, d = fates[i]
            if not isinstance(d, triage.Program):  # a stranger: counted, never answered
                _count_stranger(counted, d, entry, at)
                continue
            desk = actions.Desk(intake.svc, at or entry.received_at, d.inbound.message_id, entry.id)
            try:
                change = selfservice.handle(d, world, desk)
            except Exception as exc:  # noqa: BLE001 - keep the message; a human looks at it
                log.exception("self-service failed for %s", entry.id)
                why = f"processing error: {type(exc).__name__}: {exc}"
                fates[i] = (entry, Quarantine(why, sender=d.sender))
                continue
            world = selfservice.applied(world, change)
            changes.append((desk, change))
        for _, change in changes:
            for person in change.people:
                tx.put_person(person)
            for p in change.partnerships:
                tx.put_partnership(p)
            for request in change.requests:
                tx.put_request(request)
        if len(changes) < len(indexes):
            tx.set_meta(status.STRANGERS_META, counted)
        if changes:
            tx.set_meta("next_request", world.next_n)
            for n in selfservice.expired(world, changes[-1][0].at):
                tx.remove_request(n)
    prepared = []
    for desk, change in changes:
        for line in change.lines:
            out.add(line)
        prepared.extend(intake.mailroom.prepare(letter, desk.at) for letter in change.letters)
    return prepared


def _waiting(n: int) -> str:
    """ "1 message waits", "2 messages wait"."""
    return f"{count(n, 'message')} {'waits' if n == 1 else 'wait'}"
