"""Counts read as English: "imported 1 person", "1 day left", "2 problems" (never "1 people"
or "problem(s)"), through the real CLI on real files and the helper itself."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from clitools import Mailflow
from conftest import next_monday

from mailflow.wording import count, plural

NOW = next_monday(10)
TODAY = NOW.date()


def test_count_says_one_and_many() -> None:
    assert [count(n, "person") for n in (0, 1, 2)] == ["0 people", "1 person", "2 people"]
    assert count(1, "message") == "1 message" and count(5, "message") == "5 messages"
    assert plural(1, "day") == "day" and plural(-3, "day") == "days"


def test_the_cli_counts_one_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, now=NOW)
    people = tmp_path / "people.csv"
    people.write_text("email,name,department\nann@example.com,Ann,Sales\n", encoding="utf-8")
    assert mf.ok("people", "import", str(people)).out == "imported 1 person\n"
    mf.add_person("bob@example.com", "Ops")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "member,partner,skill,goal_due,goal,why,saddle\n"
        f"ann@example.com,bob@example.com,sql,{TODAY + timedelta(days=1)},Query,w,s\n",
        encoding="utf-8",
    )
    out = mf.ok("partnerships", "import", str(pairs)).out
    assert out.startswith("imported 1 partnership (1 goal), id 1; "), out
    assert "(1 day left)" in mf.ok("partnerships", "show", "1").out
    bad = tmp_path / "bad.csv"
    bad.write_text("email,name,department\nnot-an-address,X,D\n", encoding="utf-8")
    err = mf.bad("people", "import", str(bad), lines=None)
    assert err.splitlines()[-1] == f"error: {bad}: 1 problem; nothing imported"
