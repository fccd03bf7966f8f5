"""Domain objects: plain frozen dataclasses shared by every module.

They carry data only. `store` turns them into JSON documents and back; the rules that govern
them live in `people`, `partnerships` and `schedule`. Datetimes are always timezone-aware UTC;
dates are local calendar dates of the person they belong to.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from mailflow.errors import StoreError

ACTIVE = "active"
PAUSED = "paused"
ENDED = "ended"
CONSENT_PENDING = "pending"
CONSENT_ACCEPTED = "accepted"
CONSENT_DECLINED = "declined"


def to_iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError("naive datetime in the domain")
    return dt.astimezone(UTC).isoformat()


def from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def stamp(d: dict[str, Any], key: str, what: str) -> datetime:
    """A required stamp of a stored record; StoreError naming the record when it is missing.

    A missing stamp is never filled with "now": that would mix the wall clock into decisions
    made on an injected clock (and hide a damaged file).
    """
    value = from_iso(d.get(key))
    if value is None:
        raise StoreError(f'{what}: missing "{key}"')
    return value


def _date(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


@dataclass(frozen=True)
class Person:
    email: str
    name: str
    department: str
    manager: str | None = None
    timezone: str = "UTC"
    offers: tuple[str, ...] = ()
    bouncing: bool = False
    bounce_reason: str = ""

    def to_doc(self) -> dict[str, Any]:
        # Explicit rather than asdict(): asdict deep-copies every field, and documents are
        # built by the thousand in a fan-out.
        return {
            "email": self.email,
            "name": self.name,
            "department": self.department,
            "manager": self.manager,
            "timezone": self.timezone,
            "offers": list(self.offers),
            "bouncing": self.bouncing,
            "bounce_reason": self.bounce_reason,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Person:
        return cls(
            email=d["email"],
            name=d["name"],
            department=d["department"],
            manager=d.get("manager"),
            timezone=d.get("timezone", "UTC"),
            offers=tuple(d.get("offers", ())),
            bouncing=bool(d.get("bouncing", False)),
            bounce_reason=d.get("bounce_reason", ""),
        )


@dataclass(frozen=True)
class Goal:
    n: int
    due: date
    text: str
    done_on: date | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "due": self.due.isoformat(),
            "text": self.text,
            "done_on": self.done_on.isoformat() if self.done_on else None,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Goal:
        return cls(
            n=d["n"],
            due=date.fromisoformat(d["due"]),
            text=d["text"],
            done_on=_date(d.get("done_on")),
        )


OPEN = "open"  # a Pending request still waits for her answer
CONFIRMED = "confirmed"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class Pending:
    """Commands a member sent from an address not bound to her (the plain address), held
    until she confirms them from her own mailbox. `n` numbers the request: it is the number
    in the token of the confirmation mail's reply address, so an answer confirms exactly the
    request that mail showed her. The lines are kept as she wrote them (normalised) with her
    date when she wrote them, so they mean the same when confirmed ("pause 2 weeks")."""

    n: int
    message_id: str  # of the mail that asked
    asked_at: datetime
    asked_on: date  # the member's date then
    lines: tuple[str, ...]
    state: str = OPEN  # open | confirmed | cancelled (an open one lapses by age)

    def to_doc(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "message_id": self.message_id,
            "asked_at": to_iso(self.asked_at),
            "asked_on": self.asked_on.isoformat(),
            "lines": list(self.lines),
            "state": self.state,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Pending:
        return cls(
            n=int(d["n"]),
            message_id=d["message_id"],
            asked_at=stamp(d, "asked_at", f"confirmation {d['n']}"),
            asked_on=date.fromisoformat(d["asked_on"]),
            lines=tuple(d["lines"]),
            state=d.get("state", OPEN),
        )


@dataclass(frozen=True)
class Partnership:
    id: int
    member: str
    partner: str
    skill: str
    goals: tuple[Goal, ...]
    why: str
    saddle: str
    start: date
    created_at: datetime
    checkin_day: str | None = None  # None: the configured default
    checkin_time: str | None = None
    status: str = ACTIVE
    paused_until: date | None = None  # a pause with a date resumes by itself on that date
    allow_same_line: bool = False
    ended_at: datetime | None = None
    consent: str = CONSENT_ACCEPTED  # pending | accepted | declined (the partner's answer)
    consent_at: datetime | None = None
    consent_note: str = ""  # the partner's words when declining
    introduced_at: datetime | None = None
    consent_overdue_at: datetime | None = None  # when the admin was told nobody answered
    stop_requested: str = ""  # Message-ID of the reply that asked to stop (awaiting a second)
    stop_requested_at: datetime | None = None
    end_reason: str = ""
    pending: tuple[Pending, ...] = ()  # commands waiting for the member's confirmation

    def to_doc(self) -> dict[str, Any]:
        doc = {
            "id": self.id,
            "member": self.member,
            "partner": self.partner,
            "skill": self.skill,
            "goals": [g.to_doc() for g in self.goals],
            "why": self.why,
            "saddle": self.saddle,
            "start": self.start.isoformat(),
            "created_at": to_iso(self.created_at),
            "checkin_day": self.checkin_day,
            "checkin_time": self.checkin_time,
            "status": self.status,
            "paused_until": self.paused_until.isoformat() if self.paused_until else None,
            "allow_same_line": self.allow_same_line,
            "ended_at": to_iso(self.ended_at),
            "consent": self.consent,
            "consent_at": to_iso(self.consent_at),
            "consent_note": self.consent_note,
            "introduced_at": to_iso(self.introduced_at),
            "consent_overdue_at": to_iso(self.consent_overdue_at),
            "stop_requested": self.stop_requested,
            "stop_requested_at": to_iso(self.stop_requested_at),
            "end_reason": self.end_reason,
        }
        if self.pending:  # absent when empty: older records stay byte for byte the same
            doc["pending"] = [x.to_doc() for x in self.pending]
        return doc

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Partnership:
        return cls(
            id=int(d["id"]),
            member=d["member"],
            partner=d["partner"],
            skill=d["skill"],
            goals=tuple(Goal.from_doc(g) for g in d["goals"]),
            why=d["why"],
            saddle=d["saddle"],
            start=date.fromisoformat(d["start"]),
            created_at=stamp(d, "created_at", f"partnership {d['id']}"),
            checkin_day=d.get("checkin_day"),
            checkin_time=d.get("checkin_time"),
            status=d.get("status", ACTIVE),
            paused_until=_date(d.get("paused_until")),
            allow_same_line=bool(d.get("allow_same_line", False)),
            ended_at=from_iso(d.get("ended_at")),
            consent=d.get("consent", CONSENT_ACCEPTED),
            consent_at=from_iso(d.get("consent_at")),
            consent_note=d.get("consent_note", ""),
            introduced_at=from_iso(d.get("introduced_at")),
            consent_overdue_at=from_iso(d.get("consent_overdue_at")),
            stop_requested=d.get("stop_requested", ""),
            stop_requested_at=from_iso(d.get("stop_requested_at")),
            end_reason=d.get("end_reason", ""),
            pending=tuple(Pending.from_doc(x) for x in d.get("pending", ())),
        )

    def with_changes(self, **changes: Any) -> Partnership:
        return replace(self, **changes)


@dataclass(frozen=True)
class Week:
    """What happened in one partnership's period: the scheduler's memory lives here, on disk."""

    partnership_id: int
    period: str  # ISO week label in the member's zone, e.g. "2026-W48"
    checkin_at: datetime | None = None  # when the check-in was queued
    reminder_at: datetime | None = None
    no_report_at: datetime | None = None
    digest_at: datetime | None = None
    digested_reports: int = 0  # how many reports the last digest carried

    @property
    def key(self) -> str:
        return f"{self.partnership_id}:{self.period}"

    def to_doc(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "partnership_id": self.partnership_id,
            "period": self.period,
            "checkin_at": to_iso(self.checkin_at),
            "reminder_at": to_iso(self.reminder_at),
            "no_report_at": to_iso(self.no_report_at),
            "digest_at": to_iso(self.digest_at),
            "digested_reports": self.digested_reports,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Week:
        return cls(
            partnership_id=int(d["partnership_id"]),
            period=d["period"],
            checkin_at=from_iso(d.get("checkin_at")),
            reminder_at=from_iso(d.get("reminder_at")),
            no_report_at=from_iso(d.get("no_report_at")),
            digest_at=from_iso(d.get("digest_at")),
            digested_reports=int(d.get("digested_reports", 0)),
        )


@dataclass(frozen=True)
class Report:
    """A progress record: one stored reply from a member."""

    partnership_id: int
    period: str
    received_at: datetime
    message_id: str
    sender: str
    text: str
    setback: bool
    done: str = ""
    setback_text: str = ""
    next: str = ""
    raw_ref: str = ""  # where the raw message is kept, relative to data_dir

    def to_doc(self) -> dict[str, Any]:
        return {
            "partnership_id": self.partnership_id,
            "period": self.period,
            "received_at": to_iso(self.received_at),
            "message_id": self.message_id,
            "sender": self.sender,
            "text": self.text,
            "setback": self.setback,
            "done": self.done,
            "setback_text": self.setback_text,
            "next": self.next,
            "raw_ref": self.raw_ref,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Report:
        return cls(
            partnership_id=int(d["partnership_id"]),
            period=d["period"],
            received_at=stamp(d, "received_at", f"report {d['message_id']}"),
            message_id=d["message_id"],
            sender=d["sender"],
            text=d["text"],
            setback=bool(d["setback"]),
            done=d.get("done", ""),
            setback_text=d.get("setback_text", ""),
            next=d.get("next", ""),
            raw_ref=d.get("raw_ref", ""),
        )


QUEUED = "queued"
SENT = "sent"
FAILED = "failed"
SUPERSEDED = "superseded"  # held for quiet hours, then replaced by a newer mail: never sent


@dataclass(frozen=True)
class Outgoing:
    """One outgoing message: recorded before it is sent, marked after."""

    key: str  # idempotency key, e.g. "checkin:12:2026-W48"; one message per key, ever
    kind: str
    to: str
    message_id: str
    path: str  # the rendered .eml, relative to data_dir
    created_at: datetime
    partnership_id: int | None = None
    period: str | None = None
    status: str = QUEUED
    attempts: int = 0
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    error: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "to": self.to,
            "message_id": self.message_id,
            "path": self.path,
            "created_at": to_iso(self.created_at),
            "partnership_id": self.partnership_id,
            "period": self.period,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": to_iso(self.next_attempt_at),
            "sent_at": to_iso(self.sent_at),
            "error": self.error,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Outgoing:
        return cls(
            key=d["key"],
            kind=d["kind"],
            to=d["to"],
            message_id=d["message_id"],
            path=d["path"],
            created_at=stamp(d, "created_at", f"outgoing {d['key']}"),
            partnership_id=d.get("partnership_id"),
            period=d.get("period"),
            status=d.get("status", QUEUED),
            attempts=int(d.get("attempts", 0)),
            next_attempt_at=from_iso(d.get("next_attempt_at")),
            sent_at=from_iso(d.get("sent_at")),
            error=d.get("error", ""),
        )


@dataclass(frozen=True)
class Inbound:
    """An accepted inbound message that is not a progress record (or was quarantined)."""

    message_id: str
    received_at: datetime
    kind: str  # auto_reply | bounce | quarantined | duplicate
    sender: str
    detail: str = ""
    partnership_id: int | None = None
    period: str | None = None
    raw_ref: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "received_at": to_iso(self.received_at),
            "kind": self.kind,
            "sender": self.sender,
            "detail": self.detail,
            "partnership_id": self.partnership_id,
            "period": self.period,
            "raw_ref": self.raw_ref,
            "extra": copy.deepcopy(self.extra),  # as asdict did: the doc shares nothing
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Inbound:
        return cls(
            message_id=d["message_id"],
            received_at=stamp(d, "received_at", f"inbound {d['message_id']}"),
            kind=d["kind"],
            sender=d["sender"],
            detail=d.get("detail", ""),
            partnership_id=d.get("partnership_id"),
            period=d.get("period"),
            raw_ref=d.get("raw_ref", ""),
            extra=dict(d.get("extra", {})),
        )


@dataclass(frozen=True)
class PeriodSummary:
    """What one period file says about one partnership, for the week-by-week strip."""

    checkin_sent: bool = False
    no_report_sent: bool = False
    reports: int = 0
    setback: bool = False


@dataclass(frozen=True)
class Roster:
    """People and partnerships as of one read: a batch of work decides against one snapshot.

    Built once per tick or ingest batch (`Store.people_map`/`partnerships_map` are cached
    per version of the core file); a use case about one partnership does not need one.
    """

    people: Mapping[str, Person]
    partnerships: Mapping[int, Partnership]

    def has_both(self, p: Partnership) -> bool:
        """Both people of the partnership exist (a removed person's partnerships are idle)."""
        return p.member in self.people and p.partner in self.people
