"""The admin site's one door into the use cases: every read and every change the web makes.

`web.py` speaks HTTP and HTML; this module speaks mailflow, through the same functions the
command line calls: `status.status` behind `status --json` (the dashboard), `admin.pause`,
`resume`, `end`, `resend_intro`, `record_consent` and `admin.partnership` behind `partnerships
pause/resume/end/resend-intro/consent/show`, `status.strip` for the week-by-week strip,
`compose.Templates.check` behind `templates check` and `samples.variants` for the previews,
`mailflow.quarantine` behind `quarantine list/show/release/drop` (in `webadmin_quarantine`),
`mailroom` for the site's own mail. No rule lives here; each change is written to the audit
log (who, when, what) before it is reported done.

It is built from the parts `app.build` makes (`Parts` below names what it uses), so the site
and the mail service it runs next to share one store, spool, outbox and template set.

Confidentiality: nothing returned from here carries what a member wrote to her partner (no
report text, no partner note): only states and counts. The exception is quarantined mail,
which reached nobody and which an admin must read to release.
"""

from __future__ import annotations

import hashlib
import html
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from mailflow import admin, status
from mailflow import partnerships as pships
from mailflow.audit import AuditLog
from mailflow.compose import PARTS, Rendered, Templates
from mailflow.config import Config
from mailflow.intake import Intake
from mailflow.jobs import Jobs
from mailflow.letters import TEMPLATE_NAMES, Letter, Recipient, ServiceInfo
from mailflow.mailroom import Mailroom, TickReport
from mailflow.models import CONSENT_ACCEPTED, CONSENT_DECLINED, ENDED, Partnership
from mailflow.outbox import Outbox
from mailflow.schedule import utc_week
from mailflow.spool import Spool
from mailflow.store import Store
from mailflow.webadmin_numbers import PAGE_SIZE, NumbersDesk, Snapshot, WeekPoint
from mailflow.webadmin_quarantine import QuarantineDesk
from mailflow.webadmin_templates import PART_LABELS, TemplateDesk, TryResult
from mailflow.wording import count

__all__ = [
    "PAGE_SIZE",
    "PARTS",
    "PART_LABELS",
    "TEMPLATE_NAMES",
    "Parts",
    "Snapshot",
    "TryResult",
    "WebAdmin",
    "WeekPoint",
]

SITE_SENDER_NAME = "mailflow admin"  # the From name of the site's own mail


class Parts(Protocol):
    """What the site uses of the parts `app.build` makes (an `app.App` is one)."""

    config: Config
    store: Store
    spool: Spool
    outbox: Outbox
    templates: Templates
    svc: ServiceInfo
    mailroom: Mailroom
    intake: Intake

    def status(self, now: datetime) -> dict[str, Any]: ...


class WebAdmin(NumbersDesk, TemplateDesk, QuarantineDesk):
    """Built once per site from the running app's parts (or its own, for `mailflow web`).

    The dashboard and lists, the template editor and the quarantine are parts of it in modules
    of their own (`webadmin_numbers`, `webadmin_templates`, `webadmin_quarantine`); the
    partnership actions and the site's own mail are here.
    """

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.config = parts.config
        self.store = parts.store
        self.spool = parts.spool
        self.mailroom = parts.mailroom
        self.intake = parts.intake
        self.svc = parts.svc
        self.state_dir: Path = self.config.service.data_dir / "web"
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
        """The service's token key (the site derives its own signing key from it)."""
        return self.svc.keys.secret

    def record(
        self, now: datetime, who: str, action: str, target: str = "", detail: str = ""
    ) -> None:
        """One audit log entry, durable before this returns."""
        self.audit.record(now, who, action, target, detail)

    def status_now(self, now: datetime) -> dict[str, Any]:
        """`status --json` at `now` (the dashboard's numbers)."""
        return self.parts.status(now)

    # -- one partnership --------------------------------------------------------------------

    def partnership(self, pid: int) -> Partnership:
        """As `partnerships show ID` reads it; DomainError when there is none."""
        return admin.partnership(self.store, pid)

    def partnership_view(self, pid: int, now: datetime) -> dict[str, Any]:
        """Goals, consent, status and the week-by-week strip: states only, never report text."""
        p = self.partnership(pid)
        core = self.store.core()
        member, partner = core.person(p.member), core.person(p.partner)
        tz = ZoneInfo(member.timezone if member else self.config.service.timezone)
        today = now.astimezone(tz).date()
        goals = []
        for g in p.goals:
            left = (g.due - today).days
            if g.done_on:
                state = f"achieved {g.done_on.isoformat()}"
            elif left < 0:
                state = f"overdue by {count(-left, 'day')}"
            else:
                state = f"{count(left, 'day')} left"
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
        strip: tuple[dict[str, str], ...] = ()
        if member is not None and p.status != ENDED:
            strip = status.strip(self.store, p, tz, self.svc.settings, now)
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

    def pause(self, pid: int, until: str, now: datetime, who: str) -> str:
        """As `mailflow partnerships pause ID [--until DATE]`."""
        until_date = pships.parse_date(until, "until") if until.strip() else None
        admin.pause(self.store, pid, until_date, now, self.config.service.timezone)
        self._changed()
        detail = f"until {until_date}" if until_date else "until resumed"
        self.record(now, who, "partnership paused", f"partnership {pid}", detail)
        return f"Partnership {pid} paused {detail}."

    def resume(self, pid: int, now: datetime, who: str) -> str:
        """As `mailflow partnerships resume ID`."""
        admin.resume(self.store, pid)
        self._changed()
        self.record(now, who, "partnership resumed", f"partnership {pid}")
        return f"Partnership {pid} resumed."

    def end(self, pid: int, now: datetime, who: str) -> str:
        """As `mailflow partnerships end ID`."""
        admin.end(self.store, pid, now)
        self._changed()
        self.record(now, who, "partnership ended", f"partnership {pid}")
        return f"Partnership {pid} ended."

    def resend_intro(self, pid: int, now: datetime, who: str) -> str:
        """As `mailflow partnerships resend-intro ID --to both`: both people get the
        introduction again (the partner's asks for her yes or no while none is recorded)."""
        out = admin.resend_intro(self.mailroom, pid, now, to="both")
        self._changed()
        p = self.partnership(pid)
        self.record(
            now, who, "introduction resent", f"partnership {pid}", f"to {p.member} and {p.partner}"
        )
        return " ".join([f"Introduction of partnership {pid} sent again.", *_short_lines(out)])

    def approve(self, pid: int, now: datetime, who: str) -> str:
        """As `mailflow partnerships approve ID`: a partnership asked for by email under
        `self_service = "approval"` is approved, and both people are introduced."""
        admin.approve(self.store, pid)
        out = Jobs(self.store, self.mailroom, self.svc).introduce(pid, now)
        self._changed()
        self.record(now, who, "partnership approved", f"partnership {pid}")
        return " ".join([f"Partnership {pid} approved: both are introduced.", *_short_lines(out)])

    def record_consent(self, pid: int, accepted: bool, now: datetime, who: str) -> str:
        """As `mailflow partnerships consent ID --accepted|--declined`: the partner's answer
        given outside mail (a call, a chat) is recorded, and both people are told."""
        wanted = CONSENT_ACCEPTED if accepted else CONSENT_DECLINED
        note = f"recorded by {who} in the admin site"
        out = admin.record_consent(self.mailroom, pid, accepted, now, note)
        self._changed()
        self.record(now, who, f"consent recorded: {wanted}", f"partnership {pid}")
        return " ".join(
            [
                f"Partnership {pid}: the partner's consent is recorded as {wanted}.",
                *_short_lines(out),
            ]
        )

    # -- mail from the site ----------------------------------------------------------------

    def post(self, key: str, kind: str, to: str, rendered: Rendered, now: datetime) -> None:
        """Queue one mail that is not one of the program's templates (a sign-in link, a test
        of a template as typed) through `mailroom`, like every other mail: on disk, recorded
        under its key once, then delivered."""
        letter = Letter(
            kind, key, Recipient(to), utc_week(now), {}, from_name=SITE_SENDER_NAME, anytime=True
        )
        self.mailroom.post_rendered([(letter, rendered)], now, TickReport())

    def deliver(self, now: datetime) -> None:
        """Send what is queued now (the outbox's file lock keeps it to one sender at a time)."""
        self.mailroom.flush(now)

    def send_signin_link(self, email: str, url: str, now: datetime) -> None:
        """Mail a one-time sign-in link to `email` (queued; `deliver` sends it)."""
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


def _short_lines(out: TickReport) -> list[str]:
    """What a use case reported (queued, sent, notes), one short line each."""
    return [" ".join(line.split())[:200] for line in out.lines]


def _short(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]
