"""`mailflow people add/list/import` through the real CLI, against real files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from clitools import Mailflow, run_console

import mailflow.cli

HEADER = "email,name,department,manager,timezone,offers\n"


@pytest.fixture
def mf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Mailflow:
    mf = Mailflow(tmp_path, capsys)
    mf.add_person("boss@example.com", "Exec")
    return mf


def people_json(mf: Mailflow) -> list[dict[str, Any]]:
    return json.loads(mf.ok("people", "list", "--json").out)


def emails(mf: Mailflow) -> list[str]:
    return [p["email"] for p in people_json(mf)]


def csv_file(mf: Mailflow, body: str, name: str = "people.csv") -> str:
    path = mf.tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return str(path)


# -- add -------------------------------------------------------------------------------------


def test_add_normalises_and_lists(mf: Mailflow) -> None:
    result = mf.ok(
        "people",
        "add",
        "  Ann.Lee@Example.COM ",
        "--name",
        " Ann Lee ",
        "--department",
        "Sales",
        "--manager",
        "BOSS@example.com",
        "--timezone",
        "Europe/Berlin",
        "--offers",
        "Public  Speaking",
        "--offers",
        "python",
        "--offers",
        "PYTHON",
    )
    assert result.out == "added ann.lee@example.com\n"
    ann = next(p for p in people_json(mf) if p["email"] == "ann.lee@example.com")
    assert ann == {
        "email": "ann.lee@example.com",
        "name": "Ann Lee",
        "department": "Sales",
        "manager": "boss@example.com",
        "timezone": "Europe/Berlin",
        "offers": ["public speaking", "python"],
        "bouncing": False,
        "bounce_reason": "",
    }


def test_add_uses_the_configured_default_timezone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, extra='timezone = "America/New_York"\n')
    mf.add_person("ann@example.com", "Sales")
    assert people_json(mf)[0]["timezone"] == "America/New_York"


def test_list_table_and_empty_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mf = Mailflow(tmp_path, capsys)
    assert mf.ok("people", "list", "--json").out.strip() == "[]"
    assert mf.ok("people", "list").out.split() == [
        "EMAIL",
        "NAME",
        "DEPARTMENT",
        "MANAGER",
        "TIMEZONE",
        "OFFERS",
    ]
    mf.add_person("ann@example.com", "Sales", "--offers", "python")
    lines = mf.ok("people", "list").out.splitlines()
    assert lines[1].split() == ["ann@example.com", "Ann", "Sales", "-", "UTC", "python"]


@pytest.mark.parametrize(
    "address",
    [
        "ann",
        "ann@",
        "@example.com",
        "ann@@example.com",
        "ann example@example.com",
        "ann@exa mple.com",
        "",
        "Ann <ann@example.com>",
        "ann@example..com",
    ],
)
def test_add_refuses_invalid_addresses(mf: Mailflow, address: str) -> None:
    err = mf.bad("people", "add", address, "--name", "Ann", "--department", "Sales")
    assert err.startswith("error: email: ")


CONTROL = ["a\rb", "a\nb", "a\r\nBcc: x@evil.com", "a\x00b", "a\tb", "a\x7fb", "a\x85b", "a\u2028b"]


@pytest.mark.parametrize("value", CONTROL, ids=repr)
@pytest.mark.parametrize("option", ["--name", "--department", "--offers"])
def test_add_refuses_control_characters(mf: Mailflow, option: str, value: str) -> None:
    args = {"--name": "Ann", "--department": "Sales"}
    args[option] = value
    flat = [x for kv in args.items() for x in kv]
    err = mf.bad("people", "add", "ann@example.com", *flat)
    assert "control characters" in err
    assert err.startswith(f"error: {option.lstrip('-')}: ")


@pytest.mark.parametrize(
    "value", ["ann@example.com\r\nBcc: x@evil.com", "ann@exa\nmple.com"], ids=repr
)
def test_add_refuses_control_characters_in_addresses(mf: Mailflow, value: str) -> None:
    mf.bad("people", "add", value, "--name", "Ann", "--department", "Sales")
    mf.bad(
        "people",
        "add",
        "ann@example.com",
        "--name",
        "Ann",
        "--department",
        "Sales",
        "--manager",
        value.replace("ann", "boss"),
    )


@pytest.mark.parametrize(
    "tz",
    ["Mars/Olympus", "Europe/Berln", "europe/berlin ", "../../etc/passwd", "Europe", "UTC\n"],
    ids=repr,
)
def test_add_refuses_unknown_timezones(mf: Mailflow, tz: str) -> None:
    err = mf.bad(
        "people",
        "add",
        "ann@example.com",
        "--name",
        "Ann",
        "--department",
        "Sales",
        "--timezone",
        tz,
    )
    assert err.startswith("error: timezone: ")


def test_add_refuses_missing_and_self_managers(mf: Mailflow) -> None:
    err = mf.bad(
        "people",
        "add",
        "ann@example.com",
        "--name",
        "Ann",
        "--department",
        "Sales",
        "--manager",
        "ghost@example.com",
    )
    assert "ghost@example.com does not exist" in err
    err = mf.bad(
        "people",
        "add",
        "ann@example.com",
        "--name",
        "Ann",
        "--department",
        "Sales",
        "--manager",
        "ANN@example.com",
    )
    assert "own manager" in err


@pytest.mark.parametrize("dup", ["boss@example.com", "BOSS@Example.Com", " boss@EXAMPLE.com"])
def test_add_refuses_duplicates_case_insensitively(mf: Mailflow, dup: str) -> None:
    err = mf.bad("people", "add", dup, "--name", "Other", "--department", "Ops")
    assert err == "error: boss@example.com already exists\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--name", "", "--department", "Ops"],
        ["--name", "Ann", "--department", "   "],
        ["--name", "x" * 201, "--department", "Ops"],
    ],
)
def test_add_refuses_empty_or_oversized_fields(mf: Mailflow, args: list[str]) -> None:
    mf.bad("people", "add", "ann@example.com", *args)


@pytest.mark.parametrize(
    "args",
    [
        ["ann@example.com", "--department", "Sales"],
        ["ann@example.com", "--name", "Ann"],
        ["--name", "Ann", "--department", "Sales"],
        ["ann@example.com", "--name", "Ann", "--department", "Sales", "--bogus"],
    ],
)
def test_add_usage_errors_exit_2(mf: Mailflow, args: list[str]) -> None:
    mf.bad("people", "add", *args, code=2)


# -- offers directory ------------------------------------------------------------------------


def test_list_offers_shows_everyone_offering_with_partnership_counts(mf: Mailflow) -> None:
    mf.add_person("ann@example.com", "Sales", "--offers", "Python")
    mf.add_person("bob@example.com", "Ops", "--offers", "python", "--offers", "go")
    mf.add_person("cy@example.com", "Legal", "--offers", "go")
    mf.add_person("dee@example.com", "Design")
    mf.add_person("eve@example.com", "Finance")
    for member, skill in [
        ("dee@example.com", "python"),
        ("eve@example.com", "python"),
        ("cy@example.com", "python"),
    ]:
        mf.ok(
            "partnerships",
            "add",
            "--member",
            member,
            "--partner",
            "bob@example.com",
            "--skill",
            skill,
            "--goal",
            "2099-01-01 Ship it",
            "--why",
            "w",
            "--saddle",
            "s",
        )
    ended = mf.ok(
        "partnerships",
        "add",
        "--member",
        "dee@example.com",
        "--partner",
        "ann@example.com",
        "--skill",
        "go",
        "--goal",
        "2099-01-01 x",
        "--why",
        "w",
        "--saddle",
        "s",
    ).last_line
    mf.ok("partnerships", "end", ended)

    found = json.loads(mf.ok("people", "list", "--offers", " PYTHON ", "--json").out)
    assert [(p["email"], p["partnerships"]) for p in found] == [
        ("ann@example.com", 0),
        ("bob@example.com", 3),
    ]
    table = mf.ok("people", "list", "--offers", "python").out.splitlines()
    assert table[0].split() == ["EMAIL", "NAME", "DEPARTMENT", "PARTNERSHIPS"]
    assert [line.split()[0::3] for line in table[1:]] == [
        ["ann@example.com", "0"],
        ["bob@example.com", "3"],
    ]
    assert mf.ok("people", "list", "--offers", "cobol").out == "nobody offers 'cobol'\n"
    assert json.loads(mf.ok("people", "list", "--offers", "cobol", "--json").out) == []


# -- import ----------------------------------------------------------------------------------


def test_import_a_good_file_imports_everyone(mf: Mailflow) -> None:
    path = csv_file(
        mf,
        (
            "ann@example.com,Ann,Sales,lead@example.com,Europe/Berlin,python;Public Speaking\n"
            '"Lead@Example.com","Lead, The",Eng,boss@example.com,,\n'
            "\n"
            "cy@example.com,Cy,Ops,,,\n"
        ),
    )
    assert mf.ok("people", "import", path).out == "imported 3 people\n"
    people = {p["email"]: p for p in people_json(mf)}
    assert set(people) == {
        "boss@example.com",
        "ann@example.com",
        "lead@example.com",
        "cy@example.com",
    }
    assert people["ann@example.com"]["manager"] == "lead@example.com"
    assert people["ann@example.com"]["offers"] == ["python", "public speaking"]
    assert people["ann@example.com"]["timezone"] == "Europe/Berlin"
    assert people["lead@example.com"]["name"] == "Lead, The"
    assert people["cy@example.com"]["timezone"] == "UTC"


def test_import_accepts_a_bom_columns_in_any_order_and_missing_optional_ones(mf: Mailflow) -> None:
    path = mf.tmp_path / "bom.csv"
    path.write_bytes("\ufeffDepartment, Name ,EMAIL\nSales,Ann,ann@example.com\n".encode())
    assert mf.ok("people", "import", str(path)).out == "imported 1 person\n"
    assert "ann@example.com" in emails(mf)


def test_import_reports_every_bad_row_and_imports_none(mf: Mailflow) -> None:
    path = csv_file(
        mf,
        (
            "ann@example.com,Ann,Sales,,,\n"  # line 2: good
            "not-an-address,Bob,Ops,,,\n"  # line 3: bad email
            "cy@example.com,Cy,Ops,,,\n"  # line 4: good
            "dee@example.com,Dee,Ops,,Mars/Olympus,\n"  # line 5: bad zone
            "eve@example.com,Eve,Ops,,,\n"  # line 6: good
        ),
    )
    err = mf.bad("people", "import", path, lines=3)
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {path}:3: email: ")
    assert lines[1].startswith(f"error: {path}:5: timezone: ")
    assert lines[2] == f"error: {path}: 2 problems; nothing imported"
    assert emails(mf) == ["boss@example.com"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("ann@example.com,A\x07nn,Sales,,,\n", ["2: name: control characters"]),
        (
            "ann@example.com,Ann,Sales,ghost@example.com,,\n",
            ["2: manager ghost@example.com does not exist"],
        ),
        (
            "ann@example.com,Ann,Sales,bob@example.com,,\nbob@example.com,Bob,Ops,ann@example.com,,\n",
            [
                "2: manager chain of ann@example.com loops",
                "3: manager chain of bob@example.com loops",
            ],
        ),
        (
            "ann@example.com,Ann,Sales,,,\nANN@example.com,Ann2,Ops,,,\n",
            ["3: ann@example.com appears twice"],
        ),
        ("Boss@Example.com,Boss,Exec,,,\n", ["2: boss@example.com already exists"]),
        ("ann@example.com,Ann,Sales,,,,extra\n", ["2: too many fields"]),
        ("ann@example.com,,Sales,,,\n", ["2: name: must not be empty"]),
        ("ann@example.com,Ann\n", ["2: department: must not be empty"]),
        ("ann@example.com,Ann,Sales,,,bad;ski,ll\n", ["2: too many fields"]),
    ],
    ids=[
        "control",
        "missing-manager",
        "cycle",
        "dup-in-file",
        "dup-existing",
        "extra-field",
        "empty-name",
        "short-row",
        "extra-field-2",
    ],
)
def test_import_refuses_bad_rows(mf: Mailflow, body: str, expected: list[str]) -> None:
    path = csv_file(mf, body)
    err = mf.bad("people", "import", path, lines=len(expected) + 1)
    lines = err.splitlines()
    for line, want in zip(lines, expected, strict=False):
        assert line.startswith(f"error: {path}:{want}"), (line, want)
    assert lines[-1].endswith("nothing imported")
    assert emails(mf) == ["boss@example.com"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("email,name\n", "missing column(s) department"),
        ("email,name,department,favourite_colour\n", "unknown column(s) favourite_colour"),
        ("mail,nom,dept\n", "missing column(s) email, name, department"),
        ("", "empty file"),
    ],
)
def test_import_refuses_missing_or_unknown_columns(mf: Mailflow, header: str, message: str) -> None:
    path = mf.tmp_path / "cols.csv"
    path.write_text(header + ("ann@example.com,Ann,Sales,x\n" if header else ""), encoding="utf-8")
    err = mf.bad("people", "import", str(path), lines=2)
    assert err.splitlines()[0].startswith(f"error: {path}:1: {message}")


def test_import_refuses_a_header_only_file(mf: Mailflow) -> None:
    err = mf.bad("people", "import", csv_file(mf, ""))
    assert "no rows to import" in err


def test_import_refuses_undecodable_and_missing_files(mf: Mailflow) -> None:
    path = mf.tmp_path / "shiftjis.csv"
    # Not UTF-8, and bytes Windows-1252 does not define (0x81): refused, saying what to do.
    path.write_bytes((HEADER + "jose@example.com,Jos\xe9,Sales,,,\n").encode("latin-1") + b"\x81")
    err = mf.bad("people", "import", str(path))
    assert err.startswith(f"error: {path}: not UTF-8 text, nor Windows-1252 (it looks like ")
    assert 'save it from Excel as "CSV UTF-8 (Comma delimited)"' in err
    missing = mf.tmp_path / "nope.csv"
    err = mf.bad("people", "import", str(missing))
    assert err.startswith(f"error: {missing}: cannot read")
    err = mf.bad("people", "import", str(mf.tmp_path), code=2)  # a directory: click refuses
    assert "is a directory" in err
    mf.bad("people", "import", code=2)


def _big_csv(mf: Mailflow, rows: int, bad_lines: tuple[int, ...] = ()) -> str:
    body = []
    for i in range(rows):
        line = i + 2
        manager = f"p{i + 1}@example.com" if i + 1 < rows and i % 10 else ""
        tz = "Nowhere/Zone" if line in bad_lines else ""
        body.append(f"p{i}@example.com,Person {i},Dept {i % 9},{manager},{tz},skill{i % 5}\n")
    return csv_file(mf, "".join(body), "big.csv")


@pytest.fixture
def bar_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each progress bar the import opens (and its length)."""
    calls: list[int] = []
    real = click.progressbar

    def spy(iterable: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(iterable))
        return real(iterable, *args, **kwargs)

    monkeypatch.setattr(mailflow.cli.click, "progressbar", spy)
    return calls


def test_import_a_large_file_with_a_progress_bar(mf: Mailflow, bar_calls: list[int]) -> None:
    path = _big_csv(mf, 1200)
    result = mf.ok("people", "import", path)
    assert result.out == "imported 1200 people\n"
    assert bar_calls == [1200]
    assert len(people_json(mf)) == 1201


def test_import_a_small_file_has_no_progress_bar(mf: Mailflow, bar_calls: list[int]) -> None:
    mf.ok("people", "import", _big_csv(mf, 20))
    assert bar_calls == []


def test_import_a_large_bad_file_prints_only_error_lines(mf: Mailflow) -> None:
    path = _big_csv(mf, 1200, bad_lines=(103, 903))
    err = mf.bad("people", "import", path, lines=3)
    assert err.splitlines()[0].startswith(f"error: {path}:103: timezone: ")


def test_import_a_large_bad_file_reports_both_rows(mf: Mailflow) -> None:
    """The part of the contract that holds today: both rows reported, nothing imported."""
    path = _big_csv(mf, 1200, bad_lines=(103, 903))
    before = mf.core_bytes()
    result = mf("people", "import", path)
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert [e.split(":")[2] for e in errors[:2]] == ["103", "903"]
    assert errors[2].endswith("2 problems; nothing imported")
    assert mf.core_bytes() == before


def test_console_script_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[service]\ndata_dir = "d"\n', encoding="utf-8")
    ok = run_console(
        "--config",
        "c.toml",
        "people",
        "add",
        "ann@example.com",
        "--name",
        "Ann",
        "--department",
        "Sales",
        cwd=tmp_path,
    )
    assert (ok.code, ok.out) == (0, "added ann@example.com\n")
    bad = run_console(
        "--config",
        "c.toml",
        "people",
        "add",
        "ann@example.com",
        "--name",
        "A\r\nB",
        "--department",
        "Sales",
        cwd=tmp_path,
    )
    assert bad.code == 1 and bad.err.count("\n") == 1 and bad.err.startswith("error: name:")
    usage = run_console("--config", "c.toml", "people", "add", cwd=tmp_path)
    assert usage.code == 2 and usage.err.startswith("error: ") and usage.err.count("\n") == 1


def test_import_names_the_bad_line_of_a_manager_defined_in_the_file(mf: Mailflow) -> None:
    path = csv_file(
        mf,
        (
            "lead@example.com,Lead,,,,\n"  # line 2: no department
            "ann@example.com,Ann,Sales,lead@example.com,,\n"  # line 3: manager on line 2
        ),
    )
    err = mf.bad("people", "import", path, lines=3)
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {path}:2: department: ")
    assert lines[1] == f"error: {path}:3: manager lead@example.com is on bad line 2"
