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

import hashlib
import html
import threading
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import digest  # TODO(merge): letters.intro (issue 11)
from mailflow import partnerships as pships
from mailflow.admin_numbers import PAGE_SIZE, NumbersDesk, Snapshot, WeekPoint
from mailflow.admin_quarantine import QuarantineDesk
from mailflow.admin_templates import PART_LABELS, TemplateDesk, TryResult
from mailflow.audit import AuditLog
from mailflow.compose import PARTS, TEMPLATE_NAMES, Rendered, message_bytes
from mailflow.config import Config
from mailflow.errors import DomainError
from mailflow.models import CONSENT_ACCEPTED, CONSENT_DECLINED, ENDED, Outgoing, Partnership
from mailflow.schedule import first_checkin
from mailflow.service import Prepared, Service, TickReport, utc_week
from mailflow.tokens import AGREE

__all__ = [
    "PAGE_SIZE",
    "PARTS",
    "PART_LABELS",
    "TEMPLATE_NAMES",
    "Admin",
    "Snapshot",
    "TryResult",
    "WeekPoint",
]


# -- the adapter -----------------------------------------------------------------------------


class Admin(NumbersDesk, TemplateDesk, QuarantineDesk):
    """Built once per site from the running service (or its own, for `mailflow web`).

    The dashboard and lists, the template editor and the quarantine are parts of it in modules
    of their own (`admin_numbers`, `admin_templates`, `admin_quarantine`); the partnership
    actions and the site's own mail are here.
    """

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


def _short(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]
