"""Wiring: the one place that builds the parts and runs the week (tick, ingest, serve, status).

Every job reads the clock only through the `now` it is given; `serve` and the CLI are the
edges that pass the real time. The scheduler's memory is the store: a tick computes what is
due from stored records and `now`, renders every message, writes them to disk (one sync for
the batch), then in one transaction per period file records each job as done together with
its queued message, and finally lets the outbox deliver. Inbound mail is accepted into the
spool by `inbox` and turned into records here, in batches: side effects first (idempotent,
keyed by the message), then one write per period, then the spool file is archived.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import pickle
import secrets
import signal
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import schedule as schedule_lib
from filelock import FileLock

from mailflow import commands as cmds
from mailflow import digest, ingest
from mailflow import partnerships as pships
from mailflow.clock import Clock
from mailflow.compose import Templates, message_bytes
from mailflow.config import Config, templates_override
from mailflow.models import (
    ACTIVE,
    CONSENT_ACCEPTED,
    CONSENT_PENDING,
    ENDED,
    PAUSED,
    Outgoing,
    Partnership,
    Person,
    Report,
    Week,
)
from mailflow.outbox import Outbox
from mailflow.parse import parse_message
from mailflow.people import DomainError
from mailflow.schedule import (
    CHECKIN,
    DIGEST,
    NO_REPORT,
    REMINDER,
    Job,
    Period,
    PeriodState,
    Settings,
    current_period,
    due_jobs,
    first_checkin,
    period_label,
    previous_period,
    report_period,
    upcoming_period,
)
from mailflow.spool import Spool, SpoolEntry
from mailflow.store import Store, WeekView, fsync_dir
from mailflow.tokens import AGREE, make_token, parse_token, reply_address, token_of_address
from mailflow.tokens import CHECKIN as TOKEN_CHECKIN
from mailflow.tokens import DIGEST as TOKEN_DIGEST

log = logging.getLogger("mailflow")

INGEST_BATCH = 500
COMMIT_CHUNK = 500  # messages recorded per write while a tick's fan-out is under way
INGEST_GATHER_SECONDS = 0.1  # serve: how long an ingest round waits for more mail to batch
BOUNCE_LOCAL = "bounces"
PLAIN_LOCAL = "checkin"
STOP_CONFIRM_DAYS = 7
HISTORY_WEEKS = 26


def load_secret(config: Config) -> bytes:
    """The token key: from `service.secret_env` (read at config load) when set, else a key
    made once in data_dir/secret.key."""
    value = config.secret(config.service.secret_env)
    if value:
        return value.encode("utf-8")
    data_dir = config.service.data_dir
    path = data_dir / "secret.key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    tmp = path.with_name(f".secret.key.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # never overwrite a key another process made first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


@dataclass
class TickReport:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)
        log.info(line)


@dataclass
class Prepared:
    """A rendered message on disk, waiting to be recorded with its job in one write."""

    outgoing: Outgoing
    mark: Callable[[WeekView], bool] | None = None


def utc_week(now: datetime) -> str:
    return period_label(now.astimezone(UTC).date())


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class Service:
    """Everything `serve`, `tick`, `status` and `demo` need, built from one Config."""

    def __init__(self, config: Config, templates: Templates | None = None) -> None:
        self.config = config
        self.data_dir = config.service.data_dir
        self.domain = config.service.domain
        self.store = Store(self.data_dir)
        self.store.init()
        self.templates = templates or Templates(templates_override(config))
        self.settings = Settings.from_config(config.schedule)
        self.secret = load_secret(config)
        self.bounce_address = f"{BOUNCE_LOCAL}@{self.domain}"
        self.plain_address = f"{PLAIN_LOCAL}@{self.domain}"
        password = config.secret(config.relay.password_env) if config.relay.host else None
        self.outbox = Outbox(self.store, config.relay, password, self.bounce_address, self.data_dir)
        self.spool = Spool(self.data_dir / "spool")
        self._ingest_lock = threading.Lock()
        self._jobs_lock = threading.Lock()

    # -- small helpers ----------------------------------------------------------------------

    @property
    def service_info(self) -> dict[str, str]:
        return {
            "name": "mailflow",
            "domain": self.domain,
            "from_address": self.config.service.sender,
        }

    def tz_of(self, person: Person | None) -> ZoneInfo:
        return ZoneInfo(person.timezone if person else self.config.service.timezone)

    def current_label(self, p: Partnership, people: dict[str, Person], now: datetime) -> str | None:
        period = current_period(p, self.tz_of(people.get(p.member)), self.settings, now)
        return period.label if period else None

    def address(self, kind: str, pid: int, period: str) -> str:
        return reply_address(make_token(self.secret, kind, pid, period), self.domain)

    def base(
        self,
        p: Partnership,
        people: dict[str, Person],
        period: str,
        reply: str,
        reader_tz: str,
        now: datetime,
    ) -> dict[str, Any]:
        ctx = digest.base_context(
            p=p,
            member=people[p.member],
            partner=people[p.partner],
            period=period,
            service=self.service_info,
            reply_address=reply,
            today=now.astimezone(ZoneInfo(reader_tz)).date(),
        )
        ctx["history"] = self.history(p, people, now)
        return ctx

    def history(
        self, p: Partnership, people: dict[str, Person], now: datetime
    ) -> list[dict[str, str]]:
        """Week by week: reported / setback / missed / paused / pending, oldest first."""
        tz = self.tz_of(people.get(p.member))
        cur = current_period(p, tz, self.settings, now)
        if cur is None:
            return []
        first = cur.checkin_at.astimezone(tz).date()
        start = max(
            p.start - timedelta(days=p.start.weekday()), first - timedelta(weeks=HISTORY_WEEKS - 1)
        )
        out: list[dict[str, str]] = []
        day = start
        while day <= first:
            label = period_label(day)
            info = self.store.period_summary(label).get(p.id)
            if info and info.reports:
                state = "setback" if info.setback else "reported"
            elif info and info.checkin_sent:
                state = "pending" if label == cur.label and not info.no_report_sent else "missed"
            else:
                state = "pending" if label == cur.label else "paused"
            if out or state != "paused":  # weeks before the first check-in are not history
                out.append({"period": label, "label": label.split("-")[1], "state": state})
            day += timedelta(days=7)
        return out

    # -- outgoing ---------------------------------------------------------------------------

    def prepare(
        self,
        *,
        key: str,
        name: str,
        period: str,
        to: Person | str,
        ctx: dict[str, Any],
        now: datetime,
        reply_to: str | None = None,
        pid: int | None = None,
        message_id: str | None = None,
        from_name: str = "mailflow",
        mark: Callable[[WeekView], bool] | None = None,
    ) -> Prepared:
        """Render and write one message (not yet synced or recorded)."""
        to_addr, to_name = (to.email, to.name) if isinstance(to, Person) else (to, "")
        rendered = self.templates.render(name, ctx)
        mid = message_id or f"<{name}.{_hash(key)}@{self.domain}>"
        data = message_bytes(
            rendered,
            from_address=self.config.service.sender,
            from_name=from_name,
            to_address=to_addr,
            to_name=to_name,
            message_id=mid,
            date=now,
            reply_to=reply_to,
        )
        path = self.outbox.write_bytes(key, period, data, sync=False)
        return Prepared(
            Outgoing(
                key=key,
                kind=name,
                to=to_addr,
                message_id=mid,
                path=path,
                created_at=now,
                partnership_id=pid,
                period=period,
            ),
            mark,
        )

    def commit(self, items: list[Prepared], out: TickReport) -> int:
        """Record prepared messages with their jobs: one sync, one write per period file."""
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
                    if item.mark is not None and not item.mark(week):
                        continue
                    week.put_outgoing(o)
                    queued += 1
                    out.add(f"queued {o.kind} to {o.to} ({o.key})")
        return queued

    def flush(self, now: datetime) -> TickReport:
        out = TickReport()
        result = self.outbox.flush(now)
        for line in _flush_lines(result):
            out.add(line)
        return out

    # -- inbound ----------------------------------------------------------------------------

    def rcpt_policy(self, address: str) -> str | None:
        """RCPT: only our signed reply addresses, the plain address and the bounce address."""
        addr = address.strip().strip("<>")
        local, _, host = addr.rpartition("@")
        if host.lower() != self.domain.lower():
            return f"550 5.7.1 <{addr}>: relaying denied"
        if local.lower() in (BOUNCE_LOCAL, PLAIN_LOCAL):
            return None
        token = token_of_address(addr, self.domain)
        if token is None or parse_token(self.secret, token) is None:
            return f"550 5.1.1 <{addr}>: no such check-in address"
        return None

    def ingest(self, now: datetime, limit: int = INGEST_BATCH) -> TickReport:
        """Turn spooled mail into records; safe to run from several threads and processes."""
        report = TickReport()
        lock = FileLock(str(self.data_dir / "spool" / ".ingest.lock"), timeout=120)
        with self._ingest_lock, lock:
            for _ in range(10_000):  # bounded: each round removes what it read from the spool
                entries = self.spool.pending(limit)
                if not entries:
                    break
                self._ingest_batch(entries, now, report)
                if len(entries) < limit:
                    break
        return report

    def _ingest_batch(self, entries: list[SpoolEntry], now: datetime, out: TickReport) -> None:
        # Built once per core file version, not per batch: serve's batches are often small.
        people = self.store.people_map()
        partnerships = self.store.partnerships_map()
        # One snapshot per period for the batch: a view indexes its tables on first use, so a
        # snapshot per message made every message cost a pass over the period's records.
        views: dict[str, WeekView] = {}
        decisions: list[tuple[SpoolEntry, ingest.Decision, str]] = []
        for entry in entries:
            try:
                decision, archive = self._decide(entry, partnerships, people, views)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the rest
                log.exception("ingest failed for %s", entry.id)
                decision = ingest.Decision(
                    ingest.QUARANTINE, f"processing error: {type(exc).__name__}: {exc}"
                )
                archive = ""
            decisions.append((entry, decision, archive))

        # Side effects first, each idempotent (keyed by the message), then the records: a
        # crash in between re-runs the side effects harmlessly and stores the record once.
        prepared: list[Prepared] = []
        fresh: list[tuple[SpoolEntry, ingest.Decision, str]] = []
        seen: set[str] = set()
        for entry, decision, archive in decisions:
            if decision.action == ingest.QUARANTINE:
                fresh.append((entry, decision, archive))
                try:
                    prepared.extend(self._not_counted(decision, entry, partnerships, people))
                except Exception:  # noqa: BLE001 - the message is kept; the notice is a courtesy
                    log.exception("not-counted notice failed for %s", entry.id)
                continue
            mid = _decision_mid(decision)
            period = self._record_period(decision, entry)
            view = self._view(views, period)
            if mid in seen or view.has_message(mid):
                fresh.append((entry, ingest.Decision(ingest.INBOUND, "duplicate"), archive))
                continue
            seen.add(mid)
            try:
                prepared.extend(self._side_effects(decision, mid, entry, now, out))
            except Exception as exc:  # noqa: BLE001 - keep the message; a human looks at it
                log.exception("side effects failed for %s", entry.id)
                decision = ingest.Decision(
                    ingest.QUARANTINE, f"processing error: {type(exc).__name__}: {exc}"
                )
            fresh.append((entry, decision, archive))
        self.commit(prepared, out)

        by_period: dict[str, list[ingest.Decision]] = defaultdict(list)
        for entry, decision, _ in fresh:
            if decision.action != ingest.QUARANTINE and decision.reason != "duplicate":
                by_period[self._record_period(decision, entry)].append(decision)
        for period, items in by_period.items():
            with self.store.week_tx(period) as week:
                for decision in items:
                    if decision.report is not None:
                        week.add_report(decision.report)
                    if decision.inbound is not None:
                        week.add_inbound(decision.inbound)
        archived_dirs: set[Path] = set()
        bounced: list[tuple[str, str]] = []
        for entry, decision, archive in fresh:
            if decision.action == ingest.QUARANTINE:
                self.spool.quarantine(entry.id, decision.reason)
                out.add(f"quarantined {entry.id}: {decision.reason}")
                continue
            dest = self.data_dir / archive
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry.path, dest)
            archived_dirs.add(dest.parent)
            if decision.reason == "duplicate":
                out.add(f"duplicate {entry.id}: already stored, ignored")
            elif decision.report is not None:
                r = decision.report
                out.add(
                    f"report for partnership {r.partnership_id} {r.period}"
                    f"{' (setback)' if r.setback else ''} from {r.sender}"
                )
            else:
                out.add(f"recorded {decision.reason} ({entry.id})")
                bounced.extend((addr, decision.reason) for addr in decision.bounced)
        for folder in archived_dirs | {self.spool.root / "new"}:
            if folder.exists():
                fsync_dir(folder)
        if bounced:
            self._mark_bouncing(bounced, now, out)
        working = {d.sender for _, d, _ in fresh if d.action in _PROVEN and d.sender}
        working |= {d.report.sender for _, d, _ in fresh if d.report is not None}
        if working & self._bouncing():
            self._clear_bouncing(working, out)

    def _record_period(self, decision: ingest.Decision, entry: SpoolEntry) -> str:
        return decision.period or utc_week(entry.received_at)

    def receipt(
        self,
        p: Partnership,
        people: dict[str, Person],
        *,
        key: str,
        to: Person,
        period: str,
        at: datetime,
        reply: str,
        reply_to: str | None,
        ctx_period: str | None = None,
        done: Sequence[str] = (),
        problems: Sequence[str] = (),
        question: str = "",
        report_stored: bool = False,
        role: str | None = None,
    ) -> Prepared:
        """A short receipt: what was done, what was not understood, what we ask back.

        `reply` is the address the text names; `reply_to` the header (None: no Reply-To).
        """
        ctx = self.base(p, people, ctx_period or period, reply, to.timezone, at)
        ctx.update(
            done_items=list(done),
            problems=list(problems),
            question=question,
            report_stored=report_stored,
        )
        if role is not None:
            ctx["role"] = role
        return self.prepare(
            key=key,
            name="receipt",
            period=period,
            to=to,
            ctx=ctx,
            now=at,
            reply_to=reply_to,
            pid=p.id,
        )

    def _not_counted(
        self,
        d: ingest.Decision,
        entry: SpoolEntry,
        partnerships: dict[int, Partnership],
        people: dict[str, Person],
    ) -> list[Prepared]:
        """Tell a member when her own reply was set aside, so a report never just vanishes.

        Only for reasons that come after the sender was checked (a stale check-in, an ended
        partnership): anyone else's mail gets no answer from us.
        """
        if d.partnership_id is None or not d.reason.startswith(("stale token", "partnership")):
            return []
        p = partnerships.get(d.partnership_id)
        if p is None or p.member not in people or p.partner not in people:
            return []
        member = people[p.member]
        at = entry.received_at
        period = utc_week(at)
        cur = self.current_label(p, people, at)
        reply = (
            self.address(TOKEN_CHECKIN, p.id, cur)
            if cur and p.status != ENDED
            else self.plain_address
        )
        why = (
            "this partnership has ended"
            if p.status == ENDED
            else ("it answered a check-in from more than 8 weeks ago; please answer the latest one")
        )
        return [
            self.receipt(
                p,
                people,
                key=f"receipt:{_hash(entry.id)}",
                to=member,
                period=period,
                at=at,
                reply=reply,
                reply_to=None if p.status == ENDED else reply,
                problems=[f"Your reply was not counted: {why}."],
            )
        ]

    def _view(self, views: dict[str, WeekView], period: str) -> WeekView:
        view = views.get(period)
        if view is None:
            view = views[period] = self.store.week(period)
        return view

    def _decide(
        self,
        entry: SpoolEntry,
        partnerships: dict[int, Partnership],
        people: dict[str, Person],
        views: dict[str, WeekView],
    ) -> tuple[ingest.Decision, str]:
        parsed = parse_message(entry.raw)
        message_id = ingest.message_id_of(parsed, entry.raw)
        token = None
        to_bounce = to_plain = False
        for rcpt in entry.rcpt_tos:
            local = rcpt.lower().rpartition("@")[0]
            to_bounce = to_bounce or local == BOUNCE_LOCAL
            to_plain = to_plain or local == PLAIN_LOCAL
            raw_token = token_of_address(rcpt, self.domain)
            if raw_token and token is None:
                token = parse_token(self.secret, raw_token)
        if token is None and not to_bounce:
            ref = ingest.token_from_ids(
                [i for i in (parsed.in_reply_to, *parsed.references) if i], self.domain
            )
            token = parse_token(self.secret, ref) if ref else None
        at = entry.received_at

        def tz(p: Partnership) -> ZoneInfo:
            return self.tz_of(people.get(p.member))

        decision = ingest.decide(
            parsed=parsed,
            message_id=message_id,
            token=token,
            to_bounce_address=to_bounce,
            to_plain_address=to_plain,
            envelope_from=entry.mail_from,
            partnerships=partnerships,
            people=people,
            current_period=lambda q: self.current_label(q, people, at),
            report_period=lambda q, tp: report_period(
                q, tz(q), self.settings, at, tp, self._open(q, people, at, tp, views)
            ),
            local_today=lambda q: at.astimezone(tz(q)).date(),
            received_at=at,
            raw_ref="",
        )
        if decision.bounced:
            reason = ingest.bounce_reason(entry.raw, parsed.detail)
            decision = replace(decision, reason=f"bounce: {reason}")
        folder = decision.period or utc_week(at)
        archive = f"mail/in/{folder}/{entry.id}.eml"
        return _with_ref(decision, archive), archive

    def _open(
        self,
        p: Partnership,
        people: dict[str, Person],
        at: datetime,
        token_period: str | None,
        views: dict[str, WeekView],
    ) -> bool:
        """Is the current period's check-in out and still without a report?"""
        label = self.current_label(p, people, at)
        if label is None or label == token_period:
            return False  # a reply to the current check-in needs no look-up
        view = self._view(views, label)
        week = view.week(p.id)
        return bool(week and week.checkin_at) and view.report_count(p.id) == 0

    def _side_effects(
        self, d: ingest.Decision, mid: str, entry: SpoolEntry, now: datetime, out: TickReport
    ) -> list[Prepared]:
        """Commands, consent, notes, questions: what a message asks us to do and tell."""
        if d.action == ingest.INBOUND or d.partnership_id is None and d.action != ingest.AMBIGUOUS:
            return []
        if d.action == ingest.REPORT and not (d.commands or d.problems):
            return []  # a plain report (the common case): nothing to do or tell
        core = self.store.core()
        people = self.store.people_map()
        at = entry.received_at
        period = utc_week(at)
        if d.action == ingest.AMBIGUOUS:
            mine = [p for p in core.partnerships() if p.member == d.sender and p.status != ENDED]
            if not mine:
                return []
            p = mine[0]
            skills = ", ".join(sorted(q.skill for q in mine))
            return [
                self.receipt(
                    p,
                    people,
                    key=f"receipt:{_hash(mid)}",
                    to=people[p.member],
                    period=period,
                    at=at,
                    reply=self.plain_address,
                    reply_to=self.plain_address,
                    question=f"Which partnership is this for? Reply with a line "
                    f'"skill: SKILL" (yours: {skills}).',
                )
            ]
        pid = d.partnership_id
        assert pid is not None
        p = core.partnership(pid)
        if p is None:
            return []
        member, partner = people[p.member], people[p.partner]
        if d.action == ingest.NOTE:
            cur = self.current_label(p, people, at)
            reply = self.address(TOKEN_CHECKIN, p.id, cur) if cur else self.plain_address
            ctx = self.base(p, people, cur or period, reply, member.timezone, at)
            ctx.update(note=d.note, received_at=digest.local_time(at, member.timezone))
            return [
                self.prepare(
                    key=f"note:{_hash(mid)}",
                    name="partner_note",
                    period=period,
                    to=member,
                    ctx=ctx,
                    now=at,
                    reply_to=reply,
                    pid=p.id,
                    from_name=f"{partner.name} via mailflow",
                )
            ]
        if d.action == ingest.CONSENT:
            return self._consent(p, d, mid, people, at, period, out)
        if d.action == ingest.REPORT and (d.commands or d.problems):
            return self._commands(p, d, mid, people, at, period, out)
        return []

    def _consent(
        self,
        p: Partnership,
        d: ingest.Decision,
        mid: str,
        people: dict[str, Person],
        at: datetime,
        period: str,
        out: TickReport,
    ) -> list[Prepared]:
        partner = people[p.partner]
        reply = self.address(AGREE, p.id, period)

        def to_partner(
            reply_to: str | None, done: Sequence[str] = (), question: str = ""
        ) -> Prepared:
            return self.receipt(
                p,
                people,
                key=f"receipt:{_hash(mid)}",
                to=partner,
                period=period,
                at=at,
                reply=reply,
                reply_to=reply_to,
                done=done,
                question=question,
                role="partner",
            )

        items: list[Prepared] = []
        if p.consent != CONSENT_PENDING:
            # Answered already: a second answer changes nothing, but she must know that.
            when = p.consent_at.date().isoformat() if p.consent_at else "earlier"
            admin = self.config.service.admin_address or "the program admin"
            out.add(f"partnership {p.id}: consent answer ignored, already {p.consent}")
            question = (
                f"You already {p.consent} on {when}; that answer stands. To change it, "
                f"please write to {admin}."
            )
            return [to_partner(None, question=question)]
        if d.consent is None:
            question = (
                "We could not tell whether that was a yes or a no. Please "
                'reply "yes" to accept or "no" to decline.'
            )
            return [to_partner(reply, question=question)]
        accepted = d.consent == cmds.ACCEPT
        with self.store.core_tx() as core:
            current = core.partnership(p.id)
            if current is not None and current.consent == CONSENT_PENDING:
                core.put_partnership(pships.set_consent(current, accepted, at, d.note))
        out.add(f"partnership {p.id}: partner {d.consent}")
        member = people[p.member]
        first = first_checkin(p, self.tz_of(member), self.settings, at)
        first_text = digest.local_time(first, member.timezone)
        if accepted:
            done = f"You accepted. The first check-in for {member.name} goes out {first_text}."
            told = f"{partner.name} accepted. Your first check-in comes {first_text}."
        else:
            done = "You declined. We have told the program admin."
            told = f"{partner.name} declined; the program admin will be in touch."
            items.extend(self._consent_notice(p, people, "declined", d.note, at))
        # The member hears it too: her check-ins wait for exactly this answer.
        items.append(
            self.receipt(
                p,
                people,
                key=f"consent_told:{p.id}",
                to=member,
                period=period,
                at=at,
                reply=self.plain_address,
                reply_to=self.plain_address,
                done=[told],
            )
        )
        items.append(to_partner(reply, done=[done]))
        return items

    def _consent_notice(
        self, p: Partnership, people: dict[str, Person], state: str, text: str, at: datetime
    ) -> list[Prepared]:
        admin = self.config.service.admin_address
        if not admin:
            return []
        member, partner = people[p.member], people[p.partner]
        ctx = {
            "service": self.service_info,
            "partnership": {"id": p.id, "skill": p.skill},
            "member": {"name": member.name, "email": member.email},
            "partner": {"name": partner.name, "email": partner.email},
            "state": state,
            "days": self.config.schedule.consent_days,
            "text": text,
        }
        return [
            self.prepare(
                key=f"consent_notice:{p.id}:{state}",
                name="consent_notice",
                period=utc_week(at),
                to=admin,
                ctx=ctx,
                now=at,
                pid=p.id,
            )
        ]

    def _commands(
        self,
        p: Partnership,
        d: ingest.Decision,
        mid: str,
        people: dict[str, Person],
        at: datetime,
        period: str,
        out: TickReport,
    ) -> list[Prepared]:
        member = people[p.member]
        today = at.astimezone(ZoneInfo(member.timezone)).date()
        done: list[str] = []
        problems = list(d.problems)
        question = ""
        actions: list[tuple[str, str]] = []  # (action, until) told to the partner
        with self.store.core_tx() as core:
            current = core.partnership(p.id)
            assert current is not None
            for c in d.commands:
                try:
                    if c.kind == cmds.PAUSE_UNTIL and c.until is not None:
                        current = pships.pause(current, c.until, today)
                        done.append(f"Paused until {c.until}: no check-ins before then.")
                        actions.append(("paused", c.until.isoformat()))
                    elif c.kind == cmds.RESUME:
                        current = pships.resume(current)
                        done.append("Resumed: check-ins start again.")
                        actions.append(("resumed", ""))
                    elif c.kind == cmds.GOAL_DONE and c.goal is not None:
                        current = pships.goal_done(current, c.goal, today)
                        goal = next(g for g in current.goals if g.n == c.goal)
                        done.append(f"Goal {c.goal} marked achieved: {goal.text}")
                    elif c.kind == cmds.STOP:
                        requested = current.stop_requested_at
                        if (
                            current.stop_requested
                            and current.stop_requested != mid
                            and requested is not None
                            and at - requested <= timedelta(days=STOP_CONFIRM_DAYS)
                        ):
                            current = pships.end(current, at).with_changes(
                                end_reason="stopped by the member"
                            )
                            done.append("Stopped: this partnership has ended.")
                            actions.append(("stopped", ""))
                        else:
                            current = current.with_changes(stop_requested=mid, stop_requested_at=at)
                            question = (
                                f'To end this partnership, reply "stop" again within '
                                f"{STOP_CONFIRM_DAYS} days."
                            )
                except DomainError as exc:
                    problems.append(f'"{c.line}": {exc}')
            core.put_partnership(current)
        for line in done:
            out.add(f"partnership {p.id}: {line}")
        reply = self.address(TOKEN_CHECKIN, p.id, d.period or period)
        items = [
            self.receipt(
                current,
                people,
                key=f"receipt:{_hash(mid)}",
                to=member,
                period=period,
                at=at,
                reply=reply,
                reply_to=reply,
                ctx_period=d.period or period,
                done=done,
                problems=problems,
                question=question,
                report_stored=d.report is not None,
            )
        ]
        partner = people[p.partner]
        for action, until in actions:
            pctx = self.base(
                current,
                people,
                d.period or period,
                self.address(TOKEN_DIGEST, p.id, d.period or period),
                partner.timezone,
                at,
            )
            pctx.update(action=action, until=until)
            items.append(
                self.prepare(
                    key=f"pause_notice:{_hash(mid)}:{action}",
                    name="pause_notice",
                    period=period,
                    to=partner,
                    ctx=pctx,
                    now=at,
                    reply_to=pctx["reply_address"],
                    pid=p.id,
                )
            )
        return items

    def _bouncing(self) -> set[str]:
        return {p.email for p in self.store.core().people() if p.bouncing}

    def _clear_bouncing(self, addresses: set[str], out: TickReport) -> None:
        """Mail that arrived from an address proves it works again."""
        with self.store.core_tx() as core:
            for addr in sorted(addresses):
                person = core.person(addr)
                if person is not None and person.bouncing:
                    core.put_person(replace(person, bouncing=False, bounce_reason=""))
                    out.add(f"{addr} no longer bouncing (mail arrived from it)")

    def _mark_bouncing(
        self, bounced: list[tuple[str, str]], now: datetime, out: TickReport
    ) -> None:
        newly: list[tuple[str, str]] = []
        with self.store.core_tx() as core:
            for addr, reason in bounced:
                person = core.person(addr)
                if person is not None and not person.bouncing:
                    core.put_person(replace(person, bouncing=True, bounce_reason=reason[:200]))
                    newly.append((addr, reason))
        items = []
        for addr, reason in newly:
            out.add(f"{addr} marked bouncing")
            admin = self.config.service.admin_address
            if admin:
                period = utc_week(now)
                ctx = digest.bounce_context(self.service_info, addr, reason, period)
                items.append(
                    self.prepare(
                        key=f"bounce_notice:{addr}:{period}",
                        name="bounce_notice",
                        period=period,
                        to=admin,
                        ctx=ctx,
                        now=now,
                    )
                )
        self.commit(items, out)

    # -- the week's jobs --------------------------------------------------------------------

    def introduce(self, pid: int, now: datetime) -> TickReport:
        """Queue the introductions of one new partnership and deliver them."""
        out = TickReport()
        core = self.store.core()
        people = {p.email: p for p in core.people()}
        p = core.partnership(pid)
        if p is not None and p.introduced_at is None:
            self.commit(self._intro(p, people, now), out)
            with self.store.core_tx() as tx:
                current = tx.partnership(pid)
                if current is not None and current.introduced_at is None:
                    tx.put_partnership(current.with_changes(introduced_at=now))
        out.lines.extend(self.flush(now).lines)
        return out

    def _intro(self, p: Partnership, people: dict[str, Person], now: datetime) -> list[Prepared]:
        period = utc_week(now)
        items = []
        day = (p.checkin_day or self.settings.checkin_day).title()
        at = p.checkin_time or self.config.schedule.checkin_time
        first = first_checkin(p, self.tz_of(people[p.member]), self.settings, now)
        for role, who in (("member", people[p.member]), ("partner", people[p.partner])):
            reply = self.address(AGREE, p.id, period) if role == "partner" else self.plain_address
            ctx = self.base(p, people, period, reply, who.timezone, now)
            ctx.update(
                role=role,
                accepted=p.consent == CONSENT_ACCEPTED,
                checkin_day=day,
                checkin_time=at,
                first_checkin=digest.local_time(first, people[p.member].timezone),
            )
            items.append(
                self.prepare(
                    key=f"intro:{p.id}:{role}",
                    name="intro",
                    period=period,
                    to=who,
                    ctx=ctx,
                    now=now,
                    reply_to=reply,
                    pid=p.id,
                )
            )
        return items

    def run_jobs(self, now: datetime, on_commit: Callable[[], None] | None = None) -> TickReport:
        """Queue every message due at `now` (once each, ever).

        Records are committed in chunks; `on_commit` is called after each, so a sender can
        deliver one chunk while the next is rendered.
        """
        out = TickReport()
        with self._jobs_lock:
            core = self.store.core()
            people = {p.email: p for p in core.people()}
            plans: list[tuple[Partnership, list[Period | None]]] = []
            labels: set[str] = set()
            prepared: list[Prepared] = []
            updates: dict[int, dict[str, Any]] = {}
            for p in core.partnerships():
                if p.status == ENDED or p.member not in people or p.partner not in people:
                    continue
                try:
                    prepared.extend(self._life_cycle(p, people, now, updates))
                except Exception as exc:  # noqa: BLE001 - one bad partnership must not stop others
                    log.exception("life-cycle job failed for %s", p.id)
                    out.add(f"error: partnership {p.id}: {exc}")
                tz = self.tz_of(people[p.member])
                cur = current_period(p, tz, self.settings, now)
                prev = previous_period(p, tz, self.settings, cur) if cur else None
                nxt = upcoming_period(p, tz, self.settings, now, cur)
                plans.append((p, [cur, prev, nxt]))
                labels.update(x.label for x in (cur, prev, nxt) if x)
            views = {label: self.store.week(label) for label in labels}
            states = {label: _states(view.weeks(), view.reports()) for label, view in views.items()}
            for p, (cur, prev, nxt) in plans:
                tz = self.tz_of(people[p.member])
                current = _state_of(cur, states, p.id)
                jobs = due_jobs(
                    p,
                    tz,
                    self.settings,
                    now,
                    current,
                    _state_of(prev, states, p.id),
                    _state_of(nxt, states, p.id),
                )
                reason = pships.closing_reason(p, now.astimezone(tz).date())
                if reason is not None and _may_close(reason, current, prev, nxt, states, p.id):
                    # Any digest still owed goes out first, and a last week still open runs
                    # to its deadline; the summary follows at a later tick.
                    try:
                        prepared.extend(self._closing(p, people, now, reason, updates))
                    except Exception as exc:  # noqa: BLE001
                        log.exception("closing failed for %s", p.id)
                        out.add(f"error: closing partnership {p.id}: {exc}")
                    continue
                for job in jobs:
                    period = next(x for x in (cur, prev, nxt) if x and x.label == job.period)
                    try:
                        prepared.append(self._prepare_job(job, p, people, period, views, now))
                    except Exception as exc:  # noqa: BLE001 - one bad job must not stop others
                        log.exception("job %s failed", job)
                        out.add(f"error: {job.kind} for partnership {p.id} {job.period}: {exc}")
                if len(prepared) >= COMMIT_CHUNK:
                    self.commit(prepared, out)
                    prepared = []
                    if on_commit is not None:
                        on_commit()
            self.commit(prepared, out)
            if on_commit is not None:
                on_commit()
            if updates:
                with self.store.core_tx() as tx:
                    for pid, changes in updates.items():
                        current_p = tx.partnership(pid)
                        if current_p is not None and current_p.status != ENDED:
                            tx.put_partnership(current_p.with_changes(**changes))
                            if changes.get("status") == ENDED:
                                out.add(f"partnership {pid} {changes['end_reason']}")
        return out

    def _life_cycle(
        self,
        p: Partnership,
        people: dict[str, Person],
        now: datetime,
        updates: dict[int, dict[str, Any]],
    ) -> list[Prepared]:
        """Introductions, a consent nobody gave, and a dated pause that has lapsed."""
        items: list[Prepared] = []
        local_today = now.astimezone(self.tz_of(people[p.member])).date()
        if p.status == PAUSED and p.paused_until is not None and local_today >= p.paused_until:
            updates.setdefault(p.id, {}).update(status=ACTIVE, paused_until=None)
        if p.introduced_at is None:
            items.extend(self._intro(p, people, now))
            updates.setdefault(p.id, {})["introduced_at"] = now
        since = p.introduced_at or p.created_at
        if (
            p.consent == CONSENT_PENDING
            and p.consent_overdue_at is None
            and now >= since + timedelta(days=self.config.schedule.consent_days)
        ):
            items.extend(self._consent_notice(p, people, "no_answer", "", now))
            updates.setdefault(p.id, {})["consent_overdue_at"] = now
        return items

    def _closing(
        self,
        p: Partnership,
        people: dict[str, Person],
        now: datetime,
        reason: str,
        updates: dict[int, dict[str, Any]],
    ) -> list[Prepared]:
        """Both people get a closing summary; the partnership ends (completed)."""
        items: list[Prepared] = []
        tz = self.tz_of(people[p.member])
        cur = current_period(p, tz, self.settings, now)
        label = cur.label if cur else utc_week(now)
        if p.consent == CONSENT_ACCEPTED:
            history = self.history(p, people, now)
            asked = sum(1 for h in history if h["state"] != "paused")
            reported = sum(1 for h in history if h["state"] in ("reported", "setback"))
            setbacks = sum(1 for h in history if h["state"] == "setback")
            for role, who in (("member", people[p.member]), ("partner", people[p.partner])):
                ctx = self.base(p, people, label, self.plain_address, who.timezone, now)
                ctx.update(
                    role=role,
                    reason=reason,
                    weeks_asked=asked,
                    weeks_reported=reported,
                    setbacks=setbacks,
                    goals_achieved=sum(1 for g in p.goals if g.done_on),
                    goals_total=len(p.goals),
                )
                items.append(
                    self.prepare(
                        key=f"summary:{p.id}:{role}",
                        name="summary",
                        period=utc_week(now),
                        to=who,
                        ctx=ctx,
                        now=now,
                        pid=p.id,
                    )
                )
        updates.setdefault(p.id, {}).update(
            status=ENDED, ended_at=now, paused_until=None, end_reason=f"completed: {reason}"
        )
        return items

    def _prepare_job(
        self,
        job: Job,
        p: Partnership,
        people: dict[str, Person],
        period: Period,
        views: dict[str, WeekView],
        now: datetime,
    ) -> Prepared:
        member, partner = people[p.member], people[p.partner]
        view = views[period.label]
        token_c = make_token(self.secret, TOKEN_CHECKIN, p.id, period.label)
        token_d = make_token(self.secret, TOKEN_DIGEST, p.id, period.label)
        member_reply = reply_address(token_c, self.domain)
        partner_reply = reply_address(token_d, self.domain)
        key = f"{job.kind}:{p.id}:{period.label}"
        week_now = view.week(p.id)
        sent_at = week_now.checkin_at if week_now and week_now.checkin_at else now
        pid = p.id

        def mark_field(name: str, *, only_without_reports: bool) -> Callable[[WeekView], bool]:
            def mark(week: WeekView) -> bool:
                current = week.week(pid) or Week(pid, period.label)
                if getattr(current, name) is not None:
                    return False
                if only_without_reports and week.report_count(pid):
                    return False
                week.put_week(replace(current, **{name: now}))
                return True

            return mark

        if job.kind in (CHECKIN, REMINDER):
            # Both go to the member with her reply address; an early report turns the
            # check-in into a short "got it" note, and the reminder counts from the check-in.
            checkin = job.kind == CHECKIN
            reports = view.reports(p.id) if checkin else []
            ctx = digest.checkin_context(
                self.base(p, people, period.label, member_reply, member.timezone, now),
                period.checkin_at if checkin else sent_at,
                member.timezone,
            )
            if reports:
                ctx["reports"] = digest.report_items(reports, member.timezone)
            return self.prepare(
                key=key,
                name="checkin_ack" if reports else job.kind,
                period=period.label,
                to=member,
                ctx=ctx,
                now=now,
                reply_to=member_reply,
                pid=p.id,
                message_id=f"<{job.kind}.{token_c}@{self.domain}>",
                mark=mark_field(
                    "checkin_at" if checkin else "reminder_at", only_without_reports=not checkin
                ),
            )
        if job.kind == NO_REPORT:
            base = self.base(p, people, period.label, partner_reply, partner.timezone, now)
            for entry in base["history"]:
                if entry["period"] == period.label:
                    entry["state"] = "missed"  # this mail is what makes the week missed
            ctx = digest.no_report_context(
                base,
                sent_at,
                partner.timezone,
                self.config.schedule.deadline_after_hours,
            )
            return self.prepare(
                key=key,
                name="no_report",
                period=period.label,
                to=partner,
                ctx=ctx,
                now=now,
                reply_to=partner_reply,
                pid=p.id,
                message_id=f"<no_report.{token_d}@{self.domain}>",
                mark=mark_field("no_report_at", only_without_reports=True),
            )
        assert job.kind == DIGEST
        reports = view.reports(p.id)
        updated = bool(week_now and week_now.digested_reports)
        count = len(reports)
        ctx = digest.digest_context(
            self.base(p, people, period.label, partner_reply, partner.timezone, now),
            reports,
            partner.timezone,
            updated,
        )

        def mark_digest(week: WeekView) -> bool:
            current = week.week(pid) or Week(pid, period.label)
            if current.digested_reports >= count:
                return False
            week.put_week(replace(current, digest_at=now, digested_reports=count))
            return True

        return self.prepare(
            key=f"digest:{p.id}:{period.label}:{count}",
            name="digest",
            period=period.label,
            to=partner,
            ctx=ctx,
            now=now,
            reply_to=partner_reply,
            pid=p.id,
            message_id=f"<digest{count}.{token_d}@{self.domain}>",
            mark=mark_digest,
        )

    def run_and_deliver(self, now: datetime) -> TickReport:
        """Queue what is due and deliver it, sending each committed chunk while the next
        one renders (the relay's round trips overlap our own work)."""
        kick = threading.Event()
        done = threading.Event()
        results: list[Any] = []

        def sender() -> None:
            while True:
                kick.wait()
                kick.clear()
                results.append(self.outbox.flush(now))
                if done.is_set() and not kick.is_set():
                    return

        thread = threading.Thread(target=sender, name="mailflow-send", daemon=True)
        thread.start()
        try:
            out = self.run_jobs(now, on_commit=kick.set)
        finally:
            done.set()
            kick.set()
            thread.join()
        total = _sum_results(results)
        for line in _flush_lines(total):
            out.add(line)
        return out

    def tick(self, now: datetime) -> TickReport:
        """Everything due at `now`, once: ingest spooled mail, queue jobs, deliver."""
        out = TickReport()
        for part in (self.ingest(now), self.run_and_deliver(now)):
            out.lines.extend(part.lines)
        return out

    # -- status -----------------------------------------------------------------------------

    def status(self, now: datetime) -> dict[str, Any]:
        core = self.store.core()
        people = {p.email: p for p in core.people()}
        rows = []
        totals = {
            "partnerships": 0,
            "sent": 0,
            "replied": 0,
            "setbacks": 0,
            "missing": 0,
            "waiting": 0,
            "paused": 0,
        }
        consent: dict[str, list[int]] = {"pending": [], "declined": [], "overdue": []}
        views: dict[str, WeekView] = {}
        for p in core.partnerships():
            if p.status == ENDED or p.member not in people:
                continue
            totals["partnerships"] += 1
            if p.consent != CONSENT_ACCEPTED:
                consent["declined" if p.consent == "declined" else "pending"].append(p.id)
                if p.consent == CONSENT_PENDING and p.consent_overdue_at is not None:
                    consent["overdue"].append(p.id)
            tz = self.tz_of(people[p.member])
            cur = current_period(p, tz, self.settings, now)
            row: dict[str, Any] = {
                "id": p.id,
                "member": p.member,
                "partner": p.partner,
                "status": p.status,
                "consent": p.consent,
                "period": cur.label if cur else None,
            }
            if p.status == PAUSED:
                totals["paused"] += 1
            if cur is None:
                row["state"] = "not started"
                rows.append(row)
                continue
            view = views.get(cur.label) or views.setdefault(cur.label, self.store.week(cur.label))
            week = view.week(p.id)
            reports = view.reports(p.id)
            sent = bool(week and week.checkin_at)
            row.update(
                checkin_sent=sent, reports=len(reports), setback=any(r.setback for r in reports)
            )
            totals["sent"] += sent
            if reports:
                totals["replied"] += 1
                totals["setbacks"] += any(r.setback for r in reports)
                row["state"] = "setback" if row["setback"] else "reported"
            elif week and week.no_report_at:
                totals["missing"] += 1
                row["state"] = "missing"
            elif sent:
                totals["waiting"] += 1
                row["state"] = "waiting"
            else:
                row["state"] = "not sent yet"
            rows.append(row)
        quarantined = self.spool.quarantined()
        pending = self.outbox.pending()
        failed = self.outbox.failed()
        return {
            "now": now.isoformat(),
            **totals,
            "consent_pending": consent["pending"],
            "consent_declined": consent["declined"],
            "consent_overdue": consent["overdue"],
            "bouncing": sorted(p.email for p in people.values() if p.bouncing),
            "quarantined": len(quarantined),
            "quarantine": [{"id": i, "reason": r} for i, r in quarantined[-20:]],
            "spooled": self.spool.count_pending(),
            "outgoing_queued": len(pending),
            "outgoing_failed": len(failed),
            "failed": [{"key": o.key, "to": o.to, "error": o.error} for o in failed],
            "partnerships_detail": rows,
        }

    # -- serve --------------------------------------------------------------------------------

    def serve(
        self,
        clock: Clock,
        stop: threading.Event,
        ready: Callable[[], None] | None = None,
    ) -> None:
        """Listener + ingest process (or thread) + scheduler loop until `stop` is set."""
        from mailflow.inbox import Listener, ListenerOptions

        problems = self.templates.check()
        if problems:
            raise ServiceError("templates have errors; fix them first: " + "; ".join(problems))
        # Only `serve` clears half-written files: a CLI command running next to it must not
        # delete what the running listener or sender is writing at that moment.
        self.spool.recover()
        self.outbox.init()
        wake = threading.Event()

        def ingest_loop() -> None:
            _ingest_loop(self, clock, wake, stop, parent=None)

        # Parsing is the costly part of taking a reply; with `ingest_process` it runs in a
        # process of its own, so the listener and the parser use both cores (the spool and
        # the store already work across processes). Otherwise in a thread. The process gets
        # the same clock, which must therefore be a value that pickles (see `clock`).
        worker: Any = None
        if self.config.listener.ingest_process:
            try:
                pickle.dumps(clock)
            except (pickle.PicklingError, AttributeError, TypeError):
                raise ServiceError(
                    "listener.ingest_process needs a clock that can be sent to another process"
                ) from None
            worker = _IngestWorker(self.config, clock)
            worker.start()
            listener_wake: Callable[[], None] = worker.wake.set
        else:
            worker_thread = threading.Thread(
                target=ingest_loop, name="mailflow-ingest", daemon=True
            )
            worker_thread.start()
            listener_wake = wake.set
        lc = self.config.listener
        listener = Listener(
            ListenerOptions(
                host=lc.host,
                port=lc.port,
                max_message_bytes=lc.max_message_bytes,
                timeout_seconds=lc.timeout_seconds,
                max_connections=lc.max_connections,
                hostname=self.domain,
                tls_cert=lc.tls_cert,
                tls_key=lc.tls_key,
                require_starttls=lc.require_starttls,
                auth_users=lc.auth_users(self.config.secrets),
            ),
            self.spool,
            self.rcpt_policy,
            lambda _id: listener_wake(),
            clock,
        )
        try:
            listener.start()
        except BaseException:
            if worker is not None:
                worker.stop()
            raise
        log.info("listening on %s:%d for *@%s", lc.host, lc.port, self.domain)
        scheduler = schedule_lib.Scheduler()

        def scheduled_tick() -> None:
            try:
                problems = self.templates.refresh()
                for problem in problems:
                    log.error("template not used (last good version stays): %s", problem)
                self.run_and_deliver(clock())
            except Exception:  # noqa: BLE001 - a failed tick is retried at the next one
                log.exception("tick failed; will retry")

        scheduler.every(self.config.schedule.tick_seconds).seconds.do(scheduled_tick)
        wake.set()  # process anything a previous run left in the spool
        scheduled_tick()  # catch up at once on start
        if ready is not None:
            ready()
        try:
            while not stop.is_set():
                scheduler.run_pending()
                if worker is not None and not worker.alive():
                    log.error(
                        "ingest process stopped (exit %s); starting a new one", worker.exitcode()
                    )
                    worker.restart()
                stop.wait(timeout=min(1.0, self.config.schedule.tick_seconds))
        finally:
            log.info("stopping")
            listener.stop()
            wake.set()
            if worker is not None:
                worker.stop()
            else:
                worker_thread.join(timeout=5)
            log.info("stopped")


def _ingest_loop(
    service: Service,
    clock: Clock,
    wake: Any,
    stop: Any,
    parent: int | None,
) -> None:
    """Wait for spooled mail and ingest it in batches until `stop` (or the parent is gone)."""
    while not stop.is_set():
        if wake.wait(timeout=1.0):
            # Group commit: let the messages arriving meanwhile join this batch, so the
            # period file is rewritten once per batch, not once per message.
            stop.wait(INGEST_GATHER_SECONDS)
        wake.clear()
        if stop.is_set() or (parent is not None and os.getppid() != parent):
            break  # a SIGKILLed `serve` must not leave an orphan ingesting behind it
        try:
            service.ingest(clock())
        except Exception:  # noqa: BLE001 - keep serving; the spool keeps the mail
            log.exception("ingest failed; will retry")


def _ingest_process(config: Config, clock: Clock, wake: Any, stop: Any, parent: int) -> None:
    """Entry point of the ingest process (spawned: a fresh interpreter, no inherited locks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    service = Service(config)
    wake.set()  # whatever is in the spool already
    _ingest_loop(service, clock, wake, stop, parent)


class _IngestWorker:
    """The ingest process of `serve`, restarted if it dies."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.config = config
        self.clock = clock
        self.wake = self.context.Event()
        self.stop_event = self.context.Event()
        self.process: Any = None

    def start(self) -> None:
        self.process = self.context.Process(
            target=_ingest_process,
            args=(self.config, self.clock, self.wake, self.stop_event, os.getpid()),
            name="mailflow-ingest",
            daemon=True,
        )
        self.process.start()

    def alive(self) -> bool:
        return bool(self.process is not None and self.process.is_alive())

    def exitcode(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=2)


class ServiceError(Exception):
    """A reason the service cannot start; one line."""


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _with_ref(decision: ingest.Decision, ref: str) -> ingest.Decision:
    if decision.report is not None:
        decision = replace(decision, report=replace(decision.report, raw_ref=ref))
    if decision.inbound is not None:
        decision = replace(decision, inbound=replace(decision.inbound, raw_ref=ref))
    return decision


def _decision_mid(decision: ingest.Decision) -> str:
    if decision.report is not None:
        return decision.report.message_id
    if decision.inbound is not None:
        return decision.inbound.message_id
    return ""


_PROVEN = (ingest.REPORT, ingest.CONSENT, ingest.NOTE)


def _may_close(
    reason: str,
    current: tuple[Period, PeriodState] | None,
    prev: Period | None,
    nxt: Period | None,
    states: dict[str, dict[int, PeriodState]],
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


def _state_of(
    period: Period | None, states: dict[str, dict[int, PeriodState]], pid: int
) -> tuple[Period, PeriodState] | None:
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


def _sum_results(results: list[Any]) -> Any:
    from mailflow.outbox import FlushResult

    total = FlushResult()
    for r in results:
        total.sent += r.sent
        total.failed += r.failed
        total.deferred += r.deferred
        total.failures.extend(r.failures)
    return total


def _flush_lines(result: Any) -> list[str]:
    lines = []
    if getattr(result, "sent", 0):
        lines.append(f"sent {result.sent} message(s)")
    if getattr(result, "deferred", 0):
        lines.append(f"deferred {result.deferred} message(s) (relay unavailable; will retry)")
    for key, error in getattr(result, "failures", []) or []:
        lines.append(f"failed {key}: {error}")
    return lines
