"""The quarantine as an admin works it: list, show, release, drop (the CLI and the web).

Mail is set aside (`Spool.quarantine`) with its reason when it cannot be counted safely: a
sender who is not the person the token was sent to, a check-in token over 8 weeks old, an
ended or unknown partnership, no new text, a processing error. Nobody has read it; these
functions let a person decide what it is:

- `items(spool, keys)`: what is there, oldest first (id, received, sender, partnership,
  period, reason, subject).
- `show(spool, keys, qid)`: one message: the reason, its envelope and headers, and what the
  parser reads in it today (after a parser fix, more than when it arrived).
- `release(intake, qid, now, by)`: the admin's explicit decision that it counts. It goes the
  way of any reply (`intake`), told it is a release: a report counts for the period it was
  written for (its token's), and the partner gets that period's digest now, even if the
  period has passed (the one exception to "nothing for a past period is sent late"). A
  release never makes a From header into proof (`triage.proven` decides, as for any mail):
  when the message came from another address than the token's person, what it says counts;
  its commands are held and the member is asked to confirm them from her own mailbox (as
  for commands sent to the plain address), and a yes or no in it is refused. What would
  still not count (no new text, an unknown partnership, no token) is refused and stays in
  the quarantine.
- `drop(spool, qid, now, by)`: delete it for good.

Each decision is recorded in the message's sidecar (`released: ...` or `dropped: ...`) before
the message leaves `quarantine/`; the sidecar stays as the record, so a second release or
drop is refused with what happened the first time. Errors are `DomainError`s.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import actions, letters
from mailflow.addresses import canonical
from mailflow.errors import DomainError, NotFoundError, SpoolError
from mailflow.intake import Duplicate, Intake, Wait
from mailflow.mailroom import TickReport
from mailflow.models import Report
from mailflow.parse import ParsedMessage, parse_message
from mailflow.schedule import period_named
from mailflow.spool import Spool, envelope_of, raw_message
from mailflow.tokens import Keys, Rcpt, token_from_ids
from mailflow.triage import Decision, Quarantine, Reply

HEAD_BYTES = 64 * 1024  # envelope and headers of a quarantined file, for the list
SHOWN_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To")


@dataclass(frozen=True)
class Item:
    """One quarantined message as the list shows it."""

    id: str
    received_at: datetime | None  # None: the file has no readable envelope
    sender: str  # the From address (else the envelope sender; "" for nobody)
    partnership_id: int | None
    period: str | None
    reason: str
    subject: str

    def to_json(self) -> dict[str, Any]:
        """The `quarantine list --json` row."""
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat() if self.received_at else None,
            "sender": self.sender,
            "partnership": self.partnership_id,
            "period": self.period,
            "reason": self.reason,
            "subject": self.subject,
        }


@dataclass(frozen=True)
class Shown:
    """One quarantined message in full: the list's item, its envelope and headers, and what
    the parser reads in it now."""

    item: Item
    envelope: dict[str, Any]
    headers: tuple[tuple[str, str], ...]
    parsed: ParsedMessage

    def to_json(self) -> dict[str, Any]:
        """The `quarantine show --json` object (`parsed` as `reply parse --json` prints it)."""
        return {
            **self.item.to_json(),
            "envelope": self.envelope,
            "headers": dict(self.headers),
            "parsed": self.parsed.to_json_dict(),
        }


@dataclass(frozen=True)
class Released:
    """What a release did: the decision taken on the message, and the run's lines."""

    item: Item
    decision: Decision
    duplicate: bool  # its Message-ID was already stored: archived, nothing else counted
    lines: tuple[str, ...]

    @property
    def report(self) -> Report | None:
        """The progress record it made (None: it was not a report, or a duplicate)."""
        if isinstance(self.decision, Reply) and not self.duplicate:
            return self.decision.report
        return None

    @property
    def not_run(self) -> tuple[str, ...]:
        """Command lines not run: the release vouched for a sender it could not prove, so
        they wait for the member's yes to a confirmation mail."""
        return self.decision.not_run if isinstance(self.decision, Reply) else ()


# -- reading ------------------------------------------------------------------------------------


def items(spool: Spool, keys: Keys | None = None) -> list[Item]:
    """Every quarantined message, oldest first. `keys` find the partnership of a message
    quarantined before its sidecar recorded it (from its check-in address)."""
    return [_item(spool, qid, keys) for qid, _ in spool.quarantined()]


def show(spool: Spool, keys: Keys | None, qid: str) -> Shown:
    """One quarantined message: the reason, envelope, headers and the parser's reading."""
    _present(spool, qid)
    data = spool.read_quarantined(qid)
    raw = raw_message(data)
    headers = _headers(raw)
    shown = tuple((h, _header(headers, h)) for h in SHOWN_HEADERS if _header(headers, h))
    return Shown(_item(spool, qid, keys), envelope_of(data), shown, parse_message(raw))


def _item(spool: Spool, qid: str, keys: Keys | None) -> Item:
    sidecar = spool.sidecar(qid)
    try:
        head = spool.read_quarantined(qid, HEAD_BYTES)
    except OSError:
        head = b""
    envelope = envelope_of(head)
    headers = _headers(raw_message(head))
    sender = _address(_header(headers, "From")) or sidecar.sender
    pid, period = sidecar.partnership_id, sidecar.period
    if pid is None and keys is not None:
        pid, period = _token_of(envelope, headers, keys)
    return Item(
        id=qid,
        received_at=_received(envelope),
        sender=sender,
        partnership_id=pid,
        period=period,
        reason=sidecar.reason,
        subject=_header(headers, "Subject"),
    )


def _headers(raw: bytes) -> EmailMessage:
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    message = parser.parsebytes(raw[:HEAD_BYTES])
    assert isinstance(message, EmailMessage)
    return message


def _header(headers: EmailMessage, name: str) -> str:
    try:
        value = headers.get(name)
    except Exception:  # noqa: BLE001 - a malformed header must not hide the message
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _address(value: str) -> str:
    return canonical(email.utils.parseaddr(value)[1])


def _received(envelope: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(envelope["received_at"]))
    except (KeyError, ValueError):
        return None


def _token_of(
    envelope: dict[str, Any], headers: EmailMessage, keys: Keys
) -> tuple[int | None, str | None]:
    """The partnership and period of the message's check-in address or reference."""
    rcpts = envelope.get("rcpt_tos")
    for rcpt in rcpts if isinstance(rcpts, list) else []:
        kind, token = keys.rcpt(str(rcpt))
        if kind is Rcpt.TOKEN and token is not None:
            return token.partnership_id, token.period
    ids = [_header(headers, "In-Reply-To"), *_header(headers, "References").split()]
    ref = token_from_ids([i for i in ids if i], keys.domain)
    token = keys.parse(ref) if ref else None
    return (token.partnership_id, token.period) if token else (None, None)


def _present(spool: Spool, qid: str) -> None:
    """DomainError unless `qid` names a message in the quarantine now (saying what became
    of it when an admin already decided)."""
    try:
        if spool.is_quarantined(qid):
            return
        known = spool.has_sidecar(qid)
    except ValueError:  # not an id at all ("../x", "")
        known = False
    if not known:
        raise NotFoundError(f"no quarantined message {qid!r} (see 'mailflow quarantine list')")
    outcome = spool.sidecar(qid).outcome
    if outcome:
        verb, _, rest = outcome.partition(": ")
        raise DomainError(f"{qid} was already {verb} ({rest})")
    raise DomainError(f"{qid} is no longer in the quarantine")


# -- deciding -----------------------------------------------------------------------------------


def drop(spool: Spool, qid: str, now: datetime, by: str) -> Item:
    """Delete a quarantined message for good; its sidecar records who dropped it, when."""
    _present(spool, qid)
    item = _item(spool, qid, None)
    spool.close_quarantined(qid, f"dropped: {now.isoformat()} by {by}")
    spool.drop_quarantined(qid)
    return item


def release(intake: Intake, qid: str, now: datetime, by: str) -> Released:
    """Count a quarantined message after all, as an admin's explicit decision (see the
    module docstring); DomainError when it still cannot count, and it stays where it is.

    In the order a crash needs: its side effects and records (keyed by the message, so a
    second run after a crash stores nothing twice), the release's letters queued, the
    decision in the sidecar, then the message archived under mail/in/PERIOD/, and the
    outbox flushed. Until the archive step it stays in the quarantine and a second
    `release` finishes the job.
    """
    spool = intake.spool
    _present(spool, qid)
    try:
        entry = spool.quarantined_entry(qid)
    except SpoolError as exc:
        raise DomainError(
            f"{qid} has no readable envelope ({exc}); it can only be dropped"
        ) from None
    reason = spool.sidecar(qid).reason
    item = _item(spool, qid, intake.svc.keys)
    out = TickReport()
    with intake.exclusive():
        _present(spool, qid)  # another admin may have decided while we waited
        roster = intake.roster()
        decision = intake.decide_one(entry, roster, release=True)
        if isinstance(decision, Quarantine):
            raise DomainError(f"{qid} stays in the quarantine: {decision.reason}")
        fate = intake.settle(entry, decision, roster, now, out)
        if isinstance(fate, Quarantine):
            raise DomainError(f"{qid} stays in the quarantine: {fate.reason}")
        if isinstance(fate, Wait):
            raise DomainError(f"{qid} stays in the quarantine for now (try again): {fate.reason}")
        if isinstance(decision, Reply):
            intake.mailroom.post(_letters(intake, decision, reason, now, qid, out), now, out)
        spool.close_quarantined(qid, f"released: {now.isoformat()} by {by}: {_summary(fate)}")
        intake.archive(entry, fate, now, out)
    out.extend(intake.mailroom.flush(now))
    return Released(item, decision, isinstance(fate, Duplicate), tuple(out.lines))


def _letters(
    intake: Intake, d: Reply, reason: str, now: datetime, qid: str, out: TickReport
) -> list[letters.Letter]:
    """The digest of the released report's period, and the member's word that it counts,
    built from the partnership and the period as stored now (the report among them)."""
    store, svc = intake.store, intake.svc
    p = store.core().partnership(d.pid)
    pair = intake.pair_of(p, intake.roster(), now)
    if p is None or pair is None:
        out.add(f"partnership {d.pid}: no digest (the partnership or one of its people is gone)")
        return []
    tz = ZoneInfo(pair.member.timezone)
    view = store.week(d.period)
    period = period_named(p, tz, svc.settings, d.period)
    desk = actions.Desk(svc, now, d.report.message_id if d.report else "", qid)
    outcome = actions.on_release(d, pair, period, view.week(p.id), view.reports(p.id), reason, desk)
    for line in outcome.lines:
        out.add(line)
    return list(outcome.letters)


def _summary(fate: Decision | Duplicate) -> str:
    """One line for the sidecar: what the release made of the message."""
    match fate:
        case Duplicate():
            return "already stored (same Message-ID): archived only"
        case Reply(report=Report() as r):
            setback = " (setback)" if r.setback else ""
            not_run = f"; not run: {', '.join(fate.not_run)}" if fate.not_run else ""
            return f"report for partnership {r.partnership_id} {r.period}{setback}{not_run}"
    return fate.reason
