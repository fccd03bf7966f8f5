"""Commands in replies: found in the text, then applied to a partnership (pure, no disk)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from mailflow.commands import (
    ACCEPT,
    DECLINE,
    GOAL_DONE,
    PAUSE_UNTIL,
    RESUME,
    STOP,
    STOP_CONFIRM_DAYS,
    Command,
    Env,
    apply_commands,
    extract_commands,
    parse_consent,
)
from mailflow.models import ACTIVE, ENDED, PAUSED, Goal, Partnership

TODAY = date(2026, 12, 1)
AT = datetime(2026, 12, 1, 10, tzinfo=UTC)
P = Partnership(
    id=1,
    member="ada@example.com",
    partner="grace@example.com",
    skill="sql",
    goals=(Goal(1, date(2027, 1, 31), "joins"), Goal(2, date(2027, 3, 31), "windows")),
    why="w",
    saddle="s",
    start=date(2026, 11, 30),
    created_at=datetime(2026, 11, 20, tzinfo=UTC),
)
ENV = Env(TODAY, AT, "<reply-1@x>")


# -- finding them -----------------------------------------------------------------------------


def test_commands_on_lines_of_their_own_are_taken_out() -> None:
    found = extract_commands(
        "Done: a join a day\n- Pause until 2026-12-20.\nresume\n**goal 2 done**\nstop", TODAY
    )
    assert found.text == "Done: a join a day"
    assert [c.kind for c in found.commands] == [PAUSE_UNTIL, RESUME, GOAL_DONE, STOP]
    assert found.commands[0].until == date(2026, 12, 20) and found.commands[2].goal == 2
    assert found.problems == ()


def test_pause_for_weeks_counts_from_the_members_today() -> None:
    [pause] = extract_commands("pause 2 weeks", TODAY).commands
    assert pause.until == TODAY + timedelta(weeks=2)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("pause until 2026-12-01", '"pause until 2026-12-01": 2026-12-01 is not in the future'),
        ("pause until 2026-02-30", '"pause until 2026-02-30": 2026-02-30 is not a date'),
        ("pause 60 weeks", '"pause 60 weeks": a pause is 1 to 52 weeks'),
        ("goal done", 'not understood: "goal done" (write "goal N done", e.g. "goal 2 done")'),
    ],
)
def test_a_line_that_looks_like_a_command_but_is_not_is_reported_and_kept(
    line: str, problem: str
) -> None:
    found = extract_commands(line, TODAY)
    assert found.commands == () and found.problems == (problem,) and found.text == line


def test_prose_is_not_a_command_and_the_skill_line_picks_a_partnership() -> None:
    found = extract_commands("Stop me if you've heard this one before, but I did it.", TODAY)
    assert found.commands == () and found.problems == ()
    assert extract_commands("skill: Public Speaking\nDone: x", TODAY).skill == "public speaking"


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Yes, happy to help!", ACCEPT),
        ("\n  ok\nthanks", ACCEPT),
        ("Jawohl!", ACCEPT),
        ("No - too busy this quarter", DECLINE),
        ("no thanks", DECLINE),
        ("Let me think about it", None),
        ("", None),
    ],
)
def test_consent_from_the_first_line(text: str, answer: str | None) -> None:
    assert parse_consent(text) == answer


# -- applying them ----------------------------------------------------------------------------


def test_pause_resume_and_goal_done() -> None:
    pause = Command(PAUSE_UNTIL, until=date(2026, 12, 20), line="pause until 2026-12-20")
    result = apply_commands(P, [pause, Command(GOAL_DONE, goal=1, line="goal 1 done")], ENV)
    assert result.partnership.status == PAUSED
    assert result.partnership.paused_until == date(2026, 12, 20)
    assert result.partnership.goals[0].done_on == TODAY
    assert result.done == (
        "Paused until 2026-12-20: no check-ins before then.",
        "Goal 1 marked achieved: joins",
    )
    assert result.notices == (("paused", "2026-12-20"),)
    assert result.problems == () and result.question == ""
    resumed = apply_commands(result.partnership, [Command(RESUME, line="resume")], ENV)
    assert resumed.partnership.status == ACTIVE and resumed.notices == (("resumed", ""),)


def test_a_refused_command_is_a_problem_and_the_others_still_run() -> None:
    commands = [
        Command(RESUME, line="resume"),  # not paused
        Command(GOAL_DONE, goal=9, line="goal 9 done"),
        Command(GOAL_DONE, goal=2, line="goal 2 done"),
    ]
    result = apply_commands(P, commands, ENV)
    assert result.problems == (
        '"resume": partnership 1 is not paused',
        '"goal 9 done": there is no goal 9 (goals are 1 to 2)',
    )
    assert result.done == ("Goal 2 marked achieved: windows",)
    assert result.partnership.goals[1].done_on == TODAY


def test_stop_asks_first_and_a_second_reply_within_the_week_ends_it() -> None:
    first = apply_commands(P, [Command(STOP, line="stop")], ENV)
    assert first.partnership.status == ACTIVE
    assert first.partnership.stop_requested == "<reply-1@x>"
    assert first.question == 'To end this partnership, reply "stop" again within 7 days.'
    assert first.done == () and first.notices == ()
    # The same message again (a duplicate delivery) does not confirm it.
    again = apply_commands(first.partnership, [Command(STOP, line="stop")], ENV)
    assert again.partnership.status == ACTIVE
    later = Env(TODAY, AT + timedelta(days=STOP_CONFIRM_DAYS), "<reply-2@x>")
    second = apply_commands(first.partnership, [Command(STOP, line="confirm stop")], later)
    assert second.partnership.status == ENDED
    assert second.partnership.end_reason == "stopped by the member"
    assert second.done == ("Stopped: this partnership has ended.",)
    assert second.notices == (("stopped", ""),)


def test_a_stop_after_the_week_asks_again() -> None:
    first = apply_commands(P, [Command(STOP, line="stop")], ENV)
    late = Env(TODAY, AT + timedelta(days=STOP_CONFIRM_DAYS, seconds=1), "<reply-2@x>")
    second = apply_commands(first.partnership, [Command(STOP, line="stop")], late)
    assert second.partnership.status == ACTIVE
    assert second.partnership.stop_requested == "<reply-2@x>"
    assert second.question


def test_commands_on_an_ended_partnership_are_problems() -> None:
    ended = P.with_changes(status=ENDED)
    pause = Command(PAUSE_UNTIL, until=date(2026, 12, 20), line="pause until 2026-12-20")
    result = apply_commands(ended, [pause], ENV)
    assert result.problems == ('"pause until 2026-12-20": partnership 1 has ended; it cannot be '
                               "paused",)  # fmt: skip
    assert result.partnership == ended
