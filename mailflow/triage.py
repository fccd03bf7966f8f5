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

A From header proves nothing (design.md section 3). `proven(parsed, target, trust)` is the one
rule for when what a message *asks* (commands, consent) may be done in a person's name: the
From is her stored address and the message came through a token bound to her (a reply to an
address we sent to her, or one naming our Message-ID to her), or the trusted MTA in front
vouches for the From with DMARC (`Authentication-Results`, RFC 8601). A member's commands
that are not proven (she wrote to the plain address) are not run: `decide` hands them back
as `Reply.to_confirm`, and she is asked to confirm them from her own mailbox (`Confirm`, the
answer to that mail). What a message *says* (a report) still counts; a report that came
unbound gets a receipt at her stored address, so a forgery is seen.

An admin's release of a quarantined message goes the same two steps, told so: `route(...,
vouch=True)` lets a sender who is not the token's person (or a reply to an ended partnership)
through as a `Target`, and `Facts` with `released=True` counts a report for the period its
token names, however old. The release is no proof either: `proven` is the same rule, so the
commands of a message from another address are held for the member's confirmation exactly
like those of a mail to the plain address, and a yes or no from another address is refused.

Decisions are frozen variants; `actions` does what they ask and `intake` stores them. The
stored records (`Report`, `Inbound`) carry the path the raw message will be archived under,
which is known here because it depends only on the decision's period and the spool id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from email.utils import getaddresses

from mailflow.commands import Command, extract_commands, parse_consent
from mailflow.errors import DomainError
from mailflow.letters import Written
from mailflow.models import CONSENT_ACCEPTED, ENDED, Inbound, Partnership, Report, Roster
from mailflow.parse import ParsedMessage, detect_setback, find_sections
from mailflow.people import normalize_email
from mailflow.schedule import utc_week, weeks_between
from mailflow.tokens import AGREE, CHECKIN, CONFIRM, DIGEST, Keys, Rcpt, Token, token_from_ids

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
class Trust:
    """What besides our tokens may prove a sender: the authserv-id of the MTA in front
    (`[listener] trusted_authserv_id`) whose Authentication-Results count ("": none)."""

    authserv_id: str = ""


@dataclass(frozen=True)
class Target:
    """The partnership a message is about, and how we know: its token, or None when it came
    to the plain address and was picked by its skill line or subject.

    `person`: the stored address of whom it speaks for (the token's person: the member for a
    check-in or confirmation, the partner for a digest or introduction; the member for mail to
    the plain address). `proven`: see `proven` (set by `route`).
    """

    partnership: Partnership
    token: Token | None
    sender: str
    message_id: str
    envelope: Envelope
    person: str = ""
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
    """A member's reply: a progress record and/or commands (`problems`: lines not understood).

    `to_confirm`: commands of hers that are not proven (see `proven`): held, and she is asked
    to confirm them. `unbound`: it came without a token (to the plain address), so she gets a
    receipt at her stored address whatever it held. `proven`: its From is proven hers.
    """

    reason: str
    pid: int
    period: str
    sender: str
    report: Report | None = None
    inbound: Inbound | None = None  # commands only: recorded as inbound mail
    commands: tuple[Command, ...] = ()
    problems: tuple[str, ...] = ()
    to_confirm: tuple[Command, ...] = ()
    unbound: bool = False
    proven: bool = True

    @property
    def not_run(self) -> tuple[str, ...]:
        """Command lines not run now: held until she confirms them (`to_confirm`)."""
        return tuple(c.line for c in self.to_confirm)


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
class Confirm:
    """A member's answer to a confirmation mail: yes (ACCEPT), no (DECLINE) or None (unclear)
    to the held request number `n`."""

    pid: int
    n: int
    period: str
    answer: str | None
    sender: str
    inbound: Inbound

    @property
    def reason(self) -> str:
        return f"confirmation {self.n}: {self.answer or 'unclear'}"


Decision = Quarantine | Record | Reply | Consent | Note | Ambiguous | Forward | Confirm


def records(d: Decision) -> tuple[Report | Inbound, ...]:
    """What a decision stores in its period file (nothing for a quarantine)."""
    match d:
        case Reply():
            return tuple(r for r in (d.report, d.inbound) if r is not None)
        case Record() | Consent() | Note() | Ambiguous() | Forward() | Confirm():
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
    return d.pid


def sender_of(d: Decision) -> str:
    """Who proved they receive our mail: the proven sender of a reply, consent, note or
    confirmation ("" else: mail to the plain address could come from anyone)."""
    match d:
        case Reply(proven=False):
            return ""
        case Reply() | Consent() | Note() | Confirm():
            return d.sender
    return ""


# -- who may act in whose name ----------------------------------------------------------------


def proven(parsed: ParsedMessage, target: Target, trust: Trust) -> bool:
    """May what this message asks (commands, consent) be done in `target.person`'s name?

    Only when its From is her stored address, and either it came through a token bound to
    her (`route` checked the token's person: a reply to an address we sent to her, or a
    reference to our Message-ID to her), or the trusted MTA in front vouches for the From
    with DMARC (`dmarc_vouches`). Mail to the plain address from her address is not proof:
    anybody can write that From. The rule is the same wherever a message comes from: the
    listener, or an admin releasing it from the quarantine.
    """
    sender = (parsed.from_address or "").lower()
    if not sender or sender != target.person:
        return False
    if target.token is not None:
        return True
    return dmarc_vouches(target.envelope.raw, sender, trust.authserv_id)


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MAX_HEADER = 262_144


def header_fields(raw: bytes, name: str) -> list[str]:
    """The values of header field `name` (any case) in `raw`'s header section, topmost
    first, unfolded (ASCII; anything else replaced)."""
    end = _HEADER_END.search(raw, 0, _MAX_HEADER)
    head = raw[: end.start() if end else _MAX_HEADER].decode("ascii", "replace")
    wanted = name.lower()
    found: list[list[str]] = []
    current: list[str] | None = None
    for line in head.splitlines():
        if line[:1] in (" ", "\t"):  # a folded continuation of the field above
            if current is not None:
                current.append(line.strip())
            continue
        field, colon, value = line.partition(":")
        current = [value.strip()] if colon and field.strip().lower() == wanted else None
        if current is not None:
            found.append(current)
    return [" ".join(parts) for parts in found]


def dmarc_vouches(raw: bytes, sender: str, authserv_id: str) -> bool:
    """True when the MTA in front (`authserv_id`) says DMARC passed for `sender`'s domain.

    Its verdict is the topmost Authentication-Results header whose authserv-id is exactly
    `authserv_id` (RFC 8601 section 5: the MTA adds its own on top, and should remove any it
    finds with its own id; one added below it by the sender is never reached). Headers of
    any other authserv-id are ignored, and so is everything when `authserv_id` is "". The
    message must have exactly one From field with one address (DMARC checks one From; a
    second one could be the one we read).
    """
    if not authserv_id:
        return False
    froms = header_fields(raw, "from")
    if len(froms) != 1 or len([a for _, a in getaddresses(froms) if a]) != 1:
        return False
    domain = sender.rpartition("@")[2].lower()
    for value in header_fields(raw, "authentication-results"):
        server, results = authentication_results(value)
        if server != authserv_id.lower():
            continue
        return any(
            method == "dmarc" and result == "pass" and props.get("header.from") == domain
            for method, result, props in results
        )
    return False


_PAIR = re.compile(r'([A-Za-z0-9][A-Za-z0-9./_-]*)\s*=\s*("[^"]*"|[^\s";]+)')


def authentication_results(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """An Authentication-Results value (RFC 8601 2.2) as (authserv-id, [(method, result,
    {ptype.property: value})]), all lower case; comments are dropped. Linear in the value."""
    parts = _split_semicolons(_uncomment(value))
    words = parts[0].split() if parts else []
    server = words[0].strip('"').lower() if words else ""
    results = []
    for part in parts[1:]:
        pairs = _PAIR.findall(part)
        if not pairs:
            continue  # "none"
        method, result = pairs[0]
        props = {k.lower(): v.strip('"').lower() for k, v in pairs[1:]}
        results.append((method.split("/")[0].lower(), result.strip('"').lower(), props))
    return server, results


def _uncomment(value: str) -> str:
    """`value` without (comments), nested or not; quoted strings kept as they are."""
    out: list[str] = []
    depth, quoted = 0, False
    for ch in value:
        if quoted:
            quoted = ch != '"'
        elif ch == "(":
            depth += 1
            continue
        elif ch == ")" and depth:
            depth -= 1
            continue
        elif ch == '"' and not depth:
            quoted = True
        if not depth:
            out.append(ch)
    return "".join(out)


def _split_semicolons(value: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


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
    parsed: ParsedMessage,
    envelope: Envelope,
    keys: Keys,
    roster: Roster,
    *,
    trust: Trust = Trust(),  # noqa: B008 - frozen, shared on purpose
    vouch: bool = False,
) -> Target | Decision:
    """The partnership a message is about (`Target`, with `proven` set), or what it is when
    it is about none.

    `vouch`: an admin releases it from the quarantine, so a reply to a token from another
    address than the token's person, or to an ended partnership, is routed anyway. The
    From header is still no proof: such a `Target` is unproven (see `proven`), so what it
    asks waits for the person's own confirmation.
    """
    found = _route(parsed, envelope, keys, roster, vouch)
    if isinstance(found, Target):
        return replace(found, proven=proven(parsed, found, trust))
    return found


def _route(
    parsed: ParsedMessage, envelope: Envelope, keys: Keys, roster: Roster, vouch: bool
) -> Target | Decision:
    mid = message_id_of(parsed, envelope.raw)
    sender = (parsed.from_address or envelope.mail_from or "").lower()
    token: Token | None = None
    to_bounce = to_plain = False
    mailbox = ""
    for rcpt in envelope.rcpt_tos:
        kind, found = keys.rcpt(rcpt)
        to_bounce = to_bounce or kind is Rcpt.BOUNCES
        to_plain = to_plain or kind is Rcpt.PLAIN
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


def _by_token(
    token: Token, sender: str, mid: str, envelope: Envelope, roster: Roster, vouch: bool
) -> Target | Decision:
    if token.kind == CONFIRM:
        p = _asking(token.partnership_id, roster)
        if p is None:
            return Quarantine(f"unknown confirmation {token.partnership_id}")
    else:
        p = roster.partnerships.get(token.partnership_id)
        if p is None:
            return Quarantine(f"unknown partnership {token.partnership_id}")
    expected = roster.people.get(p.member if token.kind in (CHECKIN, CONFIRM) else p.partner)
    if vouch and expected is not None:
        return Target(p, token, sender, mid, envelope, person=expected.email)
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
    return Target(p, token, sender, mid, envelope, person=expected.email)


def _asking(n: int, roster: Roster) -> Partnership | None:
    """The partnership holding confirmation request `n` (open, answered or lapsed)."""
    for p in roster.partnerships.values():
        if any(x.n == n for x in p.pending):
            return p
    return None


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
        return Target(p, None, sender, mid, envelope, person=p.member)
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
    if token is not None and token.kind in (AGREE, CONFIRM) and not target.proven:
        # Only an admin's release routes another sender's answer here: it is not theirs.
        what = "the introduction" if token.kind == AGREE else "a confirmation"
        who = "partner" if token.kind == AGREE else "member"
        return Quarantine(
            f"a yes or no to {what} counts only from the {who}'s own address",
            partnership_id=p.id,
            period=token.period,
        )
    if token is not None and token.kind == AGREE:
        answer = parse_consent(parsed.text)
        detail = answer or "unclear"
        inbound = _target_inbound(target, "consent", detail, token.period, text=parsed.text)
        return Consent(p.id, token.period, answer, parsed.text.strip(), target.sender, inbound)
    if token is not None and token.kind == CONFIRM:
        answer = parse_consent(parsed.text)
        n, period = token.partnership_id, token.period
        inbound = _target_inbound(target, "confirmation", answer or "unclear", period, n=n)
        return Confirm(p.id, n, period, answer, target.sender, inbound)
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
    commands, to_confirm = extracted.commands, ()
    if not target.proven:
        # Not proven hers (see `proven`): what it asks waits for her yes to a confirmation
        # mail at her stored address, whoever wrote it (her address, to the plain one; or
        # another address, released from the quarantine by an admin). Nothing runs before.
        to_confirm, commands = commands, ()

    def reply(reason: str, report: Report | None = None, inbound: Inbound | None = None) -> Reply:
        return Reply(
            reason,
            pid,
            period,
            target.sender,
            report,
            inbound,
            commands,
            extracted.problems,
            to_confirm,
            unbound=token is None,
            proven=target.proven,
        )

    if not rest and not extracted.commands:
        if extracted.problems:
            inbound = _target_inbound(target, "commands", "not understood", period)
            return reply("commands not understood", inbound=inbound)
        reason = "empty reply: no new text outside the quoted check-in"
        return Quarantine(reason, partnership_id=pid, period=period)
    if not rest:
        return reply(
            "commands", inbound=_target_inbound(target, "commands", "commands only", period)
        )
    return reply("reply", report=_report(parsed, rest, target, period))


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
