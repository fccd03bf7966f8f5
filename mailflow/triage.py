"""Inbound mail, sorted at the door and then decided: what one accepted message means (pure).

Two steps, as Mailman's LMTP runner splits the recipient before the queue does its work:

1. `route(parsed, envelope, keys, roster)` finds what the message is about from the message,
   its recipients and the roster alone: a bounce or other mail to our return path is
   recorded, mail to a check-in token (or naming one of our Message-IDs in In-Reply-To /
   References) or to the plain address from a member is routed to its partnership as a
   `Target`; mail to our own From address that is about no partnership is a `Mailbox`; a
   forged sender, an ended partnership or a stranger is quarantined.
2. `decide(parsed, target, facts)` says what a routed message is, given the `Facts` the
   use case reads for that one partnership (its current period, where a report counts, the
   member's date): a member's `Reply` (a report and/or commands), a partner's `Consent` or
   `Note`, other inbound mail to `Record`, or `Quarantine` with the reason for a human.
   `decide_mailbox(parsed, mailbox, admin)` says what mail to the From address is: a person
   writing to us is a `Forward` to the admin (quarantined when there is none), an auto-reply
   is recorded; nothing there is ever answered automatically. (When the program address of
   self-service is the same mailbox, its commands are a `Target` of step 1 and only the rest
   comes here.)

An admin's release of a quarantined message goes the same two steps, told so: `route(...,
vouch=True)` lets a sender who is not the token's person through as an unproven `Target`
(the From header is still no proof: `decide` then runs none of its commands), and `Facts`
with `released=True` counts a report for the period its token names, however old.

Decisions are frozen variants; `actions` does what they ask and `intake` stores them. The
stored records (`Report`, `Inbound`) carry the path the raw message will be archived under,
which is known here because it depends only on the decision's period and the spool id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime

from mailflow.commands import Command, extract_commands, parse_consent
from mailflow.errors import DomainError
from mailflow.letters import Written
from mailflow.models import CONSENT_ACCEPTED, ENDED, Inbound, Partnership, Report, Roster
from mailflow.parse import ParsedMessage, detect_setback, find_sections
from mailflow.people import normalize_email
from mailflow.program import parse_commands
from mailflow.schedule import utc_week, weeks_between
from mailflow.tokens import AGREE, CHECKIN, DIGEST, PROGRAM, Keys, Rcpt, Token, token_from_ids

MAX_TOKEN_AGE_WEEKS = 8  # older tokens are replays, not late replies
FORWARD_CHARS = 20_000  # a forward shows at most this much of the message (all is archived)


@dataclass(frozen=True)
class Envelope:
    """One spooled message as the listener took it."""

    id: str  # the spool id; the raw message is archived as mail/in/PERIOD/ID.eml
    mail_from: str  # "" for the null sender <>
    rcpt_tos: tuple[str, ...]
    received_at: datetime
    raw: bytes


@dataclass(frozen=True)
class Target:
    """The partnership a message is about, and how we know: its token, or None when it came
    to the plain address and was picked by its skill line or subject."""

    partnership: Partnership
    token: Token | None
    sender: str
    message_id: str
    envelope: Envelope
    # False when an admin's release vouches for a sender who is not the person the token
    # was sent to: what the message says counts, what it asks (commands, consent) does not.
    proven: bool = True


@dataclass(frozen=True)
class Mailbox:
    """Mail to our From address that is about no partnership: a person writing to us."""

    sender: str
    message_id: str
    envelope: Envelope
    to: str  # the recipient that is our From address, as the sender wrote it


@dataclass(frozen=True)
class Facts:
    """What `decide` needs from the store about the routed partnership, read once."""

    current: str | None  # the current period's label (None before the first check-in)
    report_period: str  # where a member's report counts (schedule.report_period)
    local_today: date  # the member's date when the message arrived
    # An admin released it from the quarantine: no staleness check, and a reply to a
    # check-in counts for the period it was written for (its token's), however old.
    released: bool = False


# -- the decisions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantine:
    """Set aside with the reason for a human; never counted.

    `tell_member`: her own reply, refused after the sender was checked (a stale check-in, an
    ended partnership): she is told it was not counted, so a report never just vanishes.
    `to_partner`: it was the partner's (an answer to a digest or an introduction of an ended
    partnership), so the partner is the one told.
    """

    reason: str
    partnership_id: int | None = None
    period: str | None = None
    tell_member: bool = False
    sender: str = ""  # its From address, for the admin (set by `intake`)
    to_partner: bool = False


@dataclass(frozen=True)
class Record:
    """Other inbound mail (an auto-reply, a bounce, a note before the start): recorded only."""

    reason: str
    inbound: Inbound
    bounced: tuple[str, ...] = ()  # a bounce: the addresses that failed
    returned: tuple[str, ...] = ()  # a bounce: Message-IDs of ours it returned

    @property
    def period(self) -> str | None:
        return self.inbound.period


@dataclass(frozen=True)
class Forward:
    """Mail a person wrote to our From address: forwarded to the admin, never answered."""

    written: Written
    inbound: Inbound
    reason: str = "forwarded to the admin"

    @property
    def period(self) -> None:
        return None  # about no partnership: stored in the UTC week


@dataclass(frozen=True)
class Reply:
    """A member's reply: a progress record and/or commands (`problems`: lines not understood)."""

    reason: str
    pid: int
    period: str
    sender: str
    report: Report | None = None
    inbound: Inbound | None = None  # commands only: recorded as inbound mail
    commands: tuple[Command, ...] = ()
    problems: tuple[str, ...] = ()
    not_run: tuple[str, ...] = ()  # command lines of an unproven sender: never run


@dataclass(frozen=True)
class Consent:
    """A partner's answer to the introduction: accepted, declined or None (unclear)."""

    pid: int
    period: str
    answer: str | None
    note: str
    sender: str
    inbound: Inbound

    @property
    def reason(self) -> str:
        return f"consent: {self.answer or 'unclear'}"


@dataclass(frozen=True)
class Note:
    """A partner's answer to a digest, for the member."""

    pid: int
    period: str
    note: str
    sender: str
    inbound: Inbound
    reason: str = "partner note"


@dataclass(frozen=True)
class Ambiguous:
    """A member with several partnerships wrote to the plain address: we must ask which.

    `skills`: of the partnerships it could be for (accepted); `running`: of all her running
    ones, named in the question; `pid`: the one the question is sent about (the first).
    """

    sender: str
    pid: int
    skills: tuple[str, ...]
    running: tuple[str, ...]
    inbound: Inbound

    @property
    def period(self) -> None:
        return None  # not yet any partnership's: stored in the UTC week

    @property
    def reason(self) -> str:
        return "which partnership: " + ", ".join(self.skills)


@dataclass(frozen=True)
class Program:
    """Mail from a person in the directory to the program's address (`request` None), or
    her reply to a self-service mail of ours (`request`: the number its token carries).
    `intake` and `selfservice` read the directory and the request and do what it asks."""

    sender: str
    text: str  # her new text
    request: int | None
    inbound: Inbound
    body: str = ""  # the whole message, its quoted part too (an agreement block filled in there)
    # The trusted MTA vouched for the From (DMARC): an offer change needs no confirmation.
    vouched: bool = False

    @property
    def period(self) -> None:
        return None  # about no partnership: stored in the UTC week

    @property
    def reason(self) -> str:
        return "self-service" + (f" (reply to request {self.request})" if self.request else "")


Decision = Quarantine | Record | Reply | Consent | Note | Ambiguous | Forward | Program


def records(d: Decision) -> tuple[Report | Inbound, ...]:
    """What a decision stores in its period file (nothing for a quarantine)."""
    match d:
        case Reply():
            return tuple(r for r in (d.report, d.inbound) if r is not None)
        case Record() | Consent() | Note() | Ambiguous() | Forward() | Program():
            return (d.inbound,)
    return ()


def message_id(d: Decision) -> str:
    """The Message-ID a decision stores its records under ("" for a quarantine)."""
    found = records(d)
    return found[0].message_id if found else ""


def record_period(d: Decision, received_at: datetime) -> str:
    """The period file of a decision's records: its period, else the UTC week of receipt."""
    return d.period or utc_week(received_at)


def archive_path(period: str | None, entry_id: str, received_at: datetime) -> str:
    """Where the raw message `entry_id` is kept, relative to data_dir: under its decision's
    period, else the UTC week it arrived in."""
    return f"mail/in/{period or utc_week(received_at)}/{entry_id}.eml"


def pid_of(d: Decision) -> int | None:
    """The partnership a decision is about, if any."""
    match d:
        case Quarantine():
            return d.partnership_id
        case Record():
            return d.inbound.partnership_id
        case Forward() | Program():
            return None
    return d.pid


def sender_of(d: Decision) -> str:
    """Who proved they receive our mail: the sender of a reply, consent or note ("" else)."""
    match d:
        case Reply() | Consent() | Note():
            return d.sender
    return ""


# -- helpers ------------------------------------------------------------------------------------


def message_id_of(parsed: ParsedMessage, raw: bytes) -> str:
    """The message's own Message-ID, or a stable stand-in so duplicates still match."""
    if parsed.message_id:
        return parsed.message_id
    return f"<sha256.{hashlib.sha256(raw).hexdigest()[:40]}@mailflow.invalid>"


def returned_ids(raw: bytes, domain: str) -> tuple[str, ...]:
    """Our Message-IDs (`<...@DOMAIN>`) in a bounce: the headers of the mail it returns."""
    pattern = rb"^(?:Message-ID|X-Original-Message-ID):[ \t]*(<[^<>\s]{1,300}@"
    pattern += re.escape(domain.lower().encode("ascii", "replace")) + rb">)"
    found = re.findall(pattern, raw[:262_144], re.I | re.M)
    return tuple(dict.fromkeys(m.decode("ascii", "replace").lower() for m in found))


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


def _inbound(
    envelope: Envelope,
    parsed_mid: str,
    sender: str,
    kind: str,
    detail: str,
    pid: int | None = None,
    period: str | None = None,
    **extra: object,
) -> Inbound:
    return Inbound(
        message_id=parsed_mid,
        received_at=envelope.received_at,
        kind=kind,
        sender=sender,
        detail=detail,
        partnership_id=pid,
        period=period,
        raw_ref=archive_path(period, envelope.id, envelope.received_at),
        extra=dict(extra),
    )


def _pick(candidates: list[Partnership], skill: str | None, subject: str) -> Partnership | None:
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


# -- 1. route -----------------------------------------------------------------------------------


def route(
    parsed: ParsedMessage, envelope: Envelope, keys: Keys, roster: Roster, *, vouch: bool = False
) -> Target | Decision:
    """The partnership a message is about (`Target`), or what it is when it is about none.

    `vouch`: an admin releases it from the quarantine, so a reply to a token from another
    address than the token's person, or to an ended partnership, is routed anyway (as an
    unproven `Target` in the first case).
    """
    mid = message_id_of(parsed, envelope.raw)
    sender = (parsed.from_address or envelope.mail_from or "").lower()
    token: Token | None = None
    to_bounce = to_plain = to_program = False
    mailbox = ""
    for rcpt in envelope.rcpt_tos:
        kind, found = keys.rcpt(rcpt)
        to_bounce = to_bounce or kind is Rcpt.BOUNCES
        to_plain = to_plain or kind is Rcpt.PLAIN
        to_program = to_program or kind is Rcpt.PROGRAM
        mailbox = mailbox or (rcpt if keys.is_mailbox(rcpt) else "")
        token = token or found
    if token is None and not to_bounce:
        ids = [i for i in (parsed.in_reply_to, *parsed.references) if i]
        ref = token_from_ids(ids, keys.domain)
        token = keys.parse(ref) if ref else None

    if parsed.kind == "bounce" or (to_bounce and not envelope.mail_from):
        bounced = tuple(a.lower() for a in parsed.bounced_recipients)
        why = bounce_reason(envelope.raw, parsed.detail) if bounced else parsed.detail
        returned = returned_ids(envelope.raw, keys.domain) if bounced else ()
        inbound = _inbound(envelope, mid, sender, "bounce", parsed.detail, recipients=list(bounced))
        return Record(f"bounce: {why}", inbound, bounced, returned)
    if to_bounce and token is None:
        # Auto-replies and stray mail to our return path: keep a record, answer nothing.
        inbound = _inbound(envelope, mid, sender, parsed.kind, parsed.detail)
        return Record(f"to bounce address: {parsed.detail}", inbound)
    if token is not None and token.kind == PROGRAM:
        return _program(parsed, sender, mid, envelope, roster, token.partnership_id, bool(mailbox))
    if to_program and not to_plain:
        return _program(parsed, sender, mid, envelope, roster, None, keys.is_mailbox(keys.program))
    if token is not None:
        return _by_token(token, sender, mid, envelope, roster, vouch)
    if to_plain:
        found = _by_member(parsed, sender, mid, envelope, roster)
        if mailbox and isinstance(found, Quarantine) and found.partnership_id is None:
            return Mailbox(sender, mid, envelope, mailbox)  # the same mailbox: not a report
        return found
    if mailbox:
        return Mailbox(sender, mid, envelope, mailbox)
    return Quarantine("no check-in token in the address or references")


def _program(
    parsed: ParsedMessage,
    sender: str,
    mid: str,
    envelope: Envelope,
    roster: Roster,
    request: int | None,
    also_mailbox: bool,
) -> Decision | Mailbox:
    """Mail to the program's address, or a reply to one of its mails. Only people in the
    directory are answered (by their From address); anyone else's mail is recorded and
    never answered (no backscatter). When the program's address is also our From address,
    mail that asks the program nothing is a person writing to us (`Mailbox`)."""
    person = roster.people.get(sender)
    if parsed.kind == "auto_reply" or person is None:
        if also_mailbox and person is None and parsed.kind != "auto_reply":
            return Mailbox(sender, mid, envelope, sender_to(envelope))
        kind = "auto_reply" if parsed.kind == "auto_reply" else "program_stranger"
        inbound = _inbound(envelope, mid, sender, kind, parsed.detail)
        why = "not in the directory" if person is None else parsed.detail
        return Record(f"to the program address: {why}", inbound)
    if also_mailbox and request is None and not parse_commands(parsed.text).commands:
        return Mailbox(sender, mid, envelope, sender_to(envelope))
    inbound = _inbound(envelope, mid, sender, "program", "self-service", request=request)
    return Program(person.email, parsed.text, request, inbound, parsed.body)


def sender_to(envelope: Envelope) -> str:
    """The first recipient of `envelope` (the address a person wrote to)."""
    return envelope.rcpt_tos[0] if envelope.rcpt_tos else ""


def _by_token(
    token: Token, sender: str, mid: str, envelope: Envelope, roster: Roster, vouch: bool
) -> Target | Decision:
    p = roster.partnerships.get(token.partnership_id)
    if p is None:
        return Quarantine(f"unknown partnership {token.partnership_id}")
    expected = roster.people.get(p.member if token.kind == CHECKIN else p.partner)
    if vouch and expected is not None:
        return Target(p, token, sender, mid, envelope, proven=sender == expected.email)
    if expected is None or sender != expected.email:
        who = "member" if token.kind == CHECKIN else "partner"
        return Quarantine(
            f"sender mismatch: from {sender or 'nobody'}, "
            f"expected the {who} {expected.email if expected else '?'}",
            partnership_id=p.id,
            period=token.period,
        )
    if p.status == ENDED:
        # Whoever wrote (the member, or the partner answering a digest) is the one told.
        return Quarantine(
            f"partnership {p.id} has ended",
            partnership_id=p.id,
            tell_member=True,
            to_partner=token.kind != CHECKIN,
        )
    return Target(p, token, sender, mid, envelope)


def _by_member(
    parsed: ParsedMessage, sender: str, mid: str, envelope: Envelope, roster: Roster
) -> Target | Decision:
    """Mail to the plain address: the sender's one accepted partnership, or the one her
    `skill:` line or subject names."""
    mine = [q for q in roster.partnerships.values() if q.member == sender and q.status != ENDED]
    candidates = [q for q in mine if q.consent == CONSENT_ACCEPTED]
    if not candidates:
        if mine:
            return Quarantine(
                f"the partner of {sender} has not accepted yet", partnership_id=mine[0].id
            )
        return Quarantine(f"no active partnership with member {sender or '?'}")
    extracted = extract_commands(parsed.text, date.min)
    p = _pick(candidates, extracted.skill, parsed.subject)
    if p is not None:
        return Target(p, None, sender, mid, envelope)
    if parsed.kind == "auto_reply":
        inbound = _inbound(envelope, mid, sender, "auto_reply", parsed.detail)
        return Record(f"auto-reply: {parsed.detail}", inbound)
    skills = tuple(sorted(q.skill for q in candidates))
    running = tuple(sorted(q.skill for q in mine))
    inbound = _inbound(envelope, mid, sender, "ambiguous", ", ".join(skills))
    return Ambiguous(sender, mine[0].id, skills, running, inbound)


# -- 2. decide ----------------------------------------------------------------------------------


def decide_mailbox(parsed: ParsedMessage, mailbox: Mailbox, admin: str) -> Decision:
    """Mail to our From address: forwarded to `admin` (quarantined without one); an
    auto-reply or our own mail coming back is only recorded (forwarding it could loop)."""
    env, sender = mailbox.envelope, mailbox.sender
    if parsed.kind == "auto_reply" or sender == mailbox.to.strip().strip("<>").lower():
        inbound = _inbound(env, mailbox.message_id, sender, parsed.kind, parsed.detail)
        return Record(f"to our From address: {parsed.detail}", inbound)
    if not admin:
        return Quarantine(
            f"mail to our From address {mailbox.to} from {sender or 'nobody'}: "
            "no admin_address to forward it to"
        )
    text = parsed.body.strip() or parsed.text.strip()
    if len(text) > FORWARD_CHARS:
        text = text[:FORWARD_CHARS] + "\n[...]"
    # One line of printable text: it becomes part of our own Subject header.
    subject = "".join(c for c in " ".join(parsed.subject.split()) if c.isprintable())[:200]
    written = Written(
        sender=sender,
        subject=subject,
        text=text,
        message_id=mailbox.message_id,
        received_at=env.received_at,
        to=mailbox.to.strip().strip("<>"),
        reply_to=_answerable(sender),
        kept_at=archive_path(None, env.id, env.received_at),
    )
    inbound = _inbound(env, mailbox.message_id, sender, "forwarded", f"to {admin}")
    return Forward(written, inbound)


def _answerable(address: str) -> str | None:
    """`address` when it is one a reply can go to (the forward's Reply-To), else None."""
    try:
        return normalize_email(address) if address else None
    except DomainError:
        return None


def decide(parsed: ParsedMessage, target: Target, facts: Facts) -> Decision:
    """What a routed message is: a member's reply, a partner's consent or note, an
    auto-reply to record, or a quarantine."""
    p, token = target.partnership, target.token
    if parsed.kind == "auto_reply":
        period = token.period if token else None
        inbound = _target_inbound(target, "auto_reply", parsed.detail, period)
        return Record(f"auto-reply: {parsed.detail}", inbound)
    if token is not None and token.kind == AGREE:
        if not target.proven:
            return Quarantine(
                "a yes or no to the introduction counts only from the partner's own address",
                partnership_id=p.id,
                period=token.period,
            )
        answer = parse_consent(parsed.text)
        detail = answer or "unclear"
        inbound = _target_inbound(target, "consent", detail, token.period, text=parsed.text)
        return Consent(p.id, token.period, answer, parsed.text.strip(), target.sender, inbound)
    if token is not None and token.kind == DIGEST:
        if not parsed.text.strip():
            reason = "empty reply: no new text outside the quoted digest"
            return Quarantine(reason, partnership_id=p.id, period=token.period)
        detail = "reply to a digest"
        inbound = _target_inbound(target, "partner_note", detail, token.period, text=parsed.text)
        return Note(p.id, token.period, parsed.text.strip(), target.sender, inbound)
    return _member_reply(parsed, target, facts)


def _target_inbound(
    target: Target, kind: str, detail: str, period: str | None, **extra: object
) -> Inbound:
    pid = target.partnership.id
    return _inbound(
        target.envelope, target.message_id, target.sender, kind, detail, pid, period, **extra
    )


def _member_reply(parsed: ParsedMessage, target: Target, facts: Facts) -> Decision:
    """A member's reply: to a check-in (any recent period), by reference, or to the plain
    address. Command lines are taken out; what is left is her report."""
    p, token, pid = target.partnership, target.token, target.partnership.id
    current = facts.current
    if (
        not facts.released
        and token is not None
        and current is not None
        and weeks_between(token.period, current) > MAX_TOKEN_AGE_WEEKS
    ):
        return Quarantine(
            f"stale token: it is for {token.period}, more than "
            f"{MAX_TOKEN_AGE_WEEKS} weeks before {current}",
            partnership_id=pid,
            period=token.period,
            tell_member=True,
        )
    if facts.local_today < p.start:
        detail = f"before {p.start}"
        inbound = _target_inbound(target, "early_note", detail, None, text=parsed.text)
        return Record(f"before the start date {p.start}: not counted", inbound)
    period = token.period if facts.released and token is not None else facts.report_period
    extracted = extract_commands(parsed.text, facts.local_today)
    rest = extracted.text
    commands, problems, not_run = extracted.commands, extracted.problems, ()
    if not target.proven:
        # A release never makes a From header proof: her report counts, but nothing it asks
        # for is done, and nobody is asked back about lines we did not understand.
        commands, problems = (), ()
        not_run = tuple(c.line for c in extracted.commands)
        if not rest:
            return Quarantine(
                "nothing to count: the message holds only commands, and a release does not "
                f"run commands from {target.sender or 'an unknown sender'}",
                partnership_id=pid,
                period=period,
            )
    if not rest and not commands:
        if problems:
            inbound = _target_inbound(target, "commands", "not understood", period)
            return Reply(
                "commands not understood",
                pid,
                period,
                target.sender,
                inbound=inbound,
                problems=problems,
            )
        reason = "empty reply: no new text outside the quoted check-in"
        return Quarantine(reason, partnership_id=pid, period=period)
    if not rest:
        inbound = _target_inbound(target, "commands", "commands only", period)
        return Reply(
            "commands",
            pid,
            period,
            target.sender,
            inbound=inbound,
            commands=commands,
            problems=problems,
        )
    return Reply(
        "reply",
        pid,
        period,
        target.sender,
        report=_report(parsed, rest, target, period),
        commands=commands,
        problems=problems,
        not_run=not_run,
    )


def _report(parsed: ParsedMessage, rest: str, target: Target, period: str) -> Report:
    """The progress record of `rest`, her reply without its command lines."""
    same = rest == parsed.text.strip()
    sections = parsed.sections if same else find_sections(rest)
    envelope = target.envelope
    return Report(
        partnership_id=target.partnership.id,
        period=period,
        received_at=envelope.received_at,
        message_id=target.message_id,
        sender=target.sender,
        text=rest,
        setback=bool(parsed.setback) if same else detect_setback(rest, sections),
        done=sections.get("done", ""),
        setback_text=sections.get("setback", ""),
        next=sections.get("next", ""),
        raw_ref=archive_path(period, envelope.id, envelope.received_at),
    )
