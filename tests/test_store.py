"""Storage: atomic writes under SIGKILL, no lost update across processes, corrupt files,
leftover temp files, snapshot isolation, and one file per period."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clitools import Mailflow
from filelock import FileLock

from mailflow.models import Person, Report
from mailflow.store import AtomicJSONStorage, Store, StoreError

# fork: the children start in milliseconds with mailflow already imported.
FORK = multiprocessing.get_context("fork")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def person(i: int, pad: int = 0) -> Person:
    return Person(
        email=f"p{i}@example.com", name=f"Person {i}" + "x" * pad, department=f"Dept {i % 7}"
    )


def report(i: int, period: str, size: int = 100) -> Report:
    return Report(
        partnership_id=i % 50,
        period=period,
        received_at=T0,
        message_id=f"<{period}.{i}@example.com>",
        sender=f"p{i}@example.com",
        text="did things " * (size // 11),
        setback=False,
    )


# -- atomic writes ---------------------------------------------------------------------------


def _writer_loop(data_dir: str, started: multiprocessing.synchronize.Event) -> None:
    """Write forever (until killed): each transaction adds a person and bumps a counter.

    A blob of random size makes the file shrink as often as it grows: an in-place writer
    killed then leaves old bytes after the new JSON, which this test must catch.
    """
    store = Store(Path(data_dir))
    store.init()
    rng = random.Random(os.getpid())
    i = 0
    while True:
        with store.core_tx() as core:
            n = (core.meta("counter") or 0) + 1
            core.put_person(person(n, pad=300))
            core.set_meta("counter", n)
            core.set_meta("blob", "z" * rng.randrange(0, 400_000))
        with store.week_tx("2026-W10") as week:
            week.add_report(report(n, "2026-W10", size=500))
        i += 1
        if i == 1:
            started.set()


def test_sigkill_at_random_moments_never_leaves_a_torn_file(tmp_path: Path) -> None:
    rng = random.Random(1234)
    deadline = time.monotonic() + 25
    trials = 0
    while trials < 50 and time.monotonic() < deadline:
        started = FORK.Event()
        proc = FORK.Process(target=_writer_loop, args=(str(tmp_path), started))
        proc.start()
        assert started.wait(10), "writer never started"
        time.sleep(rng.uniform(0, 0.03))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        assert proc.exitcode == -signal.SIGKILL
        trials += 1

        store = Store(tmp_path)
        core = store.core()  # raises StoreError if torn
        counter = core.meta("counter")
        # Each transaction is all-or-nothing: the counter and the people agree.
        assert len(core.people()) == counter
        # A kill between the two transactions skips one report, at most once per trial.
        assert counter - trials <= len(store.week("2026-W10").reports()) <= counter
    assert trials >= 20
    leftovers = list((tmp_path / "db").rglob(".*.tmp"))
    Store(tmp_path).init()
    assert not list((tmp_path / "db").rglob(".*.tmp")), leftovers
    assert Store(tmp_path).core().meta("counter") >= trials


# -- no lost update --------------------------------------------------------------------------


def _incrementer(data_dir: str, tag: str, n: int, go: multiprocessing.synchronize.Event) -> None:
    store = Store(Path(data_dir))
    store.init()  # also runs while the other process writes: must not break its writes
    go.wait(10)
    for i in range(n):
        if i % 10 == 0:
            store.init()  # as every CLI command does while `serve` writes
        with store.core_tx() as core:
            core.put_person(Person(email=f"{tag}{i}@example.com", name=tag, department=tag))
            core.set_meta("counter", (core.meta("counter") or 0) + 1)


def test_two_processes_read_modify_write_without_lost_updates(tmp_path: Path) -> None:
    Store(tmp_path).init()
    go = FORK.Event()
    procs = [
        FORK.Process(target=_incrementer, args=(str(tmp_path), tag, 200, go)) for tag in ("a", "b")
    ]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    core = Store(tmp_path).core()
    assert core.meta("counter") == 400
    emails = {p.email for p in core.people()}
    assert emails == {f"{t}{i}@example.com" for t in "ab" for i in range(200)}


def test_a_long_lived_store_sees_other_writers(tmp_path: Path) -> None:
    """The reader cache must not hide a rewrite by another process (same size, quick)."""
    mine = Store(tmp_path)
    mine.init()
    with mine.core_tx() as core:
        core.set_meta("counter", 10)
    go = FORK.Event()
    go.set()
    for round_ in range(20):
        assert mine.core().meta("counter") == 10 + 2 * round_
        child = FORK.Process(target=_bump_twice, args=(str(tmp_path),))
        child.start()
        child.join(10)
        assert child.exitcode == 0
    assert mine.core().meta("counter") == 50


def _bump_twice(data_dir: str) -> None:
    store = Store(Path(data_dir))
    for _ in range(2):
        with store.core_tx() as core:
            core.set_meta("counter", core.meta("counter") + 1)


def test_init_does_not_delete_a_live_writers_temp_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.init()
    tmp = tmp_path / "db" / f".core.json.{os.getpid()}.1.tmp"
    tmp.write_text("{}")
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_lock, args=(str(store.core_path) + ".lock", held, release))
    holder.start()
    try:
        assert held.wait(10)
        Store(tmp_path).init()
        assert tmp.exists(), "init() removed a temp file while its writer held the lock"
    finally:
        release.set()
        holder.join(10)
    Store(tmp_path).init()
    assert not tmp.exists()


def _hold_lock(
    path: str, held: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event
) -> None:
    with FileLock(path):
        held.set()
        release.wait(10)


def test_threads_sharing_one_store_lose_nothing(tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path)
    store.init()

    def work() -> None:
        for _ in range(50):
            with store.core_tx() as core:
                core.set_meta("counter", (core.meta("counter") or 0) + 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.core().meta("counter") == 200


# -- corrupt files ---------------------------------------------------------------------------

CORRUPT = {
    "garbage": b"\x00\xffnot json",
    "torn": b'{"people": {"1": {"email": "a@example.com"',
    "extra-data": b'{"people": {}}{"people": {}}',
    "empty": b"",
    "not-tables": b"[1, 2, 3]",
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_file_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    store = Store(tmp_path)
    store.init()
    store.core_path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        store.core()
    assert str(info.value).startswith(f"{store.core_path}: ")
    with pytest.raises(StoreError), store.core_tx() as core:
        core.set_meta("x", 1)
    assert store.core_path.read_bytes() == content

    week = store.week_path("2026-W10")
    week.write_bytes(content)
    with pytest.raises(StoreError, match=str(week)):
        store.week("2026-W10").reports()


@pytest.mark.parametrize(
    "args",
    [
        ["people", "list"],
        ["people", "add", "zed@example.com", "--name", "Zed", "--department", "Ops"],
        ["partnerships", "list"],
    ],
)
def test_a_corrupt_file_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    mf = Mailflow(tmp_path, capsys)
    mf.add_person("ann@example.com", "Sales")
    mf.core_path.write_bytes(b'{"people": {"1": {"em')
    err = mf.bad(*args)
    assert err.startswith("error: ") and str(mf.core_path) in err
    assert mf.core_path.read_bytes() == b'{"people": {"1": {"em'


# -- temp files, snapshots, rollback ---------------------------------------------------------


def test_init_cleans_leftover_temp_files_only(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.init()
    with store.core_tx() as core:
        core.put_person(person(1))
    leftovers = [
        tmp_path / "db" / ".core.json.4242.139.tmp",
        tmp_path / "db" / "weeks" / ".2026-W10.json.4242.139.tmp",
    ]
    for path in leftovers:
        path.write_text('{"half": ')
    keep = tmp_path / "db" / "notes.tmp"
    keep.write_text("not ours")
    Store(tmp_path).init()
    assert not any(path.exists() for path in leftovers)
    assert keep.exists()
    assert [p.email for p in Store(tmp_path).core().people()] == ["p1@example.com"]
    assert Store(tmp_path).periods() == []


def test_snapshots_are_not_affected_by_later_transactions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.init()
    empty = store.core()  # taken before any table exists
    with store.core_tx() as core:
        core.put_person(person(1))
        core.set_meta("counter", 1)
    snap = store.core()
    # People are read shard by shard, when asked: a shard once read stays as it was read.
    assert snap.person("p1@example.com").name == "Person 1"  # type: ignore[union-attr]
    week_snap = store.week("2026-W10")
    with store.core_tx() as core:
        core.put_person(person(2))
        core.put_person(Person(email="p1@example.com", name="Renamed", department="X"))
        core.set_meta("counter", 2)
    with store.week_tx("2026-W10") as week:
        assert week.add_report(report(1, "2026-W10"))
    assert empty.meta("counter") is None and empty.partnerships() == []
    assert snap.person("p1@example.com").name == "Person 1"  # type: ignore[union-attr]
    assert snap.meta("counter") == 1
    assert week_snap.reports() == []
    assert len(store.core().people()) == 2
    assert store.core().person("p1@example.com").name == "Renamed"
    assert len(store.week("2026-W10").reports()) == 1
    with pytest.raises(RuntimeError):
        snap.put_person(person(3))


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.init()
    with store.core_tx() as core:
        core.put_person(person(1))
    shard = store.shard_path("p1@example.com")
    before = shard.read_bytes()
    with pytest.raises(ValueError), store.core_tx() as core:
        core.put_person(person(2))
        raise ValueError("rule broken")
    assert shard.read_bytes() == before
    assert not store.shard_path("p2@example.com").exists()
    assert [p.email for p in store.core().people()] == ["p1@example.com"]
    assert [p.email for p in Store(tmp_path).core().people()] == ["p1@example.com"]


def test_a_transaction_without_changes_does_not_write(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.init()
    with store.core_tx() as core:
        core.put_person(person(1))
    st = store.shard_path("p1@example.com").stat()
    with store.core_tx() as core:
        assert core.person("p1@example.com") is not None
    after = store.shard_path("p1@example.com").stat()
    assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def test_the_file_is_tinydb_json(tmp_path: Path) -> None:
    from tinydb import TinyDB

    store = Store(tmp_path)
    store.init()
    with store.core_tx() as core:
        core.put_person(person(1))
        core.put_person(person(2))
    found = []
    for shard in sorted(store.people_dir.glob("*.json")):
        with TinyDB(shard, access_mode="r") as db:
            found += [d["email"] for d in db.table("people").all()]
    assert sorted(found) == ["p1@example.com", "p2@example.com"]


# -- one file per period ---------------------------------------------------------------------


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.json")}


def test_weeks_live_in_one_file_per_period(tmp_path: Path) -> None:
    small = Store(tmp_path / "small")
    small.init()
    with small.week_tx("2026-W30") as week:
        week.add_report(report(1, "2026-W30"))
    size_alone = small.week_path("2026-W30").stat().st_size

    big = Store(tmp_path / "big")
    big.init()
    with big.core_tx() as core:
        core.put_person(person(1))
    periods = [f"2025-W{n:02d}" for n in range(1, 21)]
    for period in periods:
        with big.week_tx(period) as week:
            for i in range(200):
                week.add_report(report(i, period, size=1000))
    assert big.periods() == periods
    total_history = sum(big.week_path(p).stat().st_size for p in periods)
    assert total_history > 20 * 200 * 1000

    before = _stamps(big.db_dir)
    with big.week_tx("2026-W30") as week:
        week.add_report(report(1, "2026-W30"))
    after = _stamps(big.db_dir)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {"2026-W30.json"}
    # The write's size, so its cost, does not depend on the history beside it.
    assert big.week_path("2026-W30").stat().st_size == size_alone

    before = after
    with big.week_tx("2025-W05") as week:
        week.add_report(report(999, "2025-W05"))
    with big.core_tx() as core:
        core.put_person(person(2))
    after = _stamps(big.db_dir)
    # A person lives in their shard of the directory: one small file changes.
    assert {name for name in after if before.get(name) != after[name]} == {
        "2025-W05.json",
        big.shard_path("p2@example.com").name,
    }
    assert json.loads(big.shard_path("p2@example.com").read_bytes()).keys() == {"people"}


def test_a_message_is_stored_once_per_period(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.init()
    with store.week_tx("2026-W10") as week:
        assert week.add_report(report(1, "2026-W10"))
        assert not week.add_report(report(1, "2026-W10"))
    assert len(store.week("2026-W10").reports()) == 1
    assert AtomicJSONStorage(store.week_path("2026-W10")).read()["reports"]
