"""`mailflow partnerships import FILE.csv` through the real CLI (in-process and the console
script), with a real recording relay for the introductions the next tick sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from clitools import Mailflow, run_console
from smtp_recorder import RecordingSMTPServer

HEADER = "member,partner,skill,goal_due,goal,why,saddle,start,checkin_day,checkin_time,accepted"
# ceo <- vp <- lead <- ic (one line), and people of departments of their own.
PEOPLE = [
    ("ceo@example.com", "Exec", None),
    ("vp@example.com", "Product", "ceo@example.com"),
    ("lead@example.com", "Design", "vp@example.com"),
    ("ic@example.com", "Support", "lead@example.com"),
    ("ann@example.com", "Sales", None),
    ("bob@example.com", "Ops", None),
    ("cy@example.com", "sales", None),
]


def world(tmp_path: Path, capsys: pytest.CaptureFixture[str], relay_port: int) -> Mailflow:
    mf = Mailflow(
        tmp_path,
        capsys,
        'domain = "pairs.example.com"\n'
        f'[relay]\nhost = "127.0.0.1"\nport = {relay_port}\ntimeout_seconds = 5\n',
        now=datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
    )
    for email, dept, manager in PEOPLE:
        mf.add_person(email, dept, *(["--manager", manager] if manager else []))
    return mf


def write(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def test_import_groups_goals_and_the_next_tick_introduces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RecordingSMTPServer() as relay:
        mf = world(tmp_path, capsys, relay.port)
        csv = write(
            tmp_path,
            "ann@example.com,bob@example.com,Public Speaking,2027-03-01,Talk at the all-hands,"
            "I want to lead,Back up,2026-11-30,thursday,09:30,yes",
            # Same member and skill: a second goal of the same partnership (shared fields
            # may be left empty or repeated).
            "ann@example.com,,public speaking,2027-06-01,Speak at the meetup,,,,,,",
            "ic@example.com,bob@example.com,sql,2027-01-15,Write the report query,Data,Again,,,,",
        )
        out = mf.ok("partnerships", "import", str(csv)).out
        assert "imported 2 partnerships (3 goals)" in out
        assert relay.messages == []  # nothing sent by the import itself
        listed = json.loads(mf.ok("partnerships", "list", "--json").out)
        by_member = {p["member"]: p for p in listed}
        ann = by_member["ann@example.com"]
        assert ann["skill"] == "public speaking" and ann["partner"] == "bob@example.com"
        assert [(g["due"], g["text"]) for g in ann["goals"]] == [
            ("2027-03-01", "Talk at the all-hands"),
            ("2027-06-01", "Speak at the meetup"),
        ]
        assert (ann["start"], ann["checkin_day"], ann["checkin_time"]) == (
            "2026-11-30",
            "thursday",
            "09:30",
        )
        assert ann["consent"] == "accepted"
        ic = by_member["ic@example.com"]
        assert ic["consent"] == "pending" and ic["start"] == "2026-11-23"
        # The introductions go out with the next tick, through the outbox.
        mf.ok("tick")
        relay.wait_for(4)
        to = sorted(rcpt for m in relay.messages for rcpt in m.rcpt_tos)
        assert to == ["ann@example.com", "bob@example.com", "bob@example.com", "ic@example.com"]
        assert len(relay.messages) == 4
        mf.now += timedelta(minutes=1)
        mf.ok("tick")
        assert len(relay.messages) == 4  # once each


def test_import_is_all_or_nothing_and_names_every_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RecordingSMTPServer() as relay:
        mf = world(tmp_path, capsys, relay.port)
        mf.ok(
            "partnerships", "add", "--member", "bob@example.com", "--partner", "ann@example.com",
            "--skill", "sql", "--goal", "2027-01-01 Q", "--why", "w", "--saddle", "s",
        )  # fmt: skip
        csv = write(
            tmp_path,
            "ann@example.com,bob@example.com,writing,2027-03-01,Essay,w,s,,,,",  # fine
            "ann@example.com,cy@example.com,negotiation,2027-03-01,Deal,w,s,,,,",  # same dept
            "ic@example.com,vp@example.com,sql,2027-03-01,Query,w,s,,,,",  # same line
            "nobody@example.com,bob@example.com,sql,2027-03-01,Q,w,s,,,,",  # no such person
            "vp@example.com,bob@example.com,design,2027-13-01,Q,w,s,,,,",  # bad date
            "bob@example.com,ann@example.com,sql,2027-03-01,Again,w,s,,,,",  # exists already
            "ceo@example.com,bob@example.com,talks,2027-03-01,T,w,s,,,,maybe",  # accepted?
            "ann@example.com,ic@example.com,writing,2027-04-01,More,,,,,,",  # partner differs
            "lead@example.com,bob@example.com,sql,2027-03-01,Q,,s,,,,",  # why empty
            "not an address,bob@example.com,sql,2027-03-01,Q,w,s,,,,",
        )
        err = mf.bad("partnerships", "import", str(csv), lines=None)
        lines = err.splitlines()
        assert lines[-1] == f"error: {csv}: 9 problems; nothing imported"
        expect = {
            3: "department",
            4: "same reporting line",
            5: "no such person nobody@example.com",
            6: "goal_due: expected a date",
            7: "already has partnership 1",
            8: 'accepted: expected yes or no, got "maybe"',
            9: "partner differs from line 2",
            10: "why: must not be empty",
            11: "member: invalid address",
        }
        assert len(lines) == len(expect) + 1
        for line, (n, text) in zip(lines, sorted(expect.items()), strict=False):
            assert line.startswith(f"error: {csv}:{n}: ") and text in line, (line, n, text)
        assert [p["id"] for p in json.loads(mf.ok("partnerships", "list", "--json").out)] == [1]
        assert (
            len(mf.bad("partnerships", "import", str(tmp_path / "missing.csv")).splitlines()) == 1
        )
        (tmp_path / "head.csv").write_text("member,partner,skill,goal\n")
        err = mf.bad("partnerships", "import", str(tmp_path / "head.csv"), lines=2)
        assert "missing column(s) goal_due, why, saddle" in err


def test_a_thousand_partnerships_through_the_console_script(tmp_path: Path) -> None:
    """The installed entry point, a directory from `people import`, 1,000 partnerships of two
    goals each: one command, one line of output, all of them stored."""
    n = 2000
    config = tmp_path / "mailflow.toml"
    config.write_text('[service]\ndata_dir = "data"\n', encoding="utf-8")
    people = ["email,name,department,manager,timezone,offers"]
    people += [f"p{i}@example.com,P {i},D{i % 2},,UTC," for i in range(n)]
    (tmp_path / "people.csv").write_text("\n".join(people) + "\n")
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert run_console("--config", str(config), "people", "import", "people.csv",
                       cwd=tmp_path, now=now).code == 0  # fmt: skip
    rows = [HEADER]
    for i in range(0, n, 2):  # p0 (D0) with p1 (D1), ...
        for k in (1, 2):
            rows.append(f"p{i}@example.com,p{i + 1}@example.com,sql,2027-0{k}-01,G{k},w,s,,,,yes")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    result = run_console("--config", str(config), "partnerships", "import", "pairs.csv",
                         cwd=tmp_path, now=now)  # fmt: skip
    assert result.code == 0, result
    assert result.out.startswith("imported 1000 partnerships (2000 goals), ids 1-1000")
    core = json.loads((tmp_path / "data" / "db" / "core.json").read_text())
    assert len(core["partnerships"]) == 1000
    assert all(len(p["goals"]) == 2 for p in core["partnerships"].values())


def test_a_skill_spelled_like_one_on_offer_is_refused_with_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = world(tmp_path, capsys, 9)  # nothing is mailed: no relay needed
    mf.ok("people", "update", "bob@example.com", "--offers", "public speaking")
    csv = write(
        tmp_path,
        "ann@example.com,bob@example.com,Public-Speaking!,2027-03-01,Talk,Why,Back up,,,,",
        "ic@example.com,bob@example.com,public speaking,2027-03-01,Talk,Why,Back up,,,,",
    )
    err = mf.bad("partnerships", "import", str(csv), lines=None)
    assert 'pairs.csv:2: skill: nobody offers "public-speaking!" yet' in err
    assert 'did you mean "public speaking"' in err
    assert ":3:" not in err  # the right spelling passes
    assert json.loads(mf.ok("partnerships", "list", "--json").out) == []
