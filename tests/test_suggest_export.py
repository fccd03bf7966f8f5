"""Partner suggestions (eligibility, ordering) and the progress export (CSV, JSON, --since)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from mailflow.export import EXPORT_FIELDS, export_rows, write_csv, write_json
from mailflow.models import ACTIVE, ENDED, PAUSED, Goal, Partnership, Person, Report
from mailflow.people import DomainError
from mailflow.store import Store
from mailflow.suggest import Suggestion, suggest_partners

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def person(
    email: str, dept: str, manager: str | None = None, offers: tuple[str, ...] = ()
) -> Person:
    return Person(
        email=email, name=email.split("@")[0], department=dept, manager=manager, offers=offers
    )


def pship(
    pid: int, member: str, partner: str, status: str = ACTIVE, skill: str = "x"
) -> Partnership:
    return Partnership(
        id=pid,
        member=member,
        partner=partner,
        skill=skill,
        goals=(Goal(1, date(2026, 6, 1), "goal"),),
        why="why",
        saddle="saddle",
        start=date(2026, 3, 2),
        created_at=NOW,
        status=status,
    )


def directory(*people: Person) -> dict[str, Person]:
    return {p.email: p for p in people}


# -- suggestions ------------------------------------------------------------------------------


def emails(found: list[Suggestion]) -> list[str]:
    return [s.person.email for s in found]


def test_same_department_and_non_offerers_are_excluded() -> None:
    people = directory(
        person("m@x.org", "Sales"),
        person("same@x.org", "sales", offers=("negotiation",)),  # department compared casefolded
        person("other@x.org", "Legal", offers=("negotiation",)),
        person("nooffer@x.org", "Legal", offers=("golf",)),
    )
    assert emails(suggest_partners("m@x.org", "Negotiation", people, [])) == ["other@x.org"]


def test_the_member_herself_is_never_suggested() -> None:
    people = directory(person("m@x.org", "Sales", offers=("negotiation",)))
    assert suggest_partners("m@x.org", "negotiation", people, []) == []


def test_manager_chain_at_depth_two_excluded_in_both_directions() -> None:
    # boss <- mid <- m <- report1 <- report2; everyone in a different department.
    people = directory(
        person("boss@x.org", "Board", offers=("sql",)),
        person("mid@x.org", "Ops", manager="boss@x.org"),
        person("m@x.org", "Sales", manager="mid@x.org"),
        person("report1@x.org", "Support", manager="m@x.org"),
        person("report2@x.org", "Finance", manager="report1@x.org", offers=("sql",)),
        person("stranger@x.org", "Legal", offers=("sql",)),
    )
    assert emails(suggest_partners("m@x.org", "sql", people, [])) == ["stranger@x.org"]


def test_already_partnering_excluded_either_direction_but_ended_does_not_count() -> None:
    people = directory(
        person("m@x.org", "Sales"),
        person("a@x.org", "A", offers=("sql",)),  # partners m (paused)
        person("b@x.org", "B", offers=("sql",)),  # m partners b (other skill)
        person("c@x.org", "C", offers=("sql",)),  # partnered m once, ended
    )
    found = suggest_partners(
        "m@x.org",
        "sql",
        people,
        [
            pship(1, "m@x.org", "a@x.org", PAUSED),
            pship(2, "b@x.org", "m@x.org", skill="golf"),
            pship(3, "m@x.org", "c@x.org", ENDED),
        ],
    )
    assert emails(found) == ["c@x.org"]
    assert found[0].active_partnerships == 0  # the ended one is not load


def test_ordered_by_active_load_then_email() -> None:
    people = directory(
        person("m@x.org", "Sales"),
        person("busy@x.org", "A", offers=("sql",)),
        person("zed@x.org", "B", offers=("sql",)),
        person("amy@x.org", "C", offers=("sql",)),
        person("o1@x.org", "D"),
        person("o2@x.org", "E"),
    )
    load = [
        pship(1, "o1@x.org", "busy@x.org"),
        pship(2, "o2@x.org", "busy@x.org", PAUSED),  # paused still counts as load
        pship(3, "o1@x.org", "zed@x.org"),
        pship(4, "o2@x.org", "amy@x.org", ENDED),  # ended does not
    ]
    found = suggest_partners("m@x.org", "  SQL ", people, load)
    assert [(s.person.email, s.active_partnerships) for s in found] == [
        ("amy@x.org", 0),
        ("zed@x.org", 1),
        ("busy@x.org", 2),
    ]


def test_unknown_member_and_bad_skill_are_domain_errors() -> None:
    people = directory(person("m@x.org", "Sales"))
    with pytest.raises(DomainError, match=r"^member: no such person ghost@x\.org"):
        suggest_partners("ghost@x.org", "sql", people, [])
    with pytest.raises(DomainError, match="^skill:"):
        suggest_partners("m@x.org", "a,b", people, [])


# -- export -----------------------------------------------------------------------------------


def report(pid: int, period: str, at: datetime, text: str = "did it", **kw: object) -> Report:
    return Report(
        partnership_id=pid,
        period=period,
        received_at=at,
        message_id=f"<{pid}.{at.timestamp():.0f}@x.org>",
        sender="m@x.org",
        text=text,
        setback=bool(kw.pop("setback", False)),
        **kw,  # type: ignore[arg-type]
    )


PSHIPS = {1: pship(1, "m@x.org", "p@x.org", skill="public speaking")}

TRICKY = 'Ran 5 km, then "rested"; a, b\nnext line\r\nÜbung 日本語 ✓'


def test_rows_oldest_first_with_partnership_fields() -> None:
    late = report(1, "2026-W11", datetime(2026, 3, 10, 8, tzinfo=UTC), "late")
    early = report(
        1,
        "2026-W10",
        datetime(2026, 3, 3, 8, tzinfo=UTC),
        "early",
        setback=True,
        setback_text="slipped",
        done="a bit",
        next="more",
    )
    rows = export_rows(PSHIPS, [late, early], None)
    assert [r["text"] for r in rows] == ["early", "late"]
    assert tuple(rows[0]) == EXPORT_FIELDS
    assert rows[0] == {
        "partnership": 1,
        "member": "m@x.org",
        "partner": "p@x.org",
        "skill": "public speaking",
        "period": "2026-W10",
        "received_at": "2026-03-03T08:00:00+00:00",
        "setback": True,
        "done": "a bit",
        "setback_text": "slipped",
        "next": "more",
        "text": "early",
        "message_id": early.message_id,
    }


def test_since_filters_on_the_utc_received_date() -> None:
    # 23:30 at UTC-5 on the 2nd is already the 3rd in UTC: included by --since 2026-03-03.
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    reports = [
        report(1, "2026-W10", datetime(2026, 3, 2, 23, 59, tzinfo=UTC), "before"),
        report(1, "2026-W10", datetime(2026, 3, 2, 19, 30, tzinfo=ny), "utc-next-day"),
        report(1, "2026-W10", datetime(2026, 3, 3, 0, 0, tzinfo=UTC), "on the day"),
    ]
    rows = export_rows(PSHIPS, reports, date(2026, 3, 3))
    assert [r["text"] for r in rows] == ["on the day", "utc-next-day"]
    assert rows[1]["received_at"] == "2026-03-03T00:30:00+00:00"


def test_csv_round_trips_tricky_text_and_neutralises_formulas() -> None:
    reports = [
        report(
            1,
            "2026-W10",
            datetime(2026, 3, 3, 8, tzinfo=UTC),
            TRICKY,
            setback=True,
            setback_text='=HYPERLINK("http://evil","x")',
            done="+1 push-up",
            next="@SUM(A1)",
        ),
        report(1, "2026-W10", datetime(2026, 3, 4, 8, tzinfo=UTC), "-2+3", next=""),
    ]
    rows = export_rows(PSHIPS, reports, None)
    out = io.StringIO(newline="")
    write_csv(rows, out)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert len(parsed) == 2
    assert tuple(parsed[0]) == EXPORT_FIELDS
    first = parsed[0]
    assert first["text"] == TRICKY  # commas, quotes, CRLF/LF and unicode survive one cell
    assert first["setback"] == "true" and parsed[1]["setback"] == "false"
    assert first["partnership"] == "1"
    assert first["setback_text"] == '\'=HYPERLINK("http://evil","x")'
    assert first["done"] == "'+1 push-up"
    assert first["next"] == "'@SUM(A1)"
    assert parsed[1]["text"] == "'-2+3"
    assert parsed[1]["next"] == ""
    assert first["message_id"].startswith("<")  # untouched


def test_csv_header_only_when_empty() -> None:
    out = io.StringIO(newline="")
    write_csv([], out)
    assert out.getvalue() == ",".join(EXPORT_FIELDS) + "\r\n"


def test_json_parses_and_keeps_exact_text() -> None:
    reports = [report(1, "2026-W10", datetime(2026, 3, 3, 8, tzinfo=UTC), "=" + TRICKY)]
    out = io.StringIO()
    write_json(export_rows(PSHIPS, reports, None), out)
    assert "日本語" in out.getvalue()  # ensure_ascii=False
    data = json.loads(out.getvalue())
    assert data[0]["text"] == "=" + TRICKY  # no formula prefix: JSON is not opened as a sheet
    assert data[0]["setback"] is False
    assert list(data[0]) == list(EXPORT_FIELDS)


# -- Store.reports over a real store -----------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    s.init()
    return s


def put(store: Store, *reports: Report) -> None:
    for r in reports:
        with store.week_tx(r.period) as week:
            assert week.add_report(r)


def test_store_reports_reads_every_period_file(store: Store) -> None:
    a = report(1, "2025-W52", datetime(2025, 12, 23, 8, tzinfo=UTC), "a")
    b = report(1, "2026-W01", datetime(2025, 12, 30, 8, tzinfo=UTC), "b")
    c = report(2, "2026-W01", datetime(2025, 12, 31, 8, tzinfo=UTC), "c")
    put(store, c, a, b)
    assert sorted(r.text for r in store.reports()) == ["a", "b", "c"]
    rows = export_rows(PSHIPS, store.reports(), None)
    assert [r["text"] for r in rows] == ["a", "b", "c"]
    assert rows[2]["partner"] == "" and rows[2]["member"] == "m@x.org"  # unknown partnership


def test_store_reports_skips_old_period_files_but_keeps_a_margin(store: Store) -> None:
    since = date(2026, 3, 9)  # a Monday, ISO week 2026-W11
    put(
        store,
        report(1, "2026-W08", datetime(2026, 2, 17, 8, tzinfo=UTC), "too old"),
        # Sunday-evening check-in, member at UTC-10: received Monday 00:30 UTC is still
        # before Sunday's local check-in, so it is stored two ISO weeks before `since`.
        report(1, "2026-W09", datetime(2026, 3, 9, 0, 30, tzinfo=UTC), "late-zone"),
        report(1, "2026-W10", datetime(2026, 3, 6, 8, tzinfo=UTC), "before since"),
        report(1, "2026-W11", datetime(2026, 3, 10, 8, tzinfo=UTC), "in"),
    )
    # An old file that is not valid JSON proves the skipped file is never even read.
    (store.db_dir / "weeks" / "2026-W07.json").write_text("{broken")
    seen = sorted(r.text for r in store.reports(since=since))
    assert seen == ["before since", "in", "late-zone"]
    rows = export_rows(PSHIPS, store.reports(since=since), since)
    assert [r["text"] for r in rows] == ["late-zone", "in"]


def test_store_reports_on_an_empty_store(store: Store) -> None:
    assert list(store.reports(since=date(2026, 1, 1))) == []
