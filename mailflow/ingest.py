"""Inbound decisions: what one accepted message means, as a pure function.

Given the parsed message, the token it was addressed to, the partnerships and `now`-derived
helpers, decide: store a progress record (with any commands in it), take a partner's consent
or note, record it as other inbound mail (auto-reply, bounce), or quarantine it with a reason
for a human. Nothing here touches disk; `service` applies the decision. Mailman-style: sort
at the door, shunt what we can't handle to a queue.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from mailflow.commands import Command, extract_commands, parse_consent
from mailflow.models import CONSENT_ACCEPTED, ENDED, Inbound, Partnership, Person, Report
from mailflow.parse import ParsedMessage, detect_setback, find_sections
from mailflow.tokens import AGREE, CHECKIN, DIGEST, Token

REPORT = "report"  # a member's reply: a report and/or commands
INBOUND = "inbound"  # recorded, nothing else to do
QUARANTINE = "quarantine"
CONSENT = "consent"  # a partner's answer to the introduction
NOTE = "note"  # a partner's answer to a digest, forwarded to the member
AMBIGUOUS = "ambiguous"  # a member with several partnerships; we must ask which

MAX_TOKEN_AGE_WEEKS = 8  # older tokens are replays, not late replies


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    period: str | None = None
    partnership_id: int | None = None
    report: Report | None = None
    inbound: Inbound | None = None
    bounced: tuple[str, ...] = field(default_factory=tuple)
    commands: tuple[Command, ...] = field(default_factory=tuple)
    problems: tuple[str, ...] = field(default_factory=tuple)
    consent: str | None = None
    note: str = ""
    sender: str = ""


def message_id_of(parsed: ParsedMessage, raw: bytes) -> str:
    """The message's own Message-ID, or a stable stand-in so duplicates still match."""
    if parsed.message_id:
        return parsed.message_id
    return f"<sha256.{hashlib.sha256(raw).hexdigest()[:40]}@mailflow.invalid>"


_DIAGNOSTIC = re.compile(rb"^Diagnostic-Code:[ \t]*(?:smtp;)?[ \t]*([^\r\n]{1,300})", re.I | re.M)
_STATUS = re.compile(rb"^Status:[ \t]*([245]\.\d{1,3}\.\d{1,3})", re.I | re.M)


def bounce_reason(raw: bytes, detail: str) -> str:
    """The receiving server's own words from a DSN (Diagnostic-Code, Status), else `detail`."""
    head = raw[:262_144]
    diagnostic = _DIAGNOSTIC.search(head)
    if diagnostic:
        return diagnostic.group(1).decode("utf-8", "replace").strip()
    status = _STATUS.search(head)
    if status:
        return f"status {status.group(1).decode('ascii')} ({detail})"
    return detail


def weeks_between(older: str, newer: str) -> int:
    def monday(label: str) -> date:
        year, week = label.split("-W")
        return date.fromisocalendar(int(year), int(week), 1)

    return (monday(newer) - monday(older)).days // 7


def _pick(candidates: Sequence[Partnership], skill: str | None, subject: str) -> Partnership | None:
    if len(candidates) == 1:
        return candidates[0]
    if skill:
        chosen = [p for p in candidates if p.skill == " ".join(skill.lower().split())]
        if len(chosen) == 1:
            return chosen[0]
    # Whole words only: "go" must not pick "Going well with the queries".
    chosen = [
        p for p in candidates if re.search(rf"(?<!\w){re.escape(p.skill)}(?!\w)", subject, re.I)
    ]
    return chosen[0] if len(chosen) == 1 else None


def decide(
    *,
    parsed: ParsedMessage,
    message_id: str,
    token: Token | None,
    to_bounce_address: bool,
    to_plain_address: bool,
    envelope_from: str,
    partnerships: Mapping[int, Partnership],
    people: Mapping[str, Person],
    current_period: Callable[[Partnership], str | None],
    report_period: Callable[[Partnership, str | None], str],
    local_today: Callable[[Partnership], date],
    received_at: datetime,
    raw_ref: str,
) -> Decision:
    sender = (parsed.from_address or envelope_from or "").lower()

    def inbound(
        kind: str, detail: str, pid: int | None = None, period: str | None = None, **extra: object
    ) -> Inbound:
        return Inbound(
            message_id=message_id,
            received_at=received_at,
            kind=kind,
            sender=sender,
            detail=detail,
            partnership_id=pid,
            period=period,
            raw_ref=raw_ref,
            extra=dict(extra),
        )

    if parsed.kind == "bounce" or (to_bounce_address and not envelope_from):
        bounced = tuple(a.lower() for a in parsed.bounced_recipients)
        return Decision(
            INBOUND,
            f"bounce: {parsed.detail}",
            bounced=bounced,
            inbound=inbound("bounce", parsed.detail, recipients=list(bounced)),
        )
    if to_bounce_address and token is None:
        # Auto-replies and stray mail to our return path: keep a record, answer nothing.
        return Decision(
            INBOUND,
            f"to bounce address: {parsed.detail}",
            inbound=inbound(parsed.kind, parsed.detail),
        )

    p: Partnership | None = None
    if token is not None:
        p = partnerships.get(token.partnership_id)
        if p is None:
            return Decision(QUARANTINE, f"unknown partnership {token.partnership_id}")
        expected = people.get(p.member if token.kind == CHECKIN else p.partner)
        if expected is None or sender != expected.email:
            who = "member" if token.kind == CHECKIN else "partner"
            return Decision(
                QUARANTINE,
                f"sender mismatch: from {sender or 'nobody'}, "
                f"expected the {who} {expected.email if expected else '?'}",
                partnership_id=p.id,
                period=token.period,
            )
        if p.status == ENDED:
            return Decision(QUARANTINE, f"partnership {p.id} has ended", partnership_id=p.id)
    elif to_plain_address:
        mine = [q for q in partnerships.values() if q.member == sender and q.status != ENDED]
        candidates = [q for q in mine if q.consent == CONSENT_ACCEPTED]
        if not candidates:
            if mine:
                return Decision(
                    QUARANTINE,
                    f"the partner of {sender} has not accepted yet",
                    partnership_id=mine[0].id,
                )
            return Decision(QUARANTINE, f"no active partnership with member {sender or '?'}")
        extracted = extract_commands(parsed.text, date.min)
        p = _pick(candidates, extracted.skill, parsed.subject)
        if p is None:
            if parsed.kind == "auto_reply":
                return Decision(
                    INBOUND,
                    f"auto-reply: {parsed.detail}",
                    inbound=inbound("auto_reply", parsed.detail),
                )
            skills = sorted(q.skill for q in candidates)
            return Decision(
                AMBIGUOUS,
                "which partnership: " + ", ".join(skills),
                sender=sender,
                inbound=inbound("ambiguous", ", ".join(skills)),
            )
    else:
        return Decision(QUARANTINE, "no check-in token in the address or references")

    pid = p.id
    if parsed.kind == "auto_reply":
        period = token.period if token else None
        return Decision(
            INBOUND,
            f"auto-reply: {parsed.detail}",
            period=period,
            partnership_id=pid,
            inbound=inbound("auto_reply", parsed.detail, pid, period),
        )

    if token is not None and token.kind == AGREE:
        answer = parse_consent(parsed.text)
        return Decision(
            CONSENT,
            f"consent: {answer or 'unclear'}",
            period=token.period,
            partnership_id=pid,
            consent=answer,
            note=parsed.text.strip(),
            sender=sender,
            inbound=inbound("consent", answer or "unclear", pid, token.period, text=parsed.text),
        )
    if token is not None and token.kind == DIGEST:
        if not parsed.text.strip():
            return Decision(
                QUARANTINE,
                "empty reply: no new text above the quoted digest",
                partnership_id=pid,
                period=token.period,
            )
        return Decision(
            NOTE,
            "partner note",
            period=token.period,
            partnership_id=pid,
            note=parsed.text.strip(),
            sender=sender,
            inbound=inbound(
                "partner_note", "reply to a digest", pid, token.period, text=parsed.text
            ),
        )

    # A member's reply: to a check-in (any period), by reference, or to the plain address.
    current = current_period(p)
    if (
        token is not None
        and current is not None
        and (weeks_between(token.period, current) > MAX_TOKEN_AGE_WEEKS)
    ):
        return Decision(
            QUARANTINE,
            f"stale token: it is for {token.period}, more than "
            f"{MAX_TOKEN_AGE_WEEKS} weeks before {current}",
            partnership_id=pid,
            period=token.period,
        )
    if local_today(p) < p.start:
        return Decision(
            INBOUND,
            f"before the start date {p.start}: not counted",
            partnership_id=pid,
            inbound=inbound("early_note", f"before {p.start}", pid, None, text=parsed.text),
        )
    period = report_period(p, token.period if token else None)
    extracted = extract_commands(parsed.text, local_today(p))
    rest = extracted.text
    if not rest and not extracted.commands:
        if extracted.problems:
            return Decision(
                REPORT,
                "commands not understood",
                period=period,
                partnership_id=pid,
                problems=extracted.problems,
                sender=sender,
                inbound=inbound("commands", "not understood", pid, period),
            )
        return Decision(
            QUARANTINE,
            "empty reply: no new text above the quoted check-in",
            partnership_id=pid,
            period=period,
        )
    report = None
    if rest:
        same = rest == parsed.text.strip()
        sections = parsed.sections if same else find_sections(rest)
        setback = bool(parsed.setback) if same else detect_setback(rest, sections)
        report = Report(
            partnership_id=pid,
            period=period,
            received_at=received_at,
            message_id=message_id,
            sender=sender,
            text=rest,
            setback=setback,
            done=sections.get("done", ""),
            setback_text=sections.get("setback", ""),
            next=sections.get("next", ""),
            raw_ref=raw_ref,
        )
    return Decision(
        REPORT,
        "reply" if report else "commands",
        period=period,
        partnership_id=pid,
        report=report,
        commands=extracted.commands,
        problems=extracted.problems,
        sender=sender,
        inbound=None if report else inbound("commands", "commands only", pid, period),
    )
