"""Listener and spool: real aiosmtpd on loopback, real smtplib/socket clients, real files."""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import logging
import os
import re
import shutil
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from smtp_recorder import make_self_signed_cert

from mailflow.inbox import Listener, ListenerError, ListenerOptions, normalise_line_endings
from mailflow.spool import MAGIC, UNREADABLE, Spool, envelope_of, raw_message
from mailflow.tokens import Rcpt

DOMAIN = "mailflow.test"
GOOD = f"checkin+tok1@{DOMAIN}"
GOOD2 = f"checkin+tok2@{DOMAIN}"
T0 = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)

MESSAGE = (
    b"From: Member <member@example.com>\r\n"
    b"To: " + GOOD.encode() + b"\r\n"
    b"Subject: Re: your check-in\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"\r\n"
    b"Done: read two chapters.\r\n"
    b".leading dot survives\r\n"
)


def dot_stuff(raw: bytes) -> bytes:
    """What an SMTP client does to DATA lines starting with a dot (RFC 5321 4.5.2)."""
    return (b"\r\n" + raw).replace(b"\r\n.", b"\r\n..")[2:]


def policy(address: str) -> Rcpt:
    if address.lower().startswith("checkin+") and address.lower().endswith("@" + DOMAIN):
        return Rcpt.TOKEN
    return Rcpt.BAD_TOKEN


class Recorder:
    """on_spooled callback that records ids and whether the file was already committed."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.ids: list[str] = []
        self.seen_on_disk: list[bool] = []
        self.event = threading.Event()

    def __call__(self, entry_id: str) -> None:
        self.seen_on_disk.append((self.spool.new_dir / entry_id).is_file())
        self.ids.append(entry_id)
        self.event.set()


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.spool = Spool(tmp_path / "data" / "spool")
        self.recorder = Recorder(self.spool)
        self.listeners: list[Listener] = []
        self.port = 0

    def start(
        self,
        *,
        spool: Spool | None = None,
        on_spooled: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Listener:
        self.port = free_port()
        options = ListenerOptions(
            host="127.0.0.1",
            port=self.port,
            max_message_bytes=64 * 1024,
            timeout_seconds=10,
            max_connections=20,
            hostname=DOMAIN,
        )
        options = replace(options, **overrides)
        listener = Listener(
            options,
            spool or self.spool,
            policy,
            on_spooled or self.recorder,
            clock=lambda: T0,
        )
        listener.start()
        self.listeners.append(listener)
        return listener

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=5)

    def raw(self) -> RawClient:
        return RawClient(self.port)


class RawClient:
    """A byte-exact SMTP client for what smtplib would refuse or fix up."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.banner = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete (possibly multi-line) reply."""
        deadline = time.monotonic() + 5
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    out = b"\r\n".join(lines[: i + 1])
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return out
            assert time.monotonic() < deadline, "no reply"
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf!r}")
            self.buf += chunk

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for listener in harness.listeners:
        listener.stop()


def stored_files(spool: Spool) -> list[Path]:
    return sorted(spool.new_dir.iterdir())


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


# -- accepting -------------------------------------------------------------------------------


def test_accepted_mail_is_on_disk_before_250(h: Harness) -> None:
    h.start()
    with h.client() as c:
        c.sendmail("member@example.com", [GOOD], MESSAGE)
    assert h.recorder.event.wait(5)
    assert h.recorder.seen_on_disk == [True]
    (path,) = stored_files(h.spool)
    assert path.name == h.recorder.ids[0]
    data = path.read_bytes()
    first, rest = data.split(b"\n", 1)
    assert first.startswith(MAGIC)
    envelope = json.loads(first[len(MAGIC) :])
    assert envelope["mail_from"] == "member@example.com"
    assert envelope["rcpt_tos"] == [GOOD]
    assert envelope["peer"].startswith("127.0.0.1:")
    assert envelope["received_at"] == T0.isoformat()
    assert rest == MESSAGE  # byte for byte, dot-unstuffed
    assert list(h.spool.tmp_dir.iterdir()) == []
    (entry,) = h.spool.pending()
    assert entry.raw == MESSAGE and entry.rcpt_tos == (GOOD,) and entry.received_at == T0


def test_250_waits_for_the_spool_write(h: Harness, tmp_path: Path) -> None:
    """While put() is blocked the client has no reply; the id it gets is the file on disk."""
    release = threading.Event()
    entered = threading.Event()

    class SlowSpool(Spool):
        def put(self, raw: bytes, **kw: Any) -> str:
            entered.set()
            assert release.wait(5)
            return super().put(raw, **kw)

    spool = SlowSpool(tmp_path / "data" / "spool")
    h.start(spool=spool)
    c = h.raw()
    try:
        assert c.cmd(b"EHLO client.test").startswith(b"250")
        assert c.cmd(b"MAIL FROM:<member@example.com>").startswith(b"250")
        assert c.cmd(b"RCPT TO:<" + GOOD.encode() + b">").startswith(b"250")
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(dot_stuff(MESSAGE) + b".\r\n")
        assert entered.wait(5)
        c.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.sock.recv(100)  # no 250 while the message is not yet durable
        # Meanwhile the event loop keeps serving others (the write runs in a thread).
        with h.client() as other:
            assert other.noop()[0] == 250
        c.sock.settimeout(5)
        release.set()
        reply = c.reply()
        assert reply.startswith(b"250 2.0.0 Queued as ")
        entry_id = reply.rsplit(b" ", 1)[1].decode()
        assert (spool.new_dir / entry_id).read_bytes().endswith(b"\n" + MESSAGE)
        assert c.cmd(b"QUIT").startswith(b"221")
    finally:
        release.set()
        c.close()


def test_concurrent_sessions_share_a_directory_sync_and_each_250_follows_its_own(
    h: Harness, tmp_path: Path
) -> None:
    """Group commit: while one session's rename into new/ is being synced, the others'
    renames queue up and the next fsync of new/ covers them all. No 250 goes out before a
    sync that began after that message's rename has finished."""
    sessions = 8
    lock = threading.Lock()
    durable: set[str] = set()  # ids in new/ when a finished directory sync began

    class WatchedSpool(Spool):
        def _sync_new_dir(self) -> None:
            covered = {n for n in os.listdir(self.new_dir) if not n.startswith(".")}
            if self.dir_syncs == 0:
                # Hold the first sync until every session has renamed its file: their
                # renames all queue behind it (bounded: at most 10 s).
                for _ in range(1000):
                    if len(os.listdir(self.new_dir)) >= sessions:
                        break
                    time.sleep(0.01)
            super()._sync_new_dir()
            with lock:
                durable.update(covered)

    spool = WatchedSpool(tmp_path / "data" / "spool")
    h.start(spool=spool)
    acknowledged: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def session(i: int) -> None:
        try:
            with h.client() as c:
                c.ehlo()
                c.mail(f"member{i}@example.com")
                c.rcpt(GOOD)
                code, text = c.data(MESSAGE)
                assert code == 250, (code, text)
                entry_id = text.decode().rsplit(" ", 1)[1]
                with lock:  # checked as the 250 arrives: its rename was synced already
                    acknowledged.append((entry_id, entry_id in durable))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(acknowledged) == sessions
    assert all(synced for _, synced in acknowledged), acknowledged
    assert sorted(i for i, _ in acknowledged) == [p.name for p in stored_files(spool)]
    assert spool.spooled == sessions
    assert 1 <= spool.dir_syncs <= 2  # not one per message: the waiting ones shared a sync


def test_null_sender_and_several_messages_per_session(h: Harness) -> None:
    h.start()
    with h.client() as c:
        c.sendmail("<>", [GOOD], MESSAGE)
        c.sendmail("member@example.com", [GOOD, GOOD2], MESSAGE)
    entries = h.spool.pending()
    assert [e.mail_from for e in entries] == ["", "member@example.com"]
    assert entries[1].rcpt_tos == (GOOD, GOOD2)
    assert entries[0].id < entries[1].id  # oldest first, even within one microsecond


def test_rcpt_refused_by_policy_and_data_without_rcpt(h: Harness) -> None:
    h.start()
    with h.client() as c:
        c.ehlo()
        c.mail("someone@example.com")
        code, msg = c.rcpt("victim@elsewhere.example")
        assert code == 550
        assert msg == b"5.1.1 <victim@elsewhere.example>: no such check-in address"
        code, _ = c.rcpt(f"postmaster@{DOMAIN}")
        assert code == 550
        code, _ = c.docmd("DATA")
        assert code == 503
    with h.client() as c, pytest.raises(smtplib.SMTPRecipientsRefused):
        c.sendmail("a@example.com", ["relay@other.example"], MESSAGE)
    assert stored_files(h.spool) == []


def test_too_many_recipients(h: Harness) -> None:
    h.start()
    with h.client() as c:
        c.ehlo()
        c.mail("a@example.com")
        codes = [c.rcpt(f"checkin+t{i}@{DOMAIN}")[0] for i in range(21)]
        assert codes == [250] * 20 + [452]
        c.rset()


def test_oversize_gets_552_and_nothing_is_spooled(h: Harness) -> None:
    h.start(max_message_bytes=2048)
    big = MESSAGE + b"x" * 70 + b"\r\n"
    big = big * 40
    # smtplib announces SIZE, so it is refused at MAIL ...
    with h.client() as c:
        with pytest.raises(smtplib.SMTPSenderRefused) as e1:
            c.sendmail("a@example.com", [GOOD], big)
        assert e1.value.smtp_code == 552
    # ... and without SIZE, after the final dot.
    c2 = h.raw()
    try:
        c2.cmd(b"EHLO client.test")
        c2.cmd(b"MAIL FROM:<a@example.com>")
        c2.cmd(b"RCPT TO:<" + GOOD.encode() + b">")
        assert c2.cmd(b"DATA").startswith(b"354")
        c2.send(big + b".\r\n")
        assert c2.reply().startswith(b"552")
        # The session goes on and a normal message still gets through.
        c2.cmd(b"MAIL FROM:<a@example.com>")
        c2.cmd(b"RCPT TO:<" + GOOD.encode() + b">")
        c2.cmd(b"DATA")
        c2.send(dot_stuff(MESSAGE) + b".\r\n")
        assert c2.reply().startswith(b"250")
    finally:
        c2.close()
    assert [e.raw for e in h.spool.pending()] == [MESSAGE]


def test_long_line_refused_and_nothing_partial_spooled(h: Harness) -> None:
    h.start()
    c = h.raw()
    try:
        c.cmd(b"EHLO client.test")
        c.cmd(b"MAIL FROM:<a@example.com>")
        c.cmd(b"RCPT TO:<" + GOOD.encode() + b">")
        c.cmd(b"DATA")
        c.send(MESSAGE + b"y" * 5000 + b"\r\nmore\r\n.\r\n")
        assert c.reply().startswith(b"500")
        assert c.cmd(b"NOOP").startswith(b"250")
    finally:
        c.close()
    assert stored_files(h.spool) == []


def test_spool_failure_answers_451(h: Harness, tmp_path: Path) -> None:
    class BrokenSpool(Spool):
        def put(self, raw: bytes, **kw: Any) -> str:
            raise OSError(28, "No space left on device")

    h.start(spool=BrokenSpool(tmp_path / "data" / "spool"))
    with h.client() as c, pytest.raises(smtplib.SMTPDataError) as exc:
        c.sendmail("a@example.com", [GOOD], MESSAGE)
    assert exc.value.smtp_code == 451
    assert h.recorder.ids == []


def test_on_spooled_exception_is_logged_not_raised(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    called = threading.Event()

    def boom(entry_id: str) -> None:
        called.set()
        raise RuntimeError("processor asleep")

    h.start(on_spooled=boom)
    with caplog.at_level(logging.INFO, logger="mailflow.inbox"), h.client() as c:
        c.sendmail("a@example.com", [GOOD], MESSAGE)
        assert called.wait(5)
        assert c.noop()[0] == 250  # the session is unaffected
    assert len(stored_files(h.spool)) == 1
    assert any("on_spooled" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("accepted ") for r in caplog.records)


# -- hostile input ---------------------------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<admin@" + DOMAIN.encode() + b">\r\n"
    b"RCPT TO:<" + GOOD2.encode() + b">\r\n"
    b"DATA\r\n"
    b"From: Admin <admin@" + DOMAIN.encode() + b">\r\n"
    b"Subject: smuggled\r\n"
    b"X-Injected: yes\r\n"
    b"\r\n"
    b"evil\r\n"
)


@pytest.mark.parametrize(
    "terminator",
    [b"\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n"],
    ids=["LF.CRLF", "LF.LF", "CR.CRLF", "CRLF.CR", "CRLF.LF"],
)
def test_smuggling_never_yields_two_messages(h: Harness, terminator: bytes) -> None:
    h.start()
    c = h.raw()
    try:
        c.cmd(b"EHLO client.test")
        c.cmd(b"MAIL FROM:<member@example.com>")
        c.cmd(b"RCPT TO:<" + GOOD.encode() + b">")
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(
            b"From: member@example.com\r\nSubject: legit\r\n\r\nbody"
            + terminator
            + SMUGGLED
            + b".\r\n"
        )
        replies = [c.reply()]
        c.send(b"QUIT\r\n")
        try:
            while True:
                replies.append(c.reply())
        except ConnectionError:
            pass
    finally:
        c.close()
    assert sum(r.startswith(b"250 2.0.0 Queued") for r in replies) == 1, replies
    (entry,) = h.spool.pending()
    assert entry.rcpt_tos == (GOOD,)
    msg = parse(entry.raw)
    assert msg.get_all("Subject") == ["legit"]
    assert msg["X-Injected"] is None
    # Everything stored uses CRLF only.
    assert b"\n" not in entry.raw.replace(b"\r\n", b"")
    assert b"\r" not in entry.raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "header",
    [
        b"Subject: hi\nX-Injected: yes\r\n",
        b"Subject: hi\rX-Injected: yes\r\n",
        b"Subject: hi\n\nX-Injected: yes\r\n",
    ],
    ids=["LF", "CR", "LFLF"],
)
def test_bare_newline_in_headers_is_refused(h: Harness, header: bytes) -> None:
    h.start()
    c = h.raw()
    try:
        c.cmd(b"EHLO client.test")
        c.cmd(b"MAIL FROM:<member@example.com>")
        c.cmd(b"RCPT TO:<" + GOOD.encode() + b">")
        c.cmd(b"DATA")
        c.send(b"From: member@example.com\r\n" + header + b"\r\nbody\r\n.\r\n")
        assert c.reply().startswith(b"550 5.6.0")
    finally:
        c.close()
    assert stored_files(h.spool) == []


def test_line_ending_policy_unit() -> None:
    clean = b"A: 1\r\n\r\nbody\r\n"
    assert normalise_line_endings(clean) is clean
    assert normalise_line_endings(b"A: 1\r\n\r\nx\ny\rz\r\n") == b"A: 1\r\n\r\nx\r\ny\r\nz\r\n"
    assert normalise_line_endings(b"\r\nonly\nbody\r\n") == b"\r\nonly\r\nbody\r\n"
    for bad in (b"A: 1\nB: 2\r\n\r\n", b"A: 1\nB: 2", b"A: 1\r\n\n\r\nbody"):
        with pytest.raises(ValueError):
            normalise_line_endings(bad)


def test_line_ending_fast_path_agrees_with_the_policy() -> None:
    """The listener checks a clean message with three counts instead of a regex search; every
    mix of CR, LF and text up to six bytes long (after a clean header) is kept as it is exactly
    when it has no bare CR or LF."""
    bare = re.compile(rb"(?<!\r)\n|\r(?!\n)")
    head = b"A: 1\r\n\r\n"
    for length in range(7):
        for combo in itertools.product((b"\r", b"\n", b"x"), repeat=length):
            body = b"".join(combo)
            out = normalise_line_endings(head + body)
            if bare.search(body):
                assert out == head + bare.sub(b"\r\n", body)
            else:
                assert out is not None and out == head + body


# -- connections -----------------------------------------------------------------------------


def test_too_many_connections_get_421_and_service_keeps_serving(h: Harness) -> None:
    h.start(max_connections=2)
    a, b = h.client(), h.client()
    try:
        with pytest.raises(smtplib.SMTPConnectError) as exc:
            h.client()
        assert exc.value.smtp_code == 421
        assert a.noop()[0] == 250 and b.noop()[0] == 250
    finally:
        a.quit()
    deadline = time.monotonic() + 5
    while True:  # the freed slot is released asynchronously
        try:
            c = h.client()
            break
        except smtplib.SMTPConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with c:
        c.sendmail("a@example.com", [GOOD], MESSAGE)
    b.quit()
    assert len(stored_files(h.spool)) == 1


def test_idle_client_is_disconnected(h: Harness) -> None:
    h.start(timeout_seconds=1)
    c = h.raw()
    try:
        c.cmd(b"EHLO client.test")
        started = time.monotonic()
        c.sock.settimeout(5)
        assert c.sock.recv(100) == b""  # closed by the server
        assert 0.5 < time.monotonic() - started < 4
    finally:
        c.close()


def test_stop_is_quick_with_clients_connected(h: Harness) -> None:
    listener = h.start()
    idle = h.raw()
    busy = h.raw()
    busy.cmd(b"EHLO client.test")
    busy.cmd(b"MAIL FROM:<a@example.com>")
    busy.cmd(b"RCPT TO:<" + GOOD.encode() + b">")
    busy.cmd(b"DATA")
    busy.send(b"Subject: half\r\n\r\nnot finished\r\n")  # no final dot
    started = time.monotonic()
    listener.stop()
    assert time.monotonic() - started < 3
    idle.close()
    busy.close()
    assert stored_files(h.spool) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", h.port), timeout=1).close()
    listener.stop()  # idempotent


def test_port_taken_fails_fast(h: Harness, tmp_path: Path) -> None:
    h.start()
    other = Listener(
        ListenerOptions("127.0.0.1", h.port, 4096, 5, 5, DOMAIN),
        h.spool,
        policy,
        h.recorder,
        clock=lambda: T0,
    )
    started = time.monotonic()
    with pytest.raises(ListenerError, match=str(h.port)):
        other.start()
    assert time.monotonic() - started < 1.5


# -- STARTTLS and AUTH -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_starttls_and_auth(h: Harness, cert: tuple[Path, Path]) -> None:
    h.start(
        tls_cert=cert[0],
        tls_key=cert[1],
        require_starttls=True,
        auth_users={"relay": "s3cret"},
    )
    with h.client() as c:
        c.ehlo()
        assert c.has_extn("starttls")
        code, _ = c.mail("a@example.com")
        assert code == 530  # STARTTLS first
        c.starttls(context=insecure_context())
        c.ehlo()
        assert c.has_extn("auth")
        code, _ = c.mail("a@example.com")
        assert code == 530  # then AUTH
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            c.login("relay", "wrong")
        assert exc.value.smtp_code == 535
        assert time.monotonic() - started < 3  # answered, not hung
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("nobody", "s3cret")
        c.login("relay", "s3cret")
        c.sendmail("a@example.com", [GOOD], MESSAGE)
    assert [e.raw for e in h.spool.pending()] == [MESSAGE]


def test_auth_without_tls_is_a_start_error(h: Harness) -> None:
    with pytest.raises(ListenerError, match="tls"):
        h.start(auth_users={"u": "p"})


# -- spool -----------------------------------------------------------------------------------


def put(spool: Spool, raw: bytes = MESSAGE, at: datetime = T0) -> str:
    return spool.put(
        raw, mail_from="a@example.com", rcpt_tos=[GOOD], peer="127.0.0.1:1", received_at=at
    )


def test_spool_recover_deletes_tmp_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.quarantine_dir == tmp_path / "quarantine"
    (spool.tmp_dir / "20240101T000000000000Z-000001-deadbeef").write_bytes(MAGIC + b"{")
    kept = put(spool)
    Spool(tmp_path / "spool").recover()
    assert list(spool.tmp_dir.iterdir()) == []
    assert [e.id for e in spool.pending()] == [kept]


def test_spool_order_remove_count_and_naive_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    late = put(spool, at=T0 + timedelta(seconds=1))
    early = put(spool, at=T0.astimezone(tz=None))  # same instant in another offset
    assert [e.id for e in spool.pending()] == [early, late]
    assert [e.id for e in spool.pending(limit=1)] == [early]
    assert spool.count_pending() == 2
    spool.remove(early)
    spool.remove(early)  # idempotent
    assert spool.count_pending() == 1
    with pytest.raises(ValueError):
        put(spool, at=datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        spool.remove("../escape")


def test_unreadable_spool_file_is_quarantined(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    good = put(spool)
    bad_ids = [
        "20000101T000000000000Z-000001-aaaaaaaa",
        "20000101T000000000000Z-000002-bbbbbbbb",
        "20000101T000000000000Z-000003-cccccccc",
    ]
    (spool.new_dir / bad_ids[0]).write_bytes(b'MFSPOOL1 {"id": "trunc')  # truncated header
    (spool.new_dir / bad_ids[1]).write_bytes(b"\x00\xff binary junk\n")
    (spool.new_dir / bad_ids[2]).write_bytes(b'MFSPOOL1 {"id": 1}\nraw')  # fields missing
    entries = spool.pending()
    assert [e.id for e in entries] == [good]
    assert spool.quarantined() == [(i, UNREADABLE) for i in bad_ids]
    for i in bad_ids:
        assert (spool.quarantine_dir / i).is_file()  # kept, never silently dropped
        assert not (spool.new_dir / i).exists()
    assert spool.count_pending() == 1


def test_quarantine_writes_reason_sidecar(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry_id = put(spool)
    path = spool.quarantine(entry_id, "sender mismatch:\nnot the member")
    assert path == spool.quarantine_dir / entry_id
    assert path.read_bytes().endswith(MESSAGE)
    sidecar = (spool.quarantine_dir / f"{entry_id}.reason.txt").read_text()
    assert sidecar.startswith("reason: sender mismatch: not the member\n")
    envelope = json.loads(sidecar.split("envelope: ", 1)[1])
    assert envelope["rcpt_tos"] == [GOOD] and envelope["mail_from"] == "a@example.com"
    assert spool.quarantined() == [(entry_id, "sender mismatch: not the member")]
    assert spool.pending() == []
    with pytest.raises(FileNotFoundError):
        spool.quarantine(entry_id, "again")


def test_the_sidecar_says_who_what_and_outlives_an_admins_decision(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry_id = put(spool)
    spool.quarantine(entry_id, "sender mismatch", sender="Eve@X.example", partnership_id=3,
                     period="2026-W49")  # fmt: skip
    car = spool.sidecar(entry_id)
    assert (car.reason, car.sender, car.partnership_id, car.period, car.outcome) == (
        "sender mismatch", "eve@x.example", 3, "2026-W49", ""
    )  # fmt: skip
    entry = spool.quarantined_entry(entry_id)
    assert entry.raw == MESSAGE and entry.path == spool.quarantine_dir / entry_id
    data = spool.read_quarantined(entry_id)
    assert raw_message(data) == MESSAGE and envelope_of(data)["rcpt_tos"] == [GOOD]
    assert raw_message(MESSAGE) == MESSAGE  # a plain message is its own raw message
    spool.close_quarantined(entry_id, "dropped: 2026-12-01T10:00:00+00:00 by admin")
    spool.drop_quarantined(entry_id)
    assert spool.quarantined() == [] and not spool.is_quarantined(entry_id)
    assert spool.has_sidecar(entry_id)
    assert spool.sidecar(entry_id).outcome == "dropped: 2026-12-01T10:00:00+00:00 by admin"
    assert spool.sidecar(entry_id).reason == "sender mismatch"  # the record stays whole
    with pytest.raises(ValueError):
        spool.sidecar("../core.json")
