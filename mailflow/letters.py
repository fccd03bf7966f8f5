"""What each outgoing mail says, as a value: a `Letter` per mail, one builder per template (pure).

A builder takes domain objects (a `Pair`: the partnership and its two people with their
week-by-week strip; reports; the period's `Week`) and `now`, and returns a `Letter`: the
template, its context, the recipient, the job key, the Message-ID and the `Mark` the job
leaves in the period file. `mailroom` renders and queues letters; nothing here renders, reads
the clock or touches the disk. These builders are the only source of template context: the
sender, `templates check` and `templates preview` (through `samples`) all render their output,
and a test holds their keys to what admins' templates were written against.

The digest is the heart of it: the partner sees the goals with their deadlines, every report
of the period (done / setback / next) and, on a setback, the agreed back-in-the-saddle text
with the why. Check-ins, reminders and the no-report digest share the same goal list so both
people always look at the same facts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from mailflow.config import Config
from mailflow.errors import TemplateError
from mailflow.models import (
    CONSENT_ACCEPTED,
    Partnership,
    Pending,
    PeriodSummary,
    Person,
    Report,
    Week,
)
from mailflow.schedule import (
    Period,
    Settings,
    current_period,
    days_left,
    first_checkin,
    parse_period,
    period_label,
    utc_week,
)
from mailflow.tokens import (
    AGREE,
    CHECKIN,
    CONFIRM,
    DIGEST,
    REPLY_MARKER,
    Keys,
    hash16,
    reply_address,
    token_message_id,
)

TEMPLATE_NAMES: tuple[str, ...] = (
    "checkin",
    "reminder",
    "digest",
    "no_report",
    "bounce_notice",
    "intro",
    "checkin_ack",
    "receipt",
    "pause_notice",
    "partner_note",
    "summary",
    "consent_notice",
    "confirm",
    "report_receipt",
)
"""The templates the sender uses; ``templates preview NAME`` accepts exactly these."""

HISTORY_WEEKS = 26  # the week-by-week strip shows at most this many weeks


def require_template(name: str) -> None:
    """TemplateError naming the valid names unless `name` is one of TEMPLATE_NAMES."""
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown template {name!r}; valid names: {', '.join(TEMPLATE_NAMES)}")


# -- the values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """Who a letter goes to: an address and a display name ("" for none)."""

    address: str
    name: str = ""

    @classmethod
    def of(cls, person: Person) -> Recipient:
        """A person's address and name."""
        return cls(person.email, person.name)


@dataclass(frozen=True)
class Mark:
    """The job a letter does: set `Week.<field>` to the letter's time, once.

    `only_without_reports`: not when a report arrived meanwhile (a reminder or no-report
    digest is then moot). `mailroom` applies it in the same write that queues the letter.
    """

    field: str
    only_without_reports: bool = False


@dataclass(frozen=True)
class DigestMark:
    """A digest of `count` reports: recorded unless a digest already carried as many."""

    count: int


@dataclass(frozen=True)
class Letter:
    """One mail to send: what it says (`template` + `ctx`) and who gets it, as data.

    `key` is the job key (one mail per key, ever); `period` the period file that records it;
    `message_id` None means `<TEMPLATE.hash16(key)@DOMAIN>`.
    """

    template: str
    key: str
    to: Recipient
    period: str
    ctx: Mapping[str, Any]
    reply_to: str | None = None
    message_id: str | None = None
    from_name: str = "mailflow"
    partnership_id: int | None = None
    mark: Mark | DigestMark | None = None


@dataclass(frozen=True)
class ServiceInfo:
    """What the builders need to know about the service (from the config and the key)."""

    keys: Keys
    from_address: str
    settings: Settings
    admin: str = ""
    consent_days: int = 7
    deadline_hours: int = 96
    checkin_time: str = "09:00"  # the configured default, as written in the config
    default_tz: str = "UTC"

    @classmethod
    def from_config(cls, config: Config, secret: bytes) -> ServiceInfo:
        """The service as `config` describes it, signing tokens with `secret`."""
        return cls(
            keys=Keys(secret, config.service.domain),
            from_address=config.service.sender,
            settings=Settings.from_config(config.schedule),
            admin=config.service.admin_address,
            consent_days=config.schedule.consent_days,
            deadline_hours=config.schedule.deadline_after_hours,
            checkin_time=config.schedule.checkin_time,
            default_tz=config.service.timezone,
        )

    @property
    def domain(self) -> str:
        """Our domain: of reply addresses and Message-IDs."""
        return self.keys.domain

    def context(self) -> dict[str, str]:
        """The `service` entry of every template context."""
        return {"name": "mailflow", "domain": self.domain, "from_address": self.from_address}

    def tz_of(self, person: Person | None) -> ZoneInfo:
        """A person's zone; the service's zone for nobody (a deleted or unknown person)."""
        return ZoneInfo(person.timezone if person else self.default_tz)


@dataclass(frozen=True)
class Pair:
    """A partnership with its two people and its week-by-week strip (see `history`)."""

    p: Partnership
    member: Person
    partner: Person
    history: tuple[Mapping[str, str], ...] = field(default=())


# -- shared pieces --------------------------------------------------------------------------


def period_text(period: str) -> str:
    """'week 48 of 2026' for '2026-W48'."""
    year, week = parse_period(period)
    return f"week {week} of {year}"


def local_time(dt: datetime, tz: str) -> str:
    """'Monday 23 November, 09:00 (Europe/Berlin)' in the reader's zone."""
    local = dt.astimezone(ZoneInfo(tz))
    return f"{local:%A} {local.day} {local:%B}, {local:%H:%M} ({tz})"


def goal_items(p: Partnership, today: date) -> list[dict[str, Any]]:
    """The goals as templates show them: due date (ISO), days left and whether overdue or
    done, as of the reader's `today`."""
    return [
        {
            "n": g.n,
            "due": g.due.isoformat(),
            "text": g.text,
            "days_left": days_left(g.due, today),
            "overdue": g.done_on is None and g.due < today,
            "done": g.done_on is not None,
        }
        for g in p.goals
    ]


def report_items(reports: Sequence[Report], tz: str) -> list[dict[str, Any]]:
    """Reports oldest first, each received-at in the reader's zone `tz`."""
    return [
        {
            "received_at": local_time(r.received_at, tz),
            "text": r.text,
            "done": r.done,
            "setback_text": r.setback_text,
            "next": r.next,
            "setback": r.setback,
        }
        for r in sorted(reports, key=lambda r: r.received_at)
    ]


def base(
    pair: Pair, period: str, reply: str, reader: Person, now: datetime, svc: ServiceInfo
) -> dict[str, Any]:
    """What every mail about a partnership carries; goals as of the reader's today."""
    p, member, partner = pair.p, pair.member, pair.partner
    return {
        "service": svc.context(),
        "member": {"name": member.name, "email": member.email, "timezone": member.timezone},
        "partner": {"name": partner.name, "email": partner.email},
        "partnership": {
            "id": p.id,
            "skill": p.skill,
            "why": p.why,
            "saddle": p.saddle,
            "start": p.start.isoformat(),
        },
        "goals": goal_items(p, now.astimezone(ZoneInfo(reader.timezone)).date()),
        "period": period,
        "period_label": period_text(period),
        "reply_marker": REPLY_MARKER,
        "reply_address": reply,
        "history": [dict(week) for week in pair.history],
    }


# -- the week-by-week strip -------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The periods the strip of a partnership shows at one instant, oldest first."""

    current: str
    labels: tuple[str, ...]


def history_window(p: Partnership, tz: ZoneInfo, s: Settings, now: datetime) -> Window | None:
    """Up to HISTORY_WEEKS periods ending with the current one; None before the first."""
    cur = current_period(p, tz, s, now)
    if cur is None:
        return None
    first = cur.checkin_at.astimezone(tz).date()
    monday = p.start - timedelta(days=p.start.weekday())
    day = max(monday, first - timedelta(weeks=HISTORY_WEEKS - 1))
    labels = []
    while day <= first:
        labels.append(period_label(day))
        day += timedelta(days=7)
    return Window(cur.label, tuple(labels))


def history(
    window: Window | None, weeks: Mapping[str, PeriodSummary]
) -> tuple[dict[str, str], ...]:
    """Week by week: reported / setback / missed / paused / pending, oldest first.

    `weeks` is what each period file of the window says about the partnership (absent: no
    record). Weeks before the first check-in are not history.
    """
    if window is None:
        return ()
    out: list[dict[str, str]] = []
    for label in window.labels:
        info = weeks.get(label)
        if info and info.reports:
            state = "setback" if info.setback else "reported"
        elif info and info.checkin_sent:
            current = label == window.current and not info.no_report_sent
            state = "pending" if current else "missed"
        else:
            state = "pending" if label == window.current else "paused"
        if out or state != "paused":
            out.append({"period": label, "label": label.split("-")[1], "state": state})
    return tuple(out)


# -- the week's mail --------------------------------------------------------------------------
#
# A week's mail answers to a token of its period: the member's mail carries her check-in
# token (reply address and Message-ID), the partner's the digest token, so a reply by
# address or by reference finds its partnership and period without a lookup.


@dataclass(frozen=True)
class _Weekly:
    """The parts every mail of one partnership's week shares, for the member or the partner."""

    pair: Pair
    period: Period
    svc: ServiceInfo
    to_partner: bool

    @property
    def reader(self) -> Person:
        """Who gets it: the partner or the member."""
        return self.pair.partner if self.to_partner else self.pair.member

    @cached_property
    def token(self) -> str:
        """The period's digest token for the partner, check-in token for the member."""
        kind = DIGEST if self.to_partner else CHECKIN
        return self.svc.keys.token(kind, self.pair.p.id, self.period.label)

    def context(self, now: datetime) -> dict[str, Any]:
        """The base context, its reply address the token's."""
        reply = reply_address(self.token, self.svc.domain)
        return base(self.pair, self.period.label, reply, self.reader, now, self.svc)

    def letter(
        self,
        template: str,
        job: str,
        id_kind: str,
        ctx: dict[str, Any],
        mark: Mark | DigestMark,
        key_suffix: str = "",
    ) -> Letter:
        """The job key is `JOB:PID:PERIOD` + `key_suffix`; the Message-ID `<ID_KIND.TOKEN@…>`."""
        p = self.pair.p
        return Letter(
            template,
            f"{job}:{p.id}:{self.period.label}{key_suffix}",
            Recipient.of(self.reader),
            self.period.label,
            ctx,
            reply_to=ctx["reply_address"],
            message_id=token_message_id(id_kind, self.token, self.svc.domain),
            partnership_id=p.id,
            mark=mark,
        )


def checkin(pair: Pair, period: Period, svc: ServiceInfo, now: datetime) -> Letter:
    """The member's check-in: her goals, the questions, her reply address."""
    week = _Weekly(pair, period, svc, to_partner=False)
    ctx = week.context(now)
    ctx["checkin_at"] = local_time(period.checkin_at, pair.member.timezone)
    return week.letter("checkin", "checkin", "checkin", ctx, Mark("checkin_at"))


def checkin_ack(
    pair: Pair, period: Period, reports: Sequence[Report], svc: ServiceInfo, now: datetime
) -> Letter:
    """The check-in of a period she already reported for early: "got it", with her report.

    The same job as the check-in (one per period, ever), in another template.
    """
    week = _Weekly(pair, period, svc, to_partner=False)
    ctx = week.context(now)
    ctx["checkin_at"] = local_time(period.checkin_at, pair.member.timezone)
    ctx["reports"] = report_items(reports, pair.member.timezone)
    return week.letter("checkin_ack", "checkin", "checkin", ctx, Mark("checkin_at"))


def reminder(
    pair: Pair, period: Period, week: Week | None, svc: ServiceInfo, now: datetime
) -> Letter:
    """One reminder to the member; "the check-in was due" counts from when it went out."""
    mail = _Weekly(pair, period, svc, to_partner=False)
    ctx = mail.context(now)
    ctx["checkin_at"] = local_time(_sent_at(week, now), pair.member.timezone)
    mark = Mark("reminder_at", only_without_reports=True)
    return mail.letter("reminder", "reminder", "reminder", ctx, mark)


def no_report(
    pair: Pair, period: Period, week: Week | None, svc: ServiceInfo, now: datetime
) -> Letter:
    """The partner's digest of a week without a report: it says so, with the why."""
    mail = _Weekly(pair, period, svc, to_partner=True)
    ctx = mail.context(now)
    for entry in ctx["history"]:
        if entry["period"] == period.label:
            entry["state"] = "missed"  # this mail is what makes the week missed
    ctx["checkin_at"] = local_time(_sent_at(week, now), pair.partner.timezone)
    ctx["deadline_hours"] = svc.deadline_hours
    mark = Mark("no_report_at", only_without_reports=True)
    return mail.letter("no_report", "no_report", "no_report", ctx, mark)


def digest(
    pair: Pair,
    period: Period,
    week: Week | None,
    reports: Sequence[Report],
    svc: ServiceInfo,
    now: datetime,
) -> Letter:
    """The partner's digest: every report of the period; a setback if any report is one.

    A later report makes a new digest (keyed by the number of reports), marked `updated`.
    """
    mail = _Weekly(pair, period, svc, to_partner=True)
    count = len(reports)
    items = report_items(reports, pair.partner.timezone)
    ctx = mail.context(now)
    ctx.update(
        reports=items,
        setback=any(item["setback"] for item in items),
        updated=bool(week and week.digested_reports),
    )
    mark = DigestMark(count)
    return mail.letter("digest", "digest", f"digest{count}", ctx, mark, key_suffix=f":{count}")


def _sent_at(week: Week | None, now: datetime) -> datetime:
    return week.checkin_at if week and week.checkin_at else now


# -- a partnership's life ---------------------------------------------------------------------


def intro(pair: Pair, role: str, svc: ServiceInfo, now: datetime) -> Letter:
    """Introduction of a new partnership to the member or the partner (`role`).

    The partner is asked to answer yes or no (her reply address is the consent token).
    """
    p, member = pair.p, pair.member
    period = utc_week(now)
    who = member if role == "member" else pair.partner
    keys = svc.keys
    reply = keys.address(AGREE, p.id, period) if role == "partner" else keys.plain_address
    first = first_checkin(p, ZoneInfo(member.timezone), svc.settings, now)
    ctx = base(pair, period, reply, who, now, svc)
    ctx.update(
        role=role,
        accepted=p.consent == CONSENT_ACCEPTED,
        checkin_day=(p.checkin_day or svc.settings.checkin_day).title(),
        checkin_time=p.checkin_time or svc.checkin_time,
        first_checkin=local_time(first, member.timezone),
    )
    return Letter(
        "intro",
        f"intro:{p.id}:{role}",
        Recipient.of(who),
        period,
        ctx,
        reply_to=reply,
        partnership_id=p.id,
    )


def summary(pair: Pair, role: str, reason: str, svc: ServiceInfo, now: datetime) -> Letter:
    """The closing summary for the member or the partner: the numbers and the strip."""
    p = pair.p
    who = pair.member if role == "member" else pair.partner
    cur = current_period(p, ZoneInfo(pair.member.timezone), svc.settings, now)
    states = [week["state"] for week in pair.history]
    ctx = base(pair, cur.label if cur else utc_week(now), svc.keys.plain_address, who, now, svc)
    ctx.update(
        role=role,
        reason=reason,
        weeks_asked=sum(1 for state in states if state != "paused"),
        weeks_reported=sum(1 for state in states if state in ("reported", "setback")),
        setbacks=sum(1 for state in states if state == "setback"),
        goals_achieved=sum(1 for g in p.goals if g.done_on),
        goals_total=len(p.goals),
    )
    return Letter(
        "summary",
        f"summary:{p.id}:{role}",
        Recipient.of(who),
        utc_week(now),
        ctx,
        partnership_id=p.id,
    )


def consent_notice(
    p: Partnership,
    member: Person,
    partner: Person,
    state: str,
    text: str,
    svc: ServiceInfo,
    at: datetime,
) -> Letter | None:
    """The admin hears that a partner declined (`state` "declined", her words in `text`) or
    did not answer in time ("no_answer"); None when no admin address is configured."""
    if not svc.admin:
        return None
    ctx = {
        "service": svc.context(),
        "partnership": {"id": p.id, "skill": p.skill},
        "member": {"name": member.name, "email": member.email},
        "partner": {"name": partner.name, "email": partner.email},
        "state": state,
        "days": svc.consent_days,
        "text": text,
    }
    return Letter(
        "consent_notice",
        f"consent_notice:{p.id}:{state}",
        Recipient(svc.admin),
        utc_week(at),
        ctx,
        partnership_id=p.id,
    )


def bounce_notice(address: str, reason: str, svc: ServiceInfo, at: datetime) -> Letter | None:
    """The admin hears that mail to `address` bounces (once per address and week)."""
    if not svc.admin:
        return None
    period = utc_week(at)
    ctx = {"service": svc.context(), "address": address, "reason": reason, "period": period}
    return Letter(
        "bounce_notice", f"bounce_notice:{address}:{period}", Recipient(svc.admin), period, ctx
    )


# -- answers to what people wrote -------------------------------------------------------------


@dataclass(frozen=True)
class Told:
    """What a receipt says: what was done, what was not understood, what we ask back.

    `reply` is the address the text names, `reply_to` the header (None: no Reply-To);
    `period` the period the text is about (None: the week the receipt is sent).
    """

    key: str
    reply: str
    reply_to: str | None
    done: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    question: str = ""
    report_stored: bool = False
    to_partner: bool = False
    period: str | None = None


def receipt(pair: Pair, told: Told, svc: ServiceInfo, at: datetime) -> Letter:
    """A short receipt to the member (or, `told.to_partner`, the partner)."""
    reader = pair.partner if told.to_partner else pair.member
    period = utc_week(at)
    ctx = base(pair, told.period or period, told.reply, reader, at, svc)
    ctx.update(
        done_items=list(told.done),
        problems=list(told.problems),
        question=told.question,
        report_stored=told.report_stored,
    )
    if told.to_partner:
        ctx["role"] = "partner"
    return Letter(
        "receipt",
        told.key,
        Recipient.of(reader),
        period,
        ctx,
        reply_to=told.reply_to,
        partnership_id=pair.p.id,
    )


def pause_notice(
    pair: Pair, action: str, until: str, mid: str, period: str, svc: ServiceInfo, at: datetime
) -> Letter:
    """The partner hears that the member paused ("paused", until a date), resumed or stopped.

    `mid` is the Message-ID of the member's reply that did it; `period` the one it answered.
    """
    reply = svc.keys.address(DIGEST, pair.p.id, period)
    ctx = base(pair, period, reply, pair.partner, at, svc)
    ctx.update(action=action, until=until)
    return Letter(
        "pause_notice",
        f"pause_notice:{hash16(mid)}:{action}",
        Recipient.of(pair.partner),
        utc_week(at),
        ctx,
        reply_to=reply,
        partnership_id=pair.p.id,
    )


def partner_note(pair: Pair, note: str, mid: str, svc: ServiceInfo, at: datetime) -> Letter:
    """The partner's answer to a digest, forwarded to the member from "NAME via mailflow"."""
    p, member = pair.p, pair.member
    cur = current_period(p, ZoneInfo(member.timezone), svc.settings, at)
    keys = svc.keys
    reply = keys.address(CHECKIN, p.id, cur.label) if cur else keys.plain_address
    period = utc_week(at)
    ctx = base(pair, cur.label if cur else period, reply, member, at, svc)
    ctx.update(note=note, received_at=local_time(at, member.timezone))
    return Letter(
        "partner_note",
        f"note:{hash16(mid)}",
        Recipient.of(member),
        period,
        ctx,
        reply_to=reply,
        partnership_id=p.id,
        from_name=f"{pair.partner.name} via mailflow",
    )


# -- mail that came to the plain address ------------------------------------------------------
#
# Anybody can write a From header. What came to the plain address in a member's name is told
# to her at her stored address (never to a Reply-To it carried): a report, so she sees it was
# counted; commands, which wait for her to confirm them from her own mailbox.


def reply_address_of(pair: Pair, svc: ServiceInfo, at: datetime) -> str:
    """Where her answers count as hers: her current check-in address, else the plain one."""
    p = pair.p
    cur = current_period(p, ZoneInfo(pair.member.timezone), svc.settings, at)
    return svc.keys.address(CHECKIN, p.id, cur.label) if cur else svc.keys.plain_address


def _plain_context(
    pair: Pair, period: str, reply: str, sender: str, svc: ServiceInfo, at: datetime
) -> dict[str, Any]:
    ctx = base(pair, period, reply, pair.member, at, svc)
    ctx.update(
        sender=sender,
        plain_address=svc.keys.plain_address,
        received_at=local_time(at, pair.member.timezone),
        admin=svc.admin,
    )
    return ctx


@dataclass(frozen=True)
class Asking:
    """What a confirmation mail asks: request `asked`, its commands in words (`steps`), the
    lines not understood, and whether a report in the same mail was stored (for `period`)."""

    asked: Pending
    steps: tuple[str, ...]
    problems: tuple[str, ...] = ()
    report_stored: bool = False
    period: str = ""
    lapse_days: int = 7


def confirm(pair: Pair, asking: Asking, svc: ServiceInfo, at: datetime) -> Letter:
    """Commands that came to the plain address from her address, for her to confirm.

    It goes to her stored address; its reply address carries the request's own number
    (a CONFIRM token), so her answer confirms exactly what this mail showed her.
    """
    asked, member = asking.asked, pair.member
    reply = svc.keys.address(CONFIRM, asked.n, utc_week(asked.asked_at))
    period = asking.period or utc_week(asked.asked_at)
    ctx = _plain_context(pair, period, reply, member.email, svc, asked.asked_at)
    lapses = asked.asked_at + timedelta(days=asking.lapse_days)
    ctx.update(
        steps=list(asking.steps),
        lines=list(asked.lines),
        problems=list(asking.problems),
        report_stored=asking.report_stored,
        lapses_at=local_time(lapses, member.timezone),
    )
    return Letter(
        "confirm",
        f"confirm:{hash16(asked.message_id)}",
        Recipient.of(member),
        utc_week(at),
        ctx,
        reply_to=reply,
        partnership_id=pair.p.id,
    )


def report_receipt(
    pair: Pair, report: Report, svc: ServiceInfo, at: datetime, problems: Sequence[str] = ()
) -> Letter:
    """A report that came to the plain address: stored, and shown to her at her own address
    (so a report somebody else wrote in her name is seen). Replies go to her check-in."""
    reply = reply_address_of(pair, svc, at)
    ctx = _plain_context(pair, report.period, reply, report.sender, svc, at)
    ctx.update(
        report=report_items([report], pair.member.timezone)[0],
        problems=list(problems),
    )
    return Letter(
        "report_receipt",
        f"receipt:{hash16(report.message_id)}",
        Recipient.of(pair.member),
        utc_week(at),
        ctx,
        reply_to=reply,
        partnership_id=pair.p.id,
    )
