"""Broken and stray files give one clear error, and only where they are (issue 12).

Before: a stray `db/weeks/2030-W02 (copy).json` stopped all delivery (the outbox refused
its name and raised); a `.bak.json` copy was read as a week of its own and sent its queued
check-ins a second time; one truncated past week file stopped every check-in of every
partnership (each check-in's history strip reads it) while `tick` exited 0; hand-edited
records of the wrong shape gave `internal error: KeyError`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from clitools import VENV_BIN, Mailflow
from conftest import now_args
from smtp_recorder import RecordingSMTPServer
from test_outbox import NOW, PERIOD, Env, message_ids, relay_config

from mailflow.app import build
from mailflow.config import load
from mailflow.errors import CorruptFileError
from mailflow.models import CONSENT_ACCEPTED, Goal, Partnership, Person
from mailflow.store import Store, shard_name

# -- stray files ---------------------------------------------------------------------------------


def test_only_files_named_like_a_week_are_weeks(tmp_path: Path) -> None:
    env = Env(tmp_path)
    with RecordingSMTPServer() as relay:
        box = env.outbox(relay_config(relay))
        env.queue(box, 3)
        weeks = env.data_dir / "db" / "weeks"
        real = weeks / f"{PERIOD}.json"
        for stray in (f"{PERIOD} (copy).json", f"{PERIOD}.bak.json", "2030-W02 (copy).json"):
            shutil.copy(real, weeks / stray)
        assert env.store.periods() == [PERIOD]
        result = box.flush(NOW)
        assert (result.sent, result.errors) == (3, [])
        ids = message_ids(relay)
        assert len(ids) == len(set(ids)) == 3  # the copies sent nothing a second time
        problems = env.store.take_problems()
        assert sorted(p.path.name for p in problems) == sorted(
            [f"{PERIOD} (copy).json", f"{PERIOD}.bak.json", "2030-W02 (copy).json"]
        )
        assert all(not p.error and "not a period file" in p.message for p in problems)


# -- a truncated week ----------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_week_is_an_error_naming_it_and_only_that_week_stops(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    with RecordingSMTPServer() as relay:
        box = env.outbox(relay_config(relay))
        for n, week in enumerate(("2026-W46", "2026-W47", "2026-W48")):
            env.queue(box, 2, period=week, start=10 * n)
        broken = env.store.week_path("2026-W47")
        truncate(broken)
        with pytest.raises(CorruptFileError) as caught:
            env.store.week("2026-W47")
        assert caught.value.path == broken and str(caught.value).startswith(f"{broken}: ")
        assert env.store.period_summary("2026-W47") == {}  # history shows nothing there
        assert len(env.store.week("2026-W48").outgoings()) == 2  # the others read fine
        result = box.flush(NOW)
        # The two other weeks' mail goes; the broken week's waits, named in the errors.
        assert result.sent == 4
        assert len(result.errors) == 1 and result.errors[0].startswith(f"{broken}: ")
        problems = env.store.take_problems()
        assert [(p.path, p.error) for p in problems] == [(broken, True)]
        assert broken.read_bytes()  # never replaced by an empty file


CHECKIN = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # Monday of 2026-W49


def history_data(tmp_path: Path, relay: RecordingSMTPServer, n: int) -> Path:
    """n partnerships that started four weeks ago (their check-ins carry a history strip
    over 2026-W45..W49), with a week file for each past week."""
    config = tmp_path / "mailflow.toml"
    config.write_text(
        '[service]\ndomain = "hot.example.com"\ndata_dir = "data"\n'
        f'[relay]\nhost = "127.0.0.1"\nport = {relay.port}\ntimeout_seconds = 10\n'
    )
    store = Store(tmp_path / "data")
    store.init()
    made = CHECKIN - timedelta(weeks=5)
    with store.core_tx() as core:
        for i in range(n):
            core.put_person(Person(f"m{i}@example.com", f"M{i}", f"Team{i}"))
            core.put_person(Person(f"p{i}@example.com", f"P{i}", f"Other{i}"))
            core.put_partnership(
                Partnership(
                    id=i + 1,
                    member=f"m{i}@example.com",
                    partner=f"p{i}@example.com",
                    skill="sql",
                    goals=(Goal(1, date(2027, 6, 30), "Ship the report"),),
                    why="w",
                    saddle="s",
                    start=(CHECKIN - timedelta(weeks=4)).date(),
                    created_at=made,
                    consent=CONSENT_ACCEPTED,
                    introduced_at=made,
                )
            )
    service = build(load(config))
    for weeks_ago in (4, 3, 2, 1):  # the past check-ins, all delivered
        service.tick(CHECKIN - timedelta(weeks=weeks_ago))
    assert len(relay.messages) == 4 * n
    relay.clear()
    return config


def test_a_truncated_past_week_stops_no_check_in(tmp_path: Path) -> None:
    n = 4
    with RecordingSMTPServer() as relay:
        config = history_data(tmp_path, relay, n)
        service = build(load(config))
        broken = service.store.week_path("2026-W47")  # two weeks ago: in every history strip
        truncate(broken)
        out = service.tick(CHECKIN)
        assert sorted(m.rcpt_tos[0] for m in relay.messages) == [
            f"m{i}@example.com" for i in range(n)
        ]
        # The tick names the file and says it is an error (the store's reading, and the
        # outbox's: that week's queued mail waits).
        assert out.errors and all(
            line.startswith(f"error: {broken}: database file is corrupt: ") for line in out.errors
        ), "\n".join(out.errors)


def test_tick_names_a_truncated_week_and_exits_non_zero(tmp_path: Path) -> None:
    with RecordingSMTPServer() as relay:
        config = history_data(tmp_path, relay, 2)
        broken = tmp_path / "data" / "db" / "weeks" / "2026-W47.json"
        truncate(broken)
        result = subprocess.run(
            [str(VENV_BIN / "mailflow"), *now_args(CHECKIN), "--config", str(config), "tick"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert len(relay.messages) == 2  # the check-ins went
        assert result.returncode == 1
        assert f"error: {broken}: database file is corrupt" in result.stderr


def test_a_truncated_previous_week_stops_no_check_in_of_this_week(tmp_path: Path) -> None:
    with RecordingSMTPServer() as relay:
        config = history_data(tmp_path, relay, 3)
        service = build(load(config))
        truncate(service.store.week_path("2026-W48"))  # last week: read by every due job
        service.tick(CHECKIN)
        assert len(relay.messages) == 3


# -- records of the wrong shape ------------------------------------------------------------------


def put_raw(path: Path, table: str, doc_id: str, change: dict, drop: str) -> None:
    data = json.loads(path.read_text())
    doc = data[table][doc_id]
    doc.update(change)
    doc.pop(drop, None)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "table, accessor, drop, expected",
    [
        ("people", "people", "name", 'person m0@example.com: missing "name"'),
        ("partnerships", "partnerships", "member", 'partnership 1: missing "member"'),
        ("partnerships", "partnerships", "goals", 'partnership 1: missing "goals"'),
        ("partnerships", "partnerships", "created_at", 'partnership 1: missing "created_at"'),
        ("weeks", "weeks", "partnership_id", 'week 1:2026-W48: missing "partnership_id"'),
        ("outgoing", "outgoings", "to", 'outgoing checkin:1:2026-W48: missing "to"'),
        ("reports", "reports", "sender", 'report <r1@example.com>: missing "sender"'),
        ("inbound", "inbound", "kind", 'inbound <b1@example.com>: missing "kind"'),
    ],
)
def test_a_record_of_the_wrong_shape_is_an_error_naming_file_and_record(
    tmp_path: Path, table: str, accessor: str, drop: str, expected: str
) -> None:
    from mailflow.models import Inbound, Outgoing, Report, Week

    store = Store(tmp_path / "data")
    store.init()
    at = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    with store.core_tx() as core:
        core.put_person(Person("m0@example.com", "M0", "Eng"))
        core.put_partnership(
            Partnership(1, "m0@example.com", "p@example.com", "sql", (), "w", "s", at.date(), at)
        )
    with store.week_tx("2026-W48") as week:
        week.put_week(Week(1, "2026-W48", checkin_at=at))
        week.put_outgoing(Outgoing("checkin:1:2026-W48", "checkin", "m0@x.org", "<m>", "p", at))
        week.add_report(Report(1, "2026-W48", at, "<r1@example.com>", "m0@x.org", "t", False))
        week.add_inbound(Inbound("<b1@example.com>", at, "bounce", ""))
    core_table = table in ("people", "partnerships")
    path = store.core_path if core_table else store.week_path("2026-W48")
    if table == "people":  # the directory lives in shards apart from the program
        path = store.shard_path("m0@example.com")
    put_raw(path, table, "1", {}, drop)
    view = store.core() if core_table else store.week("2026-W48")
    with pytest.raises(CorruptFileError) as caught:
        getattr(view, accessor)()
    assert str(caught.value) == f"{path}: {expected}"


def test_wrong_shapes_through_the_cli_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, now=datetime(2026, 11, 20, 9, 0, tzinfo=UTC))
    mf.add_person("ada@example.com", "Eng")
    mf.add_person("grace@example.com", "Sales")
    for _ in range(3):
        mf.ok(
            "partnerships", "add", "--member", "ada@example.com", "--partner",
            "grace@example.com", "--skill", f"s{_}", "--goal", "2027-01-01 Talk",
            "--why", "w", "--saddle", "s", "--accepted",
        )  # fmt: skip
    put_raw(mf.core_path, "partnerships", "3", {}, "member")
    for args in (("partnerships", "list"), ("partnerships", "show", "3"), ("status",)):
        err = mf.bad(*args)
        assert err == f'error: {mf.core_path}: partnership 3: missing "member"\n', args
    put_raw(mf.core_path, "partnerships", "3", {"member": "ada@example.com", "goals": 7}, "")
    err = mf.bad("partnerships", "list")
    assert err.startswith(f"error: {mf.core_path}: partnership 3: wrong value (")
    shard = mf.data_dir / "db" / "people" / shard_name("ada@example.com")
    put_raw(shard, "people", "1", {"offers": None}, "name")
    assert mf.bad("people", "list") == (f'error: {shard}: person ada@example.com: missing "name"\n')


# -- typed errors for the service layer ------------------------------------------------------------


def test_store_errors_are_typed_and_say_whether_they_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from disktools import FaultyDisk
    from filelock import FileLock

    from mailflow import store as store_mod
    from mailflow.errors import DiskFullError, StoreLockedError, is_transient

    store = Store(tmp_path / "data", disk=FaultyDisk())
    store.init()
    store.disk.full = True  # type: ignore[attr-defined]
    with pytest.raises(DiskFullError) as full, store.core_tx() as core:
        core.put_person(Person("a@example.com", "A", "Eng"))
    shard = store.shard_path("a@example.com")
    assert str(full.value).startswith(f"{shard}: cannot write database: No space")
    assert is_transient(full.value) and not shard.exists()
    store.disk.full = False  # type: ignore[attr-defined]
    monkeypatch.setattr(store_mod, "LOCK_TIMEOUT_SECONDS", 0.1)
    other = FileLock(str(store.core_path) + ".lock", thread_local=False)  # as another process
    with other, pytest.raises(StoreLockedError) as locked, store.core_tx():
        pass
    assert is_transient(locked.value)
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(CorruptFileError(store.core_path, "database file is corrupt"))
    assert not is_transient(ValueError("x")) and not is_transient(OSError(errno.EACCES, "no"))
