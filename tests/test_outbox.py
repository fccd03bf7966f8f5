"""The outbox against real TinyDB files (via Store) and a real SMTP relay on loopback.

Every wait is bounded: the relay's wait_for has a timeout, flush itself uses the relay's
30 s socket timeout at most, and nothing here loops on the wall clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from filelock import FileLock
from smtp_recorder import RecordingSMTPServer

from mailflow import outbox as outbox_mod
from mailflow.config import RelayConfig
from mailflow.models import FAILED, QUEUED, SENT, Outgoing
from mailflow.outbox import Outbox, backoff, make_message_id, safe_name
from mailflow.store import Store

DOMAIN = "mf.test"
BOUNCE = f"bounces@{DOMAIN}"
PERIOD = "2026-W48"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def make_msg(key: str, to: str, body: str = "Your weekly check-in.") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"mailflow@{DOMAIN}"
    msg["To"] = to
    msg["Subject"] = f"Check-in {key}"
    msg["Message-ID"] = make_message_id(key, DOMAIN)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    return msg


class Env:
    """A data dir with a Store, and helpers to queue mail the way the scheduler will."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.store = Store(self.data_dir)
        self.store.init()

    def outbox(
        self, relay: RelayConfig | None = None, password: str | None = None, **kwargs: object
    ) -> Outbox:
        box = Outbox(self.store, relay or RelayConfig(), password, BOUNCE, self.data_dir, **kwargs)  # type: ignore[arg-type]
        box.init()
        return box

    def queue(
        self,
        box: Outbox,
        n: int,
        *,
        period: str = PERIOD,
        start: int = 0,
        to: str = "member{i}@example.com",
    ) -> list[str]:
        keys = []
        for i in range(start, start + n):
            key = f"checkin:{i}:{period}"
            addr = to.format(i=i)
            path = box.write_message(key, period, make_msg(key, addr))
            with self.store.week_tx(period) as week:
                week.put_outgoing(
                    Outgoing(
                        key=key,
                        kind="checkin",
                        to=addr,
                        message_id=make_message_id(key, DOMAIN),
                        path=path,
                        created_at=NOW + timedelta(microseconds=i),
                        partnership_id=i,
                        period=period,
                    )
                )
            keys.append(key)
        return keys

    def record(self, key: str, period: str = PERIOD) -> Outgoing:
        item = self.store.week(period).outgoing(key)
        assert item is not None
        return item


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@contextmanager
def recorder(**kwargs: object) -> Iterator[RecordingSMTPServer]:
    with RecordingSMTPServer(**kwargs) as relay:  # type: ignore[arg-type]
        yield relay


def relay_config(relay: RecordingSMTPServer, **kwargs: object) -> RelayConfig:
    return RelayConfig(host=relay.host, port=relay.port, timeout_seconds=5, **kwargs)  # type: ignore[arg-type]


def message_ids(relay: RecordingSMTPServer) -> list[str]:
    return [str(m.message["Message-ID"]) for m in relay.messages]


# -- helpers ---------------------------------------------------------------------------------


def test_message_id_is_stable_per_key() -> None:
    a = make_message_id("checkin:1:2026-W48", DOMAIN)
    assert a == make_message_id("checkin:1:2026-W48", DOMAIN)
    assert a != make_message_id("checkin:2:2026-W48", DOMAIN)
    assert a.startswith("<mf.") and a.endswith(f"@{DOMAIN}>")


def test_safe_names_do_not_collide() -> None:
    assert safe_name("a:b") != safe_name("a_b")
    assert "/" not in safe_name("../../etc/passwd")
    assert not safe_name("../x").startswith(".")


def test_backoff_doubles_and_caps() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 7, 50)] == [60, 120, 240, 3600, 3600]


# -- write_message -----------------------------------------------------------------------------


def test_write_message_is_atomic_and_idempotent(env: Env) -> None:
    box = env.outbox()
    msg = make_msg("k1", "a@example.com")
    rel = box.write_message("checkin:1:2026-W48", PERIOD, msg)
    path = env.data_dir / rel
    assert not Path(rel).is_absolute() and rel.startswith(f"mail/out/{PERIOD}/")
    raw = path.read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    inode = path.stat().st_ino

    # Same key, same bytes: same path, file untouched.
    assert box.write_message("checkin:1:2026-W48", PERIOD, msg) == rel
    assert path.stat().st_ino == inode
    # Same key, new render (retry before its record was stored): replaced atomically.
    box.write_message("checkin:1:2026-W48", PERIOD, make_msg("k1", "a@example.com", "v2"))
    assert b"v2" in path.read_bytes() and path.stat().st_ino != inode
    # No temp file left behind; other keys get other files.
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert box.write_message("checkin:2:2026-W48", PERIOD, msg) != rel
    with pytest.raises(ValueError):
        box.write_message("k", "../escape", msg)
    # Fan-out mode: no fsync per file, one sync() for the batch before the records.
    fast = box.write_message("checkin:3:2026-W48", PERIOD, msg, sync=False)
    box.sync()
    assert (env.data_dir / fast).read_bytes() == raw


def test_init_removes_leftover_temp_files(env: Env) -> None:
    box = env.outbox()
    box.write_message("k", PERIOD, make_msg("k", "a@example.com"))
    stale = env.data_dir / "mail" / "out" / PERIOD / ".x.eml.1.2.tmp"
    stale.write_bytes(b"half")
    box.init()
    assert not stale.exists()


# -- file transport (no relay host) --------------------------------------------------------------


def test_file_transport_writes_eml_once(env: Env) -> None:
    box = env.outbox()
    keys = env.queue(box, 3)
    result = box.flush(NOW)
    assert (result.sent, result.failed, result.deferred) == (3, 0, 0)
    files = sorted((env.data_dir / "outbox").glob("*.eml"))
    assert len(files) == 3
    for key in keys:
        item = env.record(key)
        assert item.status == SENT and item.sent_at == NOW and item.attempts == 1
        out = env.data_dir / "outbox" / f"{safe_name(key)}.eml"
        assert out.read_bytes() == (env.data_dir / item.path).read_bytes()
    assert box.flush(NOW + timedelta(hours=1)).attempted == 0
    assert len(list((env.data_dir / "outbox").glob("*.eml"))) == 3


def test_missing_message_file_fails_with_reason(env: Env) -> None:
    box = env.outbox()
    (key,) = env.queue(box, 1)
    (env.data_dir / env.record(key).path).unlink()
    result = box.flush(NOW)
    assert result.failed == 1 and "message file missing" in result.failures[0][1]
    assert env.record(key).status == FAILED


# -- relay -------------------------------------------------------------------------------------


def test_relay_batch_uses_one_connection_and_sends_each_once(env: Env) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 25)
        result = box.flush(NOW)
        assert (result.sent, result.failed, result.deferred) == (25, 0, 0)
        got = relay.wait_for(25, timeout=5)
        assert relay.connections == 1
        assert {m.session for m in got} == {1}
        assert sorted(message_ids(relay)) == sorted(make_message_id(k, DOMAIN) for k in keys)
        assert all(m.mail_from == BOUNCE for m in got)
        assert got[0].rcpt_tos == ("member0@example.com",)
        assert all(env.record(k).status == SENT for k in keys)

        # Nothing due: no new connection, nothing new delivered.
        again = box.flush(NOW + timedelta(hours=2))
        assert again.attempted == 0
        assert relay.connections == 1 and len(relay.messages) == 25


def test_relay_down_defers_all_then_delivers_each_exactly_once(env: Env) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 5)
        relay.down()
        result = box.flush(NOW)
        assert (result.sent, result.deferred) == (0, 5)
        for key in keys:
            item = env.record(key)
            # An outage uses up no attempt (it must never make a message fail).
            assert item.status == QUEUED and item.attempts == 0
            assert item.next_attempt_at == NOW + timedelta(seconds=60)
            assert "unavailable" in item.error

        relay.up()
        assert box.flush(NOW + timedelta(seconds=30)).attempted == 0  # not due yet
        assert relay.connections == 0
        result = box.flush(NOW + timedelta(seconds=60))
        assert result.sent == 5
        relay.wait_for(5, timeout=5)
        assert sorted(message_ids(relay)) == sorted(make_message_id(k, DOMAIN) for k in keys)
        assert box.flush(NOW + timedelta(hours=3)).attempted == 0
        assert len(relay.messages) == 5


def test_421_greeting_defers_and_next_flush_reconnects(env: Env) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 3)
        relay.fail_next_connections = 1
        result = box.flush(NOW)
        assert result.deferred == 3 and "421" in env.record(keys[0]).error
        assert box.flush(NOW + timedelta(minutes=1)).sent == 3
        assert relay.connections == 2 and len(relay.wait_for(3, timeout=5)) == 3


def test_connection_dropped_mid_batch_takes_the_rest_on_a_new_connection(env: Env) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 10)
        relay.drop_after_data, relay.drop_next_data = 4, 1
        result = box.flush(NOW)
        # The message in flight waits its backoff; the other nine go at once.
        assert (result.sent, result.deferred) == (9, 1)
        assert [env.record(k).status for k in keys] == [SENT] * 4 + [QUEUED] + [SENT] * 5
        assert env.record(keys[4]).attempts == 1
        assert len(relay.messages) == 9 and relay.connections == 2

        assert box.flush(NOW + timedelta(seconds=59)).attempted == 0
        result = box.flush(NOW + timedelta(minutes=1))
        assert result.sent == 1
        relay.wait_for(10, timeout=5)
        ids = message_ids(relay)
        assert len(ids) == len(set(ids)) == 10  # each exactly once
        assert relay.connections == 3


def test_4xx_is_retried_only_after_backoff(env: Env) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 3)
        busy = "member1@example.com"
        relay.refuse_rcpt[busy] = "450 4.2.0 mailbox busy"
        result = box.flush(NOW)
        assert (result.sent, result.deferred, result.failed) == (2, 1, 0)
        item = env.record(keys[1])
        assert item.status == QUEUED and item.attempts == 1
        assert item.next_attempt_at == NOW + timedelta(seconds=60)
        assert item.error.startswith("450 4.2.0")

        # Before next_attempt_at: not even a connection.
        assert box.flush(NOW + timedelta(seconds=59)).attempted == 0
        assert relay.connections == 1
        # Still busy: the backoff doubles.
        box.flush(NOW + timedelta(seconds=60))
        item = env.record(keys[1])
        assert item.attempts == 2
        assert item.next_attempt_at == NOW + timedelta(seconds=60 + 120)
        del relay.refuse_rcpt[busy]
        assert box.flush(NOW + timedelta(seconds=180)).sent == 1
        relay.wait_for(3, timeout=5)
        assert [m.rcpt_tos for m in relay.messages].count((busy,)) == 1
        assert env.record(keys[1]).status == SENT


def test_5xx_fails_with_reason_and_is_never_retried(env: Env) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 3)
        relay.refuse_rcpt["member0@example.com"] = "550 5.1.1 no such user"
        relay.refuse_data["member2@example.com"] = "554 5.6.0 message rejected"
        result = box.flush(NOW)
        assert (result.sent, result.failed, result.deferred) == (1, 2, 0)
        assert dict(result.failures) == {
            keys[0]: "550 5.1.1 no such user",
            keys[2]: "554 5.6.0 message rejected",
        }
        assert env.record(keys[0]).status == FAILED
        assert env.record(keys[0]).error == "550 5.1.1 no such user"
        assert [o.key for o in box.failed()] == [keys[0], keys[2]]
        assert box.pending() == []

        relay.refuse_rcpt.clear()
        relay.refuse_data.clear()
        assert box.flush(NOW + timedelta(days=1)).attempted == 0
        assert len(relay.messages) == 1 and relay.connections == 1


def test_new_outbox_after_restart_picks_up_queued_mail(env: Env) -> None:
    with recorder() as relay:
        cfg = relay_config(relay)
        first = env.outbox(cfg)
        keys = env.queue(first, 4)
        relay.down()
        assert first.flush(NOW).deferred == 4
        assert len(first.pending()) == 4
        relay.up()

        # A fresh process: new Store and Outbox on the same data dir.
        store = Store(env.data_dir)
        store.init()
        second = Outbox(store, cfg, None, BOUNCE, env.data_dir)
        second.init()
        assert [o.key for o in second.pending()] == keys
        assert second.flush(NOW + timedelta(minutes=5)).sent == 4
        relay.wait_for(4, timeout=5)
        assert second.pending() == [] and len(relay.messages) == 4


def test_starttls_and_auth(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with recorder(starttls=True, auth={"mailer": "s3cret-pw"}) as relay:
        cfg = relay_config(relay, starttls=True, username="mailer")
        box = env.outbox(cfg, "s3cret-pw", tls_context=relay.client_context())
        keys = env.queue(box, 2)
        assert box.flush(NOW).sent == 2
        got = relay.wait_for(2, timeout=5)
        assert all(m.tls and m.auth_login == "mailer" for m in got)

        # A wrong password is the operator's problem: deferred, never failed, never logged.
        caplog.set_level(logging.DEBUG, logger="mailflow.outbox")
        bad = env.outbox(cfg, "wrong-pw", tls_context=relay.client_context())
        more = env.queue(bad, 1, start=len(keys))
        result = bad.flush(NOW)
        assert result.deferred == 1 and result.failed == 0
        assert "535" in env.record(more[0]).error
        assert "wrong-pw" not in caplog.text and "s3cret-pw" not in caplog.text


def test_starttls_with_untrusted_certificate_is_deferred(env: Env) -> None:
    with recorder(starttls=True) as relay:
        box = env.outbox(relay_config(relay, starttls=True))  # default CAs: not trusted
        (key,) = env.queue(box, 1)
        assert box.flush(NOW).deferred == 1
        assert "CERTIFICATE_VERIFY_FAILED" in env.record(key).error
        assert relay.messages == []


def test_relay_requiring_starttls_is_not_a_permanent_failure(env: Env) -> None:
    with recorder(starttls=True) as relay:
        box = env.outbox(relay_config(relay))  # forgot starttls = true: 530 at MAIL
        (key,) = env.queue(box, 1)
        result = box.flush(NOW)
        assert result.deferred == 1 and env.record(key).status == QUEUED


def test_implicit_tls_and_auth(env: Env) -> None:
    with recorder(implicit_tls=True, auth={"mailer": "pw"}) as relay:
        cfg = relay_config(relay, ssl=True, username="mailer")
        box = env.outbox(cfg, "pw", tls_context=relay.client_context())
        env.queue(box, 2)
        assert box.flush(NOW).sent == 2
        assert all(m.tls and m.auth_login == "mailer" for m in relay.wait_for(2, timeout=5))


# -- marking -----------------------------------------------------------------------------------


def test_marks_are_group_committed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay), mark_every=4)
        keys = env.queue(box, 10)
        commits = []
        real_tx = env.store.week_tx

        @contextmanager
        def counting_tx(period: str) -> Iterator[object]:
            commits.append(period)
            with real_tx(period) as view:
                yield view

        monkeypatch.setattr(env.store, "week_tx", counting_tx)
        assert box.flush(NOW).sent == 10
        assert len(commits) == 3  # 4 + 4 + the last 2, not one per message
        assert all(env.record(k).status == SENT for k in keys)


def test_error_mid_flush_still_marks_what_was_sent(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        keys = env.queue(box, 5)
        real_send = box._send
        calls = []

        def flaky(conn: object, item: Outgoing, data: bytes) -> tuple[str, str]:
            calls.append(item.key)
            if len(calls) == 3:
                raise RuntimeError("bug")
            return real_send(conn, item, data)  # type: ignore[arg-type]

        monkeypatch.setattr(box, "_send", flaky)
        # The sender survives it: the error is reported, what was sent is marked.
        result = box.flush(NOW)
        assert result.errors == ["delivery stopped: bug"] and result.sent == 2
        assert [env.record(k).status for k in keys] == [SENT, SENT, QUEUED, QUEUED, QUEUED]
        monkeypatch.setattr(box, "_send", real_send)
        assert box.flush(NOW).sent == 3
        ids = message_ids(relay)
        assert len(ids) == len(set(ids)) == 5


def test_only_one_process_flushes_at_a_time(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    box = env.outbox()
    env.queue(box, 1)
    monkeypatch.setattr(outbox_mod, "FLUSH_LOCK_WAIT_SECONDS", 0.1)
    # A separate lock object takes its own flock, as another process would.
    other = FileLock(str(env.data_dir / "mail" / "out" / ".flush.lock"), thread_local=False)
    with other:
        result = box.flush(NOW)
    assert result.busy and result.attempted == 0
    assert box.flush(NOW).sent == 1


def test_flush_reads_only_recent_periods_by_default(env: Env) -> None:
    box = env.outbox()
    old = env.queue(box, 1, period="2026-W40")
    for week in ("2026-W45", "2026-W46", "2026-W47"):
        env.queue(box, 1, period=week, start=1)
    assert box.flush(NOW).sent == 3
    assert env.record(old[0], "2026-W40").status == QUEUED
    assert box.flush(NOW, periods=["2026-W40"]).sent == 1


def test_naive_now_is_refused(env: Env) -> None:
    with pytest.raises(ValueError):
        env.outbox().flush(datetime(2026, 11, 23, 9, 0))


def test_relay_receives_the_stored_bytes_unchanged_even_8bit(env: Env) -> None:
    with recorder() as relay:
        box = env.outbox(relay_config(relay))
        key = "digest:7:2026-W48"
        msg = make_msg(key, "partner@example.com")
        msg.set_content("Zurück im Sattel: weiter so.\n.leading dot line\n", cte="8bit")
        msg.replace_header("Subject", "Wochenbericht – Rückschlag")
        path = box.write_message(key, PERIOD, msg)
        with env.store.week_tx(PERIOD) as week:
            week.put_outgoing(
                Outgoing(
                    key=key,
                    kind="digest",
                    to="partner@example.com",
                    message_id=make_message_id(key, DOMAIN),
                    path=path,
                    created_at=NOW,
                )
            )
        assert box.flush(NOW).sent == 1
        (got,) = relay.wait_for(1, timeout=5)
        assert got.raw.rstrip(b"\r\n") == (env.data_dir / path).read_bytes().rstrip(b"\r\n")
        assert got.message["Subject"] == "Wochenbericht – Rückschlag"
        assert "Zurück im Sattel" in got.message.get_content()
