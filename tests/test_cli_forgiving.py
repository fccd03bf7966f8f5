"""Issue 13, forgiving input and helpful errors, through the real CLI on real files.

Re-importing an updated HR export (`people import --update`), CSV files as Excel saves them
(byte order mark, `;` between columns, Windows-1252, UTF-16), "did you mean" for near misses,
dates in the past refused unless `--allow-past`, the consent state in `partnerships list` and
the effective check-in moment in `show`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from clitools import Mailflow
from conftest import next_monday

NOW = next_monday(10)  # Monday 10:00 UTC (moves with the guard run's clock)
TODAY = NOW.date()
HEADER = "email,name,department,manager,timezone,offers\n"


@pytest.fixture
def mf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Mailflow:
    return Mailflow(tmp_path, capsys, now=NOW)


def people(mf: Mailflow) -> dict[str, dict[str, object]]:
    return {p["email"]: p for p in json.loads(mf.ok("people", "list", "--json").out)}


def write(mf: Mailflow, name: str, data: bytes) -> str:
    path = mf.tmp_path / name
    path.write_bytes(data)
    return str(path)


# -- people import --update ----------------------------------------------------------------------

EXPORT = (
    HEADER
    + "boss@example.com,Boss,Exec,,,\n"
    + "ann@example.com,Ann,Sales,boss@example.com,Europe/Berlin,python\n"
    + "cy@example.com,Cy,Ops,,,\n"
)


def test_reimporting_an_updated_export_adds_updates_and_skips(mf: Mailflow) -> None:
    first = write(mf, "hr.csv", EXPORT.encode())
    assert mf.ok("people", "import", first).out == "imported 3 people\n"
    err = mf.bad("people", "import", first, lines=None)
    assert "error: " + first + ":3: ann@example.com already exists (pass --update" in err
    assert err.splitlines()[-1] == f"error: {first}: 3 problems; nothing imported"

    # Next month's export: Ann moved to Ops and offers SQL too, Dee joined, Boss and Cy as before.
    updated = EXPORT.replace(
        "Ann,Sales,boss@example.com,Europe/Berlin,python", "Ann,Ops,,,python;sql"
    )
    second = write(
        mf, "hr2.csv", (updated + "dee@example.com,Dee,Legal,ann@example.com,,\n").encode()
    )
    assert mf.ok("people", "import", second, "--update").out == "added 1, updated 1, unchanged 2\n"
    found = people(mf)
    ann = found["ann@example.com"]
    assert (ann["department"], ann["manager"], ann["offers"]) == ("Ops", None, ["python", "sql"])
    assert ann["timezone"] == "Europe/Berlin"  # an empty zone keeps hers
    assert found["dee@example.com"]["manager"] == "ann@example.com"
    assert mf.ok("people", "import", second, "--update").out == "added 0, updated 0, unchanged 4\n"

    # A file without the offers column leaves everybody's offers alone.
    narrow = write(mf, "narrow.csv", b"email,name,department\nann@example.com,Ann B.,Ops\n")
    assert mf.ok("people", "import", narrow, "--update").out == "added 0, updated 1, unchanged 0\n"
    assert people(mf)["ann@example.com"]["offers"] == ["python", "sql"]
    # Still all or nothing: one bad row and nobody changes.
    bad = write(mf, "bad.csv", (HEADER + "ann@example.com,Ann,Eng,,Mars/Base,\n").encode())
    assert "unknown time zone" in mf.bad("people", "import", bad, "--update", lines=None)


# -- Excel's CSV files ---------------------------------------------------------------------------


def test_excel_utf8_with_bom_and_semicolons_imports_with_a_note(mf: Mailflow) -> None:
    text = (
        "\ufeffemail;name;department;offers\nzoe@example.com;Zoë Ødegaard;Sales;public speaking\n"
    )
    result = mf.ok("people", "import", write(mf, "excel.csv", text.encode()))
    assert result.out == "imported 1 person\n"
    assert 'columns are separated by ";", not commas: read that way' in result.err
    assert people(mf)["zoe@example.com"]["name"] == "Zoë Ødegaard"


def test_rows_of_empty_cells_are_blank_lines(mf: Mailflow) -> None:
    """Excel saves a row whose cells were cleared as ",,,": skipped like a blank line."""
    data = b"email,name,department\r\nada@example.com,Ada,Eng\r\n,,\r\n , ,\r\n\r\n"
    assert mf.ok("people", "import", write(mf, "cleared.csv", data)).out.startswith("imported 1")
    assert list(people(mf)) == ["ada@example.com"]


def test_excel_windows_1252_imports_with_a_note_naming_the_encoding(mf: Mailflow) -> None:
    text = "email;name;department\nzoe@example.com;Zoë Ødegaard – Sales;Sales\n"
    result = mf.ok("people", "import", write(mf, "win.csv", text.encode("cp1252")))
    assert result.out == "imported 1 person\n"
    assert "not UTF-8: read as Windows-1252 (cp1252)" in result.err
    assert "CSV UTF-8 (Comma delimited)" in result.err
    assert people(mf)["zoe@example.com"]["name"] == "Zoë Ødegaard – Sales"


def test_excel_unicode_text_imports(mf: Mailflow) -> None:
    text = "email\tname\tdepartment\r\nzoe@example.com\tZoë\tSales\r\n"
    result = mf.ok("people", "import", write(mf, "u16.txt", text.encode("utf-16")))
    assert result.out == "imported 1 person\n"
    assert "UTF-16" in result.err and "separated by tab" in result.err


def test_bytes_that_are_no_text_encoding_are_refused_with_what_to_do(mf: Mailflow) -> None:
    path = write(mf, "odd.csv", b"email,name,department\n\x81\x8d\x8f\x90\x9d@x,A,B\n")
    err = mf.bad("people", "import", path)
    assert err.startswith(f"error: {path}: not UTF-8 text, nor Windows-1252 (it looks like ")
    assert 'save it from Excel as "CSV UTF-8 (Comma delimited)"' in err


@pytest.mark.parametrize(
    ("encoding", "sep", "note"),
    [
        ("utf-8-sig", ";", 'columns are separated by ";", not commas'),
        ("cp1252", ",", "not UTF-8: read as Windows-1252 (cp1252)"),
        ("utf-16", "\t", "read as UTF-16"),
    ],
)
def test_partnerships_import_reads_excel_files_as_people_import_does(
    pair: Mailflow, encoding: str, sep: str, note: str
) -> None:
    """One reader for both imports: the same files Excel saves, with the same notes."""
    due = TODAY + timedelta(days=20)
    rows = [
        ["member", "partner", "skill", "goal_due", "goal", "why", "saddle"],
        ["ann@example.com", "bob@example.com", "public speaking", str(due), "Café talk – 5 min",
         "Zoë's team", "Allez"],
    ]  # fmt: skip
    text = "\r\n".join(sep.join(row) for row in rows) + "\r\n"
    result = pair.ok("partnerships", "import", write(pair, "pairs.csv", text.encode(encoding)))
    assert result.out.startswith("imported 1 partnership (1 goal), id 1;"), result
    assert f"note: {pair.tmp_path / 'pairs.csv'}: {note}" in result.err
    shown = json.loads(pair.ok("partnerships", "show", "1", "--json").out)
    assert shown["goals"][0]["text"] == "Café talk – 5 min" and shown["why"] == "Zoë's team"


def test_partnerships_import_refuses_bytes_that_are_no_text(pair: Mailflow) -> None:
    path = write(pair, "odd.csv", b"member,partner,skill\n\x81\x8d\x8f\x90\x9d,A,B\n")
    err = pair.bad("partnerships", "import", path)
    assert err.startswith(f"error: {path}: not UTF-8 text, nor Windows-1252 (it looks like ")


# -- did you mean --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "guess"),
    [
        ("asia/kolkata", "Asia/Kolkata"),
        ("PST", "America/Los_Angeles"),
        ("Kolkata", "Asia/Kolkata"),
        ("Europe/Berln", "Europe/Berlin"),
    ],
)
def test_a_near_miss_time_zone_gets_a_did_you_mean(mf: Mailflow, zone: str, guess: str) -> None:
    err = mf.bad("people", "add", "a@example.com", "--name", "A", "--department", "D",
                 "--timezone", zone)  # fmt: skip
    assert err.rstrip().endswith(f'unknown time zone "{zone}" (did you mean "{guess}"?)'), err


def test_an_unknown_zone_far_from_any_gets_no_guess(mf: Mailflow) -> None:
    err = mf.bad("people", "add", "a@example.com", "--name", "A", "--department", "D",
                 "--timezone", "Nowhere/Atall")  # fmt: skip
    assert "did you mean" not in err


def partnership_args(*extra: str, skill: str = "public speaking") -> list[str]:
    return [
        "partnerships", "add", "--member", "ann@example.com", "--partner", "bob@example.com",
        "--skill", skill, "--goal", f"{TODAY + timedelta(days=30)} Give the talk",
        "--why", "w", "--saddle", "s", *extra,
    ]  # fmt: skip


@pytest.fixture
def pair(mf: Mailflow) -> Mailflow:
    mf.add_person("ann@example.com", "Sales")
    mf.add_person("bob@example.com", "Ops", "--offers", "public speaking")
    return mf


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checkin-day", "Mon"], 'checkin-day: expected a weekday name, got "Mon" '
                                   '(did you mean "monday"?)'),
        (["--checkin-day", "thurs"], '(did you mean "thursday"?)'),
        (["--checkin-time", "9:00"], 'checkin-time: expected HH:MM, got "9:00" '
                                     '(did you mean "09:00"?)'),
        (["--checkin-time", "9pm"], '(did you mean "21:00"?)'),
    ],
)  # fmt: skip
def test_days_and_times_get_a_did_you_mean(pair: Mailflow, extra: list[str], message: str) -> None:
    assert message in pair.bad(*partnership_args(*extra))


@pytest.mark.parametrize("spelling", ["Public-Speaking", "publicspeaking", "PUBLIC  speaking!"])
def test_a_skill_spelled_apart_from_one_offered_gets_a_did_you_mean(
    pair: Mailflow, spelling: str
) -> None:
    guess = '(did you mean "public speaking"?)'
    assert guess in pair.bad(*partnership_args(skill=spelling))
    assert guess in pair.bad("people", "add", "c@example.com", "--name", "C",
                             "--department", "D", "--offers", spelling)  # fmt: skip
    assert guess in pair.bad("people", "update", "ann@example.com", "--offers", spelling)
    assert guess in pair.ok("people", "list", "--offers", spelling).out
    path = write(
        pair, "o.csv", f"email,name,department,offers\nc@example.com,C,D,{spelling}\n".encode()
    )
    assert guess in pair.bad("people", "import", path, lines=None)


def test_a_new_skill_nobody_offers_is_still_welcome(pair: Mailflow) -> None:
    pair.ok("people", "update", "ann@example.com", "--offers", "sql")
    assert pair.ok(*partnership_args(skill="Public speaking")).last_line == "1"  # same spelling


def test_the_config_says_did_you_mean_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, guess in (
        ('timezone = "europe/rome"', "Europe/Rome"),
        ('[schedule]\ncheckin_day = "Tue"', "tuesday"),
        ('[schedule]\ncheckin_time = "8:30"', "08:30"),
    ):
        mf = Mailflow(tmp_path, capsys, extra=extra + "\n", now=NOW)
        assert f'(did you mean "{guess}"?)' in mf.bad("status", lines=None)


# -- dates in the past ---------------------------------------------------------------------------


def test_past_goals_and_starts_are_refused_unless_allowed(pair: Mailflow) -> None:
    yesterday = TODAY - timedelta(days=1)
    args = partnership_args("--goal", f"{yesterday} Outline")
    err = pair.bad(*args)
    assert err == (
        f"error: goal: {yesterday} is in the past (today is {TODAY} in UTC, the member's zone); "
        "pass --allow-past to record it anyway\n"
    )
    start = ["--start", str(TODAY - timedelta(days=14))]
    assert "error: start: " in pair.bad(*partnership_args(*start))
    assert pair.ok(*args, *start, "--allow-past").last_line == "1"
    # Today itself is not the past.
    pair.ok(*partnership_args("--goal", f"{TODAY} Outline", skill="sql"))


def test_allow_past_with_only_past_goals_starts_at_the_first_goal(pair: Mailflow) -> None:
    """Migrating a finished partnership: no --start, every goal already due."""
    first, last = TODAY - timedelta(days=60), TODAY - timedelta(days=10)
    args = ["partnerships", "add", "--member", "ann@example.com", "--partner", "bob@example.com",
            "--skill", "public speaking", "--goal", f"{last} Give the talk",
            "--goal", f"{first} Outline", "--why", "w", "--saddle", "s"]  # fmt: skip
    assert "pass --allow-past" in pair.bad(*args)
    assert pair.ok(*args, "--allow-past").last_line == "1"
    shown = json.loads(pair.ok("partnerships", "show", "1", "--json").out)
    assert shown["start"] == str(first)
    # An explicit --start after every goal is still refused, with or without --allow-past.
    late = ["--start", str(TODAY - timedelta(days=5)), "--allow-past"]
    err = pair.bad(*[a if a != "public speaking" else "sql" for a in args], *late)
    assert "every due date is before the start" in err


# -- list and show -------------------------------------------------------------------------------


def test_list_shows_consent_and_show_the_effective_checkin(pair: Mailflow) -> None:
    pair.ok(*partnership_args())
    pair.ok(*partnership_args("--accepted", "--checkin-day", "Friday", "--checkin-time", "07:30",
                              skill="sql"))  # fmt: skip
    pair.ok(*partnership_args(skill="python"))
    # Both answers, or none, is refused: neither flag may win silently.
    both = pair.bad("partnerships", "consent", "3", "--accepted", "--declined", code=2)
    assert "--accepted or --declined" in both
    assert "--accepted or --declined" in pair.bad("partnerships", "consent", "3", code=2)
    pair.ok("partnerships", "consent", "3", "--declined")
    table = pair.ok("partnerships", "list").out.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "CONSENT"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["1", "active", "pending"],
        ["2", "active", "accepted"],
        ["3", "active", "declined"],
    ]
    first = pair.ok("partnerships", "show", "1").out
    assert "default" not in first
    assert "status: active; consent pending; start " in first
    assert (
        "check-in: Monday 09:00 UTC (the member's time; day and time from the configuration)"
        in first
    )
    second = pair.ok("partnerships", "show", "2").out
    assert "check-in: Friday 07:30 UTC (the member's time)" in second


# -- skills: lower case, matched in any case -----------------------------------------------------


def test_skills_are_kept_in_lower_case_and_matched_in_any_case(pair: Mailflow) -> None:
    pair.add_person("cy@example.com", "Legal", "--offers", "Data  SCIENCE")
    assert people(pair)["cy@example.com"]["offers"] == ["data science"]
    assert "cy@example.com" in pair.ok("people", "list", "--offers", "DATA science").out
    suggested = pair.ok("partners", "suggest", "--member", "ann@example.com",
                        "--skill", "Data Science").out  # fmt: skip
    assert "cy@example.com" in suggested
    assert pair.ok(*partnership_args(skill="Public SPEAKING")).last_line == "1"
    csv = write(
        pair,
        "pairs.csv",
        b"member,partner,skill,goal_due,goal,why,saddle\n"
        + f"ann@example.com,cy@example.com,DATA SCIENCE,{TODAY},Model,w,s\n".encode(),
    )
    pair.ok("partnerships", "import", csv)
    listed = json.loads(pair.ok("partnerships", "list", "--json").out)
    assert [p["skill"] for p in listed] == ["public speaking", "data science"]
    # One partnership per (member, skill) holds across spellings.
    assert "already has partnership 1" in pair.bad(*partnership_args(skill="PUBLIC speaking"))
