"""What an admin does to one partnership or person, from the command line or the web.

Each action reads only the partnership it is about (and its member, for her date), applies
the rule from `partnerships` to the record as stored now and writes it back, in one core
transaction: its cost does not grow with the directory, and it never loses a change made
meanwhile by `serve`. Errors are `DomainError`s (an unknown id, a rule that refuses).

Actions that mail someone take the `Mailroom` (it holds the store and the service): they
queue their letters there, under quiet hours like any other mail, and deliver at once what
may go now. `resend_intro` sends an introduction again (a bounce, a lost mail);
`record_consent` records a partner's yes or no that reached the admin another way, and
tells both people what it means, as an answer by mail would. `remove_person` takes someone
out of the directory (refused while they are in a running partnership, unless those end
with it).

The other admin views are plain functions too: `status.status` (or `App.status`) for the
status page, `Templates.check` / `Templates.preview` for the templates, `store.reports` for
a partnership's progress records.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailflow import actions, letters, status
from mailflow import partnerships as pships
from mailflow.errors import DomainError, NotFoundError
from mailflow.mailroom import Mailroom, TickReport
from mailflow.models import CONSENT_ACCEPTED, CONSENT_DECLINED, ENDED, Partnership
from mailflow.people import normalize_email, removal_problems
from mailflow.schedule import utc_week
from mailflow.store import CoreView, Store
from mailflow.tokens import AGREE

ROLES = ("member", "partner")


def partnership(store: Store, pid: int) -> Partnership:
    """The partnership as stored now; DomainError when there is none with that id."""
    return _get(store.core(), pid)


def reports(store: Store, pid: int) -> list[dict[str, Any]]:
    """A partnership's progress records, oldest first, as `partnerships show --json` lists
    them: {period, received_at (ISO 8601), message_id, setback, text}."""
    rows = [
        {
            "period": r.period,
            "received_at": r.received_at.isoformat(),
            "message_id": r.message_id,
            "setback": r.setback,
            "text": r.text,
        }
        for r in store.reports(pid)
    ]
    return sorted(rows, key=lambda row: row["received_at"])


def pause(
    store: Store, pid: int, until: date | None, now: datetime, default_tz: str
) -> Partnership:
    """Pause check-ins (until a date, after which they resume by themselves, or open-ended).

    `until` must lie after the member's today (in her zone; `default_tz` if she is gone).
    """

    def change(core: CoreView, p: Partnership) -> Partnership:
        member = core.person(p.member)
        today = now.astimezone(ZoneInfo(member.timezone if member else default_tz)).date()
        return pships.pause(p, until, today)

    return _update(store, pid, change)


def resume(store: Store, pid: int) -> Partnership:
    """Resume check-ins of a paused partnership."""
    return _update(store, pid, lambda _core, p: pships.resume(p))


def approve(store: Store, pid: int) -> Partnership:
    """Approve a partnership asked for by self-service under `self_service = "approval"`:
    its introductions may go out (the caller sends them: `Jobs.introduce`). DomainError when
    it waits for no approval."""

    def change(_core: CoreView, p: Partnership) -> Partnership:
        if not p.approval:
            raise DomainError(f"partnership {p.id} waits for no approval")
        if p.status == ENDED:
            raise DomainError(f"partnership {p.id} has ended")
        return p.with_changes(approval="")

    return _update(store, pid, change)


def _not_waiting(p: Partnership) -> None:
    """DomainError while `p` waits for an admin's approval: nobody has been introduced yet,
    so an introduction sent again or a consent recorded would go round the approval."""
    if p.approval:
        raise DomainError(
            f"partnership {p.id} waits for an admin's approval; nobody was introduced yet "
            f"(mailflow partnerships approve {p.id})"
        )


def partner_load_warning(store: Store, p: Partnership, cap: int) -> str:
    """ "warning: ..." when `p`'s partner now carries more than `cap` partnerships ("" else):
    an admin may go past the program's limit, but should know it."""
    load = sum(
        1 for q in store.core().partnerships() if q.partner == p.partner and q.status != ENDED
    )
    if load <= cap:
        return ""
    return (
        f"warning: {p.partner} now carries {load} partnerships as partner, more than "
        f"max_partnerships_per_partner ({cap})"
    )


def end(store: Store, pid: int, now: datetime) -> Partnership:
    """End a partnership for good."""
    return _update(store, pid, lambda _core, p: pships.end(p, now))


def _get(core: CoreView, pid: int) -> Partnership:
    p = core.partnership(pid)
    if p is None:
        raise NotFoundError(f"no partnership {pid}")
    return p


def _update(
    store: Store, pid: int, change: Callable[[CoreView, Partnership], Partnership]
) -> Partnership:
    with store.core_tx() as core:
        updated = change(core, _get(core, pid))
        core.put_partnership(updated)
    return updated


def _pair(mailroom: Mailroom, core: CoreView, p: Partnership, now: datetime) -> letters.Pair:
    """The partnership with its two people and its strip; DomainError when one is gone."""
    member, partner = core.person(p.member), core.person(p.partner)
    if member is None or partner is None:
        raise DomainError(f"partnership {p.id}: {p.member} or {p.partner} no longer exists")
    people = {member.email: member, partner.email: partner}
    return status.pair(mailroom.store, p, people, mailroom.svc.settings, now)


def _stamp(now: datetime) -> str:
    """The admin action's own part of a job key: each resend is a mail of its own."""
    return now.strftime("%Y%m%dT%H%M%S%f")


def resend_intro(mailroom: Mailroom, pid: int, now: datetime, to: str = "partner") -> TickReport:
    """Send the introduction of partnership `pid` again, to the partner (`to`: "partner",
    "member" or "both"); the partner's copy asks for her yes or no again while none is
    recorded. What was queued and sent, line by line; DomainError for an ended partnership,
    an unknown id or role."""
    if to not in (*ROLES, "both"):
        raise DomainError(f'to: expected member, partner or both, got "{to}"')
    core = mailroom.store.core()
    p = _get(core, pid)
    if p.status == ENDED:
        raise DomainError(f"partnership {pid} has ended; nothing to introduce")
    _not_waiting(p)
    pair = _pair(mailroom, core, p, now)
    roles = ROLES if to == "both" else (to,)
    out = TickReport()
    for role in roles:
        person = pair.member if role == "member" else pair.partner
        if person.bouncing:
            out.add(
                f"note: {person.email} is marked bouncing ({person.bounce_reason}); once the "
                f"mailbox works: mailflow people update {person.email} --clear-bouncing"
            )
    intros = [letters.intro(pair, role, mailroom.svc, now, resend=_stamp(now)) for role in roles]
    mailroom.post(intros, now, out)
    out.extend(mailroom.flush(now))
    return out


def record_consent(
    mailroom: Mailroom, pid: int, accepted: bool, now: datetime, note: str = ""
) -> TickReport:
    """Record the partner's answer that reached the admin another way (a call, a chat):
    check-ins start (accepted) or stay off (declined), and both people are told, as after an
    answer by mail. An answer already recorded may be changed this way; the same answer
    again is refused (DomainError), as is an ended partnership."""
    wanted = CONSENT_ACCEPTED if accepted else CONSENT_DECLINED
    svc = mailroom.svc
    with mailroom.store.core_tx() as core:
        p = _get(core, pid)
        if p.status == ENDED:
            raise DomainError(f"partnership {pid} has ended")
        _not_waiting(p)
        if p.consent == wanted:
            raise DomainError(f"partnership {pid}: the partner's consent is already {wanted}")
        pair = _pair(mailroom, core, p, now)
        given = actions.Given(
            f"consent_recorded:{pid}:{_stamp(now)}",
            svc.keys.address(AGREE, pid, utc_week(now)),
            by_admin=True,
        )
        outcome = actions.consent_given(pair, accepted, note, svc, now, given)
        # Rendered before the change is written: a template that fails changes nothing.
        prepared = [mailroom.prepare(letter, now) for letter in outcome.letters]
        assert outcome.partnership is not None
        core.put_partnership(outcome.partnership)
    out = TickReport()
    out.add(f"partnership {pid}: consent recorded as {wanted}")
    mailroom.commit(prepared, out)
    out.extend(mailroom.flush(now))
    return out


def remove_person(store: Store, email: str, now: datetime, end_partnerships: bool) -> list[int]:
    """Take `email` out of the directory; returns the ids of the partnerships that ended
    with the removal (`end_partnerships`; without it, a running partnership refuses).
    Their reports and mail stay on record."""
    addr = normalize_email(email)
    ended: list[int] = []
    with store.core_tx() as core:
        people = core.directory
        # The count of her reports is kept in her shard: the directory is read whole only
        # to name them when there are some (and the removal is refused).
        reports = (
            [p.email for p in people.values() if p.manager == addr]
            if addr in people and people.reports_to(addr)
            else []
        )
        problems = removal_problems(addr, people, core.partnerships(), end_partnerships, reports)
        if problems:
            raise DomainError("; ".join(problems))
        for p in core.partnerships():
            if p.status != ENDED and addr in (p.member, p.partner):
                done = pships.end(p, now).with_changes(end_reason=f"ended: {addr} was removed")
                core.put_partnership(done)
                ended.append(p.id)
        core.remove_person(addr)
    return ended
