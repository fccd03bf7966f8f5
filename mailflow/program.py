"""Self-service by email: what people write to the program's address, and who may partner
whom (pure).

The program's address (`[program] address`) takes commands, one per line, anywhere in the
mail: `help`, `status`, `offer SKILL`, `offer stop SKILL`, `partner for SKILL`. A reply to
the suggestions mail adds `ask N` and the agreement block: one or more `Goal: YYYY-MM-DD
text`, `Why: ...`, `Saddle: ...` and an optional `Day: monday 09:00`, in any order, with or
without the client's `>` quoting. Everything here is linear in the lines of the mail.

`candidates` is the eligibility rule of `partners suggest` (`suggest.suggest_partners`: other
department, other reporting line at any depth, not already her partner, fewest active
partnerships first) with the program's cap on how many partnerships a partner carries.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from mailflow import hints
from mailflow.commands import _norm
from mailflow.config import WEEKDAYS, parse_hhmm
from mailflow.errors import DomainError
from mailflow.models import ENDED, Partnership, Person
from mailflow.partnerships import LONG_TEXT, parse_goal
from mailflow.people import normalize_skill
from mailflow.suggest import Suggestion, eligible_partners

HELP = "help"
STATUS = "status"
OFFER = "offer"
OFFER_STOP = "offer_stop"
FIND = "find"
ASK = "ask"
SHOWN = 3  # suggestions shown for one skill
MAX_COMMANDS = 20  # a mail's commands beyond this are not read

BLOCK_LINES = (
    "Goal: YYYY-MM-DD what you will have done by then",
    "Why: why it matters to you",
    "Saddle: what your partner should tell you after a setback",
    "Day: monday 09:00   (optional: your check-in day and time)",
)
"""The agreement block as our mails show it to be filled in (skipped when quoted back)."""
_PLACEHOLDERS = {" ".join(line.lower().split()) for line in BLOCK_LINES}
_UNFILLED = "(missing)"

_ASK = re.compile(r"^ask\s+#?(\d{1,2})$")
_FIND = re.compile(r"^(?:find\s+(?:a\s+)?)?partner\s+for\s+(\S.{0,79})$")
_OFFER_STOP = re.compile(r"^(?:offer\s+stop|stop\s+offering|offer\s+no\s+more)\s+(\S.{0,79})$")
_OFFER = re.compile(r"^offer\s+(\S.{0,79})$")
_FIELD = re.compile(r"^(goal|why|saddle|day)\s*:\s*(.*)$", re.I)
_QUOTE = re.compile(r"^[\s>|]*")


@dataclass(frozen=True)
class Command:
    kind: str
    skill: str = ""  # OFFER, OFFER_STOP, FIND: as written (normalised later)
    n: int = 0  # ASK
    line: str = ""


@dataclass(frozen=True)
class Commands:
    commands: tuple[Command, ...]
    problems: tuple[str, ...]  # lines that start like a command but do not parse


def _unquoted(raw: str) -> str:
    return _QUOTE.sub("", raw, count=1)


def parse_commands(text: str) -> Commands:
    """The program commands in `text` (agreement fields are not commands)."""
    found: list[Command] = []
    problems: list[str] = []
    for raw in text.splitlines():
        if _FIELD.match(_unquoted(raw).strip()):
            continue
        line = _norm(raw)
        if not line or len(found) >= MAX_COMMANDS:
            continue
        command, problem = _command(line)
        if command is not None:
            found.append(command)
        elif problem:
            problems.append(problem)
    return Commands(tuple(found), tuple(problems))


def _command(line: str) -> tuple[Command | None, str]:
    if line in (HELP, "help me", "commands", "?"):
        return Command(HELP, line=line), ""
    if line in (STATUS, "my status", "status please"):
        return Command(STATUS, line=line), ""
    m = _ASK.match(line)
    if m:
        return Command(ASK, n=int(m.group(1)), line=line), ""
    m = _FIND.match(line)
    if m:
        return Command(FIND, m.group(1), line=line), ""
    m = _OFFER_STOP.match(line)
    if m:
        return Command(OFFER_STOP, m.group(1), line=line), ""
    m = _OFFER.match(line)
    if m:
        return Command(OFFER, m.group(1), line=line), ""
    first = line.split()[0]
    if first in ("ask", "offer", "partner") and len(line.split()) <= 6:
        usage = {
            "ask": '"ask 2" (a number from the suggestions)',
            "offer": '"offer SKILL" or "offer stop SKILL"',
            "partner": '"partner for SKILL"',
        }[first]
        return None, f'not understood: "{line}" (write {usage})'
    return None, ""


# -- the agreement block --------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """What the agreement block of a reply says, checked field by field; `problems` says
    what is missing or wrong (empty: complete)."""

    goals: tuple[str, ...] = ()  # "YYYY-MM-DD text", each parsed fine
    why: str = ""
    saddle: str = ""
    day: str | None = None
    time: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def empty(self) -> bool:
        return not (self.goals or self.why or self.saddle or self.day or self.time)


def parse_agreement(text: str, today: date, whole: str = "") -> Agreement:
    """The agreement block anywhere in `text` (her new text), in any order, quoted or not.
    A field's text goes on over the lines below it until a blank line, another field or a
    command. A field she did not write in `text` is taken from `whole` (the whole message
    with its quoted part: she may fill the block in where our mail quoted it, or complete
    what our receipt quoted back); our own unfilled lines are never taken."""
    fields = _fields(text)
    if whole:
        quoted = _fields(whole)
        fields = {k: v or quoted[k] for k, v in fields.items()}
    return _checked(fields, today)


def _fields(text: str) -> dict[str, list[str]]:
    """Each field's values in order of appearance (goals: every one, once)."""
    fields: dict[str, list[str]] = {"goal": [], "why": [], "saddle": [], "day": []}
    current: list[str] | None = None
    depth = ""  # the quote marks of the field line: its text goes on at the same depth only
    for raw in text.splitlines():
        marks = _QUOTE.match(raw)
        prefix = marks.group(0).replace(" ", "") if marks else ""
        line = _unquoted(raw).strip()
        m = _FIELD.match(line)
        if m and (
            " ".join(line.lower().split()) in _PLACEHOLDERS or m.group(2).strip() == _UNFILLED
        ):
            current = None
            continue
        if m:
            label, value = m.group(1).lower(), m.group(2).strip()
            if value and value not in fields[label]:
                fields[label].append(value)
            current = fields[label] if label in ("why", "saddle") and value else None
            depth = prefix
            continue
        if not line or current is None or prefix != depth or line[0] in "-(*":
            current = None
            continue
        if _command(_norm(line))[0] is not None:
            current = None
            continue
        current[-1] = f"{current[-1]} {line}"
    return fields


def _checked(fields: Mapping[str, list[str]], today: date) -> Agreement:
    problems: list[str] = []
    goals: list[str] = []
    for i, value in enumerate((v for v in fields["goal"] if v), start=1):
        try:
            goal = parse_goal(value, i)
        except DomainError as exc:
            problems.append(str(exc))
            continue
        if goal.due < today:
            problems.append(f"goal: {goal.due} is in the past: {value}")
            continue
        goals.append(f"{goal.due.isoformat()} {goal.text}")
    if not goals and not problems:
        problems.append("Goal: missing (at least one line: Goal: YYYY-MM-DD what you will do)")
    why = " ".join((fields["why"] or [""])[0].split())  # the first one: hers, above any quote
    saddle = " ".join((fields["saddle"] or [""])[0].split())
    for name, value in (("Why", why), ("Saddle", saddle)):
        if not value:
            problems.append(f"{name}: missing")
        elif len(value) > LONG_TEXT:
            problems.append(f"{name}: too long (at most {LONG_TEXT} characters)")
    day, at, problem = _day((fields["day"] or [""])[0])
    if problem:
        problems.append(problem)
    return Agreement(tuple(goals), why, saddle, day, at, tuple(problems))


def _day(value: str) -> tuple[str | None, str | None, str]:
    """`monday 09:00`, `monday` or `09:00` (optional): (day, time, problem)."""
    day = at = None
    for word in value.lower().replace(",", " ").split():
        if word in WEEKDAYS:
            day = word
            continue
        try:
            parse_hhmm(word)
            at = word
        except ValueError:
            guess = hints.weekday(word) or hints.clock_time(word)
            return None, None, f'Day: not understood: "{word}"{hints.did_you_mean(guess)}'
    return day, at, ""


# -- skills and who may partner whom ----------------------------------------------------------


def offered_skills(people: Iterable[Person]) -> set[str]:
    return {s for person in people for s in person.offers}


def match_skill(written: str, offered: set[str]) -> tuple[str, str]:
    """(the skill, a did-you-mean hint): `written` matched case- and spacing-insensitively
    against the skills already offered. A near miss (punctuation, or one or two typos) is
    not taken: the hint names it. DomainError when it is not a skill at all."""
    skill = normalize_skill(written)
    if skill in offered:
        return skill, ""
    guess = hints.skill(skill, offered) or _close(skill, offered)
    return skill, hints.did_you_mean(guess)


def _close(skill: str, offered: set[str]) -> str | None:
    """The one offered skill within two edits of `skill` (None: none, or several)."""
    found = [s for s in offered if abs(len(s) - len(skill)) <= 2 and _edits(s, skill) <= 2]
    return found[0] if len(found) == 1 else None


def _edits(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        row = [i]
        for j, cb in enumerate(b, start=1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = row
    return previous[-1]


def candidates(
    member: str,
    skill: str,
    people: Mapping[str, Person],
    partnerships: Sequence[Partnership],
    cap: int,
    limit: int = SHOWN,
    offerers: Iterable[str] | None = None,
) -> list[Suggestion]:
    """Up to `limit` people who may partner `member` for `skill` (the rule of `partners
    suggest`), leaving out those who carry `cap` partnerships or more. `offerers`: as for
    `suggest.eligible_partners` (who offers `skill`, from an index; None reads everyone)."""
    found = (
        s
        for s in eligible_partners(member, skill, people, partnerships, offerers)
        if s.active_partnerships < cap
    )
    return list(itertools.islice(found, limit))


def at_cap(partner: str, partnerships: Iterable[Partnership], cap: int) -> int | None:
    """How many partnerships `partner` carries when that is `cap` or more (None: below)."""
    load = sum(1 for p in partnerships if p.partner == partner and p.status != ENDED)
    return load if load >= cap else None
