"""The directory's layout (issue 16): people in shards apart from the program, moved there
from an old core.json on first start; changes that span files commit all or nothing.

Real files under tmp_path, the real CLI in-process (`clitools.Mailflow`), a real `Store`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clitools import Mailflow

from mailflow.errors import DiskFullError
from mailflow.models import Partnership, Person
from mailflow.store import Store, shard_name

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def old_layout(data_dir: Path, n: int = 30) -> list[Person]:
    """A data directory as every version before issue 16 wrote it: people in core.json."""
    people = [
        Person(
            f"p{i}@example.com",
            f"P {i}",
            f"D{i % 3}",
            f"p{(i - 1) // 3}@example.com" if i else None,
        )
        for i in range(n)
    ]
    people[7] = Person(
        "p7@example.com", "P 7", "D1", "p2@example.com", bouncing=True, bounce_reason="550 gone"
    )
    pship = Partnership(
        1, "p10@example.com", "p20@example.com", "sql", (), "w", "s", NOW.date(), NOW
    )
    core = {
        "people": {str(i + 1): p.to_doc() for i, p in enumerate(people)},
        "partnerships": {"1": pship.to_doc()},
        "meta": {"1": {"name": "confirmations", "value": 4}},
    }
    (data_dir / "db").mkdir(parents=True)
    (data_dir / "db" / "core.json").write_text(json.dumps(core))
    return people


def test_an_old_data_directory_moves_its_people_into_shards_on_first_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, now=NOW)
    people = old_layout(mf.data_dir)
    # A crash in an earlier attempt left a shard behind, with someone core.json never had.
    stale = mf.data_dir / "db" / "people" / shard_name("p3@example.com")
    stale.parent.mkdir()
    stale.write_text(json.dumps({"people": {"1": Person("ghost@example.com", "G", "X").to_doc()}}))

    listed = json.loads(mf.ok("people", "list", "--json").out)
    assert sorted(p["email"] for p in listed) == sorted(p.email for p in people)
    core = json.loads(mf.core_path.read_text())
    assert "people" not in core  # the commit point of the move: core.json without people
    assert list(core["bouncing"].values()) == [{"email": "p7@example.com", "reason": "550 gone"}]
    assert core["partnerships"]["1"]["member"] == "p10@example.com"
    assert core["meta"]["1"] == {"name": "confirmations", "value": 4}
    shards = sorted((mf.data_dir / "db" / "people").glob("*.json"))
    assert len(shards) > 1
    in_shards = [d for s in shards for d in json.loads(s.read_text())["people"].values()]
    assert sorted(d["email"] for d in in_shards) == sorted(p.email for p in people)
    assert {d["email"]: d for d in in_shards}["p7@example.com"] == people[7].to_doc()

    # Everything reads as before: status (bouncing from the index), the reporting lines.
    status = json.loads(mf.ok("status", "--json").out)
    assert status["bouncing"] == ["p7@example.com"]
    err = mf.bad("people", "update", "p1@example.com", "--manager", "p4@example.com")
    assert "loop" in err
    mf.ok("people", "update", "p7@example.com", "--clear-bouncing")
    assert json.loads(mf.ok("status", "--json").out)["bouncing"] == []
    assert json.loads(mf.core_path.read_text())["bouncing"] == {}


def test_a_move_cut_short_is_done_again_from_the_old_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    people = old_layout(data)
    before = (data / "db" / "core.json").read_bytes()

    class Killed(Exception):
        pass

    store = Store(data)
    original = store._commit

    def killed_before_commit(path: Path, payload: dict) -> None:  # the rename never happens
        raise Killed

    store._commit = killed_before_commit  # type: ignore[method-assign]
    with pytest.raises(Killed):
        store.init()
    assert (data / "db" / "core.json").read_bytes() == before  # still the old layout
    store._commit = original  # type: ignore[method-assign]
    again = Store(data)
    again.init()
    assert sorted(again.core().directory) == sorted(p.email for p in people)


def test_a_change_spanning_files_is_all_or_nothing(tmp_path: Path) -> None:
    from disktools import FaultyDisk

    store = Store(tmp_path / "data", disk=FaultyDisk())
    store.init()
    with store.core_tx() as core:
        core.put_person(Person("a@example.com", "A", "Eng"))
    before = {p: p.read_bytes() for p in store.db_dir.rglob("*.json")}
    disk = store.disk
    disk.full = True  # type: ignore[attr-defined]
    disk.full_under = store.db_dir  # type: ignore[attr-defined]
    with pytest.raises(DiskFullError), store.core_tx() as core:
        for i in range(40):  # forty people: many shards
            core.put_person(Person(f"n{i}@example.com", "N", "Eng"))
    disk.full = False  # type: ignore[attr-defined]
    assert {p: p.read_bytes() for p in store.db_dir.rglob("*.json")} == before
    assert not list(store.db_dir.rglob(".*.staged"))

    # Killed after the journal (the commit point), before the renames: the next reader
    # (another process) finishes the commit before it reads anything.
    store._recover_locked = lambda: None  # type: ignore[method-assign]
    with store.core_tx() as core:
        for i in range(40):
            core.put_person(Person(f"n{i}@example.com", "N", "Eng", bouncing=True))
    assert store.journal_path.exists()
    fresh = Store(tmp_path / "data")
    assert len(fresh.core().directory) == 41
    assert len(fresh.core().bouncing()) == 40
    assert not store.journal_path.exists() and not list(store.db_dir.rglob(".*.staged"))


def test_staged_files_without_a_journal_are_discarded(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.init()
    with store.core_tx() as core:
        core.put_person(Person("a@example.com", "A", "Eng"))
    shard = store.shard_path("a@example.com")
    staged = shard.with_name(f".{shard.name}.staged")
    staged.write_text(json.dumps({"people": {}}))  # written, never committed
    Store(tmp_path / "data").init()
    assert not staged.exists()
    assert Store(tmp_path / "data").core().person("a@example.com") is not None


Indexes = tuple[dict[str, int], dict[str, int], dict[str, list[str]]]


def _indexes(data_dir: Path) -> Indexes:
    """The offered-skills index of core.json, the managers' counts of the shards and who
    offers each skill (kept in the skill's shard)."""
    core = json.loads((data_dir / "db" / "core.json").read_text())
    offered = {d["skill"]: d["count"] for d in core.get("offered", {}).values()}
    managed: dict[str, int] = {}
    offerers: dict[str, list[str]] = {}
    for shard in (data_dir / "db" / "people").glob("*.json"):
        data = json.loads(shard.read_text())
        for d in data.get("managed", {}).values():
            assert shard.name == shard_name(d["email"])  # in the manager's own shard
            managed[d["email"]] = d["count"]
        for d in data.get("offerers", {}).values():
            assert shard.name == shard_name(d["skill"])  # in the skill's own shard
            assert d["key"] == f"{d['email']} {d['skill']}"
            offerers.setdefault(d["skill"], []).append(d["email"])
    return offered, managed, {k: sorted(v) for k, v in offerers.items()}


def _recounted(mf: Mailflow) -> Indexes:
    """The same counts from everyone, as `people list` shows them."""
    offered: dict[str, int] = {}
    managed: dict[str, int] = {}
    offerers: dict[str, list[str]] = {}
    for p in json.loads(mf.ok("people", "list", "--json").out):
        for skill in p["offers"]:
            offered[skill] = offered.get(skill, 0) + 1
            offerers.setdefault(skill, []).append(p["email"])
        if p["manager"]:
            managed[p["manager"]] = managed.get(p["manager"], 0) + 1
    return offered, managed, {k: sorted(v) for k, v in offerers.items()}


def test_the_indexes_of_offers_and_managers_follow_every_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, now=NOW)
    people = old_layout(mf.data_dir, n=12)
    core = json.loads(mf.core_path.read_text())
    core["people"]["4"]["offers"] = ["public speaking", "sql"]  # p3
    mf.core_path.write_text(json.dumps(core))
    del people

    # The migration builds both indexes.
    assert _indexes(mf.data_dir) == ({}, {}, {})  # (not yet moved)
    mf.ok("people", "list")
    assert _indexes(mf.data_dir) == _recounted(mf)
    assert _indexes(mf.data_dir)[0] == {"public speaking": 1, "sql": 1}
    assert _indexes(mf.data_dir)[1]["p0@example.com"] == 3

    # did-you-mean reads the index: a new spelling next to a known one is refused.
    err = mf.bad("people", "add", "n1@example.com", "--name", "N", "--department", "D",
                 "--offers", "Public-Speaking")  # fmt: skip
    assert 'did you mean "public speaking"' in err
    mf.ok("people", "add", "n1@example.com", "--name", "N", "--department", "D",
          "--manager", "p3@example.com", "--offers", "public speaking")  # fmt: skip
    mf.ok("people", "update", "p2@example.com", "--offers", "writing")
    # Her own skill is not a spelling "someone else" offers: she may respell it.
    mf.ok("people", "update", "p2@example.com", "--offers", "Writing Well")
    mf.ok("people", "update", "p4@example.com", "--manager", "p3@example.com")
    assert _indexes(mf.data_dir) == _recounted(mf)
    assert _indexes(mf.data_dir)[0] == {"public speaking": 2, "sql": 1, "writing well": 1}

    # Removal: a manager is refused (her reports named), a leaf goes with her index entries.
    err = mf.bad("people", "remove", "p3@example.com")
    assert "manager of n1@example.com, p10@example.com, p11@example.com, p4@example.com" in err
    mf.ok("people", "remove", "n1@example.com")
    for who in ("p4", "p10", "p11"):
        mf.ok("people", "update", f"{who}@example.com", "--manager", "p1@example.com")
    mf.ok("people", "update", "p3@example.com", "--no-offers")
    offered, managed, _ = _indexes(mf.data_dir)
    assert (offered, managed) == _recounted(mf)[:2]
    assert _indexes(mf.data_dir) == _recounted(mf)
    assert offered == {"writing well": 1} and "p3@example.com" not in managed
    mf.ok("people", "remove", "p3@example.com")
    assert _indexes(mf.data_dir) == _recounted(mf)

    # An import with --update keeps them too.
    csv = tmp_path / "more.csv"
    csv.write_text(
        "email,name,department,manager,offers\n"
        "p5@example.com,P 5,D2,p0@example.com,sql\n"
        "z1@example.com,Z,D9,p5@example.com,writing well;sql\n"
    )
    mf.ok("people", "import", str(csv), "--update")
    offered, managed, _ = _indexes(mf.data_dir)
    assert (offered, managed) == _recounted(mf)[:2]
    assert _indexes(mf.data_dir) == _recounted(mf)
    assert offered == {"writing well": 2, "sql": 2}
