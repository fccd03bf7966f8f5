"""Issue 15: the pure half of self-service (program.py): commands to the program's address,
the agreement block as mail clients send it, skills with a did-you-mean, eligibility with the
program's cap."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from mailflow import program as prog
from mailflow.models import Partnership, Person

TODAY = date(2026, 11, 30)


def kinds(text: str) -> list[tuple[str, str, int]]:
    return [(c.kind, c.skill, c.n) for c in prog.parse_commands(text).commands]


def test_commands_one_per_line_anywhere_in_the_mail() -> None:
    text = (
        "Hi team,\n\n  Offer Public Speaking.\n* offer stop   Excel\nPartner for SQL\n"
        "find a partner for negotiation\nstop offering chess\nSTATUS\nhelp\nask #2\nThanks!"
    )
    assert kinds(text) == [
        ("offer", "public speaking", 0),
        ("offer_stop", "excel", 0),
        ("find", "sql", 0),
        ("find", "negotiation", 0),
        ("offer_stop", "chess", 0),
        ("status", "", 0),
        ("help", "", 0),
        ("ask", "", 2),
    ]


def test_a_line_that_starts_like_a_command_is_named_and_fields_are_not_commands() -> None:
    found = prog.parse_commands("ask Grace\noffer\nGoal: 2027-01-01 offer help\nI offer thanks")
    assert (
        found.commands == (prog.Command("offer", "thanks", line="i offer thanks"),)
        or [c.kind for c in found.commands] == []
    )
    assert any('"ask grace"' in p for p in found.problems)


def test_agreement_in_any_order_quoted_with_continuation_lines() -> None:
    text = (
        "ask 1\n"
        "> > Saddle: Pick the smallest next step\n"
        "> > and tell me when it is done.\n"
        "> Goal: 2026-12-20 Record a talk\n"
        "GOAL:2027-01-15   Give the all-hands talk\n"
        "why : I want to lead\n"
        "Day: Tuesday 08:30\n"
    )
    a = prog.parse_agreement(text, TODAY)
    assert a.complete, a.problems
    assert a.goals == ("2026-12-20 Record a talk", "2027-01-15 Give the all-hands talk")
    assert a.saddle == "Pick the smallest next step and tell me when it is done."
    assert (a.why, a.day, a.time) == ("I want to lead", "tuesday", "08:30")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Why: w\nSaddle: s", "Goal: missing"),
        ("Goal: 2027-01-01 t\nSaddle: s", "Why: missing"),
        ("Goal: 2027-01-01 t\nWhy: w", "Saddle: missing"),
        ("Goal: soon t\nWhy: w\nSaddle: s", 'goal: expected "YYYY-MM-DD TEXT", got "soon t"'),
        ("Goal: 2026-02-30 t\nWhy: w\nSaddle: s", "goal: expected a date YYYY-MM-DD"),
        ("Goal: 2026-01-01 t\nWhy: w\nSaddle: s", "goal: 2026-01-01 is in the past"),
        ("Goal: 2027-01-01 t\nWhy: w\nSaddle: s\nDay: Mon", 'Day: not understood: "mon"'),
    ],
)
def test_agreement_names_what_is_missing_or_wrong(text: str, problem: str) -> None:
    a = prog.parse_agreement(text, TODAY)
    assert not a.complete
    assert any(p.startswith(problem) for p in a.problems), a.problems


def test_our_unfilled_block_quoted_back_is_never_taken_and_her_fields_come_first() -> None:
    ours = "\n".join("> " + line for line in prog.BLOCK_LINES) + "\n> Saddle: (missing)"
    a = prog.parse_agreement("ask 1", TODAY, "ask 1\n" + ours)
    assert a.empty and "Why: missing" in a.problems
    whole = "Why: new\n\n> What we understood:\n>   Why: old\n>   Saddle: kept"
    a = prog.parse_agreement("Why: new", TODAY, whole)
    assert (a.why, a.saddle) == ("new", "kept")


def test_skills_match_case_and_spacing_with_a_did_you_mean() -> None:
    offered = {"public speaking", "negotiation"}
    assert prog.match_skill("  Public   SPEAKING ", offered) == ("public speaking", "")
    assert prog.match_skill("public-speaking", offered)[1] == ' (did you mean "public speaking"?)'
    assert prog.match_skill("negociation", offered)[1] == ' (did you mean "negotiation"?)'
    assert prog.match_skill("juggling", offered) == ("juggling", "")


def _person(email: str, dept: str, manager: str | None = None) -> Person:
    return Person(email, email[0].upper(), dept, manager, "UTC", ("sql",))


def test_candidates_follow_partners_suggest_and_skip_those_at_the_cap() -> None:
    people = {
        p.email: p
        for p in (
            _person("boss@x", "Board"),
            _person("ada@x", "Eng", "boss@x"),
            _person("otto@x", "Eng"),
            _person("b@x", "Sales"),
            _person("c@x", "Legal"),
            _person("d@x", "Ops"),
            _person("e@x", "Law"),
        )
    }
    at = datetime(2026, 11, 30, tzinfo=UTC)

    def pship(pid: int, member: str, partner: str) -> Partnership:
        return Partnership(pid, member, partner, "sql", (), "w", "s", TODAY, at)

    ps = [pship(1, "c@x", "b@x"), pship(2, "d@x", "b@x"), pship(3, "b@x", "c@x")]
    found = prog.candidates("ada@x", "sql", people, ps, cap=3)
    assert [s.person.email for s in found] == ["d@x", "e@x", "c@x"]  # three, least busy first
    found = prog.candidates("ada@x", "sql", people, ps, cap=1)
    assert [s.person.email for s in found] == ["d@x", "e@x"]
    assert prog.at_cap("b@x", ps, 2) == 2 and prog.at_cap("c@x", ps, 2) is None
