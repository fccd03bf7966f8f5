"""`mailflow partnerships add/list/show/pause/resume/end` through the real CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clitools import Mailflow

from mailflow.models import Report
from mailflow.store import Store

# Reporting line: ceo <- vp <- lead <- ic, each in a department of their own.
PEOPLE = [
    ("ceo@example.com", "Exec", None),
    ("vp@example.com", "Product", "ceo@example.com"),
    ("lead@example.com", "Design", "vp@example.com"),
    ("ic@example.com", "Support", "lead@example.com"),
    ("ann@example.com", "Sales", None),
    ("bob@example.com", "Ops", None),
    ("cy@example.com", "sales", None),  # Ann's department, other case
]
GOAL = "2099-06-30 Give the talk"


@pytest.fixture
def mf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Mailflow:
    mf = Mailflow(tmp_path, capsys)
    for email, dept, manager in PEOPLE:
        mf.add_person(email, dept, *(["--manager", manager] if manager else []))
    return mf


def add_args(
    member: str = "ann@example.com",
    partner: str = "bob@example.com",
    skill: str = "public speaking",
    *extra: str,
) -> list[str]:
    return [
        "partnerships",
        "add",
        "--member",
        member,
        "--partner",
        partner,
        "--skill",
        skill,
        "--goal",
        GOAL,
        "--why",
        "I want to lead",
        "--saddle",
        "Get back up",
        *extra,
    ]


def add(mf: Mailflow, *args: str) -> str:
    return mf.ok(*(args or add_args())).last_line


def show(mf: Mailflow, pid: str) -> dict[str, Any]:
    return json.loads(mf.ok("partnerships", "show", pid, "--json").out)


# -- add -------------------------------------------------------------------------------------


def test_add_prints_the_id_last_and_show_json_has_everything(mf: Mailflow) -> None:
    result = mf.ok(
        "partnerships",
        "add",
        "--member",
        "ANN@example.com",
        "--partner",
        "bob@example.com",
        "--skill",
        " Public  Speaking ",
        "--goal",
        "2099-01-31 Outline the talk",
        "--goal",
        "2099-06-30 Give the talk",
        "--why",
        "Leading means speaking",
        "--saddle",
        "Nobody remembers the stumble",
        "--checkin-day",
        "Wednesday",
        "--checkin-time",
        "07:30",
        "--start",
        "2099-01-05",
    )
    assert result.out.splitlines()[-1] == "1"
    assert add(mf, *add_args("ann@example.com", "bob@example.com", "python")) == "2"
    doc = show(mf, "1")
    assert doc["reports"] == []
    assert {
        k: doc[k]
        for k in (
            "id",
            "member",
            "partner",
            "skill",
            "why",
            "saddle",
            "start",
            "checkin_day",
            "checkin_time",
            "status",
            "allow_same_line",
        )
    } == {
        "id": 1,
        "member": "ann@example.com",
        "partner": "bob@example.com",
        "skill": "public speaking",
        "why": "Leading means speaking",
        "saddle": "Nobody remembers the stumble",
        "start": "2099-01-05",
        "checkin_day": "wednesday",
        "checkin_time": "07:30",
        "status": "active",
        "allow_same_line": False,
    }
    assert doc["goals"] == [
        {"n": 1, "due": "2099-01-31", "text": "Outline the talk", "done_on": None},
        {"n": 2, "due": "2099-06-30", "text": "Give the talk", "done_on": None},
    ]
    assert datetime.fromisoformat(doc["created_at"]).tzinfo is not None


def test_list_json_and_table(mf: Mailflow) -> None:
    assert json.loads(mf.ok("partnerships", "list", "--json").out) == []
    add(mf)
    add(mf, *add_args("ic@example.com", "ann@example.com", "sales"))
    items = json.loads(mf.ok("partnerships", "list", "--json").out)
    assert [(p["id"], p["member"], p["partner"], p["skill"]) for p in items] == [
        (1, "ann@example.com", "bob@example.com", "public speaking"),
        (2, "ic@example.com", "ann@example.com", "sales"),
    ]
    assert all(p["goals"][0]["due"] == "2099-06-30" for p in items)
    table = mf.ok("partnerships", "list").out.splitlines()
    assert table[0].split() == [
        "ID",
        "STATUS",
        "CONSENT",
        "MEMBER",
        "PARTNER",
        "SKILL",
        "GOALS",
        "LAST",
        "DUE",
    ]
    assert table[1].split()[:5] == ["1", "active", "pending", "ann@example.com", "bob@example.com"]
    assert table[1].split()[-2:] == ["1", "2099-06-30"]


def test_show_text(mf: Mailflow) -> None:
    pid = add(mf)
    out = mf.ok("partnerships", "show", pid).out
    assert "ann@example.com learns 'public speaking' from bob@example.com" in out
    assert "1. 2099-06-30  Give the talk" in out
    assert "why: I want to lead" in out
    assert "back in the saddle: Get back up" in out
    assert "reports: 0" in out


def test_show_json_lists_reports(mf: Mailflow) -> None:
    pid = add(mf)
    store = Store(mf.data_dir)
    when = datetime(2099, 1, 6, 10, 0, tzinfo=UTC)
    with store.week_tx("2099-W02") as week:
        week.add_report(
            Report(
                partnership_id=int(pid),
                period="2099-W02",
                received_at=when,
                message_id="<r1@example.com>",
                sender="ann@example.com",
                text="Done: outline",
                setback=True,
            )
        )
    assert show(mf, pid)["reports"] == [
        {
            "period": "2099-W02",
            "received_at": when.isoformat(),
            "message_id": "<r1@example.com>",
            "setback": True,
            "text": "Done: outline",
        }
    ]


@pytest.mark.parametrize(
    ("goals", "message"),
    [
        ([], "error: goal: at least one"),
        (["tomorrow Give the talk"], 'error: goal: expected "YYYY-MM-DD TEXT"'),
        (["2099-13-01 x"], "error: goal: expected a date"),
        (["2099-02-30 x"], "error: goal: expected a date"),
        (["2099-06-30"], 'error: goal: expected "YYYY-MM-DD TEXT"'),
        (["2099-06-30    "], 'error: goal: expected "YYYY-MM-DD TEXT"'),
        (["99-06-30 x"], 'error: goal: expected "YYYY-MM-DD TEXT"'),
        (["2099-06-30 ok", "soon x"], 'error: goal: expected "YYYY-MM-DD TEXT"'),
        (["2000-01-01 long ago"], "error: goal: 2000-01-01 is in the past"),
    ],
)
def test_add_refuses_bad_goals(mf: Mailflow, goals: list[str], message: str) -> None:
    args = [
        "partnerships",
        "add",
        "--member",
        "ann@example.com",
        "--partner",
        "bob@example.com",
        "--skill",
        "x",
        "--why",
        "w",
        "--saddle",
        "s",
    ]
    for goal in goals:
        args += ["--goal", goal]
    assert mf.bad(*args).startswith(message)


@pytest.mark.parametrize("start", ["2099-02-30", "next week", "2099/01/01"])
def test_add_refuses_bad_start_dates(mf: Mailflow, start: str) -> None:
    err = mf.bad(*add_args("ann@example.com", "bob@example.com", "x", "--start", start))
    assert err.startswith("error: start: expected a date")


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b", "a\x1bb", "a\u2029b"], ids=repr)
@pytest.mark.parametrize("field", ["goal", "why", "saddle", "skill"])
def test_add_refuses_control_characters(mf: Mailflow, field: str, value: str) -> None:
    values = {"goal": GOAL, "why": "w", "saddle": "s", "skill": "x"}
    values[field] = (GOAL + value) if field == "goal" else value
    err = mf.bad(
        "partnerships",
        "add",
        "--member",
        "ann@example.com",
        "--partner",
        "bob@example.com",
        *[x for k, v in values.items() for x in (f"--{k}", v)],
    )
    assert err.startswith(f"error: {field}: control characters")


@pytest.mark.parametrize("missing", ["--why", "--saddle", "--member", "--partner", "--skill"])
def test_add_required_options_are_usage_errors(mf: Mailflow, missing: str) -> None:
    args = add_args()
    i = args.index(missing)
    del args[i : i + 2]
    err = mf.bad(*args, code=2)
    assert f"'{missing}'" in err


@pytest.mark.parametrize("field", ["--why", "--saddle"])
def test_add_refuses_empty_why_or_saddle(mf: Mailflow, field: str) -> None:
    args = add_args()
    args[args.index(field) + 1] = "   "
    assert mf.bad(*args).startswith(f"error: {field.lstrip('-')}: must not be empty")


def test_add_refuses_the_same_person(mf: Mailflow) -> None:
    err = mf.bad(*add_args("ann@example.com", "ANN@Example.com"))
    assert "must be different people" in err
    err = mf.bad(*add_args("ann@example.com", "ann@example.com", "x", "--allow-same-line"))
    assert "must be different people" in err


def test_add_refuses_the_same_department(mf: Mailflow) -> None:
    err = mf.bad(*add_args("ann@example.com", "cy@example.com"))
    assert "department" in err and "--allow-same-line" in err


@pytest.mark.parametrize(
    ("member", "partner"),
    [
        ("ic@example.com", "lead@example.com"),  # direct manager
        ("ic@example.com", "vp@example.com"),  # depth 2, member below
        ("vp@example.com", "ic@example.com"),  # depth 2, partner below
        ("ic@example.com", "ceo@example.com"),  # depth 3
        ("ceo@example.com", "ic@example.com"),  # depth 3, other way
    ],
)
def test_add_refuses_the_same_reporting_line(mf: Mailflow, member: str, partner: str) -> None:
    err = mf.bad(*add_args(member, partner))
    assert "same reporting line" in err and "--allow-same-line" in err


def test_siblings_under_one_manager_are_not_the_same_line(mf: Mailflow) -> None:
    mf.add_person("sib@example.com", "Research", "--manager", "lead@example.com")
    assert add(mf, *add_args("ic@example.com", "sib@example.com")) == "1"


@pytest.mark.parametrize(
    ("member", "partner"),
    [("ceo@example.com", "ic@example.com"), ("ann@example.com", "cy@example.com")],
)
def test_allow_same_line_is_recorded(mf: Mailflow, member: str, partner: str) -> None:
    result = mf.ok(*add_args(member, partner, "x", "--allow-same-line"))
    assert "allowed by --allow-same-line" in result.out
    pid = result.last_line
    assert pid == "1"
    assert show(mf, pid)["allow_same_line"] is True
    assert "override" in mf.ok("partnerships", "show", pid).out


def test_allow_same_line_without_a_conflict_records_nothing(mf: Mailflow) -> None:
    pid = add(mf, *add_args("ann@example.com", "bob@example.com", "x", "--allow-same-line"))
    assert show(mf, pid)["allow_same_line"] is False


def test_one_active_partnership_per_member_and_skill(mf: Mailflow) -> None:
    first = add(mf)
    err = mf.bad(*add_args("ann@example.com", "ic@example.com", " PUBLIC speaking"))
    assert err.startswith("error: skill: ann@example.com already has partnership 1")
    # Another skill, or another member with this skill, is fine.
    add(mf, *add_args("ann@example.com", "ic@example.com", "python"))
    add(mf, *add_args("ic@example.com", "bob@example.com"))
    # A paused one still counts.
    mf.ok("partnerships", "pause", first)
    mf.bad(*add_args("ann@example.com", "ic@example.com"))
    mf.ok("partnerships", "end", first)
    assert add(mf, *add_args("ann@example.com", "ic@example.com")) == "4"


@pytest.mark.parametrize(
    ("member", "partner", "who"),
    [
        ("ghost@example.com", "bob@example.com", "member"),
        ("ann@example.com", "ghost@example.com", "partner"),
    ],
)
def test_add_refuses_unknown_people(mf: Mailflow, member: str, partner: str, who: str) -> None:
    err = mf.bad(*add_args(member, partner))
    assert err.startswith(f"error: {who}: no such person ghost@example.com")


@pytest.mark.parametrize("who", ["--member", "--partner"])
def test_add_refuses_invalid_addresses(mf: Mailflow, who: str) -> None:
    args = add_args()
    args[args.index(who) + 1] = "not-an-address"
    assert mf.bad(*args).startswith(f"error: {who.lstrip('-')}: invalid address")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--checkin-day", "funday", "error: checkin-day: expected a weekday name"),
        ("--checkin-day", "", "error: checkin-day: expected a weekday name"),
        ("--checkin-time", "25:00", "error: checkin-time: expected HH:MM"),
        ("--checkin-time", "9am", "error: checkin-time: expected HH:MM"),
        ("--checkin-time", "9:00", "error: checkin-time: expected HH:MM"),
    ],
)
def test_add_refuses_bad_checkin_schedule(
    mf: Mailflow, option: str, value: str, message: str
) -> None:
    assert mf.bad(*add_args("ann@example.com", "bob@example.com", "x", option, value)).startswith(
        message
    )


# -- pause / resume / end --------------------------------------------------------------------


def test_pause_resume_end_life_cycle(mf: Mailflow) -> None:
    pid = add(mf)
    assert mf.ok("partnerships", "pause", pid).out == f"paused {pid}\n"
    doc = show(mf, pid)
    assert (doc["status"], doc["paused_until"]) == ("paused", None)
    assert mf.ok("partnerships", "resume", pid).out == f"resumed {pid}\n"
    assert show(mf, pid)["status"] == "active"

    until = (mf.now.date() + timedelta(days=10)).isoformat()
    assert mf.ok("partnerships", "pause", pid, "--until", until).out == (
        f"paused {pid} until {until}\n"
    )
    doc = show(mf, pid)
    assert (doc["status"], doc["paused_until"]) == ("paused", until)
    assert f"paused until {until}" in mf.ok("partnerships", "list").out
    mf.ok("partnerships", "resume", pid)
    assert show(mf, pid)["paused_until"] is None

    assert mf.ok("partnerships", "end", pid).out == f"ended {pid}\n"
    doc = show(mf, pid)
    assert doc["status"] == "ended" and doc["ended_at"] is not None


@pytest.mark.parametrize("until", ["2000-01-01", "today", "2099-02-30", "soon"])
def test_pause_refuses_bad_or_past_dates(mf: Mailflow, until: str) -> None:
    pid = add(mf)
    if until == "today":  # the member's zone is UTC: today is not in the future
        until = mf.now.date().isoformat()
    err = mf.bad("partnerships", "pause", pid, "--until", until)
    assert err.startswith("error: until: ")


def test_resume_refuses_an_active_partnership(mf: Mailflow) -> None:
    pid = add(mf)
    assert mf.bad("partnerships", "resume", pid) == f"error: partnership {pid} is not paused\n"


def test_ended_partnerships_stay_ended(mf: Mailflow) -> None:
    pid = add(mf)
    mf.ok("partnerships", "end", pid)
    assert mf.bad("partnerships", "end", pid) == f"error: partnership {pid} has already ended\n"
    assert "has ended" in mf.bad("partnerships", "pause", pid)
    assert "has ended" in mf.bad("partnerships", "resume", pid)


@pytest.mark.parametrize("command", ["show", "pause", "resume", "end"])
@pytest.mark.parametrize(
    ("pid", "message"),
    [
        ("99", "error: no partnership 99"),
        ("abc", 'error: partnership id must be a number, got "abc"'),
        ("1.5", "error: partnership id must be a number"),
    ],
)
def test_unknown_or_non_numeric_ids(mf: Mailflow, command: str, pid: str, message: str) -> None:
    add(mf)
    assert mf.bad("partnerships", command, pid).startswith(message)


@pytest.mark.parametrize("command", ["show", "pause", "resume", "end"])
def test_a_missing_id_is_a_usage_error(mf: Mailflow, command: str) -> None:
    mf.bad("partnerships", command, code=2)
