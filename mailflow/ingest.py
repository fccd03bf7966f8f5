"""Inbound decisions: what one accepted message means, as a pure function.

Given the parsed message, the token it was addressed to, the partnership and `now`, decide:
store a progress record, record it as other inbound mail (auto-reply, bounce, partner reply),
or quarantine it with a reason for a human. Nothing here touches disk; `service` applies the
decision. Mailman-style: sort at the door, shunt what we can't handle to a queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from mailflow.models import ENDED, Inbound, Partnership, Person, Report
from mailflow.parse import ParsedMessage
from mailflow.tokens import CHECKIN, DIGEST, Token

REPORT = "report"
INBOUND = "inbound"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Decision:
    action: str  # report | inbound | quarantine
    reason: str
    period: str | None = None
    partnership_id: int | None = None
    report: Report | None = None
    inbound: Inbound | None = None
    bounced: tuple[str, ...] = field(default_factory=tuple)


def message_id_of(parsed: ParsedMessage, raw: bytes) -> str:
    """The message's own Message-ID, or a stable stand-in so duplicates still match."""
    if parsed.message_id:
        return parsed.message_id
    return f"<sha256.{hashlib.sha256(raw).hexdigest()[:40]}@mailflow.invalid>"


def token_from_ids(ids: Iterable[str], domain: str) -> str | None:
    """Our Message-IDs look like <KIND.TOKEN@DOMAIN>: recover TOKEN from a reference."""
    suffix = "@" + domain.lower()
    for mid in ids:
        value = mid.strip().strip("<>").lower()
        if value.endswith(suffix):
            local = value[: -len(suffix)]
            _, dot, token = local.partition(".")
            if dot and token:
                return token
    return None


def decide(
    *,
    parsed: ParsedMessage,
    message_id: str,
    token: Token | None,
    to_bounce_address: bool,
    envelope_from: str,
    partnership: Partnership | None,
    member: Person | None,
    partner: Person | None,
    current_period: Callable[[Partnership], str | None],
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
    if token is None:
        return Decision(QUARANTINE, "no check-in token in the address or references")
    if partnership is None:
        return Decision(QUARANTINE, f"unknown partnership {token.partnership_id}")
    pid = partnership.id
    if partnership.status == ENDED:
        return Decision(QUARANTINE, f"partnership {pid} has ended", partnership_id=pid)
    current = current_period(partnership)
    if token.period != current:
        return Decision(
            QUARANTINE,
            f"stale token: it is for {token.period}, "
            f"the current period is {current or 'not started'}",
            partnership_id=pid,
            period=token.period,
        )
    if parsed.kind == "auto_reply":
        return Decision(
            INBOUND,
            f"auto-reply: {parsed.detail}",
            period=token.period,
            partnership_id=pid,
            inbound=inbound("auto_reply", parsed.detail, pid, token.period),
        )
    expected = member if token.kind == CHECKIN else partner
    if expected is None or sender != expected.email:
        who = "member" if token.kind == CHECKIN else "partner"
        return Decision(
            QUARANTINE,
            f"sender mismatch: from {sender or 'nobody'}, "
            f"expected the {who} {expected.email if expected else '?'}",
            partnership_id=pid,
            period=token.period,
        )
    if token.kind == DIGEST:
        return Decision(
            INBOUND,
            "partner reply",
            period=token.period,
            partnership_id=pid,
            inbound=inbound(
                "partner_reply", "reply to a digest", pid, token.period, text=parsed.text
            ),
        )
    if not parsed.text.strip():
        return Decision(
            QUARANTINE,
            "empty reply: no new text above the quoted check-in",
            partnership_id=pid,
            period=token.period,
        )
    sections = parsed.sections
    report = Report(
        partnership_id=pid,
        period=token.period,
        received_at=received_at,
        message_id=message_id,
        sender=sender,
        text=parsed.text,
        setback=bool(parsed.setback),
        done=sections.get("done", ""),
        setback_text=sections.get("setback", ""),
        next=sections.get("next", ""),
        raw_ref=raw_ref,
    )
    return Decision(REPORT, "reply", period=token.period, partnership_id=pid, report=report)
