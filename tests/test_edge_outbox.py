"""The outbox when the disk is full, a message is poison, or the sender is killed (issue 12).

- The relay took a message and writing "sent" failed (ENOSPC): the outcome stays in the
  outcome journal, the message is never sent again (not by a later flush, not by another
  process), and the mark is written once there is room.
- A message the relay drops after DATA every time: per-message attempts with backoff, then
  "failed" with the reason; the other nine go at once (before: retried first forever, the
  others waited).
- SIGKILL during a fan-out of `tick`: at most the message in flight is sent twice per kill
  (before: up to a whole group of marks, 200).
- The sender thread of a tick survives any error in the outbox.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from clitools import VENV_BIN
from conftest import now_args
from disktools import FaultyDisk
from smtp_recorder import RecordingSMTPServer
from test_outbox import DOMAIN, NOW, Env, message_ids, relay_config

from mailflow import outbox as outbox_mod
from mailflow.app import build
from mailflow.config import load
from mailflow.models import CONSENT_ACCEPTED, FAILED, QUEUED, SENT, Goal, Partnership, Person
from mailflow.store import Store


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def journal_text(env: Env) -> bytes:
    data = (env.data_dir / "mail" / "out" / outbox_mod.JOURNAL_NAME).read_bytes()
    return data.split(b"\0", 1)[0]


def test_mark_failure_after_250_is_retried_never_resent(env: Env) -> None:
    disk = FaultyDisk()
    env.store.disk = disk
    with RecordingSMTPServer() as relay:
        box = env.outbox(relay_config(relay), mark_every=7)
        keys = env.queue(box, 30)
        disk.full, disk.full_under = True, env.data_dir / "db"  # period files: ENOSPC
        result = box.flush(NOW)
        # Every message went once; none can be marked; the sender did not die.
        assert result.sent == 30 and len(relay.wait_for(30)) == 30
        assert result.unmarked == 30
        assert result.errors and "cannot mark outcomes" in result.errors[0]
        assert "No space left on device" in result.errors[0]
        assert all(env.record(k).status == QUEUED for k in keys)
        assert journal_text(env).count(b"\n") == 30
        # Later flushes, and another process (a fresh Outbox), send nothing again.
        for minutes in (1, 60, 180):
            again = box.flush(NOW + timedelta(minutes=minutes))
            assert again.attempted == 0 and again.unmarked == 30 and again.errors
        fresh = env.outbox(relay_config(relay))
        assert fresh.flush(NOW + timedelta(hours=5)).attempted == 0
        assert len(relay.messages) == 30
        # Room again: the marks are written, the journal is emptied, still 30 messages.
        disk.full = False
        healed = fresh.flush(NOW + timedelta(hours=6))
        assert (healed.attempted, healed.unmarked, healed.errors) == (0, 0, [])
        assert all(env.record(k).status == SENT for k in keys)
        assert all(env.record(k).sent_at == NOW for k in keys)
        assert journal_text(env) == b""
        ids = message_ids(relay)
        assert len(ids) == len(set(ids)) == 30


def test_nothing_is_sent_without_room_to_write_its_outcome_down(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FaultyDisk()
    env.store.disk = disk
    # Room for the reserve plus about three outcomes (~105 bytes each).
    monkeypatch.setattr(outbox_mod, "JOURNAL_BYTES", outbox_mod.JOURNAL_ENTRY_ROOM + 330)
    with RecordingSMTPServer() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 6)
        disk.full, disk.full_under = True, env.data_dir / "db"
        result = box.flush(NOW)
        # The journal took what it could; then the flush stopped rather than send what
        # it could not write down.
        sent = len(relay.messages)
        assert 3 <= sent < 6 and result.sent == sent and result.unmarked == sent
        assert any("outcome journal" in e and "is full" in e for e in result.errors)
        assert box.flush(NOW + timedelta(hours=1)).attempted == 0
        assert len(relay.messages) == sent
        disk.full = False
        assert box.flush(NOW + timedelta(hours=2)).sent == 6 - sent
        assert all(env.record(k).status == SENT for k in keys)
        assert len(set(message_ids(relay))) == len(relay.messages) == 6


def test_a_poison_message_fails_after_its_attempts_and_never_holds_up_the_rest(
    env: Env,
) -> None:
    poison = "member0@example.com"
    with RecordingSMTPServer() as relay:
        relay.drop_data_for.add(poison)
        box = env.outbox(relay_config(relay), max_attempts=3)
        keys = env.queue(box, 10)  # the poison one is the oldest: first in line
        result = box.flush(NOW)
        assert (result.sent, result.deferred, result.failed) == (9, 1, 0)
        first = env.record(keys[0])
        assert first.status == QUEUED and first.attempts == 1
        assert first.next_attempt_at == NOW + timedelta(seconds=60)
        assert "connection lost" in first.error
        assert all(env.record(k).status == SENT for k in keys[1:])
        # Alone in the next flushes it is still its own fault (the relay took MAIL and
        # RCPT, then dropped it): attempts count, with backoff, then it fails.
        assert box.flush(NOW + timedelta(seconds=59)).attempted == 0
        assert box.flush(NOW + timedelta(seconds=60)).deferred == 1
        assert env.record(keys[0]).next_attempt_at == NOW + timedelta(seconds=60 + 120)
        last = box.flush(NOW + timedelta(seconds=180))
        assert last.failed == 1 and last.failures[0][0] == keys[0]
        gone = env.record(keys[0])
        assert gone.status == FAILED and gone.error.startswith("gave up after 3 attempts:")
        assert relay.dropped == 3
        assert box.flush(NOW + timedelta(days=1)).attempted == 0
        assert sorted(m.rcpt_tos[0] for m in relay.messages) == sorted(
            f"member{i}@example.com" for i in range(1, 10)
        )


def test_a_relay_that_is_down_never_makes_mail_fail(env: Env) -> None:
    with RecordingSMTPServer() as relay:
        box = env.outbox(relay_config(relay), max_attempts=2)
        keys = env.queue(box, 3)
        relay.down()
        at = NOW
        for _ in range(6):  # six outages, each at the message's next attempt
            assert box.flush(at).deferred == 3
            item = env.record(keys[0])
            assert item.status == QUEUED and item.attempts == 0
            at = item.next_attempt_at
        assert at - NOW >= timedelta(minutes=30)  # waits grow (doubling, capped at 1 h)
        relay.up()
        assert box.flush(at).sent == 3


# -- SIGKILL during a fan-out ------------------------------------------------------------------

FANOUT_AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # a Monday: the default check-in moment


def fanout_data(tmp_path: Path, relay: RecordingSMTPServer, n: int) -> Path:
    """A config and a data dir with n accepted partnerships, all due at FANOUT_AT."""
    config = tmp_path / "mailflow.toml"
    config.write_text(
        f'[service]\ndomain = "{DOMAIN}"\ndata_dir = "data"\n'
        f'[relay]\nhost = "127.0.0.1"\nport = {relay.port}\ntimeout_seconds = 10\n'
    )
    store = Store(tmp_path / "data")
    store.init()
    made = FANOUT_AT - timedelta(days=3)
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
                    start=FANOUT_AT.date(),
                    created_at=made,
                    consent=CONSENT_ACCEPTED,
                    introduced_at=made,
                )
            )
    return config


def tick(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(VENV_BIN / "mailflow"), *now_args(FANOUT_AT), "--config", str(config), "tick"],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def kill_during_fanout(tmp_path: Path, n: int, kill_at: list[int]) -> tuple[int, int]:
    """Tick a fan-out of n check-ins, SIGKILLed when the relay has the given numbers of
    messages, then ticks to the end; (messages the relay got, distinct recipients)."""
    with RecordingSMTPServer() as relay:
        config = fanout_data(tmp_path, relay, n)
        for count in kill_at:
            proc = tick(config)
            try:
                relay.wait_for(count, timeout=90)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
        for _ in range(3):  # restarts until everything is out (normally one)
            proc = tick(config)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
            if len({m.rcpt_tos for m in relay.messages}) >= n:
                break
        got = Counter(m.rcpt_tos[0] for m in relay.messages)
        assert set(got) == {f"m{i}@example.com" for i in range(n)}
        return sum(got.values()), len(got)


KILLS = [120, 330, 520]


def test_sigkill_during_fanout_resends_at_most_the_message_in_flight(tmp_path: Path) -> None:
    n = 640  # more than a commit chunk (500) and several mark groups (200)
    total, distinct = kill_during_fanout(tmp_path, n, KILLS)
    duplicates = total - distinct
    # One message can be between the relay's 250 and our journal write at each kill.
    assert duplicates <= len(KILLS), f"{duplicates} duplicates after {len(KILLS)} kills"


# -- the sender thread of a tick survives -----------------------------------------------------


def test_the_sender_thread_survives_and_later_ticks_resend_nothing(tmp_path: Path) -> None:
    n = 8
    with RecordingSMTPServer() as relay:
        config = fanout_data(tmp_path, relay, n)
        service = build(load(config))
        disk = FaultyDisk()
        service.store.disk = disk
        # The disk fills the moment the relay has taken the first check-in.
        relay.on_message = lambda _m: setattr(disk, "full", True)
        disk.full_under = service.data_dir / "db"
        for minutes in range(0, 25, 5):
            service.tick(FANOUT_AT + timedelta(minutes=minutes))
        got = Counter(m.rcpt_tos[0] for m in relay.messages)
        assert len(got) == n and set(got.values()) == {1}, got
        assert disk.refused > 0
        relay.on_message = None
        disk.full = False
        service.tick(FANOUT_AT + timedelta(minutes=30))
        assert len(relay.messages) == n
        week = service.store.week("2026-W49")
        assert [o.status for o in week.outgoings()] == [SENT] * n


def test_tick_reports_unwritable_marks_as_errors(tmp_path: Path) -> None:
    with RecordingSMTPServer() as relay:
        config = fanout_data(tmp_path, relay, 2)
        service = build(load(config))
        disk = FaultyDisk()
        service.store.disk = disk
        relay.on_message = lambda _m: setattr(disk, "full", True)
        disk.full_under = service.data_dir / "db"
        out = service.tick(FANOUT_AT)
        assert any(line.startswith("error:") and "No space left" in line for line in out.lines), (
            out.lines
        )


def test_a_kill_test_data_dir_is_real(tmp_path: Path) -> None:
    # The fan-out fixture itself: a tick without kills sends each check-in once.
    with RecordingSMTPServer() as relay:
        config = fanout_data(tmp_path, relay, 3)
        proc = tick(config)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert b"queued checkin" in out
        assert sorted(m.rcpt_tos[0] for m in relay.messages) == [
            f"m{i}@example.com" for i in range(3)
        ]
        assert os.path.exists(tmp_path / "data" / "mail" / "out" / outbox_mod.JOURNAL_NAME)
