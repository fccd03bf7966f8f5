"""The admin site's numbers: the dashboard's snapshot and the searchable lists (of `WebAdmin`).

One snapshot holds `status.status` at its instant (exactly what `mailflow status --json`
prints), the 12-week reply and setback rates from the per-period summaries, and the
partnership and people rows the lists page through. At 10,000 partnerships it takes a while
to compute, so it is kept and computed again when a file it reads changes or this site changed
something; when only the clock moved on, the page gets the last one and a fresh one is
computed behind it.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from mailflow.config import Config
from mailflow.models import ENDED
from mailflow.schedule import period_label
from mailflow.spool import Spool
from mailflow.store import Store

log = logging.getLogger("mailflow.web")

PAGE_SIZE = 50
WEEKS_CHARTED = 12
# The dashboard's numbers are recomputed when a file they come from changes, and at least
# this often (some states move with the clock alone: a check-in comes due, a deadline passes).
SNAPSHOT_MAX_AGE = timedelta(seconds=15)


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


class NumbersDesk:
    """The dashboard and the lists; a part of `WebAdmin`, which sets these attributes and
    provides `status_now` (`status --json`)."""

    config: Config
    store: Store
    spool: Spool
    _snapshot: Snapshot | None
    _snapshot_lock: threading.Lock
    _dirty: bool
    _refreshing: bool
    _warming: bool

    def status_now(self, now: datetime) -> dict[str, Any]:
        raise NotImplementedError  # WebAdmin's

    def _stamp(self) -> tuple[Any, ...]:
        """Changes whenever a file the snapshot reads changes (stat only, no parsing)."""
        periods = tuple(self.store.periods()[-3:])
        paths = [
            self.store.core_path,
            *(self.store.week_path(p) for p in periods),
            self.spool.quarantine_dir,
            self.spool.new_dir,
        ]
        return (periods, *(stat_stamp(p) for p in paths))

    def snapshot(self, now: datetime) -> Snapshot:
        """The numbers behind the dashboard and the lists, as of `now` (or a little before).

        `status` is exactly what `mailflow status --json` prints at the snapshot's instant
        (`Snapshot.at`, shown on the page). It is computed again, before answering, whenever a
        file it reads has changed or this site has changed something; when only the clock has
        moved on (at most SNAPSHOT_MAX_AGE), the page gets the last one at once and a new one
        is computed behind it: at 10,000 partnerships it takes a while.
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
        the dashboard is ready (at 10,000 partnerships the first one parses the latest period
        files, over a second), and a site nobody visits never spends the memory.
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
        status = self.status_now(now)
        roster = self.store.roster()  # the objects `status` just read, not copies of them
        people = roster.people
        partnerships = list(roster.partnerships.values())
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


def stat_stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _with_search(row: Any, text: str) -> Any:
    return replace(row, search=" ".join(text.lower().split()))
