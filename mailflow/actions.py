"""What a message asks us to do and tell: one small handler per kind of decision (pure).

`apply(decision, pair, desk)` dispatches on the decision's variant: a member's reply with
commands (pause, resume, goal done, stop), a partner's consent, a partner's note for the
member, a question back when we cannot tell which partnership a mail is for, and the "not
counted" receipt for a member (or partner) whose own reply was set aside; and, when an admin
releases a member's reply from the quarantine, the digest of its period and her word that it
counts (`on_release`). `unrouted(decision, desk)` does the same for a decision about no
partnership: mail to our From address is forwarded to the admin. `consent_given` is what a
partner's yes or no means, whether it came by mail or from an admin who heard it another way
(`admin.record_consent`).

Mail that came in a member's name without proof that it is hers (to the plain address, or
from another address and released by an admin) is answered at her stored address: its
commands are held and she is asked to confirm them (`on_unconfirmed`; her answer is
`on_confirm`), a report that came to the plain address is shown to her in a receipt
(`on_plain_report`).

Each handler computes from the partnership *as stored now* (`intake` reads it, and writes
the result back, in one core transaction, so two replies never lose each other's change) and
returns an `Outcome`: the changed partnership, the letters to send, and lines for the run's
report. A plain report is
not an action: it is only stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from mailflow import letters
from mailflow import partnerships as pships
from mailflow.commands import (
    ACCEPT,
    CONFIRM_DAYS,
    DECLINE,
    MAX_OPEN,
    Command,
    Env,
    apply_commands,
    describe,
    held_commands,
    hold,
    is_open,
    settle,
)
from mailflow.letters import Letter, Pair, ServiceInfo, Told
from mailflow.models import CANCELLED, CONFIRMED, CONSENT_PENDING, ENDED, Partnership, Report, Week
from mailflow.schedule import Period, current_period, first_checkin, utc_week
from mailflow.tokens import AGREE, CHECKIN, CONFIRM, hash16
from mailflow.triage import (
    Ambiguous,
    Confirm,
    Consent,
    Decision,
    Forward,
    Note,
    Quarantine,
    Reply,
)


@dataclass(frozen=True)
class Desk:
    """The message being answered: when it arrived and how it is known.

    `next_n`: the number a new confirmation request would get (read by `intake` in the same
    core transaction that writes the result).
    """

    svc: ServiceInfo
    at: datetime  # when we received it
    mid: str  # its Message-ID: receipts and notices are keyed by it (sent once per message)
    entry_id: str  # its spool id (the key of a "not counted" receipt)
    next_n: int = 1


@dataclass(frozen=True)
class Outcome:
    """What handling a message comes to: the partnership to write back (None: unchanged),
    the letters to send, and what to report; `numbered`: `Desk.next_n` was used."""

    partnership: Partnership | None = None
    letters: tuple[Letter, ...] = ()
    lines: tuple[str, ...] = ()
    numbered: int | None = None


NOTHING = Outcome()


def subject(d: Decision) -> int | None:
    """The partnership whose current record `apply` needs, or None when `d` asks nothing."""
    match d:
        case Reply(commands=(), problems=(), to_confirm=(), unbound=False):
            return None  # a report to her check-in (the common case): nothing to do or tell
        case Reply() | Consent() | Note() | Ambiguous() | Confirm():
            return d.pid
        case Quarantine(tell_member=True):
            return d.partnership_id
    return None


def unrouted(d: Decision, desk: Desk) -> tuple[Letter, ...]:
    """The letters of a decision about no partnership (`subject(d)` is None): a forward of
    mail to our From address to the admin; nothing else is ever answered."""
    if isinstance(d, Forward):
        letter = letters.forward(d.written, desk.svc)
        return (letter,) if letter else ()
    return ()


def apply(d: Decision, pair: Pair | None, desk: Desk) -> Outcome:
    """Handle one decision against `pair` (the partnership of `subject(d)` as stored now,
    with its people; None when it or one of them is gone: nothing to do)."""
    if pair is None:
        return NOTHING
    match d:
        case Reply() if d.to_confirm:
            return on_unconfirmed(d, pair, desk)
        case Reply(commands=(), problems=(), unbound=True):
            return on_plain_report(d, pair, desk)
        case Reply(commands=(), problems=()):
            return NOTHING
        case Reply():
            return on_commands(d, pair, desk)
        case Confirm():
            return on_confirm(d, pair, desk)
        case Consent():
            return on_consent(d, pair, desk)
        case Note():
            return on_note(d, pair, desk)
        case Ambiguous():
            return on_ambiguous(d, pair, desk)
        case Quarantine(tell_member=True):
            return on_not_counted(d, pair, desk)
    return NOTHING


def on_commands(d: Reply, pair: Pair, desk: Desk) -> Outcome:
    """Commands in a member's reply: applied, confirmed in a receipt (with what was not
    understood or asked back), and told to the partner when check-ins pause, resume or stop."""
    reply = desk.svc.keys.address(CHECKIN, pair.p.id, d.period)
    return _run(pair, d.commands, d.problems, d.report is not None, d.period, reply, desk)


def _run(
    pair: Pair,
    commands: Sequence[Command],
    problems: tuple[str, ...],
    report_stored: bool,
    period: str,
    reply: str,
    desk: Desk,
    confirmed: bool = False,
) -> Outcome:
    """Apply commands on the partnership as stored now; her receipt and the partner's notices."""
    p, svc = pair.p, desk.svc
    today = desk.at.astimezone(ZoneInfo(pair.member.timezone)).date()
    result = apply_commands(p, commands, Env(today, desk.at, desk.mid, confirmed))
    updated = replace(pair, p=result.partnership)
    told = Told(
        key=f"receipt:{hash16(desk.mid)}",
        reply=reply,
        reply_to=reply,
        done=result.done,
        problems=problems + result.problems,
        question=result.question,
        report_stored=report_stored,
        period=period,
    )
    out = [letters.receipt(updated, told, svc, desk.at)]
    for action, until in result.notices:
        out.append(letters.pause_notice(updated, action, until, desk.mid, period, svc, desk.at))
    lines = tuple(f"partnership {p.id}: {line}" for line in result.done)
    return Outcome(result.partnership, tuple(out), lines)


def on_unconfirmed(d: Reply, pair: Pair, desk: Desk) -> Outcome:
    """Commands in her name without proof: held, and she is asked at her stored address to
    confirm them (never at a Reply-To the mail carried). Nothing changes until she does.

    They came to the plain address from her address (`d.unbound`), or, through a token, from
    another address in a mail an admin released from the quarantine: the only way a
    token-bound mail is unproven (`triage.route` quarantines it otherwise)."""
    p, svc, at = pair.p, desk.svc, desk.at
    today = at.astimezone(ZoneInfo(pair.member.timezone)).date()
    held, asked = hold(p, d.to_confirm, desk.next_n, desk.mid, today, at)
    if asked is None:
        # Enough requests already wait for her: a flood of mail in her name asks her no more.
        line = f"partnership {p.id}: not asked to confirm: {MAX_OPEN} requests still open"
        if d.report is None:
            return Outcome(lines=(line,))
        why = (
            f"The commands in it ({'; '.join(c.line for c in d.to_confirm)}) were not run: "
            f"{MAX_OPEN} earlier requests from {svc.keys.plain_address} still wait for your "
            "answer. Answer those, or write the commands in a reply to your check-in."
        )
        receipt = letters.report_receipt(pair, d.report, svc, at, (why, *d.problems))
        return Outcome(letters=(receipt,), lines=(line,))
    asking = letters.Asking(
        asked,
        tuple(describe(c, p) for c in d.to_confirm),
        d.problems,
        d.report is not None,
        d.period,
        CONFIRM_DAYS,
        "" if d.unbound else d.sender or "an unknown address",
    )
    letter = letters.confirm(replace(pair, p=held), asking, svc, at)
    line = f"partnership {p.id}: asked {pair.member.email} to confirm: " + "; ".join(asked.lines)
    numbered = asked.n if held is not p else None
    return Outcome(held, (letter,), (line,), numbered)


def on_confirm(d: Confirm, pair: Pair, desk: Desk) -> Outcome:
    """Her answer to a confirmation mail: yes runs the held commands (as confirmed: a `stop`
    ends it), no cancels them, anything else is asked again; a request already answered or
    lapsed changes nothing, and she is told so."""
    p, svc, at = pair.p, desk.svc, desk.at
    reply = letters.reply_address_of(pair, svc, at)
    asked = next((x for x in p.pending if x.n == d.n), None)
    label = current_label(pair, svc, at)

    def told(done: str = "", question: str = "", reply_to: str = reply) -> Outcome:
        key = f"receipt:{hash16(desk.mid)}"
        text = Told(key, reply_to, reply_to, done=(done,) if done else (), question=question)
        return Outcome(letters=(letters.receipt(pair, text, svc, at),))

    if asked is None or not is_open(asked, at):
        why = {CONFIRMED: "was already confirmed", CANCELLED: "was already cancelled"}
        state = why.get(asked.state if asked else "", f"lapsed after {CONFIRM_DAYS} days")
        return told(
            question=f"That request {state}; nothing changed now. To do it, write the "
            "command in a reply to your check-in."
        )
    if d.answer is None:
        again = svc.keys.address(CONFIRM, d.n, d.period)
        return told(question='Please reply "yes" to do it or "no" to cancel it.', reply_to=again)
    if d.answer == DECLINE:
        admin = f" and tell {svc.admin}" if svc.admin else ""
        done = (
            "Cancelled: nothing changed. If you did not write that mail, someone used your "
            f"address: keep an eye on what we send you{admin}."
        )
        out = told(done=done)
        line = f"partnership {p.id}: confirmation {d.n} cancelled by {d.sender}"
        return replace(out, partnership=settle(p, d.n, CANCELLED, at), lines=(line,))
    settled = replace(pair, p=settle(p, d.n, CONFIRMED, at))
    return _run(settled, held_commands(asked), (), False, label, reply, desk, confirmed=True)


def on_plain_report(d: Reply, pair: Pair, desk: Desk) -> Outcome:
    """A report that came to the plain address counts, and she sees it at her own address."""
    if d.report is None:
        return NOTHING
    return Outcome(letters=(letters.report_receipt(pair, d.report, desk.svc, desk.at),))


def current_label(pair: Pair, svc: ServiceInfo, at: datetime) -> str:
    """The partnership's current period, else the UTC week of `at`."""
    cur = current_period(pair.p, ZoneInfo(pair.member.timezone), svc.settings, at)
    return cur.label if cur else utc_week(at)


def on_consent(d: Consent, pair: Pair, desk: Desk) -> Outcome:
    """The partner's yes or no to the introduction; both people hear what it means, and the
    admin hears a no. An unclear answer is asked again; a second answer changes nothing."""
    p, svc, at = pair.p, desk.svc, desk.at
    reply = svc.keys.address(AGREE, p.id, utc_week(at))

    def to_partner(reply_to: str | None, done: tuple[str, ...] = (), question: str = "") -> Letter:
        key = f"receipt:{hash16(desk.mid)}"
        told = Told(key, reply, reply_to, done=done, question=question, to_partner=True)
        return letters.receipt(pair, told, svc, at)

    if p.consent != CONSENT_PENDING:
        # Answered already: a second answer changes nothing, but she must know that.
        when = p.consent_at.date().isoformat() if p.consent_at else "earlier"
        admin = svc.admin or "the program admin"
        question = (
            f"You already {p.consent} on {when}; that answer stands. To change it, "
            f"please write to {admin}."
        )
        line = f"partnership {p.id}: consent answer ignored, already {p.consent}"
        return Outcome(letters=(to_partner(None, question=question),), lines=(line,))
    if d.answer is None:
        question = (
            'We could not tell whether that was a yes or a no. Please reply "yes" to accept '
            'or "no" to decline.'
        )
        return Outcome(letters=(to_partner(reply, question=question),))
    key = f"receipt:{hash16(desk.mid)}"
    outcome = consent_given(pair, d.answer == ACCEPT, d.note, svc, at, Given(key, reply))
    return replace(outcome, lines=(f"partnership {p.id}: partner {d.answer}",))


@dataclass(frozen=True)
class Given:
    """How a consent answer reached us: its receipt's key and the partner's reply address;
    `by_admin` when an admin recorded it (the partner told the admin, not us)."""

    key: str
    reply: str
    by_admin: bool = False


def consent_given(
    pair: Pair, accepted: bool, note: str, svc: ServiceInfo, at: datetime, given: Given
) -> Outcome:
    """The partner said yes or no: the partnership records it, both people hear what it
    means, and the admin hears a no that came by mail (an admin who recorded it knows)."""
    p, member, partner = pair.p, pair.member, pair.partner
    first = first_checkin(p, ZoneInfo(member.timezone), svc.settings, at)
    first_text = letters.local_time(first, member.timezone)
    out: list[Letter] = []
    if accepted:
        done = f"You accepted. The first check-in for {member.name} goes out {first_text}."
        told = f"{partner.name} accepted. Your first check-in comes {first_text}."
    elif given.by_admin:
        done = "You declined."
        told = f"{partner.name} declined; the program admin will be in touch."
    else:
        done = "You declined. We have told the program admin."
        told = f"{partner.name} declined; the program admin will be in touch."
        notice = letters.consent_notice(p, member, partner, "declined", note, svc, at)
        out.extend([notice] if notice else [])
    if given.by_admin:
        done = f"The program admin recorded your answer. {done}"
    # The member hears it too: her check-ins wait for exactly this answer. (Not an answer
    # to anything she wrote: it waits for her daytime.)
    plain = svc.keys.plain_address
    member_key = f"consent_told:{p.id}" + (f":{given.key}" if given.by_admin else "")
    to_member = Told(member_key, plain, plain, done=(told,), to_writer=False)
    out.append(letters.receipt(pair, to_member, svc, at))
    to_partner = Told(
        given.key,
        given.reply,
        given.reply,
        done=(done,),
        to_partner=True,
        to_writer=not given.by_admin,
    )
    out.append(letters.receipt(pair, to_partner, svc, at))
    changed = pships.set_consent(p, accepted, at, note)
    answer = "accepted" if accepted else "declined"
    return Outcome(changed, tuple(out), (f"partnership {p.id}: partner {answer}",))


def on_note(d: Note, pair: Pair, desk: Desk) -> Outcome:
    """The partner's answer to a digest goes to the member."""
    return Outcome(letters=(letters.partner_note(pair, d.note, desk.mid, desk.svc, desk.at),))


def on_ambiguous(d: Ambiguous, pair: Pair, desk: Desk) -> Outcome:
    """Ask a member with several partnerships which one her mail to the plain address is for."""
    plain = desk.svc.keys.plain_address
    question = (
        'Which partnership is this for? Reply with a line "skill: SKILL" '
        f"(yours: {', '.join(d.running)})."
    )
    told = Told(f"receipt:{hash16(desk.mid)}", plain, plain, question=question)
    return Outcome(letters=(letters.receipt(pair, told, desk.svc, desk.at),))


def on_not_counted(d: Quarantine, pair: Pair, desk: Desk) -> Outcome:
    """Tell a member when her own reply was set aside, so a report never just vanishes.

    Only for reasons that come after the sender was checked (`tell_member`): anyone else's
    mail gets no answer from us.
    """
    p, svc = pair.p, desk.svc
    ended = p.status == ENDED
    key = f"receipt:{hash16(desk.entry_id)}"
    keys = svc.keys
    if d.to_partner:
        # The partner answered a digest (or an introduction) of a partnership that has ended.
        problem = (
            f"Your message was not passed on to {pair.member.name}: this partnership has ended."
        )
        told = Told(key, keys.plain_address, None, problems=(problem,), to_partner=True)
        return Outcome(letters=(letters.receipt(pair, told, svc, desk.at),))
    cur = current_period(p, ZoneInfo(pair.member.timezone), svc.settings, desk.at)
    reply = keys.address(CHECKIN, p.id, cur.label) if cur and not ended else keys.plain_address
    why = (
        "this partnership has ended"
        if ended
        else "it answered a check-in from more than 8 weeks ago; please answer the latest one"
    )
    told = Told(
        key, reply, None if ended else reply, problems=(f"Your reply was not counted: {why}.",)
    )
    return Outcome(letters=(letters.receipt(pair, told, svc, desk.at),))


def on_release(
    d: Reply,
    pair: Pair,
    period: Period,
    week: Week | None,
    reports: Sequence[Report],
    reason: str,
    desk: Desk,
) -> Outcome:
    """An admin released a member's reply from the quarantine: an explicit decision that it
    counts, for the period it was written for (`d.period`, with `reports` and `week` as
    stored now that it is among them).

    The partner gets that period's digest now, even when the period has passed: the one
    exception to "nothing for a past period is sent late" (the digest says it was released).
    The member hears that her reply counts after all, and which commands in it were not run
    when the release vouched for another sender. `reason` is why it had been set aside.
    """
    if d.report is None:
        return NOTHING
    out: list[Letter] = []
    if reports:
        out.append(letters.digest(pair, period, week, reports, desk.svc, desk.at, released=True))
    out.append(
        letters.released(
            pair,
            d.period,
            d.report.received_at,
            reason,
            d.sender,
            d.not_run,
            desk.mid,
            desk.svc,
            desk.at,
        )
    )
    setback = " (setback)" if d.report.setback else ""
    line = f"partnership {pair.p.id}: released report for {d.period}{setback} counts"
    return Outcome(letters=tuple(out), lines=(line,))
