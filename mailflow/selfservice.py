"""What a person's mail to the program's address asks, and what we answer (pure).

`handle(decision, world, desk)` takes a `triage.Program` decision and the directory as stored
now (`World`, read by `intake` in the same core transaction that writes the result back) and
returns a `Change`: the people, partnerships and requests to write, the letters to send and
lines for the run's report.

- `help`, `status`: answered at once (to her stored address: a forged From can at most send
  the real member her own information).
- `offer` / `offer stop`: a From header proves nothing, so unless the trusted MTA vouched for
  it (`Program.vouched`) the change is held as an `OFFER` request and she is asked to confirm
  it by replying to a token-bound mail sent to her stored address.
- `partner for SKILL`: up to three eligible people (`program.candidates`) in a mail whose
  reply address carries the token of a `SUGGEST` request. Only a reply to that address can
  create a partnership: `ask N` with a complete agreement block creates it as pending and
  introduces both people (`self_service = "open"`), or asks the admin to approve it first
  (`"approval"`). An incomplete block gets a receipt that quotes what was understood.

Everything is keyed by the message (`desk.mid`): run twice, it changes nothing twice and its
letters carry the same keys (sent once).
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from mailflow import letters
from mailflow import partnerships as pships
from mailflow import program as prog
from mailflow.actions import Desk
from mailflow.commands import ACCEPT, DECLINE, parse_consent
from mailflow.errors import DomainError
from mailflow.letters import Answer, Letter, Pair
from mailflow.models import OFFER, SUGGEST, WAITING, Partnership, Person, Request
from mailflow.people import normalize_skill
from mailflow.tokens import hash16
from mailflow.triage import Program
from mailflow.wording import count

OPEN, APPROVAL, OFF = "open", "approval", "off"
REQUEST_WEEKS = 8  # a self-service mail older than this is answered no more (as old check-ins)


@dataclass(frozen=True)
class World:
    """The directory as stored now: what `handle` reads."""

    people: Mapping[str, Person]
    partnerships: Sequence[Partnership]
    requests: Sequence[Request]
    next_pid: int
    next_n: int
    # The store's indexes (skills on offer; skill -> who offers it), so that a message never
    # reads the whole directory. None: worked out from `people` (a small directory).
    offered: frozenset[str] | None = None
    offerers: Mapping[str, Sequence[str]] | None = None

    def request(self, n: int | None) -> Request | None:
        return next((r for r in self.requests if r.n == n), None)

    def skills(self) -> set[str]:
        """Every skill someone offers."""
        if self.offered is not None:
            return set(self.offered)
        return prog.offered_skills(self.people.values())

    def offering(self, skill: str) -> Sequence[str] | None:
        """Who offers `skill` (None when there is no index: then `people` is read)."""
        return None if self.offerers is None else self.offerers.get(skill, ())


@dataclass(frozen=True)
class Change:
    """What handling one message writes and sends."""

    people: tuple[Person, ...] = ()
    partnerships: tuple[Partnership, ...] = ()
    requests: tuple[Request, ...] = ()
    letters: tuple[Letter, ...] = ()
    lines: tuple[str, ...] = ()


def expired(world: World, now: datetime) -> list[int]:
    """Requests no reply can act on any more (older than twice `REQUEST_WEEKS`): the store
    drops them, so the table stays the size of a few weeks' asks."""
    limit = now - timedelta(weeks=2 * REQUEST_WEEKS)
    return [r.n for r in world.requests if r.asked_at < limit]


def applied(world: World, change: Change) -> World:
    """`world` with `change` made: what the next message of the same batch sees."""
    changed = {p.email: p for p in change.people}
    # An overlay, not a copy: the directory may hold 100,000 people read shard by shard.
    people: Mapping[str, Person] = world.people
    if changed:
        if isinstance(people, ChainMap):
            people = ChainMap({**people.maps[0], **changed}, *people.maps[1:])
        else:
            people = ChainMap(changed, people)
    offered, offerers = world.offered, world.offerers
    if changed and offerers is not None:
        lists: dict[str, set[str]] = {}
        for email, person in changed.items():
            old = world.people.get(email)
            before = set(old.offers) if old is not None else set()
            for skill in before ^ set(person.offers):
                who = lists.setdefault(skill, set(offerers.get(skill, ())))
                (who.add if skill in person.offers else who.discard)(email)
        offerers = ChainMap({k: sorted(v) for k, v in lists.items()}, offerers)
        skills = set(offered or ())
        skills -= {k for k, v in lists.items() if not v}
        skills |= {k for k, v in lists.items() if v}
        offered = frozenset(skills)
    made = {p.id: p for p in change.partnerships}
    pships = [made.pop(p.id, p) for p in world.partnerships] + list(made.values())
    asked = {r.n: r for r in change.requests}
    requests = [asked.pop(r.n, r) for r in world.requests] + list(asked.values())
    next_pid = max([world.next_pid - 1, *(p.id for p in change.partnerships)]) + 1
    next_n = max([world.next_n - 1, *(r.n for r in change.requests)]) + 1
    return World(people, pships, requests, next_pid, next_n, offered, offerers)


def handle(d: Program, world: World, desk: Desk) -> Change:
    """Handle one message to the program's address (or a reply to one of its mails)."""
    me = world.people.get(d.sender)
    if me is None:  # removed from the directory meanwhile
        return Change(lines=(f"self-service: {d.sender} is not in the directory",))
    if d.request is None:
        return _commands(d, me, world, desk)
    req = world.request(d.request)
    if req is None or req.person != me.email:
        # Our token, but not her request: a forwarded mail answered by someone else.
        return Change(lines=(f"self-service: reply to request {d.request} not from its person",))
    if req.asked_at < desk.at - timedelta(weeks=REQUEST_WEEKS) and req.used_by != desk.mid:
        what = "change" if req.kind == OFFER else f'"partner for {req.skill}"'
        problem = f"That mail is more than {REQUEST_WEEKS} weeks old: please write {what} again."
        answer = Answer(_key(desk), "Your mail to the program", problems=(problem,), show_help=True)
        return Change(letters=(letters.program_answer(me, answer, desk.svc, desk.at),))
    if req.kind == OFFER:
        return _confirm_offer(d, me, req, world, desk)
    return _ask(d, me, req, world, desk)


def _key(desk: Desk, part: str = "") -> str:
    return f"program:{hash16(desk.mid)}" + (f":{part}" if part else "")


# -- a new mail: commands -----------------------------------------------------------------------


def _commands(d: Program, me: Person, world: World, desk: Desk) -> Change:
    parsed = prog.parse_commands(d.text)
    svc = desk.svc
    done: list[str] = []
    problems = list(parsed.problems)
    add: list[str] = []
    remove: list[str] = []
    out: list[Letter] = []
    requests: list[Request] = []
    show_help = not parsed.commands
    status = None
    show_offers = False
    offered = world.skills()
    n = world.next_n
    for c in parsed.commands:
        if c.kind == prog.HELP:
            show_help = True
        elif c.kind == prog.STATUS:
            status = letters.status_rows(me, world.partnerships, world.people, svc, desk.at)
        elif c.kind == prog.ASK:
            problems.append(
                f'"{c.line}" works only in a reply to the mail that suggested partners: '
                'write "partner for SKILL" first'
            )
        elif c.kind == prog.OFFER:
            show_offers = True
            _offer(c, offered, me, add, problems)
        elif c.kind == prog.OFFER_STOP:
            show_offers = True
            _offer_stop(c, me, remove, problems)
        elif c.kind == prog.FIND:
            letter, request = _find(c, me, world, desk, n)
            out.append(letter)
            if request is not None:
                requests.append(request)
                n += 1
    if not parsed.commands and not problems:
        problems.append("We found no command in your mail.")
    people: tuple[Person, ...] = ()
    confirm: tuple[str, ...] = ()
    answer_request = None
    offers = me.offers
    if add or remove:
        if d.vouched:
            offers = _changed_offers(me.offers, add, remove)
            people = (replace(me, offers=offers),)
            done.extend(_offer_lines(add, remove))
        else:
            existing = _asked(world, desk.mid, OFFER, "")
            request = existing or Request(
                n, me.email, OFFER, desk.at, add=tuple(add), remove=tuple(remove), asked_by=desk.mid
            )
            if existing is None:
                requests.append(request)
            answer_request = request.n
            confirm = _offer_lines(add, remove)
    if show_help or status is not None or problems or show_offers or confirm or done:
        topic = (
            "Please confirm your offer"
            if confirm
            else "Your offers"
            if show_offers
            else "Your partnerships"
            if status is not None
            else "How to use " + (svc.keys.program or "the program address")
        )
        answer = Answer(
            key=_key(desk),
            topic=topic,
            request=answer_request,
            done=tuple(done),
            problems=tuple(problems),
            offers=offers if show_offers and not confirm else None,
            confirm=confirm,
            show_help=show_help,
            status=status,
        )
        out.insert(0, letters.program_answer(me, answer, svc, desk.at))
    line = f"self-service: {me.email}: " + (", ".join(c.kind for c in parsed.commands) or "help")
    return Change(people, (), tuple(requests), tuple(out), (line,))


def _asked(world: World, mid: str, kind: str, skill: str) -> Request | None:
    """The request this very message made before (a batch run again after a crash)."""
    return next(
        (r for r in world.requests if r.asked_by == mid and r.kind == kind and r.skill == skill),
        None,
    )


def _offer(c: prog.Command, offered: set[str], me: Person, add: list[str], problems: list[str]):
    try:
        skill, hint = prog.match_skill(c.skill, offered)
    except DomainError as exc:
        problems.append(f'"{c.line}": {exc}')
        return
    if hint:
        problems.append(f'"{c.line}": nobody offers "{skill}" yet{hint}')
    elif skill not in me.offers and skill not in add:
        add.append(skill)
    elif skill in me.offers:
        problems.append(f'You already offer "{skill}".')


def _offer_stop(c: prog.Command, me: Person, remove: list[str], problems: list[str]) -> None:
    try:
        skill, hint = prog.match_skill(c.skill, set(me.offers))
    except DomainError as exc:
        problems.append(f'"{c.line}": {exc}')
        return
    if skill in me.offers:
        if skill not in remove:
            remove.append(skill)
    else:
        problems.append(f'"{c.line}": you do not offer "{skill}"{hint}')


def _offer_lines(add: Sequence[str], remove: Sequence[str]) -> tuple[str, ...]:
    return tuple([f"offer {s}" for s in add] + [f"stop offering {s}" for s in remove])


def _changed_offers(offers: Sequence[str], add: Sequence[str], remove: Sequence[str]):
    kept = [s for s in offers if s not in remove]
    return tuple(kept + [s for s in add if s not in kept])


def _find(
    c: prog.Command, me: Person, world: World, desk: Desk, n: int
) -> tuple[Letter, Request | None]:
    """The suggestions mail for `partner for SKILL` (and its request when it names anyone)."""
    svc = desk.svc
    offered = world.skills()
    try:
        skill, hint = prog.match_skill(c.skill, offered)
    except DomainError as exc:
        answer = Answer(_key(desk, "find"), "Partners", problems=(f'"{c.line}": {exc}',))
        return letters.program_answer(me, answer, svc, desk.at), None
    key = _key(desk, f"find:{hash16(skill)}")
    topic = f"Partners for {skill}"
    admin = svc.admin or "the program admin"
    if svc.self_service == OFF:
        nobody = f"Finding a partner by email is switched off; please ask {admin}."
        answer = Answer(key, topic, skill=skill, nobody=nobody)
        return letters.program_answer(me, answer, svc, desk.at), None
    found = prog.candidates(
        me.email,
        skill,
        world.people,
        world.partnerships,
        svc.max_per_partner,
        offerers=world.offering(skill),
    )
    if not found:
        why = (
            f'Nobody offers "{skill}" yet{hint}.'
            if skill not in offered
            else (
                f'Nobody who offers "{skill}" can partner you now (other department, other '
                "reporting line, not already your partner, below the program's limit of "
                f"{count(svc.max_per_partner, 'partnership')})."
            )
        )
        answer = Answer(key, topic, skill=skill, nobody=f"{why} Please ask {admin}.")
        return letters.program_answer(me, answer, svc, desk.at), None
    existing = _asked(world, desk.mid, SUGGEST, skill)
    request = existing or Request(
        n,
        me.email,
        SUGGEST,
        desk.at,
        skill=skill,
        candidates=tuple(s.person.email for s in found),
        asked_by=desk.mid,
    )
    rows = tuple(
        {
            "n": i,
            "name": s.person.name,
            "department": s.person.department,
            "partnerships": s.active_partnerships,
            "ask": f"ask {i}",
        }
        for i, s in enumerate(found, start=1)
    )
    answer = Answer(key, topic, request=request.n, skill=skill, suggestions=rows)
    return letters.program_answer(me, answer, svc, desk.at), (None if existing else request)


# -- replies to our mails -----------------------------------------------------------------------


def _confirm_offer(d: Program, me: Person, req: Request, world: World, desk: Desk) -> Change:
    svc = desk.svc
    answer_of = parse_consent(d.text)
    key = _key(desk)
    if req.used_by and req.used_by != desk.mid:
        done = ("That change was answered already.",)
        answer = Answer(key, "Your offers", done=done, offers=me.offers)
        return Change(letters=(letters.program_answer(me, answer, svc, desk.at),))
    if answer_of is None:
        problems = ('We could not tell whether that was a yes or a no: reply "yes" or "no".',)
        confirm = _offer_lines(req.add, req.remove)
        answer = Answer(key, "Please confirm your offer", req.n, problems=problems, confirm=confirm)
        return Change(letters=(letters.program_answer(me, answer, svc, desk.at),))
    used = replace(req, used_by=desk.mid)
    if answer_of == DECLINE:
        answer = Answer(key, "Your offers", done=("Dropped: nothing changed.",), offers=me.offers)
        line = f"self-service: {me.email}: offer change {req.n} declined"
        letter = letters.program_answer(me, answer, svc, desk.at)
        return Change(requests=(used,), letters=(letter,), lines=(line,))
    assert answer_of == ACCEPT
    offers = me.offers if req.used_by else _changed_offers(me.offers, req.add, req.remove)
    done = tuple(f"Done: {line}" for line in _offer_lines(req.add, req.remove))
    answer = Answer(key, "Your offers", done=done, offers=offers)
    changed = () if req.used_by else (replace(me, offers=offers),)
    line = f"self-service: {me.email}: offers now {', '.join(offers) or 'none'}"
    letter = letters.program_answer(me, answer, svc, desk.at)
    return Change(changed, (), (used,), (letter,), (line,))


def _ask(d: Program, me: Person, req: Request, world: World, desk: Desk) -> Change:
    svc = desk.svc
    today = desk.at.astimezone(ZoneInfo(me.timezone)).date()
    parsed = prog.parse_commands(d.text)
    asks = [c for c in parsed.commands if c.kind == prog.ASK]
    agreement = prog.parse_agreement(d.text, today, d.body)
    if not asks and agreement.empty:
        return _commands(d, me, world, desk)  # she wrote commands in reply: answer them
    key, topic = _key(desk), f"Your partner for {req.skill}"
    if req.used_by:
        if req.used_by == desk.mid and req.pid is not None:
            return _started(world, me, req, desk, again=True)
        problems = (
            f"This suggestions mail was used already (partnership {req.pid}). "
            f'For new suggestions write "partner for {req.skill}" to {svc.keys.program}.',
        )
        answer = Answer(key, topic, problems=problems)
        return Change(letters=(letters.program_answer(me, answer, svc, desk.at),))

    def again(problems: Sequence[str], ask: str = "ask N") -> Change:
        block = {
            "goals": list(agreement.goals),
            "why": agreement.why,
            "saddle": agreement.saddle,
            "day": " ".join(x for x in (agreement.day, agreement.time) if x),
            "ask": ask,
        }
        answer = Answer(key, topic, req.n, problems=tuple(problems), block=block)
        letter = letters.program_answer(me, answer, svc, desk.at)
        return Change(letters=(letter,), lines=(f"self-service: {me.email}: ask incomplete",))

    if svc.self_service == OFF:
        admin = svc.admin or "the program admin"
        return again([f"Finding a partner by email is switched off; please ask {admin}."])
    if len(asks) != 1:
        return again(['Which person? Put one line "ask N" (N from the suggestions) in your reply.'])
    n = asks[0].n
    if not 1 <= n <= len(req.candidates):
        return again([f"There is no suggestion {n} (1 to {len(req.candidates)})."])
    ask = f"ask {n}"
    if not agreement.complete:
        return again(list(agreement.problems), ask)
    partner = req.candidates[n - 1]
    if not _still_eligible(me, partner, req.skill, world, svc.max_per_partner):
        name = world.people[partner].name if partner in world.people else partner
        return again(
            [
                f"{name} can no longer take this partnership (the program's limit, or the "
                f'rules changed). Write "partner for {req.skill}" for new suggestions.'
            ],
            ask,
        )
    try:
        p = pships.new_partnership(
            pid=world.next_pid,
            member=me.email,
            partner=partner,
            skill=normalize_skill(req.skill),
            goals=agreement.goals,
            why=agreement.why,
            saddle=agreement.saddle,
            people=world.people,
            existing=world.partnerships,
            now=desk.at,
            checkin_day=agreement.day,
            checkin_time=agreement.time,
        )
    except DomainError as exc:
        return again([str(exc).replace(" (pass --allow-same-line to override)", "")], ask)
    waiting = svc.self_service == APPROVAL
    p = replace(p, approval=WAITING if waiting else "", introduced_at=None if waiting else desk.at)
    used = replace(req, used_by=desk.mid, pid=p.id)
    world = replace(world, partnerships=[*world.partnerships, p])
    change = _started(world, me, used, desk)
    return replace(change, partnerships=(p,), requests=(used,))


def _still_eligible(me: Person, partner: str, skill: str, world: World, cap: int) -> bool:
    """Whether `partner` may still partner her: the rule of the suggestions, asked about this
    one person only (the directory and partnerships may have changed since the mail)."""
    found = prog.candidates(
        me.email, skill, world.people, world.partnerships, cap, limit=1, offerers=(partner,)
    )
    return bool(found)


def _started(world: World, me: Person, req: Request, desk: Desk, again: bool = False) -> Change:
    """The letters of an ask that created partnership `req.pid` (again: the same letters, for
    a batch run a second time; their keys make them go once)."""
    svc = desk.svc
    p = next(x for x in world.partnerships if x.id == req.pid)
    partner = world.people[p.partner]
    pair = Pair(p, me, partner)
    out: list[Letter] = []
    if p.approval == WAITING:
        done = (
            f"You asked {partner.name} to be your partner for {p.skill} (partnership {p.id}).",
            "The program admin approves new partnerships first; then we introduce you both "
            f"then {partner.name} answers yes or no.",
        )
        notice = letters.approval(pair, svc, desk.at)
        out.extend([notice] if notice else [])
    else:
        done = (
            f"You asked {partner.name} to be your partner for {p.skill} (partnership {p.id}).",
            f"We introduced you both; {partner.name} answers yes or no, and your check-ins "
            "start once the answer is yes.",
        )
        out.extend(letters.intro(pair, role, svc, desk.at) for role in ("member", "partner"))
    answer = Answer(_key(desk), f"Your partner for {p.skill}", done=done)
    out.insert(0, letters.program_answer(me, answer, svc, desk.at))
    state = "waits for approval" if p.approval == WAITING else "introduced"
    line = f"self-service: partnership {p.id} asked by {me.email}: {state}"
    return Change(letters=tuple(out), lines=() if again else (line,))
