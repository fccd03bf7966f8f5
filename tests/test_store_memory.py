"""The store's memory at directory scale: the cache of parsed shards is bounded in bytes, the
program's people are kept as objects (not their whole shards), and a shard another process
changed is read again, for the people of the program and for anyone else."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

import mailflow.store as store_module
from mailflow.models import Goal, Partnership, Person
from mailflow.store import Store, shard_name

FORK = multiprocessing.get_context("fork")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def person(i: int, name: str = "") -> Person:
    return Person(email=f"p{i}@example.com", name=name or f"Person {i}", department=f"D{i % 7}")


def filled(tmp_path: Path, people: int, pairs: int) -> Store:
    """A store with `people` people and a partnership p(2k) -> p(2k+1) for k < pairs."""
    store = Store(tmp_path)
    store.init()
    with store.core_tx() as core:
        for i in range(people):
            core.put_person(person(i))
        for k in range(pairs):
            core.put_partnership(
                Partnership(
                    id=k + 1, member=f"p{2 * k}@example.com", partner=f"p{2 * k + 1}@example.com",
                    skill="x", goals=(Goal(1, date(2026, 6, 30), "g"),), why="w", saddle="s",
                    start=T0.date(), created_at=T0,
                )
            )  # fmt: skip
    return store


def test_the_cache_of_parsed_shards_stays_within_its_byte_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled(tmp_path, 600, 0)
    largest = max(p.stat().st_size for p in store.people_dir.glob("*.json"))
    monkeypatch.setattr(store_module, "SHARD_CACHE_BYTES", 8 * largest)
    fresh = Store(tmp_path)
    everyone = fresh.people_map()
    # A lookup of everyone (not the program's people: none here) goes through the cache.
    for i in range(600):
        assert everyone[f"p{i}@example.com"].name == f"Person {i}"
    cached = sum(c.stamp[2] for c in fresh._shards.entries.values())
    assert 0 < cached <= 8 * largest
    assert len(fresh._shards.entries) < len(list(store.people_dir.glob("*.json")))
    # The Directory itself kept no parsed shard for those lookups.
    assert everyone._views == {}  # type: ignore[attr-defined]


def test_the_program_people_are_kept_as_objects_one_read_per_shard(tmp_path: Path) -> None:
    filled(tmp_path, 400, 150)  # the program: p0..p299
    fresh = Store(tmp_path)
    reads: list[Path] = []
    real = fresh._load_shard

    def counting(path: Path) -> tuple[tuple[int, int, int] | None, dict]:  # type: ignore[type-arg]
        reads.append(path)
        return real(path)

    fresh._load_shard = counting  # type: ignore[method-assign]
    roster = fresh.roster()
    for p in roster.partnerships.values():
        assert roster.has_both(p)
    shards = {shard_name(f"p{i}@example.com") for i in range(300)}
    assert len(reads) == len(shards)  # each shard read once for all of its program people
    # A later batch (a new Directory) finds them without reading a shard.
    again = fresh.people_map()
    assert all(f"p{i}@example.com" in again for i in range(300))
    assert len(reads) == len(shards)
    # Someone outside the program is looked up, and not kept with the program's people.
    assert again["p350@example.com"].name == "Person 350"
    kept = {e for _, people in fresh._program._shards.values() for e in people}
    assert kept == {f"p{i}@example.com" for i in range(300)}


def _rename(data_dir: str, emails: list[str]) -> None:
    store = Store(Path(data_dir))
    with store.core_tx() as core:
        for email in emails:
            old = core.person(email)
            assert old is not None
            core.put_person(Person(email=email, name="Renamed", department=old.department))


def test_a_shard_changed_by_another_process_is_read_again(tmp_path: Path) -> None:
    store = filled(tmp_path, 50, 10)  # the program: p0..p19
    serve = Store(tmp_path)  # a long-running process: caches warm
    assert serve.people_map()["p3@example.com"].name == "Person 3"
    assert serve.people_map()["p40@example.com"].name == "Person 40"
    child = FORK.Process(
        target=_rename, args=(str(tmp_path), ["p3@example.com", "p40@example.com"])
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    people = serve.people_map()
    assert people["p3@example.com"].name == "Renamed"  # one of the program
    assert people["p40@example.com"].name == "Renamed"  # anyone else
    assert store.people_map()["p4@example.com"].name == "Person 4"


def test_a_person_removed_by_another_process_is_gone(tmp_path: Path) -> None:
    filled(tmp_path, 30, 5)
    serve = Store(tmp_path)
    assert "p1@example.com" in serve.people_map()
    other = Store(tmp_path)
    with other.core_tx() as core:
        assert core.remove_person("p1@example.com")
    assert "p1@example.com" not in serve.people_map()
    assert "p0@example.com" in serve.people_map()


def test_a_rewritten_file_is_byte_for_byte_json_dumps(tmp_path: Path) -> None:
    """The serialised-fragment cache (kept as bytes) writes what json.dumps writes, as the
    tables change under it: documents replaced, added, deleted, tables added and dropped."""
    store = Store(tmp_path)
    store.init()
    path = store.week_path("2026-W10")
    for round_ in range(6):
        with store.week_tx("2026-W10") as w:
            for i in range(round_ * 3):
                w._put("inbound", {"message_id": f"<{i}@x>", "text": f'é€ 😀 "{round_}"'})
            if round_ % 2:
                w._delete("inbound", "<0@x>")
            w._put("weeks", {"key": f"{round_}:2026-W10", "n": round_})
        raw = path.read_bytes()
        assert (
            raw == json.dumps(json.loads(raw), ensure_ascii=False, separators=(",", ":")).encode()
        )
        assert json.loads(raw)["weeks"]["1"]["n"] == 0
