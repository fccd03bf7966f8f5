"""Commands people write in replies, what they do, and a partner's yes/no (pure).

A member may put a command on a line of its own anywhere in a reply: `pause until
YYYY-MM-DD`, `pause N weeks`, `resume`, `goal N done`, `stop` (and `confirm stop`), plus
`skill: SKILL` to pick a partnership. Recognised lines are taken out of the report text; a
short line that starts like a command but doesn't parse is reported back as not understood
and stays in the text (it may be prose). Everything is linear-time over the lines.

`apply_commands` applies them to a partnership, one small handler per command (`HANDLERS`),
and says what was done, what could not be done and what the partner must be told. A `stop`
takes two replies: the first asks, a second one within `STOP_CONFIRM_DAYS` ends it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from mailflow import partnerships as pships
from mailflow.errors import DomainError
from mailflow.models import OPEN, Partnership, Pending
from mailflow.parse import fold_typography

PAUSE_UNTIL = "pause_until"
RESUME = "resume"
GOAL_DONE = "goal_done"
STOP = "stop"
MAX_PAUSE_WEEKS = 52
STOP_CONFIRM_DAYS = 7
_VERBS = ("pause", "resume", "goal", "stop", "confirm")
_MAX_COMMAND_WORDS = 5

_PAUSE_UNTIL = re.compile(r"^pause\s+until\s+(\d{4}-\d{2}-\d{2})$")
_PAUSE_WEEKS = re.compile(r"^pause\s+(?:for\s+)?(\d{1,3})\s+weeks?$")
_GOAL_DONE = re.compile(r"^goal\s+#?(\d{1,3})\s+(?:is\s+)?(?:done|achieved|complete|completed)$")
_SKILL = re.compile(r"^skill\s*:\s*(\S.{0,78})$")


@dataclass(frozen=True)
class Command:
    kind: str
    until: date | None = None  # pause_until
    goal: int | None = None  # goal_done
    line: str = ""


@dataclass(frozen=True)
class Extracted:
    commands: tuple[Command, ...]
    problems: tuple[str, ...]  # lines that look like commands but aren't
    text: str  # the reply without the recognised command lines
    skill: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _norm(line: str) -> str:
    # Curly quotes and dashes as typed by phones and autocorrect ("d’accord", "pause until
    # 2026‑12‑20" with non-breaking hyphens) read like their ASCII forms.
    line = fold_typography(unicodedata.normalize("NFKC", line)).strip().strip("*_`").strip()
    line = line.lstrip("-•*> ").rstrip(".!")
    return " ".join(line.lower().split())


def extract_commands(text: str, today: date) -> Extracted:
    """Find command lines in a reply's new text; `today` is the member's local date."""
    commands: list[Command] = []
    problems: list[str] = []
    kept: list[str] = []
    skill: str | None = None
    for raw in text.splitlines():
        line = _norm(raw)
        if not line:
            kept.append(raw)
            continue
        m = _SKILL.match(line)
        if m:
            skill = m.group(1).strip()
            continue
        command, problem = _command(line, today)
        if command is not None:
            commands.append(command)
            continue
        if problem is not None:
            problems.append(problem)
        kept.append(raw)
    rest = "\n".join(kept).strip()
    return Extracted(tuple(commands), tuple(problems), rest, skill)


def _command(line: str, today: date) -> tuple[Command | None, str | None]:
    words = line.split()
    if words[0] not in _VERBS or len(words) > _MAX_COMMAND_WORDS:
        return None, None
    if line in ("resume", "unpause"):
        return Command(RESUME, line=line), None
    if line in ("stop", "confirm stop"):
        return Command(STOP, line=line), None
    m = _PAUSE_UNTIL.match(line)
    if m:
        try:
            until = date.fromisoformat(m.group(1))
        except ValueError:
            return None, f'"{line}": {m.group(1)} is not a date'
        if until <= today:
            return None, f'"{line}": {until} is not in the future'
        return Command(PAUSE_UNTIL, until=until, line=line), None
    m = _PAUSE_WEEKS.match(line)
    if m:
        weeks = int(m.group(1))
        if not 1 <= weeks <= MAX_PAUSE_WEEKS:
            return None, f'"{line}": a pause is 1 to {MAX_PAUSE_WEEKS} weeks'
        return Command(PAUSE_UNTIL, until=today + timedelta(weeks=weeks), line=line), None
    m = _GOAL_DONE.match(line)
    if m:
        return Command(GOAL_DONE, goal=int(m.group(1)), line=line), None
    hints = {
        "pause": 'write "pause until YYYY-MM-DD" or "pause N weeks"',
        "resume": 'write "resume" on a line of its own',
        "goal": 'write "goal N done", e.g. "goal 2 done"',
        "stop": 'write "stop" on a line of its own',
        "confirm": 'write "confirm stop" on a line of its own',
    }
    return None, f'not understood: "{line}" ({hints[words[0]]})'


# -- what the commands do ------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """When a reply's commands run: the member's date, the instant, the reply's Message-ID.

    `confirmed`: she confirmed them from her own mailbox (an answer to a confirmation mail),
    which is already the second step a `stop` asks for.
    """

    today: date
    at: datetime
    mid: str
    confirmed: bool = False


@dataclass(frozen=True)
class Step:
    """What one command did: the partnership after it, a line for the receipt, a notice for
    the partner (action, until), a question back to the member."""

    partnership: Partnership
    done: str = ""
    notice: tuple[str, str] | None = None
    question: str = ""


@dataclass(frozen=True)
class CommandResult:
    """What a reply's commands did, together."""

    partnership: Partnership
    done: tuple[str, ...]
    problems: tuple[str, ...]  # '"LINE": why', for commands the rules refused
    notices: tuple[tuple[str, str], ...]  # (action, until) for the partner, in order
    question: str  # the last question asked back ("" for none)


def _pause(p: Partnership, c: Command, env: Env) -> Step:
    if c.until is None:
        return Step(p)
    return Step(
        pships.pause(p, c.until, env.today),
        f"Paused until {c.until}: no check-ins before then.",
        ("paused", c.until.isoformat()),
    )


def _resume(p: Partnership, c: Command, env: Env) -> Step:
    return Step(pships.resume(p), "Resumed: check-ins start again.", ("resumed", ""))


def _goal_done(p: Partnership, c: Command, env: Env) -> Step:
    if c.goal is None:
        return Step(p)
    updated = pships.goal_done(p, c.goal, env.today)
    goal = next(g for g in updated.goals if g.n == c.goal)
    return Step(updated, f"Goal {c.goal} marked achieved: {goal.text}")


def _stop(p: Partnership, c: Command, env: Env) -> Step:
    """The first stop asks; a second one (another reply) within STOP_CONFIRM_DAYS ends it."""
    asked = p.stop_requested_at
    if env.confirmed:
        ended = pships.end(p, env.at).with_changes(end_reason="stopped by the member")
        return Step(ended, "Stopped: this partnership has ended.", ("stopped", ""))
    if (
        p.stop_requested
        and p.stop_requested != env.mid
        and asked is not None
        and env.at - asked <= timedelta(days=STOP_CONFIRM_DAYS)
    ):
        ended = pships.end(p, env.at).with_changes(end_reason="stopped by the member")
        return Step(ended, "Stopped: this partnership has ended.", ("stopped", ""))
    return Step(
        p.with_changes(stop_requested=env.mid, stop_requested_at=env.at),
        question=f'To end this partnership, reply "stop" again within {STOP_CONFIRM_DAYS} days.',
    )


HANDLERS: dict[str, Callable[[Partnership, Command, Env], Step]] = {
    PAUSE_UNTIL: _pause,
    RESUME: _resume,
    GOAL_DONE: _goal_done,
    STOP: _stop,
}


def apply_commands(p: Partnership, commands: Sequence[Command], env: Env) -> CommandResult:
    """Apply a reply's commands in order to `p` (the record as stored now).

    A command the rules refuse (DomainError: pausing an ended partnership, an unknown goal)
    becomes a problem line and the others still run.
    """
    done: list[str] = []
    problems: list[str] = []
    notices: list[tuple[str, str]] = []
    question = ""
    for c in commands:
        try:
            step = HANDLERS[c.kind](p, c, env)
        except DomainError as exc:
            problems.append(f'"{c.line}": {exc}')
            continue
        p = step.partnership
        if step.done:
            done.append(step.done)
        if step.notice is not None:
            notices.append(step.notice)
        question = step.question or question
    return CommandResult(p, tuple(done), tuple(problems), tuple(notices), question)


def describe(c: Command, p: Partnership) -> str:
    """What a command will do, in words, for the mail that asks her to confirm it."""
    if c.kind == PAUSE_UNTIL:
        return f"Pause until {c.until}: no check-ins, reminders or digests before then."
    if c.kind == RESUME:
        return "Resume: check-ins start again."
    if c.kind == GOAL_DONE:
        goal = next((g.text for g in p.goals if g.n == c.goal), "")
        return f"Mark goal {c.goal} achieved" + (f": {goal}" if goal else ".")
    return "Stop: end this partnership."


# -- commands from an address not bound to her ---------------------------------------------
#
# A From header proves nothing (design.md section 3): commands that came to the plain address
# are held as a `Pending` request until she confirms them from her own mailbox, by answering
# the confirmation mail, whose reply address carries the request's own number.

CONFIRM_DAYS = 7  # an open request lapses after this many days
MAX_OPEN = 3  # open requests per partnership: a flood of forged mail asks her no more often
KEEP_ANSWERED = 5  # answered (or lapsed) requests kept, so a late answer is told what happened


def is_open(x: Pending, at: datetime) -> bool:
    """Waiting for her answer and not lapsed at `at`."""
    return x.state == OPEN and at - x.asked_at <= timedelta(days=CONFIRM_DAYS)


def hold(
    p: Partnership, commands: Sequence[Command], n: int, mid: str, today: date, at: datetime
) -> tuple[Partnership, Pending | None]:
    """`p` with `commands` held as request `n` (the one already held for message `mid`, if
    any: a batch run again after a crash asks nothing twice). None: MAX_OPEN requests are
    already open, so none is added and nobody is asked."""
    for x in p.pending:
        if x.message_id == mid:
            return p, x
    if sum(1 for x in p.pending if is_open(x, at)) >= MAX_OPEN:
        return p, None
    asked = Pending(n, mid, at, today, tuple(c.line for c in commands))
    return p.with_changes(pending=_pruned((*p.pending, asked), at)), asked


def settle(p: Partnership, n: int, state: str, at: datetime) -> Partnership:
    """`p` with request `n` answered (CONFIRMED or CANCELLED)."""
    pending = tuple(replace(x, state=state) if x.n == n else x for x in p.pending)
    return p.with_changes(pending=_pruned(pending, at))


def held_commands(x: Pending) -> tuple[Command, ...]:
    """The commands of a request, read as on the day she wrote them."""
    return extract_commands("\n".join(x.lines), x.asked_on).commands


def _pruned(pending: tuple[Pending, ...], at: datetime) -> tuple[Pending, ...]:
    live = [x for x in pending if is_open(x, at)]
    done = [x for x in pending if not is_open(x, at)][-KEEP_ANSWERED:]
    return tuple(sorted((*done, *live), key=lambda x: x.n))


ACCEPT = "accepted"
DECLINE = "declined"

# First words that mean yes / no, in the languages the reply parser knows.
_YES = {
    "yes",
    "y",
    "ok",
    "okay",
    "sure",
    "accept",
    "accepted",
    "agree",
    "agreed",
    "i accept",
    "i agree",
    "yes i accept",
    "happy to",
    "count me in",
    "gladly",
    "absolutely",
    "of course",
    "ja",
    "jawohl",
    "einverstanden",
    "oui",
    "d'accord",
    "sí",
    "si",
    "claro",
    "sim",
    "certo",
    "va bene",
    "tak",
    "ano",
    "jo",
    "da",
    "да",
    "はい",
    "是",
    "好",
    "好的",
    "네",
    "예",
}
_NO = {
    "no",
    "n",
    "decline",
    "declined",
    "i decline",
    "no thanks",
    "no thank you",
    "not now",
    "sorry no",
    "nein",
    "non",
    "nee",
    "nej",
    "nie",
    "ne",
    "нет",
    "いいえ",
    "不",
    "不行",
    "아니요",
    "아니오",
}


def parse_consent(text: str) -> str | None:
    """ACCEPT, DECLINE or None (unclear) from the first line of a partner's answer."""
    for raw in text.splitlines():
        line = _norm(raw)
        if not line:
            continue
        line = re.sub(r"[,;:.!?]+", " ", line)
        words = line.split()
        # Look at the start of the line: "Yes, happy to help" and "No - too busy" both count.
        for n in (3, 2, 1):
            head = " ".join(words[:n])
            if head in _YES:
                return ACCEPT
            if head in _NO:
                return DECLINE
        return None
    return None
