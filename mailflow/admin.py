"""The admin site's one door into the domain: every read and every change the web makes.

`web.py` speaks HTTP and HTML; this module speaks mailflow. It calls the same functions the
command line calls (`Service.status` behind `status --json`, `partnerships.pause/resume/end`
inside a `core_tx` as `partnerships pause/resume/end` do, `compose.Templates.check` behind
`templates check`, the spool and `Service.ingest`), so the site never grows a second copy of a
rule. Each change is written to the audit log (who, when, what) before it is reported done.

Where the domain has no function yet for what the site offers, a minimal one is built here over
today's `Service`/`Store`/`Spool` and marked `TODO(merge)` with the issue that will bring the
real one; once it lands, the body becomes a call (`quarantine release/drop`: issue 10;
`partnerships resend-intro` and `consent`: issue 13; posting a mail: issue 11's `mailroom`).

Confidentiality: nothing returned from here carries what a member wrote to her partner (no
report text, no partner note): only states and counts. The exception is quarantined mail,
which reached nobody and which an admin must read to release.
"""

from __future__ import annotations

import bisect
import difflib
import email.parser
import email.policy
import hashlib
import html
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from filelock import FileLock

from mailflow import digest  # TODO(merge): letters.intro (issue 11)
from mailflow import partnerships as pships
from mailflow.audit import AuditLog
from mailflow.compose import (
    PARTS,
    SHIPPED_DIR,
    TEMPLATE_NAMES,
    Rendered,
    TemplateError,
    Templates,
    message_bytes,
    sample_context,
    sample_variants,
)
from mailflow.config import Config, templates_override
from mailflow.errors import DomainError
from mailflow.models import (
    CONSENT_ACCEPTED,
    CONSENT_DECLINED,
    ENDED,
    Outgoing,
    Partnership,
)
from mailflow.outbox import write_atomic
from mailflow.parse import ParsedMessage, parse_message
from mailflow.schedule import first_checkin, period_label
from mailflow.service import Prepared, Service, TickReport, utc_week
from mailflow.spool import MAGIC, REASON_SUFFIX
from mailflow.store import fsync_dir
from mailflow.tokens import AGREE

log = logging.getLogger("mailflow.web")

PAGE_SIZE = 50
WEEKS_CHARTED = 12
# The dashboard's numbers are recomputed when a file they come from changes, and at least
# this often (some states move with the clock alone: a check-in comes due, a deadline passes).
SNAPSHOT_MAX_AGE = timedelta(seconds=15)
MAX_TEMPLATE_CHARS = 100_000
PART_LABELS = {"subject": "Subject", "txt": "Text", "html": "HTML"}
_PROBLEM = re.compile(r"^(?P<file>.+?\.j2)(?::(?P<line>\d+))?: (?P<message>.*)$", re.S)
_MISMATCH = re.compile(
    r"^sender mismatch: from \S+, expected the (?:member|partner) (?P<addr>\S+)$"
)


# -- values the pages show ---------------------------------------------------------------------


@dataclass(frozen=True)
class WeekPoint:
    """One week of the dashboard chart (UTC ISO week labels, as the period files are named)."""

    period: str
    asked: int  # check-ins sent
    replied: int  # of those, answered with a report
    setbacks: int  # reports that admitted a setback
    reported: int  # partnerships with any report that week (early ones too)

    @property
    def reply_rate(self) -> float | None:
        return self.replied / self.asked if self.asked else None

    @property
    def setback_rate(self) -> float | None:
        return self.setbacks / self.reported if self.reported else None


@dataclass(frozen=True)
class Row:
    """A partnership as the list shows it: who, what, and states (never what anyone wrote)."""

    id: int
    member: str
    member_name: str
    partner: str
    partner_name: str
    skill: str
    status: str
    paused_until: date | None
    consent: str
    week_state: str  # this period: reported / setback / waiting / missing / not sent yet / ...
    search: str = field(repr=False, default="")

    @property
    def week_slug(self) -> str:
        return self.week_state.replace(" ", "-") or "none"


@dataclass(frozen=True)
class PersonRow:
    email: str
    name: str
    department: str
    manager: str
    timezone: str
    offers: tuple[str, ...]
    bouncing: bool
    as_member: int
    as_partner: int
    search: str = field(repr=False, default="")


@dataclass(frozen=True)
class TextIndex:
    """Substring search over many short texts at C speed: one string, row starts, bisect.

    The texts are joined with NUL, which a search never contains, so a match never spans two
    rows; each row is reported once, in order.
    """

    blob: str
    starts: tuple[int, ...]

    @classmethod
    def of(cls, texts: list[str]) -> TextIndex:
        starts, pos = [], 0
        for text in texts:
            starts.append(pos)
            pos += len(text) + 1
        return cls("\x00".join(texts), tuple(starts))

    def matches(self, needle: str) -> list[int]:
        found: list[int] = []
        if not needle or "\x00" in needle:
            return found
        i = self.blob.find(needle)
        while i >= 0:
            row = bisect.bisect_right(self.starts, i) - 1
            found.append(row)
            nxt = self.starts[row + 1] if row + 1 < len(self.starts) else len(self.blob)
            i = self.blob.find(needle, nxt)
        return found


@dataclass(frozen=True)
class Snapshot:
    """What the dashboard and the lists read, computed once per change of the data."""

    at: datetime
    stamp: tuple[Any, ...]
    status: dict[str, Any]
    ended: int
    weeks: tuple[WeekPoint, ...]
    rows: tuple[Row, ...]
    people: tuple[PersonRow, ...]
    row_index: TextIndex
    people_index: TextIndex


@dataclass(frozen=True)
class Problem:
    """One `templates check` line, and where it points in the editor."""

    text: str  # exactly as `templates check` prints it
    message: str
    part: str | None  # subject / txt / html of the template being edited, else None
    line: int | None


@dataclass(frozen=True)
class Preview:
    label: str
    subject: str = ""
    text: str = ""
    html: str = ""
    error: str = ""


@dataclass(frozen=True)
class TryResult:
    problems: tuple[Problem, ...]
    previews: tuple[Preview, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Version:
    n: int
    at: datetime
    who: str
    action: str
    parts: dict[str, str]
    diff: str = ""


@dataclass(frozen=True)
class QuarantineItem:
    id: str
    reason: str
    sender: str
    subject: str
    received_at: datetime | None
    size: int


@dataclass(frozen=True)
class QuarantineDetail:
    item: QuarantineItem
    envelope: dict[str, Any]
    headers: tuple[tuple[str, str], ...]
    parsed: ParsedMessage
    releasable: bool
    release_note: str


# -- the adapter -----------------------------------------------------------------------------


class Admin:
    """Built once per site from the running service (or its own, for `mailflow web`)."""

    def __init__(self, config: Config, service: Service) -> None:
        self.config = config
        self.service = service
        self.store = service.store
        self.state_dir = config.service.data_dir / "web"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self._snapshot: Snapshot | None = None
        self._snapshot_lock = threading.Lock()
        self._dirty = False  # this site changed something since the snapshot
        self._refreshing = False
        self._warming = False
        self._check_cache: tuple[tuple[Any, ...], list[str]] | None = None

    @property
    def secret(self) -> bytes:
        return self.service.secret

    def record(
        self, now: datetime, who: str, action: str, target: str = "", detail: str = ""
    ) -> None:
        self.audit.record(now, who, action, target, detail)

    # -- dashboard and lists ---------------------------------------------------------------

    def _stamp(self) -> tuple[Any, ...]:
        """Changes whenever a file the snapshot reads changes (stat only, no parsing)."""
        periods = tuple(self.store.periods()[-3:])
        paths = [
            self.store.core_path,
            *(self.store.week_path(p) for p in periods),
            self.service.spool.quarantine_dir,
            self.service.spool.new_dir,
        ]
        return (periods, *(_stat(p) for p in paths))

    def snapshot(self, now: datetime) -> Snapshot:
        """The numbers behind the dashboard and the lists, as of `now` (or a little before).

        `status` is exactly what `mailflow status --json` prints at the snapshot's instant
        (`Snapshot.at`, shown on the page). It is computed again, before answering, whenever a
        file it reads has changed or this site has changed something; when only the clock has
        moved on (at most SNAPSHOT_MAX_AGE), the page gets the last one at once and a new one
        is computed behind it: at 10,000 partnerships `Service.status` takes seconds.
        """
        stamp = self._stamp()
        with self._snapshot_lock:
            snap = self._snapshot
            if snap is not None and not self._dirty and snap.stamp == stamp:
                if not snap.at <= now < snap.at + SNAPSHOT_MAX_AGE:
                    self._refresh_behind(now)
                return snap
            self._dirty = False
            snap = self._snapshot = self._build_snapshot(now, stamp)
            return snap

    def warm(self, now: datetime) -> None:
        """Start the first snapshot in the background, once.

        Called when someone opens the sign-in page or a sign-in link: by the time she is in,
        the dashboard is ready (at 10,000 partnerships it takes seconds), and a site nobody
        visits never spends the memory.
        """
        if self._snapshot is not None or self._warming:
            return
        self._warming = True

        def build() -> None:
            with self._snapshot_lock:
                if self._snapshot is None:
                    try:
                        self._snapshot = self._build_snapshot(now, self._stamp())
                    except Exception:  # noqa: BLE001 - the first page computes it again
                        log.warning("admin site: warming the dashboard failed", exc_info=True)

        threading.Thread(target=build, name="mailflow-web-warm", daemon=True).start()

    def _refresh_behind(self, now: datetime) -> None:
        """One background recomputation at a time; the page does not wait for it."""
        if self._refreshing:
            return
        self._refreshing = True

        def build() -> None:
            try:
                fresh = self._build_snapshot(now, self._stamp())
                with self._snapshot_lock:
                    current = self._snapshot
                    if current is None or fresh.at >= current.at:
                        self._snapshot = fresh
            except Exception:  # noqa: BLE001 - the page keeps the last one; next visit retries
                log.warning("admin site: refreshing the dashboard failed", exc_info=True)
            finally:
                self._refreshing = False

        threading.Thread(target=build, name="mailflow-web-refresh", daemon=True).start()

    def _changed(self) -> None:
        """This site changed something: the next page that reads the numbers waits for them."""
        self._dirty = True

    def _build_snapshot(self, now: datetime, stamp: tuple[Any, ...]) -> Snapshot:
        status = self.service.status(now)
        core = self.store.core()
        people = {p.email: p for p in core.people()}
        partnerships = core.partnerships()
        states = {row["id"]: row.get("state", "") for row in status["partnerships_detail"]}
        rows = []
        members: dict[str, int] = {}
        partners: dict[str, int] = {}
        for p in partnerships:
            m, q = people.get(p.member), people.get(p.partner)
            if p.status != ENDED:
                members[p.member] = members.get(p.member, 0) + 1
                partners[p.partner] = partners.get(p.partner, 0) + 1
            row = Row(
                id=p.id,
                member=p.member,
                member_name=m.name if m else "",
                partner=p.partner,
                partner_name=q.name if q else "",
                skill=p.skill,
                status=p.status,
                paused_until=p.paused_until,
                consent=p.consent,
                week_state="ended" if p.status == ENDED else states.get(p.id, ""),
            )
            rows.append(
                _with_search(
                    row,
                    f"{p.id} {p.member} {row.member_name} {p.partner} {row.partner_name} {p.skill}",
                )
            )
        person_rows = []
        for person in sorted(people.values(), key=lambda x: x.email):
            pr = PersonRow(
                email=person.email,
                name=person.name,
                department=person.department,
                manager=person.manager or "",
                timezone=person.timezone,
                offers=person.offers,
                bouncing=person.bouncing,
                as_member=members.get(person.email, 0),
                as_partner=partners.get(person.email, 0),
            )
            person_rows.append(
                _with_search(
                    pr,
                    f"{person.email} {person.name} {person.department} {' '.join(person.offers)}",
                )
            )
        return Snapshot(
            at=now,
            stamp=stamp,
            status=status,
            ended=sum(1 for p in partnerships if p.status == ENDED),
            weeks=tuple(self._weeks(now)),
            rows=tuple(rows),
            people=tuple(person_rows),
            row_index=TextIndex.of([r.search for r in rows]),
            people_index=TextIndex.of([r.search for r in person_rows]),
        )

    def _weeks(self, now: datetime) -> list[WeekPoint]:
        """Reply and setback rates of the last 12 weeks, from the per-period summaries."""
        monday = now.date() - timedelta(days=now.date().weekday())
        out = []
        for back in range(WEEKS_CHARTED - 1, -1, -1):
            label = period_label(monday - timedelta(weeks=back))
            summary = self.store.period_summary(label)
            out.append(
                WeekPoint(
                    period=label,
                    asked=sum(1 for s in summary.values() if s.checkin_sent),
                    replied=sum(1 for s in summary.values() if s.checkin_sent and s.reports),
                    setbacks=sum(1 for s in summary.values() if s.setback),
                    reported=sum(1 for s in summary.values() if s.reports),
                )
            )
        return out

    def partnerships_page(
        self,
        now: datetime,
        *,
        q: str = "",
        status: str = "",
        consent: str = "",
        state: str = "",
        page: int = 1,
    ) -> tuple[list[Row], int]:
        """One page of partnerships matching the filters, and how many match in all."""
        snap = self.snapshot(now)
        rows: Any = snap.rows
        needle = " ".join(q.lower().split())
        if needle:
            rows = [rows[i] for i in snap.row_index.matches(needle)]
        if status or consent or state:
            rows = [
                r
                for r in rows
                if (not status or r.status == status)
                and (not consent or r.consent == consent)
                and (not state or r.week_state == state)
            ]
        start = (max(page, 1) - 1) * PAGE_SIZE
        return list(rows[start : start + PAGE_SIZE]), len(rows)

    def people_page(
        self, now: datetime, *, q: str = "", bouncing: bool = False, page: int = 1
    ) -> tuple[list[PersonRow], int]:
        snap = self.snapshot(now)
        rows: Any = snap.people
        needle = " ".join(q.lower().split())
        if needle:
            rows = [rows[i] for i in snap.people_index.matches(needle)]
        if bouncing:
            rows = [r for r in rows if r.bouncing]
        start = (max(page, 1) - 1) * PAGE_SIZE
        return list(rows[start : start + PAGE_SIZE]), len(rows)

    # -- one partnership --------------------------------------------------------------------

    def partnership(self, pid: int) -> Partnership:
        p = self.store.core().partnership(pid)
        if p is None:
            raise DomainError(f"no partnership {pid}")
        return p

    def partnership_view(self, pid: int, now: datetime) -> dict[str, Any]:
        """Goals, consent, status and the week-by-week strip: states only, never report text."""
        p = self.partnership(pid)
        people = self.store.people_map()
        member, partner = people.get(p.member), people.get(p.partner)
        tz = ZoneInfo(member.timezone if member else self.config.service.timezone)
        today = now.astimezone(tz).date()
        goals = []
        for g in p.goals:
            left = (g.due - today).days
            if g.done_on:
                state = f"achieved {g.done_on.isoformat()}"
            elif left < 0:
                state = f"overdue by {-left} days"
            else:
                state = f"{left} days left"
            goals.append(
                {
                    "n": g.n,
                    "due": g.due,
                    "text": g.text,
                    "state": state,
                    "done": bool(g.done_on),
                    "overdue": not g.done_on and left < 0,
                }
            )
        strip = (
            self.service.history(p, people, now) if member is not None and p.status != ENDED else []
        )
        this_week = next((r.week_state for r in self.snapshot(now).rows if r.id == p.id), "")
        return {
            "p": p,
            "member": member,
            "partner": partner,
            "goals": goals,
            "strip": strip,
            "week_state": this_week,
            "member_today": today,
        }

    def _change(self, pid: int, change: Any) -> Partnership:
        """Read-modify-write of one partnership under the core lock (as the CLI's `_update`)."""
        with self.store.core_tx() as core:
            current = core.partnership(pid)
            if current is None:
                raise DomainError(f"no partnership {pid}")
            updated = change(current)
            core.put_partnership(updated)
        return updated

    def _member_today(self, p: Partnership, now: datetime) -> date:
        person = self.store.core().person(p.member)
        tz = ZoneInfo(person.timezone if person else self.config.service.timezone)
        return now.astimezone(tz).date()

    def pause(self, pid: int, until: str, now: datetime, who: str) -> str:
        """As `mailflow partnerships pause ID [--until DATE]`."""
        until_date = pships.parse_date(until, "until") if until.strip() else None
        today = self._member_today(self.partnership(pid), now)
        self._change(pid, lambda cur: pships.pause(cur, until_date, today))
        self._changed()
        detail = f"until {until_date}" if until_date else "until resumed"
        self.record(now, who, "partnership paused", f"partnership {pid}", detail)
        return f"Partnership {pid} paused {detail}."

    def resume(self, pid: int, now: datetime, who: str) -> str:
        """As `mailflow partnerships resume ID`."""
        self._change(pid, pships.resume)
        self._changed()
        self.record(now, who, "partnership resumed", f"partnership {pid}")
        return f"Partnership {pid} resumed."

    def end(self, pid: int, now: datetime, who: str) -> str:
        """As `mailflow partnerships end ID`."""
        self._change(pid, lambda cur: pships.end(cur, now))
        self._changed()
        self.record(now, who, "partnership ended", f"partnership {pid}")
        return f"Partnership {pid} ended."

    def resend_intro(self, pid: int, now: datetime, who: str) -> str:
        """Mail both people the introduction again (e.g. the partner lost it).

        TODO(merge): use `partnerships resend-intro ID` (issue 13) once it lands; until then
        this builds the same two letters as `Service._intro`, under keys of their own (the
        first introduction's keys are spent, and a resend must not look like a duplicate).
        """
        p = self.partnership(pid)
        if p.status == ENDED:
            raise DomainError(f"partnership {pid} has ended; nothing to introduce")
        svc = self.service
        people = self.store.people_map()
        if p.member not in people or p.partner not in people:
            raise DomainError(f"partnership {pid}: member or partner no longer exists")
        period = utc_week(now)
        day = (p.checkin_day or svc.settings.checkin_day).title()
        at = p.checkin_time or self.config.schedule.checkin_time
        first = first_checkin(p, svc.tz_of(people[p.member]), svc.settings, now)
        items = []
        stamp = now.strftime("%Y%m%dT%H%M%S")
        for role, person in (("member", people[p.member]), ("partner", people[p.partner])):
            reply = svc.address(AGREE, p.id, period) if role == "partner" else svc.plain_address
            ctx = svc.base(p, people, period, reply, person.timezone, now)
            ctx.update(
                role=role,
                accepted=p.consent == CONSENT_ACCEPTED,
                checkin_day=day,
                checkin_time=at,
                first_checkin=digest.local_time(first, people[p.member].timezone),
            )
            items.append(
                svc.prepare(
                    key=f"intro:{p.id}:{role}:resent:{stamp}",
                    name="intro",
                    period=period,
                    to=person,
                    ctx=ctx,
                    now=now,
                    reply_to=reply,
                    pid=p.id,
                )
            )
        svc.commit(items, TickReport())
        self._changed()
        self.record(
            now, who, "introduction resent", f"partnership {pid}", f"to {p.member} and {p.partner}"
        )
        return f"Introduction of partnership {pid} queued again for {p.member} and {p.partner}."

    def record_consent(self, pid: int, accepted: bool, now: datetime, who: str) -> str:
        """Record the partner's answer given outside mail (a call, a chat).

        TODO(merge): use `partnerships consent ID --accepted|--declined` (issue 13) once it
        lands; until then the same `partnerships.set_consent` the mail path uses.
        """
        wanted = CONSENT_ACCEPTED if accepted else CONSENT_DECLINED

        def change(cur: Partnership) -> Partnership:
            if cur.status == ENDED:
                raise DomainError(f"partnership {pid} has ended")
            if cur.consent == wanted:
                raise DomainError(f"partnership {pid}: consent is already {wanted}")
            return pships.set_consent(cur, accepted, now, f"recorded by {who} in the admin site")

        self._change(pid, change)
        self._changed()
        self.record(now, who, f"consent recorded: {wanted}", f"partnership {pid}")
        return f"Partnership {pid}: the partner's consent is recorded as {wanted}."

    # -- templates ---------------------------------------------------------------------------

    @property
    def templates_dir(self) -> Path:
        return templates_override(self.config)

    def _versions_path(self, name: str) -> Path:
        return self.state_dir / "template_versions" / f"{name}.jsonl"

    def template_names(self) -> tuple[str, ...]:
        return TEMPLATE_NAMES

    def _require(self, name: str) -> None:
        if name not in TEMPLATE_NAMES:
            raise DomainError(f"unknown template {name!r}")

    def template_files(self, name: str) -> dict[str, Path]:
        """The file each part is read from now: yours (the templates dir) or the shipped one."""
        self._require(name)
        out = {}
        for part in PARTS:
            filename = f"{name}.{part}.j2"
            own = self.templates_dir / filename
            out[part] = own if own.is_file() else SHIPPED_DIR / filename
        return out

    def own_parts(self, name: str) -> list[str]:
        """The parts of `name` read from the templates dir (yours) rather than shipped."""
        return [p for p, path in self.template_files(name).items() if path.parent != SHIPPED_DIR]

    def template_source(self, name: str) -> dict[str, str]:
        return {
            part: path.read_text(encoding="utf-8")
            for part, path in self.template_files(name).items()
        }

    def templates_check(self) -> list[str]:
        """`mailflow templates check` on the files as they are (cached per files' stat)."""
        folder = self.templates_dir
        stamp = tuple((p.name, *_stat(p)) for p in sorted(folder.rglob("*.j2")) if p.is_file())
        if self._check_cache is not None and self._check_cache[0] == stamp:
            return list(self._check_cache[1])
        problems = Templates(folder).check()
        self._check_cache = (stamp, problems)
        return list(problems)

    @contextmanager
    def _candidate(self, name: str, parts: Mapping[str, str]) -> Iterator[Path]:
        """A scratch copy of the templates dir with this template's parts as typed.

        `Templates` reads a directory, so trying an edit means a directory that holds it: the
        exact set `serve` would load after a save, checked by the same code. Under data_dir
        (same disk, and /tmp is slow in some sandboxes), removed afterwards.
        """
        scratch_root = self.state_dir / "tmp"
        scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="try-", dir=scratch_root))
        try:
            source = self.templates_dir
            for path in source.rglob("*.j2"):
                if path.is_file():
                    dest = scratch / path.relative_to(source)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest)
            for part in PARTS:
                (scratch / f"{name}.{part}.j2").write_text(parts[part], encoding="utf-8")
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _clean_parts(self, name: str, parts: Mapping[str, str]) -> dict[str, str]:
        self._require(name)
        out = {}
        for part in PARTS:
            text = parts.get(part)
            if text is None:
                raise DomainError(f"{name}: the {PART_LABELS[part]} part is missing")
            if len(text) > MAX_TEMPLATE_CHARS:
                raise DomainError(f"{name}: the {PART_LABELS[part]} part is too long")
            # Browsers send a textarea's lines with CRLF; the files are LF, as shipped.
            out[part] = text.replace("\r\n", "\n").replace("\r", "\n")
        return out

    def template_try(self, name: str, parts: Mapping[str, str]) -> TryResult:
        """Check the templates as they would be with this edit, and render every variant."""
        parts = self._clean_parts(name, parts)
        with self._candidate(name, parts) as scratch:
            target = self.templates_dir
            raw = [_rebase(line, scratch, target) for line in Templates(scratch).check()]
            templates = Templates(scratch)
            previews = []
            for label, kwargs in template_variants(name):
                try:
                    r = templates.render(name, sample_context(name, **kwargs))
                except TemplateError as exc:
                    previews.append(Preview(label, error=_rebase(str(exc), scratch, target)))
                    continue
                previews.append(Preview(label, r.subject, r.text, r.html))
        problems = tuple(_problem(line, name, self.templates_dir) for line in raw)
        return TryResult(problems, tuple(previews))

    def _versions(self, name: str) -> list[Version]:
        path = self._versions_path(name)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                d = json.loads(line)
                out.append(
                    Version(
                        int(d["n"]),
                        datetime.fromisoformat(d["at"]),
                        d["who"],
                        d["action"],
                        dict(d["parts"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: that save never reported done
        return out

    def _append_version(self, name: str, version: Version) -> None:
        path = self._versions_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "n": version.n,
            "at": version.at.isoformat(),
            "who": version.who,
            "action": version.action,
            "parts": version.parts,
        }
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def template_versions(self, name: str) -> list[Version]:
        """Every version, newest first, each with its diff against the one before."""
        self._require(name)
        found = self._versions(name)
        out = []
        previous: dict[str, str] | None = None
        for v in found:
            diff = ""
            if previous is not None:
                diff = "".join(
                    "".join(
                        difflib.unified_diff(
                            previous[part].splitlines(keepends=True),
                            v.parts[part].splitlines(keepends=True),
                            fromfile=f"v{v.n - 1}/{name}.{part}.j2",
                            tofile=f"v{v.n}/{name}.{part}.j2",
                            n=2,
                        )
                    )
                    for part in PARTS
                )
            out.append(Version(v.n, v.at, v.who, v.action, v.parts, diff))
            previous = v.parts
        out.reverse()
        return out

    def template_save(
        self, name: str, parts: Mapping[str, str], now: datetime, who: str, action: str = "saved"
    ) -> TryResult:
        """Save an edit if, and only if, the whole set passes `templates check` with it.

        Each changed file is replaced atomically (temp file, fsync, rename) in the templates
        dir; `serve` switches to the new set at its next tick, and only once it passes the
        check (it keeps the last good set), so a reader never gets a torn file. The save is a
        new version (who, when, the full text); the first save of a template also records
        what was there before, so there is always a version to roll back to.
        """
        parts = self._clean_parts(name, parts)
        result = self.template_try(name, parts)
        if not result.ok:
            return result
        lock = FileLock(str(self._versions_path(name)) + ".lock", timeout=30)
        self._versions_path(name).parent.mkdir(parents=True, exist_ok=True)
        with lock:
            current = self.template_source(name)
            versions = self._versions(name)
            n = versions[-1].n if versions else 0
            if not versions or versions[-1].parts != current:
                n += 1
                before = "as shipped" if not versions else "changed outside the admin site"
                self._append_version(name, Version(n, now, "(files)", before, current))
            folder = self.templates_dir
            changed = [part for part in PARTS if parts[part] != current[part]]
            for part in changed:
                write_atomic(folder / f"{name}.{part}.j2", parts[part].encode("utf-8"))
            if changed:
                fsync_dir(folder)
                n += 1
                self._append_version(name, Version(n, now, who, action, dict(parts)))
        if changed:
            files = ", ".join(f"{name}.{part}.j2" for part in changed)
            self.record(now, who, f"template {action}", name, f"version {n}: {files}")
        return result

    def template_rollback(self, name: str, n: int, now: datetime, who: str) -> TryResult:
        """Make version `n` the current one again (itself a new version, checked first)."""
        found = {v.n: v for v in self._versions(name)}
        if n not in found:
            raise DomainError(f"{name}: there is no version {n}")
        return self.template_save(name, found[n].parts, now, who, f"rolled back to version {n}")

    def template_send_test(
        self, name: str, parts: Mapping[str, str], variant: str, now: datetime, who: str
    ) -> str:
        """Mail the preview (the text as typed, on sample data) to the signed-in admin."""
        result = self.template_try(name, parts)
        if not result.ok:
            raise DomainError(
                "fix the problems first: a test goes out only for a template that passes the check"
            )
        chosen = next((p for p in result.previews if p.label == variant), result.previews[0])
        rendered = Rendered(f"[test] {chosen.subject}", chosen.text, chosen.html)
        key = f"template_test:{name}:{_short(who + now.isoformat())}"
        self.post(key, "template_test", who, rendered, now)
        self.record(now, who, "template test sent", name, f"variant {chosen.label} to {who}")
        return f"A test of {name} ({chosen.label}) is on its way to {who}."

    # -- mail from the site ----------------------------------------------------------------

    def post(self, key: str, kind: str, to: str, rendered: Rendered, now: datetime) -> None:
        """Queue one mail through our own outbox (on disk, recorded, then delivered).

        TODO(merge): `mailroom.post(Letter)` (issue 11) once it lands; this is the same three
        steps `Service.prepare` + `commit` take, for a mail that is not one of the program's
        templates (sign-in links, template tests).
        """
        svc = self.service
        mid = f"<{kind}.{_short(key)}@{svc.domain}>"
        data = message_bytes(
            rendered,
            from_address=self.config.service.sender,
            from_name="mailflow admin",
            to_address=to,
            to_name="",
            message_id=mid,
            date=now,
        )
        period = utc_week(now)
        path = svc.outbox.write_bytes(key, period, data)
        outgoing = Outgoing(
            key=key, kind=kind, to=to, message_id=mid, path=path, created_at=now, period=period
        )
        svc.commit([Prepared(outgoing)], TickReport())

    def deliver(self, now: datetime) -> None:
        """Send what is queued now (the outbox's file lock keeps it to one sender at a time)."""
        self.service.flush(now)

    def send_signin_link(self, email: str, url: str, now: datetime) -> None:
        text = (
            "Someone (we hope you) asked to sign in to the mailflow admin site.\n\n"
            f"Open this link to sign in; it works once, for 15 minutes:\n\n{url}\n\n"
            "If you did not ask for it, ignore this mail: nobody can use the link but the\n"
            "reader of this mailbox.\n"
        )
        link = html.escape(url, quote=True)
        body = (
            '<!doctype html><html><body style="font-family:sans-serif">'
            "<p>Someone (we hope you) asked to sign in to the mailflow admin site.</p>"
            f'<p><a href="{link}">Sign in to mailflow</a> (works once, for 15 minutes)</p>'
            f'<p style="color:#555">{link}</p>'
            "<p>If you did not ask for it, ignore this mail.</p></body></html>"
        )
        rendered = Rendered("Your mailflow sign-in link", text, body)
        self.post(f"signin:{_short(url)}", "signin", email, rendered, now)

    # -- quarantine ----------------------------------------------------------------------------

    def _quarantine_path(self, qid: str) -> Path:
        folder = self.service.spool.quarantine_dir
        names = {n for n in os.listdir(folder) if not n.startswith(".")}
        if qid not in names or qid.endswith(REASON_SUFFIX):
            raise DomainError(f"no quarantined message {qid!r}")
        return folder / qid

    def _read_quarantined(self, qid: str) -> tuple[dict[str, Any], bytes]:
        """The spool envelope and the raw message of a quarantined file.

        TODO(merge): `quarantine show` (issue 10); the file is the spool file moved aside, so
        this is the spool's own format (`MFSPOOL1 {json}` line, then the raw bytes).
        """
        data = self._quarantine_path(qid).read_bytes()
        if data.startswith(MAGIC):
            head, _, raw = data.partition(b"\n")
            try:
                envelope = json.loads(head[len(MAGIC) :].decode("ascii"))
                if isinstance(envelope, dict):
                    return envelope, raw
            except (UnicodeDecodeError, ValueError):
                pass
        return {}, data

    def _item(self, qid: str, reason: str) -> QuarantineItem:
        try:
            envelope, raw = self._read_quarantined(qid)
        except (DomainError, OSError):
            return QuarantineItem(qid, reason, "", "", None, 0)
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            raw[:65536]
        )
        received = None
        with suppress(KeyError, ValueError, TypeError):
            received = datetime.fromisoformat(str(envelope["received_at"]))
        return QuarantineItem(
            id=qid,
            reason=reason,
            sender=_header(headers, "From") or str(envelope.get("mail_from", "")),
            subject=_header(headers, "Subject"),
            received_at=received,
            size=len(raw),
        )

    def quarantine_list(self) -> list[QuarantineItem]:
        """Every quarantined message, newest first (`mailflow quarantine list`)."""
        items = [self._item(qid, reason) for qid, reason in self.service.spool.quarantined()]
        items.reverse()
        return items

    def quarantine_show(self, qid: str) -> QuarantineDetail:
        """The message as the parser reads it: reason, envelope, headers, new text."""
        reason = dict(self.service.spool.quarantined()).get(qid, "(no reason recorded)")
        envelope, raw = self._read_quarantined(qid)
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            raw[:65536]
        )
        shown = tuple(
            (h, _header(headers, h))
            for h in ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To")
            if _header(headers, h)
        )
        releasable = bool(envelope)
        note = (
            "Release processes it again as it arrived."
            if releasable
            else "This file has no readable envelope: it can only be dropped."
        )
        match = _MISMATCH.match(reason)
        if releasable and match:
            note = (
                f"Release vouches for the sender: the message is processed as if it came "
                f"from {match.group('addr')} (the original From is kept in the archived copy)."
            )
        return QuarantineDetail(
            item=self._item(qid, reason),
            envelope=envelope,
            headers=shown,
            parsed=parse_message(raw),
            releasable=releasable,
            release_note=note,
        )

    def quarantine_release(self, qid: str, now: datetime, who: str) -> list[str]:
        """Put a quarantined message back into the spool and process it now.

        TODO(merge): `quarantine release ID` (issue 10) once it lands. Until then: the message
        goes back into the spool with its original envelope and received time (so it counts
        for the period it arrived in), and, for a sender mismatch, with its From set to the
        expected address: the admin vouches for the sender, and the original From stays in
        the archived copy (X-Mailflow-Original-From). Then one ingest round, as `tick` does.
        """
        reason = dict(self.service.spool.quarantined()).get(qid, "")
        envelope, raw = self._read_quarantined(qid)
        if not envelope:
            raise DomainError(f"{qid}: no readable envelope; it can only be dropped")
        match = _MISMATCH.match(reason)
        stamp = f"by {who} at {now.isoformat()}"
        raw = _with_headers(
            raw, {"X-Mailflow-Released": stamp}, new_from=match.group("addr") if match else None
        )
        received = datetime.fromisoformat(str(envelope["received_at"]))
        spool = self.service.spool
        new_id = spool.put(
            raw,
            mail_from=str(envelope.get("mail_from", "")),
            rcpt_tos=[str(r) for r in envelope.get("rcpt_tos", [])],
            peer=str(envelope.get("peer", "")),
            received_at=received,
        )
        # Only now, with the copy durable in the spool, does the quarantined one go.
        self._remove_quarantined(qid)
        self._changed()
        self.record(now, who, "quarantine released", qid, f"reason was: {reason}")
        lines = self.service.ingest(now).lines
        mine = [line for line in lines if new_id in line] or lines
        return [f"Released {qid}."] + _without_text(mine)

    def quarantine_drop(self, qid: str, now: datetime, who: str) -> str:
        """Delete a quarantined message for good (`quarantine drop ID`).

        TODO(merge): `quarantine drop ID` (issue 10) once it lands.
        """
        item = self._item(qid, dict(self.service.spool.quarantined()).get(qid, ""))
        self._quarantine_path(qid)  # refuses an unknown id before anything is recorded
        self.record(
            now, who, "quarantine dropped", qid, f"from {item.sender}; reason was: {item.reason}"
        )
        self._remove_quarantined(qid)
        self._changed()
        return f"Dropped {qid}."

    def _remove_quarantined(self, qid: str) -> None:
        path = self._quarantine_path(qid)
        path.unlink()
        (path.parent / (qid + REASON_SUFFIX)).unlink(missing_ok=True)
        fsync_dir(path.parent)


# -- helpers ---------------------------------------------------------------------------------


def template_variants(name: str) -> list[tuple[str, dict[str, Any]]]:
    """The sample variants `templates check` renders, as (label, sample_context kwargs).

    TODO(merge): `samples.variants(name)` once issue 11 splits compose (it is `_variants`).
    """
    if name == "digest":
        return [
            ("report", {}),
            ("setback", {"setback": True}),
            ("updated", {"updated": True}),
            ("updated setback", {"setback": True, "updated": True}),
        ]
    return [(v, {"variant": v}) for v in sample_variants(name)] or [("sample", {})]


def _stat(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _with_search(row: Any, text: str) -> Any:
    return replace(row, search=" ".join(text.lower().split()))


def _short(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _rebase(line: str, scratch: Path, target: Path) -> str:
    """A problem found in the scratch copy, named by the file a save would write."""
    return line.replace(str(scratch), str(target))


def _problem(line: str, name: str, folder: Path) -> Problem:
    m = _PROBLEM.match(line)
    if m is None:
        return Problem(line, line, None, None)
    part = None
    for candidate in PARTS:
        if m.group("file") == str(folder / f"{name}.{candidate}.j2"):
            part = candidate
    number = int(m.group("line")) if m.group("line") else None
    return Problem(line, m.group("message"), part, number)


def _header(headers: Any, name: str) -> str:
    try:
        value = headers.get(name)
    except Exception:  # noqa: BLE001 - a malformed header must not break the page
        return ""
    return " ".join(str(value).split()) if value is not None else ""


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FROM_LINE = re.compile(rb"(?im)^From:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")


def _with_headers(raw: bytes, extra: Mapping[str, str], new_from: str | None) -> bytes:
    """The raw message with headers added at the top (and From replaced, keeping the old)."""
    m = _HEADER_END.search(raw)
    head, body = (raw[: m.start()], raw[m.start() :]) if m else (raw, b"")
    newline = b"\r\n" if b"\r\n" in head[:2000] or not head else b"\n"
    added = b"".join(f"{k}: {v}".encode("ascii", "replace") + newline for k, v in extra.items())
    if new_from is not None:
        old = _FROM_LINE.search(head)
        original = old.group(0)[5:].strip() if old else b""
        added += b"X-Mailflow-Original-From: " + b" ".join(original.split()) + newline
        replacement = b"From: " + new_from.encode("ascii", "replace")
        head = (
            _FROM_LINE.sub(lambda _m: replacement, head, count=1)
            if old
            else (head + newline + replacement)
        )
    return added + head + body


def _without_text(lines: list[str]) -> list[str]:
    """Ingest's lines name ids, periods and addresses; keep them to one short line each."""
    return [" ".join(line.split())[:200] for line in lines]
