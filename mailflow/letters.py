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

A report is shown as the member wrote it (`report_parts`): the text under no label first, then
the labelled sections she filled, each reflowed into paragraphs (`reflow`); a Setback section
that says "none" becomes the report's "no setback" mark, so no digest ever shows "Setback:
none", least of all under a setback banner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from mailflow.config import DEFAULT_FROM_NAME, Config
from mailflow.errors import TemplateError
from mailflow.models import (
    CONSENT_ACCEPTED,
    ENDED,
    Partnership,
    Pending,
    PeriodSummary,
    Person,
    Report,
    Week,
)
from mailflow.parse import free_text, label_of_line, says_no_setback
from mailflow.schedule import (
    ON_TIME,
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
    "released",
    "forward",
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
    `message_id` None means `<TEMPLATE.hash16(key)@DOMAIN>`; `from_name` "" means the
    service's display name. `tz` is the reader's zone ("" for the service's): unless
    `anytime`, a letter that would arrive in the reader's quiet hours waits for their end
    (`anytime`: her check-in and reminder at the time she chose, and an answer to the person
    who just wrote).
    """

    template: str
    key: str
    to: Recipient
    period: str
    ctx: Mapping[str, Any]
    reply_to: str | None = None
    message_id: str | None = None
    from_name: str = ""
    partnership_id: int | None = None
    mark: Mark | DigestMark | None = None
    tz: str = ""
    anytime: bool = False
    replaces: tuple[str, ...] = ()  # keys of earlier letters it makes moot while they wait


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
    from_name: str = DEFAULT_FROM_NAME  # the display name of our From

    @classmethod
    def from_config(cls, config: Config, secret: bytes) -> ServiceInfo:
        """The service as `config` describes it, signing tokens with `secret`."""
        return cls(
            keys=Keys(secret, config.service.domain, config.service.sender.lower()),
            from_address=config.service.sender,
            from_name=config.service.sender_name,
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
        return {"name": self.from_name, "domain": self.domain, "from_address": self.from_address}

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
    """Reports oldest first, each received-at in the reader's zone `tz`.

    `parts` is what a template shows (see `report_parts`); `free_text` the text under no
    label; the other keys are the stored fields, as templates have always had them.
    """
    return [
        {
            "received_at": local_time(r.received_at, tz),
            "text": r.text,
            "done": r.done,
            "setback_text": r.setback_text,
            "next": r.next,
            "setback": r.setback,
            "free_text": free_text(r.text) if _labelled(r) else r.text.strip(),
            "parts": report_parts(r),
        }
        for r in sorted(reports, key=lambda r: r.received_at)
    ]


def _labelled(r: Report) -> bool:
    return bool(r.done or r.setback_text or r.next)


def report_parts(r: Report) -> list[dict[str, Any]]:
    """A report as the partner reads it: nothing she wrote is lost, nothing is made up.

    Each part is {label, text, paragraphs}: first what she wrote under no label (label ""),
    then Done, Setback and Next where she filled them. A Setback section that only says
    "none" is left out: the report's `setback` flag (false then) says it, so "Setback: none"
    can never stand in a digest, under a setback banner or anywhere else. Texts are reflowed
    (`reflow`): `text` has one line per paragraph, `paragraphs` lists them.
    """
    if not _labelled(r):
        return [_part("", r.text)]
    parts = []
    free = free_text(r.text)
    if free:
        parts.append(_part("", free))
    if r.done:
        parts.append(_part("Done", r.done))
    if r.setback_text and not (not r.setback and says_no_setback(r.setback_text)):
        parts.append(_part("Setback", r.setback_text))
    if r.next:
        parts.append(_part("Next", r.next))
    return parts


def _part(label: str, text: str) -> dict[str, Any]:
    paragraphs = reflow(text)
    return {"label": label, "text": "\n\n".join(paragraphs), "paragraphs": paragraphs}


MIN_WRAP_WIDTH = 60  # a text whose lines all stay shorter was not wrapped by a program
MAX_WRAP_WIDTH = 80  # mail clients wrap at 72 to 78 columns; a longer line is not a wrap's
_LIST_LINE = re.compile(r"^\s*(?:[-*•·+–]\s|\d{1,3}[.)]\s|>)")


def reflow(text: str) -> list[str]:
    """The paragraphs of a member's text, with the line breaks her mail client added undone.

    The stored text has already lost format=flowed's soft breaks (the parser joins them, RFC
    3676), so a flowed mail arrives as one line per paragraph, and those are left as they
    are. A client that wraps without format=flowed (mutt with its editor, many webmails)
    breaks lines at a fixed width of at most 80 columns: when at least two lines reach
    near the longest such line, that is the width, and a line is taken to continue on the
    next when the next line's first word would not have fitted on it (greedy wrapping would
    have put it there otherwise). Blank lines stay paragraph breaks; list items, section
    labels and lines after a colon keep their own line (as "\n" inside the paragraph).
    """
    lines = [line.rstrip() for line in text.strip("\n").split("\n")]
    width = _wrap_width(lines)
    paragraphs: list[str] = []
    current: list[str] = []
    last = ""  # the last physical line, for the width test
    for line in lines:
        if not line.strip():
            if current:
                paragraphs.append("\n".join(current))
                current = []
            continue
        if current and width and _continues(last, line, width):
            current[-1] += " " + line.strip()
        else:
            current.append(line)
        last = line
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def _wrap_width(lines: list[str]) -> int:
    """The width a program wrapped `lines` at, or 0 when they do not look wrapped."""
    lengths = [len(line) for line in lines if len(line) <= MAX_WRAP_WIDTH]
    width = max(lengths, default=0)
    if width < MIN_WRAP_WIDTH or sum(1 for n in lengths if n >= width - 12) < 2:
        return 0
    return width


def _continues(previous: str, line: str, width: int) -> bool:
    """Whether `line` is the rest of `previous`, which a wrap at `width` cut."""
    if len(previous) > width or previous.rstrip().endswith(":"):
        return False
    if _LIST_LINE.match(line) or label_of_line(line) is not None:
        return False
    return len(previous) + 1 + len(line.split()[0]) > width


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
        anytime: bool = False,
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
            tz=self.reader.timezone,
            anytime=anytime,
        )


def on_time(period: Period, sent_at: datetime) -> bool:
    """Whether a check-in sent at `sent_at` went out at the moment she chose (within
    `ON_TIME`), rather than caught up later: only then are it and its reminder sent in her
    quiet hours."""
    return sent_at - period.checkin_at <= ON_TIME


def checkin(pair: Pair, period: Period, svc: ServiceInfo, now: datetime) -> Letter:
    """The member's check-in: her goals, the questions, her reply address."""
    week = _Weekly(pair, period, svc, to_partner=False)
    ctx = week.context(now)
    ctx["checkin_at"] = local_time(period.checkin_at, pair.member.timezone)
    anytime = on_time(period, now)
    return week.letter("checkin", "checkin", "checkin", ctx, Mark("checkin_at"), anytime=anytime)


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
    mark, anytime = Mark("checkin_at"), on_time(period, now)
    return week.letter("checkin_ack", "checkin", "checkin", ctx, mark, anytime=anytime)


def reminder(
    pair: Pair, period: Period, week: Week | None, svc: ServiceInfo, now: datetime
) -> Letter:
    """One reminder to the member; "the check-in was due" counts from when it went out."""
    mail = _Weekly(pair, period, svc, to_partner=False)
    ctx = mail.context(now)
    ctx["checkin_at"] = local_time(_sent_at(week, now), pair.member.timezone)
    mark = Mark("reminder_at", only_without_reports=True)
    # At her chosen time of day when the check-in was (it counts from the check-in).
    anytime = on_time(period, _sent_at(week, now))
    return mail.letter("reminder", "reminder", "reminder", ctx, mark, anytime=anytime)


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
    released: bool = False,
) -> Letter:
    """The partner's digest: every report of the period; a setback if any report is one.

    A later report makes a new digest (keyed by the number of reports), marked `updated`.
    `released`: sent because an admin released a report from the quarantine (its period
    may be long past; the digest says so).
    """
    mail = _Weekly(pair, period, svc, to_partner=True)
    count = len(reports)
    items = report_items(reports, pair.partner.timezone)
    ctx = mail.context(now)
    ctx.update(
        reports=items,
        setback=any(item["setback"] for item in items),
        updated=bool(week and week.digested_reports),
        released=released,
    )
    mark = DigestMark(count)
    letter = mail.letter("digest", "digest", f"digest{count}", ctx, mark, key_suffix=f":{count}")
    # An earlier digest of the week still held for the partner's quiet hours is moot.
    earlier = tuple(f"digest:{pair.p.id}:{period.label}:{n}" for n in range(1, count))
    return replace(letter, replaces=earlier)


def _sent_at(week: Week | None, now: datetime) -> datetime:
    return week.checkin_at if week and week.checkin_at else now


# -- a partnership's life ---------------------------------------------------------------------


def intro(pair: Pair, role: str, svc: ServiceInfo, now: datetime, resend: str = "") -> Letter:
    """Introduction of a new partnership to the member or the partner (`role`).

    The partner is asked to answer yes or no (her reply address is the consent token).
    `resend` marks an admin's resend (`partnerships resend-intro`): a key of its own, since
    the first introduction's key is spent (one mail per key, ever).
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
        f"intro:{p.id}:{role}" + (f":resent:{resend}" if resend else ""),
        Recipient.of(who),
        period,
        ctx,
        reply_to=reply,
        partnership_id=p.id,
        tz=who.timezone,
    )


ASKED = ("reported", "setback", "missed")  # strip states of a week that was asked and is over


def summary(pair: Pair, role: str, reason: str, svc: ServiceInfo, now: datetime) -> Letter:
    """The closing summary for the member or the partner: the numbers and the strip.

    A week counts as asked once it is over: reported, or missed. A last week still open
    (its check-in out, no report, its deadline not yet come) is not counted against her.
    """
    p = pair.p
    who = pair.member if role == "member" else pair.partner
    cur = current_period(p, ZoneInfo(pair.member.timezone), svc.settings, now)
    states = [week["state"] for week in pair.history]
    ctx = base(pair, cur.label if cur else utc_week(now), svc.keys.plain_address, who, now, svc)
    asked = sum(1 for state in states if state in ASKED)
    reported = sum(1 for state in states if state in ("reported", "setback"))
    rate = round(100 * reported / asked) if asked else None
    ctx.update(
        role=role,
        reason=reason,
        weeks_asked=asked,
        weeks_reported=reported,
        setbacks=sum(1 for state in states if state == "setback"),
        goals_achieved=sum(1 for g in p.goals if g.done_on),
        goals_total=len(p.goals),
        report_rate=rate,
        report_rate_level=rate_level(rate),
    )
    return Letter(
        "summary",
        f"summary:{p.id}:{role}",
        Recipient.of(who),
        utc_week(now),
        ctx,
        partnership_id=p.id,
        tz=who.timezone,
    )


RATE_LEVELS = ((80, "high"), (50, "medium"), (0, "low"))
"""Weeks reported out of weeks asked, in percent: the lowest rate of each level."""


def rate_level(rate: int | None) -> str:
    """ "high" (80 % and more), "medium" (50 % and more), "low", or "none" (nothing asked):
    what the summary's weeks-reported tile is coloured by."""
    if rate is None:
        return "none"
    return next(level for floor, level in RATE_LEVELS if rate >= floor)


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
    did not answer in time ("no_answer"); None when no admin address is configured.

    `days` is how many whole days have passed since the invitation went out.
    """
    if not svc.admin:
        return None
    invited = p.introduced_at or p.created_at
    ctx = {
        "service": svc.context(),
        "partnership": {"id": p.id, "skill": p.skill},
        "member": {"name": member.name, "email": member.email},
        "partner": {"name": partner.name, "email": partner.email},
        "state": state,
        "days": max(0, (at - invited).days),
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


# What each of our mails is called in a notice to the admin, by template name.
MAIL_NAMES = {
    "intro": "introduction",
    "checkin": "check-in",
    "checkin_ack": "check-in",
    "reminder": "reminder",
    "digest": "digest",
    "no_report": "no-report digest",
    "summary": "closing summary",
    "receipt": "receipt",
    "pause_notice": "pause notice",
    "partner_note": "forwarded partner note",
    "consent_notice": "consent notice",
    "bounce_notice": "bounce notice",
    "forward": "forwarded mail",
}


@dataclass(frozen=True)
class Bounced:
    """Which of our mails bounced: its template, partnership and job key (from the record of
    the mail the bounce returned, found by its Message-ID)."""

    template: str
    partnership_id: int | None = None
    skill: str = ""
    key: str = ""

    @property
    def role(self) -> str:
        """ "member" or "partner" for an introduction (its key ends so), else ""."""
        parts = self.key.split(":")
        return parts[2] if self.template == "intro" and len(parts) > 2 else ""


def bounce_command(address: str, bounced: Bounced | None) -> str:
    """The command that helps the admin once the mailbox works again: a lost introduction is
    sent again; for other mail, the address is marked working (the next week's mail goes out
    as usual)."""
    if bounced is not None and bounced.template == "intro" and bounced.partnership_id:
        return f"mailflow partnerships resend-intro {bounced.partnership_id}"
    return f"mailflow people update {address} --clear-bouncing"


def bounce_notice(
    address: str, reason: str, svc: ServiceInfo, at: datetime, bounced: Bounced | None = None
) -> Letter | None:
    """The admin hears that mail to `address` bounces (once per address and week): which
    mail it was (`bounced`, None when the bounce did not say) and the command that helps."""
    if not svc.admin:
        return None
    period = utc_week(at)
    pid = bounced.partnership_id if bounced else None
    ctx = {
        "service": svc.context(),
        "address": address,
        "reason": reason,
        "period": period,
        "mail": MAIL_NAMES.get(bounced.template, "mail") if bounced else "",
        "partnership": {"id": pid, "skill": bounced.skill} if bounced and pid else None,
        "role": bounced.role if bounced else "",
        "command": bounce_command(address, bounced),
    }
    return Letter(
        "bounce_notice", f"bounce_notice:{address}:{period}", Recipient(svc.admin), period, ctx
    )


# -- answers to what people wrote -------------------------------------------------------------


@dataclass(frozen=True)
class Told:
    """What a receipt says: what was done, what was not understood, what we ask back.

    `reply` is the address the text names, `reply_to` the header (None: no Reply-To);
    `period` the period the text is about (None: the week the receipt is sent).
    `to_writer`: it answers what its reader just wrote, so it goes at once, quiet hours or
    not (False: news for someone else, e.g. the member hearing her partner accepted).
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
    to_writer: bool = True


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
        tz=reader.timezone,
        anytime=told.to_writer,
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
        tz=pair.partner.timezone,
    )


def partner_note(pair: Pair, note: str, mid: str, svc: ServiceInfo, at: datetime) -> Letter:
    """The partner's answer to a digest, forwarded to the member from "NAME via <us>"."""
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
        from_name=f"{pair.partner.name} via {svc.from_name}",
        tz=member.timezone,
    )


@dataclass(frozen=True)
class Written:
    """A message a person wrote to our From address, as the admin is shown it."""

    sender: str  # the sender's address ("" when the message named none)
    subject: str
    text: str  # what the message says (its text part, or its HTML as text)
    message_id: str
    received_at: datetime
    to: str  # the address it was written to (our From address)
    reply_to: str | None = None  # the sender's address when it is one we can answer
    kept_at: str = ""  # where the raw message is archived, relative to data_dir


def forward(written: Written, svc: ServiceInfo) -> Letter | None:
    """Mail a person wrote to our From address, forwarded to the admin (None without one).

    Its Reply-To is the writer's address, so the admin's answer goes straight to them; we
    never answer such mail ourselves.
    """
    if not svc.admin:
        return None
    ctx = {
        "service": svc.context(),
        "sender": written.sender,
        "subject": written.subject,
        "text": written.text,
        "to_address": written.to,
        "received_at": local_time(written.received_at, svc.default_tz),
        "kept_at": written.kept_at,
    }
    return Letter(
        "forward",
        f"forward:{hash16(written.message_id)}",
        Recipient(svc.admin),
        utc_week(written.received_at),
        ctx,
        reply_to=written.reply_to,
    )


def released(
    pair: Pair,
    period: str,
    reply_at: datetime,
    reason: str,
    sender: str,
    not_run: Sequence[str],
    mid: str,
    svc: ServiceInfo,
    at: datetime,
) -> Letter:
    """The member hears that an admin released her reply (received `reply_at`, set aside for
    `reason`) from the quarantine: it counts for `period` after all, and her partner gets it
    now. `sender` is the address it came from; when that is not hers, the commands in it
    were not run (`not_run`), and she is told so, so she can send them herself.
    """
    p, member = pair.p, pair.member
    cur = current_period(p, ZoneInfo(member.timezone), svc.settings, at)
    keys = svc.keys
    running = cur is not None and p.status != ENDED
    reply = keys.address(CHECKIN, p.id, cur.label) if running and cur else keys.plain_address
    ctx = base(pair, period, reply, member, at, svc)
    ctx.update(
        received_at=local_time(reply_at, member.timezone),
        reason=reason,
        sender=sender,
        own_address=sender == member.email,
        not_run=list(not_run),
    )
    return Letter(
        "released",
        f"released:{hash16(mid)}",
        Recipient.of(member),
        utc_week(at),
        ctx,
        reply_to=reply,
        partnership_id=p.id,
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
    lines not understood, and whether a report in the same mail was stored (for `period`).
    `released_from`: the mail came through the quarantine, released by an admin, from this
    address ("": it came to the plain address from hers)."""

    asked: Pending
    steps: tuple[str, ...]
    problems: tuple[str, ...] = ()
    report_stored: bool = False
    period: str = ""
    lapse_days: int = 7
    released_from: str = ""  # an admin released it from the quarantine: who sent it


def confirm(pair: Pair, asking: Asking, svc: ServiceInfo, at: datetime) -> Letter:
    """Commands that came in her name without proof, for her to confirm: to the plain
    address from her address, or from another address in a mail an admin released from the
    quarantine (`released` in the context: then `sender` is that address).

    It goes to her stored address; its reply address carries the request's own number
    (a CONFIRM token), so her answer confirms exactly what this mail showed her.
    """
    asked, member = asking.asked, pair.member
    reply = svc.keys.address(CONFIRM, asked.n, utc_week(asked.asked_at))
    period = asking.period or utc_week(asked.asked_at)
    sender = asking.released_from or member.email
    ctx = _plain_context(pair, period, reply, sender, svc, asked.asked_at)
    lapses = asked.asked_at + timedelta(days=asking.lapse_days)
    ctx.update(
        released=bool(asking.released_from),
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
