"""Partnerships: creating one under the rules, and its life cycle (pause, resume, end);
reading a partnerships CSV (one goal per row, grouped by member and skill) for an import.

Pure functions: they take the current people and partnerships and `now`, and return a new
`Partnership` or raise `DomainError`. `store` persists the result.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from mailflow import hints
from mailflow.config import WEEKDAYS, parse_hhmm
from mailflow.models import (
    ACTIVE,
    CONSENT_ACCEPTED,
    CONSENT_DECLINED,
    CONSENT_PENDING,
    ENDED,
    PAUSED,
    Goal,
    Partnership,
    Person,
)
from mailflow.people import (
    DomainError,
    check_text,
    eligibility_problems,
    normalize_email,
    normalize_skill,
)

_GOAL = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})\s+(\S.*)$", re.DOTALL)
LONG_TEXT = 2000


def parse_date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise DomainError(f'{field}: expected a date YYYY-MM-DD, got "{value}"') from None


def parse_goal(value: str, n: int) -> Goal:
    """'2026-12-31 Give the talk' -> Goal(n, due, text)."""
    m = _GOAL.match(value)
    if not m:
        raise DomainError(f'goal: expected "YYYY-MM-DD TEXT", got "{value}"')
    due = parse_date(m.group(1), "goal")
    return Goal(n=n, due=due, text=check_text("goal", m.group(2)))


def new_partnership(
    *,
    pid: int,
    member: str,
    partner: str,
    skill: str,
    goals: Sequence[str],
    why: str,
    saddle: str,
    people: Mapping[str, Person],
    existing: Sequence[Partnership],
    now: datetime,
    checkin_day: str | None = None,
    checkin_time: str | None = None,
    start: str | None = None,
    allow_same_line: bool = False,
    accepted: bool = False,
    allow_past: bool = False,
) -> Partnership:
    """Build a new partnership, or raise DomainError with the first rule it breaks.

    Check-ins start only once the partner has accepted (by replying to the introduction),
    unless an admin records the consent up front with `accepted`. A goal due before the
    member's today, or a start before it, is a typo far more often than history: refused
    unless `allow_past` (today is `now`'s date in her zone). With `allow_past`, no `start` and
    every goal already due, the partnership starts on its earliest goal's due date.
    """
    for who, addr in (("member", member), ("partner", partner)):
        if addr not in people:
            raise DomainError(f"{who}: no such person {addr} (add them with 'people add')")
    skill = normalize_skill(skill)
    if not goals:
        raise DomainError('goal: at least one --goal "YYYY-MM-DD TEXT" is required')
    parsed = tuple(parse_goal(g, i) for i, g in enumerate(goals, start=1))
    why = check_text("why", why, limit=LONG_TEXT)
    saddle = check_text("saddle", saddle, limit=LONG_TEXT)
    if member == partner:
        raise DomainError("partner: member and partner must be different people")
    problems = eligibility_problems(member, partner, people)
    if problems and not allow_same_line:
        raise DomainError(f"partner: {problems[0]} (pass --allow-same-line to override)")
    for p in existing:
        if p.member == member and p.skill == skill and p.status != ENDED:
            raise DomainError(
                f"skill: {member} already has partnership {p.id} for {skill!r} "
                f"({p.status}); end it first"
            )
    day, checkin_time = _checkin_choice(checkin_day, checkin_time)
    zone = people[member].timezone
    local_today = now.astimezone(ZoneInfo(zone)).date()
    latest = max(g.due for g in parsed)
    if start:
        start_date = parse_date(start, "start")
    elif allow_past and latest < local_today:
        # Migrating a partnership that already ran: it started no later than its first goal.
        start_date = min(g.due for g in parsed)
    else:
        start_date = local_today
    if not allow_past:  # first: "pass --allow-past" is the likelier fix than the start
        _refuse_past(parsed, start_date, local_today, zone)
    if latest < start_date:
        raise DomainError(f"goal: every due date is before the start ({start_date})")
    return Partnership(
        id=pid,
        member=member,
        partner=partner,
        skill=skill,
        goals=parsed,
        why=why,
        saddle=saddle,
        start=start_date,
        created_at=now,
        checkin_day=day,
        checkin_time=checkin_time,
        allow_same_line=bool(problems) and allow_same_line,
        consent=CONSENT_ACCEPTED if accepted else CONSENT_PENDING,
        consent_at=now if accepted else None,
    )


def _checkin_choice(day: str | None, at: str | None) -> tuple[str | None, str | None]:
    """A partnership's own check-in day and time (None: the configured default), checked,
    with a "did you mean" for `Mon` or `9:00`."""
    if day is not None:
        given, day = day, day.strip().lower()
        if day not in WEEKDAYS:
            guess = hints.did_you_mean(hints.weekday(given))
            raise DomainError(f'checkin-day: expected a weekday name, got "{given}"{guess}')
    if at is not None:
        at = at.strip()
        try:
            parse_hhmm(at)
        except ValueError as exc:
            raise DomainError(f"checkin-time: {exc}") from None
    return day, at


def _refuse_past(goals: Sequence[Goal], start: date, today: date, zone: str) -> None:
    """DomainError for the first goal due, or a start, before the member's `today`."""
    past = f"is in the past (today is {today} in {zone}, the member's zone); pass --allow-past"
    for g in goals:
        if g.due < today:
            raise DomainError(f"goal: {g.due} {past} to record it anyway")
    if start < today:
        raise DomainError(f"start: {start} {past} to start then anyway")


def pause(p: Partnership, until: date | None, today: date) -> Partnership:
    if p.status == ENDED:
        raise DomainError(f"partnership {p.id} has ended; it cannot be paused")
    if until is not None and until <= today:
        raise DomainError(f"until: {until} is not in the future")
    return p.with_changes(status=PAUSED, paused_until=until)


def resume(p: Partnership) -> Partnership:
    if p.status == ENDED:
        raise DomainError(f"partnership {p.id} has ended; it cannot be resumed")
    if p.status == ACTIVE:
        raise DomainError(f"partnership {p.id} is not paused")
    return p.with_changes(status=ACTIVE, paused_until=None)


def end(p: Partnership, now: datetime) -> Partnership:
    if p.status == ENDED:
        raise DomainError(f"partnership {p.id} has already ended")
    return p.with_changes(status=ENDED, ended_at=now, paused_until=None)


def is_paused(p: Partnership, local_today: date) -> bool:
    """Paused now? A dated pause lapses by itself on its date."""
    if p.status != PAUSED:
        return False
    return p.paused_until is None or local_today < p.paused_until


def goal_done(p: Partnership, n: int, today: date) -> Partnership:
    """Mark goal N achieved (idempotent: a goal already done keeps its date)."""
    if not any(g.n == n for g in p.goals):
        raise DomainError(f"there is no goal {n} (goals are 1 to {len(p.goals)})")
    goals = tuple(
        g if g.n != n or g.done_on else Goal(g.n, g.due, g.text, done_on=today) for g in p.goals
    )
    return p.with_changes(goals=goals)


def set_consent(p: Partnership, accepted: bool, now: datetime, note: str = "") -> Partnership:
    return p.with_changes(
        consent=CONSENT_ACCEPTED if accepted else CONSENT_DECLINED,
        consent_at=now,
        consent_note="" if accepted else note[:500],
    )


def closing_reason(p: Partnership, local_today: date) -> str | None:
    """Why the partnership is complete now, or None while it runs."""
    if all(g.done_on for g in p.goals):
        return "all goals achieved"
    if local_today > max(g.due for g in p.goals):
        return "the last due date has passed"
    return None


# -- import from a CSV -------------------------------------------------------------------------

IMPORT_COLUMNS = (
    "member",
    "partner",
    "skill",
    "goal_due",
    "goal",
    "why",
    "saddle",
    "start",
    "checkin_day",
    "checkin_time",
    "accepted",
)
_REQUIRED = ("member", "partner", "skill", "goal_due", "goal", "why", "saddle")
# Per partnership, not per goal: the later rows of a group may leave them empty, or repeat them.
_SHARED = ("partner", "why", "saddle", "start", "checkin_day", "checkin_time", "accepted")
_YES = {"yes", "y", "true", "1", "x"}
_NO = {"", "no", "n", "false", "0"}


@dataclass(frozen=True)
class ImportGroup:
    """The rows of one partnership in a partnerships CSV: same member and skill."""

    lines: tuple[int, ...]
    fields: dict[str, str]  # the shared fields (first non-empty value of each)
    goals: tuple[str, ...]  # "YYYY-MM-DD TEXT", in file order


def read_import_csv(text: str, delimiter: str = ",") -> tuple[list[ImportGroup], list[str]]:
    """Rows of a partnerships CSV grouped by (member, skill), and problems as 'LINE: msg'.

    A group's shared fields must agree: a later row may leave one empty, not change it.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    expected = ",".join(IMPORT_COLUMNS)
    if not header:
        return [], [f"1: empty file (expected a header: {expected})"]
    missing = [c for c in _REQUIRED if c not in header]
    unknown = [c for c in header if c not in IMPORT_COLUMNS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing column(s) " + ", ".join(missing))
        if unknown:
            parts.append("unknown column(s) " + ", ".join(unknown))
        return [], [f"1: {'; '.join(parts)} (expected: {expected})"]
    reader.fieldnames = header
    groups: dict[tuple[str, str], tuple[list[int], dict[str, str], list[str]]] = {}
    problems: list[str] = []
    try:
        for record in reader:
            line = reader.line_num
            if None in record:
                problems.append(f"{line}: too many fields")
                continue
            f = {k: (v or "").strip() for k, v in record.items()}
            if not any(f.values()):
                continue  # a blank line (spreadsheets leave them)
            try:
                member = normalize_email(f["member"], "member")
                skill = normalize_skill(f["skill"])
            except DomainError as exc:
                problems.append(f"{line}: {exc}")
                continue
            goal = f"{f['goal_due']} {f['goal']}"
            group = groups.get((member, skill))
            if group is None:
                shared = {k: f.get(k, "") for k in _SHARED}
                groups[(member, skill)] = (
                    [line],
                    {"member": member, "skill": skill, **shared},
                    [goal],
                )
                continue
            lines, shared, goals = group
            for k in _SHARED:
                value = f.get(k, "")
                if value and not shared[k]:
                    shared[k] = value
                elif value and value != shared[k]:
                    problems.append(
                        f"{line}: {k} differs from line {lines[0]} "
                        f"(same member and skill: one partnership)"
                    )
            lines.append(line)
            goals.append(goal)
    except csv.Error as exc:
        problems.append(f"{reader.line_num}: {exc}")
    out = [ImportGroup(tuple(ls), sh, tuple(gs)) for ls, sh, gs in groups.values()]
    return out, problems


def parse_accepted(value: str) -> bool:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise DomainError(f'accepted: expected yes or no, got "{value}"')


def import_partnership(
    group: ImportGroup,
    *,
    pid: int,
    people: Mapping[str, Person],
    existing: Sequence[Partnership],
    now: datetime,
) -> Partnership:
    """The partnership of one group, under the rules of `new_partnership`; DomainError names
    the field. `existing`: the member's partnerships (the one-per-skill rule)."""
    f = group.fields
    for n, goal in enumerate(group.goals, start=1):
        due, _, text = goal.partition(" ")
        parse_date(due, "goal_due")
        if not text.strip():
            raise DomainError(f"goal: must not be empty (goal {n})")
    return new_partnership(
        pid=pid,
        member=f["member"],
        partner=normalize_email(f["partner"], "partner"),
        skill=f["skill"],
        goals=group.goals,
        why=f["why"],
        saddle=f["saddle"],
        people=people,
        existing=existing,
        now=now,
        checkin_day=f["checkin_day"] or None,
        checkin_time=f["checkin_time"] or None,
        start=f["start"] or None,
        accepted=parse_accepted(f["accepted"]),
    )
