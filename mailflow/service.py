"""Wiring: the one place that builds the parts and runs the week (tick, ingest, serve, status).

Every job reads the clock only through the `now` it is given; `serve` and the CLI are the
edges that pass the real time. The scheduler's memory is the store: a tick computes what is
due from `Week` records and `now`, renders the mail, writes it to disk, then records the
job as done together with the queued message in one transaction, and finally lets the
outbox deliver. Inbound mail is accepted into the spool by `inbox` and turned into records
here, in batches (one database write per period per batch).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import schedule as schedule_lib
from filelock import FileLock

from mailflow import digest, ingest
from mailflow.compose import Templates, build_message
from mailflow.config import Config
from mailflow.models import Outgoing, Partnership, Person, Report, Week
from mailflow.outbox import Outbox
from mailflow.parse import parse_message
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
    period_label,
    previous_period,
)
from mailflow.spool import Spool, SpoolEntry
from mailflow.store import Store, fsync_dir
from mailflow.tokens import CHECKIN as TOKEN_CHECKIN
from mailflow.tokens import DIGEST as TOKEN_DIGEST
from mailflow.tokens import make_token, parse_token, reply_address, token_of_address

log = logging.getLogger("mailflow")

INGEST_BATCH = 500
BOUNCE_LOCAL = "bounces"


def load_secret(env_name: str, data_dir: Path) -> bytes:
    """The token key: from the environment when set, else a key made once in data_dir."""
    value = os.environ.get(env_name)
    if value:
        return value.encode("utf-8")
    path = data_dir / "secret.key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    tmp = path.with_name(".secret.key.tmp")
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


class Service:
    """Everything `serve`, `tick`, `status` and `demo` need, built from one Config."""

    def __init__(self, config: Config, templates: Templates | None = None) -> None:
        self.config = config
        self.data_dir = config.service.data_dir
        self.domain = config.service.domain
        self.store = Store(self.data_dir)
        self.store.init()
        self.templates = templates or Templates(config.templates.dir)
        self.settings = Settings.from_config(config.schedule)
        self.secret = load_secret(config.service.secret_env, self.data_dir)
        self.bounce_address = f"{BOUNCE_LOCAL}@{self.domain}"
        password = os.environ.get(config.relay.password_env) if config.relay.host else None
        self.outbox = Outbox(self.store, config.relay, password, self.bounce_address, self.data_dir)
        self.spool = Spool(self.data_dir / "spool")
        self.spool.recover()
        self._ingest_lock = threading.Lock()
        self._jobs_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------

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

    # -- inbound ------------------------------------------------------------------------------

    def rcpt_policy(self, address: str) -> str | None:
        """RCPT: only our signed reply addresses and the bounce address; never a relay."""
        addr = address.strip().strip("<>")
        local, _, host = addr.rpartition("@")
        if host.lower() != self.domain.lower():
            return f"550 5.7.1 <{addr}>: relaying denied"
        if local.lower() == BOUNCE_LOCAL:
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
            while True:
                entries = self.spool.pending(limit)
                if not entries:
                    break
                self._ingest_batch(entries, now, report)
                if len(entries) < limit:
                    break
        return report

    def _ingest_batch(self, entries: list[SpoolEntry], now: datetime, out: TickReport) -> None:
        core = self.store.core()
        people = {p.email: p for p in core.people()}
        decisions: list[tuple[SpoolEntry, ingest.Decision, str]] = []
        for entry in entries:
            try:
                decision, archive = self._decide(entry, core, people)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the rest
                log.exception("ingest failed for %s", entry.id)
                decision = ingest.Decision(
                    ingest.QUARANTINE, f"processing error: {type(exc).__name__}: {exc}"
                )
                archive = ""
            decisions.append((entry, decision, archive))

        by_period: dict[str, list[tuple[SpoolEntry, ingest.Decision, str]]] = defaultdict(list)
        for item in decisions:
            _, decision, _ = item
            if decision.action != ingest.QUARANTINE:
                by_period[decision.period or period_label(now.date())].append(item)
        stored: set[str] = set()
        for period, items in by_period.items():
            with self.store.week_tx(period) as week:
                for entry, decision, _ in items:
                    if decision.report is not None:
                        new = week.add_report(decision.report)
                    else:
                        assert decision.inbound is not None
                        new = week.add_inbound(decision.inbound)
                    if new:
                        stored.add(entry.id)
        archived_dirs: set[Path] = set()
        bounced: list[tuple[str, str]] = []
        for entry, decision, archive in decisions:
            if decision.action == ingest.QUARANTINE:
                self.spool.quarantine(entry.id, decision.reason)
                out.add(f"quarantined {entry.id}: {decision.reason}")
                continue
            dest = self.data_dir / archive
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry.path, dest)
            archived_dirs.add(dest.parent)
            if entry.id not in stored:
                out.add(f"duplicate {entry.id}: already stored, ignored")
                continue
            if decision.report is not None:
                r = decision.report
                out.add(
                    f"report for partnership {r.partnership_id} {r.period}"
                    f"{' (setback)' if r.setback else ''} from {r.sender}"
                )
            else:
                out.add(f"recorded {decision.reason} ({entry.id})")
                for addr in decision.bounced:
                    bounced.append((addr, decision.reason))
        for folder in archived_dirs | {self.spool.root / "new"}:
            if folder.exists():
                fsync_dir(folder)
        if bounced:
            self._mark_bouncing(bounced, now, out)

    def _decide(
        self, entry: SpoolEntry, core: Any, people: dict[str, Person]
    ) -> tuple[ingest.Decision, str]:
        parsed = parse_message(entry.raw)
        message_id = ingest.message_id_of(parsed, entry.raw)
        token = None
        to_bounce = False
        for rcpt in entry.rcpt_tos:
            if rcpt.lower().startswith(BOUNCE_LOCAL + "@"):
                to_bounce = True
            raw_token = token_of_address(rcpt, self.domain)
            if raw_token and token is None:
                token = parse_token(self.secret, raw_token)
        if token is None and not to_bounce:
            ref = ingest.token_from_ids(
                [i for i in (parsed.in_reply_to, *parsed.references) if i], self.domain
            )
            token = parse_token(self.secret, ref) if ref else None
        p = core.partnership(token.partnership_id) if token else None
        decision = ingest.decide(
            parsed=parsed,
            message_id=message_id,
            token=token,
            to_bounce_address=to_bounce,
            envelope_from=entry.mail_from,
            partnership=p,
            member=people.get(p.member) if p else None,
            partner=people.get(p.partner) if p else None,
            current_period=lambda q: self.current_label(q, people, entry.received_at),
            received_at=entry.received_at,
            raw_ref="",
        )
        folder = decision.period or period_label(entry.received_at.date())
        archive = f"mail/in/{folder}/{entry.id}.eml"
        return _with_ref(decision, archive), archive

    def _mark_bouncing(
        self, bounced: list[tuple[str, str]], now: datetime, out: TickReport
    ) -> None:
        newly: list[tuple[str, str]] = []
        with self.store.core_tx() as core:
            for addr, reason in bounced:
                person = core.person(addr)
                if person is not None and not person.bouncing:
                    core.put_person(
                        person.__class__(
                            **{**person.__dict__, "bouncing": True, "bounce_reason": reason[:200]}
                        )
                    )
                    newly.append((addr, reason))
        for addr, reason in newly:
            out.add(f"{addr} marked bouncing")
            self._notify_admin_bounce(addr, reason, now, out)

    def _notify_admin_bounce(self, addr: str, reason: str, now: datetime, out: TickReport) -> None:
        admin = self.config.service.admin_address
        if not admin:
            return
        period = period_label(now.date())
        key = f"bounce_notice:{addr}:{period}"
        ctx = digest.bounce_context(self.service_info, addr, reason, period)
        self._queue(key, "bounce_notice", period, admin, "admin", ctx, now, None, None, out)

    # -- outbound -----------------------------------------------------------------------------

    def _queue(
        self,
        key: str,
        name: str,
        period: str,
        to: str,
        to_name: str,
        ctx: dict[str, Any],
        now: datetime,
        reply_to: str | None,
        pid: int | None,
        out: TickReport,
        message_id: str | None = None,
        mark: Callable[[Any], bool] | None = None,
    ) -> bool:
        rendered = self.templates.render(name, ctx)
        mid = message_id or f"<{name}.{_key_slug(key)}@{self.domain}>"
        msg = build_message(
            rendered,
            from_address=self.config.service.sender,
            from_name="mailflow",
            to_address=to,
            to_name=to_name,
            message_id=mid,
            date=now,
            reply_to=reply_to,
        )
        path = self.outbox.write_message(key, period, msg)
        with self.store.week_tx(period) as week:
            if week.outgoing(key) is not None or (mark is not None and not mark(week)):
                return False
            week.put_outgoing(
                Outgoing(
                    key=key,
                    kind=name,
                    to=to,
                    message_id=mid,
                    path=path,
                    created_at=now,
                    partnership_id=pid,
                    period=period,
                )
            )
        out.add(f"queued {name} to {to} ({key})")
        return True

    def run_jobs(self, now: datetime) -> TickReport:
        """Queue every check-in, reminder and digest due at `now` (once each, ever)."""
        out = TickReport()
        with self._jobs_lock:
            core = self.store.core()
            people = {p.email: p for p in core.people()}
            plans: list[tuple[Partnership, Period | None, Period | None]] = []
            labels: set[str] = set()
            for p in core.partnerships():
                if p.status == "ended" or p.member not in people:
                    continue
                tz = self.tz_of(people[p.member])
                cur = current_period(p, tz, self.settings, now)
                prev = previous_period(p, tz, self.settings, cur) if cur else None
                plans.append((p, cur, prev))
                labels.update(x.label for x in (cur, prev) if x)
            views = {label: self.store.week(label) for label in labels}
            states = {label: _states(view.weeks(), view.reports()) for label, view in views.items()}
            for p, cur, prev in plans:
                tz = self.tz_of(people[p.member])

                current = _state_of(cur, states, p.id)
                for job in due_jobs(
                    p, tz, self.settings, now, current, _state_of(prev, states, p.id)
                ):
                    period = cur if cur and job.period == cur.label else prev
                    assert period is not None
                    try:
                        self._run_job(job, p, people, period, now, out)
                    except Exception as exc:  # noqa: BLE001 - one bad job must not stop others
                        log.exception("job %s failed", job)
                        out.add(f"error: {job.kind} for partnership {p.id} {job.period}: {exc}")
        return out

    def _run_job(
        self,
        job: Job,
        p: Partnership,
        people: dict[str, Person],
        period: Period,
        now: datetime,
        out: TickReport,
    ) -> None:
        member, partner = people[p.member], people.get(p.partner)
        if partner is None:
            out.add(f"skipped {job.kind} for partnership {p.id}: partner missing")
            return
        mtz, ptz = member.timezone, partner.timezone
        token_c = make_token(self.secret, TOKEN_CHECKIN, p.id, period.label)
        token_d = make_token(self.secret, TOKEN_DIGEST, p.id, period.label)
        member_reply = reply_address(token_c, self.domain)
        partner_reply = reply_address(token_d, self.domain)
        key = f"{job.kind}:{p.id}:{period.label}"

        def base(reply: str, tz: str) -> dict[str, Any]:
            return digest.base_context(
                p=p,
                member=member,
                partner=partner,
                period=period.label,
                service=self.service_info,
                reply_address=reply,
                today=now.astimezone(ZoneInfo(tz)).date(),
            )

        if job.kind in (CHECKIN, REMINDER):
            week_now = self.store.week(period.label).week(p.id)
            sent_at = week_now.checkin_at if week_now and week_now.checkin_at else now
            ctx = digest.checkin_context(
                base(member_reply, mtz), sent_at if job.kind == REMINDER else period.checkin_at, mtz
            )
            field_name = "checkin_at" if job.kind == CHECKIN else "reminder_at"

            def mark(week: Any, field_name: str = field_name) -> bool:
                current = week.week(p.id) or Week(p.id, period.label)
                if getattr(current, field_name) is not None:
                    return False
                if field_name == "reminder_at" and week.reports(p.id):
                    return False
                week.put_week(_replace(current, **{field_name: now}))
                return True

            self._queue(
                key,
                job.kind,
                period.label,
                member.email,
                member.name,
                ctx,
                now,
                member_reply,
                p.id,
                out,
                message_id=f"<{job.kind}.{token_c}@{self.domain}>",
                mark=mark,
            )
        elif job.kind == NO_REPORT:
            week_now = self.store.week(period.label).week(p.id)
            sent_at = week_now.checkin_at if week_now and week_now.checkin_at else now
            ctx = digest.no_report_context(
                base(partner_reply, ptz), sent_at, ptz, self.config.schedule.deadline_after_hours
            )

            def mark_nr(week: Any) -> bool:
                current = week.week(p.id) or Week(p.id, period.label)
                if current.no_report_at is not None or week.reports(p.id):
                    return False
                week.put_week(_replace(current, no_report_at=now))
                return True

            self._queue(
                key,
                "no_report",
                period.label,
                partner.email,
                partner.name,
                ctx,
                now,
                None,
                p.id,
                out,
                mark=mark_nr,
            )
        elif job.kind == DIGEST:
            reports = self.store.week(period.label).reports(p.id)
            week_now = self.store.week(period.label).week(p.id)
            updated = bool(week_now and week_now.digested_reports)
            count = len(reports)
            key = f"digest:{p.id}:{period.label}:{count}"
            ctx = digest.digest_context(base(partner_reply, ptz), reports, ptz, updated)

            def mark_d(week: Any) -> bool:
                current = week.week(p.id) or Week(p.id, period.label)
                if current.digested_reports >= count:
                    return False
                week.put_week(_replace(current, digest_at=now, digested_reports=count))
                return True

            self._queue(
                key,
                "digest",
                period.label,
                partner.email,
                partner.name,
                ctx,
                now,
                partner_reply,
                p.id,
                out,
                message_id=f"<digest{count}.{token_d}@{self.domain}>",
                mark=mark_d,
            )

    def flush(self, now: datetime) -> TickReport:
        out = TickReport()
        result = self.outbox.flush(now)
        for line in _flush_lines(result):
            out.add(line)
        return out

    def tick(self, now: datetime) -> TickReport:
        """Everything due at `now`, once: ingest spooled mail, queue jobs, deliver."""
        out = TickReport()
        for part in (self.ingest(now), self.run_jobs(now), self.flush(now)):
            out.lines.extend(part.lines)
        return out

    # -- status -------------------------------------------------------------------------------

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
        views: dict[str, Any] = {}
        for p in core.partnerships():
            if p.status == "ended" or p.member not in people:
                continue
            totals["partnerships"] += 1
            tz = self.tz_of(people[p.member])
            cur = current_period(p, tz, self.settings, now)
            row: dict[str, Any] = {
                "id": p.id,
                "member": p.member,
                "partner": p.partner,
                "status": p.status,
                "period": cur.label if cur else None,
            }
            if p.status == "paused":
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
        clock: Callable[[], datetime],
        stop: threading.Event,
        ready: Callable[[], None] | None = None,
    ) -> None:
        """Listener + ingest thread + scheduler loop until `stop` is set."""
        from mailflow.inbox import Listener, ListenerOptions

        problems = self.templates.check()
        if problems:
            raise ServiceError("templates have errors; fix them first: " + "; ".join(problems))
        wake = threading.Event()
        lc = self.config.listener
        listener = Listener(
            ListenerOptions(
                host=lc.host,
                port=lc.port,
                max_message_bytes=lc.max_message_bytes,
                timeout_seconds=lc.timeout_seconds,
                max_connections=lc.max_connections,
                hostname=self.domain,
            ),
            self.spool,
            self.rcpt_policy,
            lambda _id: wake.set(),
            clock,
        )
        listener.start()
        log.info("listening on %s:%d for *@%s", lc.host, lc.port, self.domain)

        def ingest_loop() -> None:
            while not stop.is_set():
                wake.wait(timeout=1.0)
                wake.clear()
                if stop.is_set():
                    break
                try:
                    self.ingest(clock())
                except Exception:  # noqa: BLE001 - keep serving; the spool keeps the mail
                    log.exception("ingest failed; will retry")

        ingester = threading.Thread(target=ingest_loop, name="mailflow-ingest", daemon=True)
        ingester.start()
        scheduler = schedule_lib.Scheduler()

        def scheduled_tick() -> None:
            try:
                problems = self.templates.refresh()
                for problem in problems:
                    log.error("template not used (last good version stays): %s", problem)
                self.run_jobs(clock())
                self.flush(clock())
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
                stop.wait(timeout=min(1.0, self.config.schedule.tick_seconds))
        finally:
            log.info("stopping")
            listener.stop()
            wake.set()
            ingester.join(timeout=5)
            log.info("stopped")


class ServiceError(Exception):
    """A reason the service cannot start; one line."""


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def real_clock() -> datetime:
    return datetime.now(UTC)


def _replace(week: Week, **changes: Any) -> Week:
    from dataclasses import replace

    return replace(week, **changes)


def _with_ref(decision: ingest.Decision, ref: str) -> ingest.Decision:
    from dataclasses import replace

    if decision.report is not None:
        return replace(decision, report=replace(decision.report, raw_ref=ref))
    if decision.inbound is not None:
        return replace(decision, inbound=replace(decision.inbound, raw_ref=ref))
    return decision


def _key_slug(key: str) -> str:
    return "".join(c if c.isalnum() else "." for c in key)


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


def _flush_lines(result: Any) -> list[str]:
    lines = []
    if getattr(result, "sent", 0):
        lines.append(f"sent {result.sent} message(s)")
    if getattr(result, "deferred", 0):
        lines.append(f"deferred {result.deferred} message(s) (relay unavailable; will retry)")
    for key, error in getattr(result, "failures", []) or []:
        lines.append(f"failed {key}: {error}")
    return lines
