"""The listener against floods, keep-alive tricks, endless lines, strangers and a full disk.

Issue 12, measured before the fix: 500 idle connections locked out every real reply (0/44
got through); 200 sessions sending NOOP every 30 s did the same; one DATA line that never
ends grew `serve` from 40 MB to 837 MB past a 10 MB limit; 50 x 1 MB from strangers to the
plain address were all accepted and kept; below a full disk the listener kept saying 250
until the spool write failed. Real aiosmtpd on loopback, real sockets; a flooding client
appears as a stranger by binding to 127.0.0.2 (or by trusting nobody).
"""

from __future__ import annotations

import contextlib
import json
import resource
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from clitools import VENV_BIN
from conftest import free_port, now_args
from disktools import FaultyDisk
from test_e2e_week import Serve, wait_port
from test_inbox import DOMAIN, GOOD, MESSAGE, T0, RawClient

from mailflow.inbox import Listener, ListenerOptions
from mailflow.spool import Spool
from mailflow.tokens import Rcpt

PLAIN = f"checkin@{DOMAIN}"
MB = 1024 * 1024


def accept_ours(address: str) -> Rcpt:
    """The service's policy in short: any address at our domain (the plain one, replies)."""
    local, _, host = address.strip("<>").lower().rpartition("@")
    if host != DOMAIN:
        return Rcpt.FOREIGN
    return Rcpt.TOKEN if "+" in local else Rcpt.PLAIN


class Bench:
    """A listener on a spool under tmp_path, with a fault-injecting disk."""

    def __init__(self, tmp_path: Path) -> None:
        self.disk = FaultyDisk()
        self.spool = Spool(tmp_path / "data" / "spool", disk=self.disk)
        self.listeners: list[Listener] = []
        self.port = 0

    def start(self, **overrides: Any) -> Listener:
        self.port = free_port()
        options = ListenerOptions(
            host="127.0.0.1",
            port=self.port,
            max_message_bytes=2 * MB,
            timeout_seconds=30,
            max_connections=200,
            hostname=DOMAIN,
        )
        listener = Listener(
            replace(options, **overrides), self.spool, accept_ours, lambda _id: None, lambda: T0
        )
        listener.start()
        self.listeners.append(listener)
        return listener

    def smtp(self, source: str = "127.0.0.1") -> smtplib.SMTP:
        return smtplib.SMTP(
            "127.0.0.1",
            self.port,
            local_hostname="client.test",
            timeout=10,
            source_address=(source, 0),
        )


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path)
    yield b
    for listener in b.listeners:
        listener.stop()


def send(smtp: smtplib.SMTP, mail_from: str, rcpt: str, raw: bytes) -> tuple[int, bytes]:
    """MAIL, RCPT, DATA; the first answer that is not 250 (RSET after it), else DATA's."""
    smtp.ehlo_or_helo_if_needed()
    code, text = smtp.mail(mail_from)
    if code == 250:
        code, text = smtp.rcpt(rcpt)
        if code == 250:
            return smtp.data(raw)
    smtp.rset()
    return code, text


def message(sender: str, n: int, body_bytes: int = 100) -> bytes:
    body = (b"x" * 76 + b"\r\n") * max(1, body_bytes // 78)
    return (
        f"From: <{sender}>\r\nTo: <{PLAIN}>\r\nSubject: hello {n}\r\n"
        f"Message-ID: <s{n}.{sender}>\r\n\r\n"
    ).encode() + body


# -- disk floor --------------------------------------------------------------------------------


def test_below_the_free_space_floor_452_before_data_then_resumes(bench: Bench) -> None:
    listener = bench.start(min_free_bytes=100 * MB)
    bench.disk.free = 40 * MB
    with bench.smtp() as smtp:
        smtp.ehlo()
        code, text = smtp.mail("member@example.com")
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        bench.disk.free = 500 * MB  # room at MAIL ...
        assert smtp.mail("member@example.com")[0] == 250
        bench.disk.free = 40 * MB  # ... gone again at RCPT
        assert smtp.rcpt(GOOD) == (452, b"4.3.1 Insufficient system storage")
        smtp.rset()
        # Space returns: the same listener, no restart, takes mail again.
        bench.disk.free = None
        assert send(smtp, "member@example.com", GOOD, MESSAGE)[0] == 250
    assert bench.spool.count_pending() == 1
    assert listener.refusals["disk"] == 2


def test_a_spool_write_that_fails_for_space_is_451_and_leaves_nothing(bench: Bench) -> None:
    bench.start(min_free_bytes=0)
    bench.disk.full = True
    with bench.smtp() as smtp:
        code, _ = send(smtp, "member@example.com", GOOD, MESSAGE)
        assert code == 451
        bench.disk.full = False
        assert send(smtp, "member@example.com", GOOD, MESSAGE)[0] == 250
    assert bench.spool.count_pending() == 1
    assert list(bench.spool.tmp_dir.iterdir()) == []


# -- floods ------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_files(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect_from(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock


def banner(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(512)
        if not chunk:
            break
        data += chunk
    return data


def test_500_idle_connections_do_not_lock_out_real_replies(bench: Bench) -> None:
    with open_files(2 * 500 + 256):
        # Nobody is trusted here: the real replies come from 127.0.0.1 like any client.
        listener = bench.start(trusted_peers=(), max_sessions_per_client=10)
        idle = []
        try:
            for _ in range(500):
                idle.append(connect_from(bench.port, "127.0.0.2"))
            greetings = [banner(s) for s in idle]
            assert sum(g.startswith(b"220") for g in greetings) == 10
            assert sum(g.startswith(b"421") for g in greetings) == 490
            got_through = 0
            for n in range(44):
                with bench.smtp() as smtp:
                    code, _ = send(smtp, f"m{n}@example.com", GOOD, MESSAGE)
                    got_through += code == 250
            assert got_through == 44, f"{got_through}/44 real replies got through"
        finally:
            for s in idle:
                s.close()
    assert bench.spool.count_pending() == 44
    assert listener.refusals["per_client"] == 490


def test_the_trusted_mta_is_exempt_from_the_per_client_cap(bench: Bench) -> None:
    with open_files(512):
        bench.start(max_sessions_per_client=3, max_connections=20)  # loopback is trusted
        strangers = [connect_from(bench.port, "127.0.0.2") for _ in range(6)]
        mta = [connect_from(bench.port, "127.0.0.1") for _ in range(15)]
        try:
            assert [banner(s)[:3] for s in strangers] == [b"220"] * 3 + [b"421"] * 3
            assert all(banner(s).startswith(b"220") for s in mta)
        finally:
            for s in strangers + mta:
                s.close()


def test_noop_rset_and_ehlo_do_not_keep_a_session_alive(bench: Bench) -> None:
    listener = bench.start(timeout_seconds=1)
    clients = [RawClient(bench.port) for _ in range(3)]
    try:
        for client in clients:
            client.cmd(b"EHLO client.test")
        closed = [False] * 3
        deadline = time.monotonic() + 6  # the timeout is 1 s: closed long before this
        while not all(closed) and time.monotonic() < deadline:
            for i, (client, verb) in enumerate(
                zip(clients, (b"NOOP", b"RSET", b"EHLO x"), strict=True)
            ):
                if closed[i]:
                    continue
                try:
                    client.cmd(verb)
                except (ConnectionError, OSError, AssertionError):
                    closed[i] = True
            time.sleep(0.2)
        assert closed == [True] * 3, "a keep-alive client held its session"
    finally:
        for client in clients:
            client.close()
    assert listener.refusals["idle"] == 3
    # A client that makes progress is not cut: three messages, 0.4 s apart, one session.
    with bench.smtp() as smtp:
        for _ in range(3):
            assert send(smtp, "member@example.com", GOOD, MESSAGE)[0] == 250
            time.sleep(0.4)


def test_200_noop_sessions_do_not_lock_out_real_replies(bench: Bench) -> None:
    # Twenty addresses with ten sessions each fill every slot (max_connections = 200), and
    # keep sending NOOP. Before, that held the slots forever; now NOOP is no progress, so
    # the sessions are cut after the timeout and real replies get in (as an MTA retries).
    with open_files(1024):
        listener = bench.start(trusted_peers=(), max_sessions_per_client=10, timeout_seconds=1)
        noisy = [connect_from(bench.port, f"127.0.0.{10 + i // 10}") for i in range(200)]
        stop = threading.Event()

        def keep_alive() -> None:
            for _ in range(40):  # at most 40 rounds of NOOP, 0.25 s apart
                for s in noisy:
                    with contextlib.suppress(OSError):
                        s.sendall(b"NOOP\r\n")
                if stop.wait(0.25):
                    return

        try:
            assert sum(banner(s).startswith(b"220") for s in noisy) == 200
            thread = threading.Thread(target=keep_alive, daemon=True)
            thread.start()
            got_through = 0
            for n in range(20):
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    try:
                        with bench.smtp() as smtp:
                            code = send(smtp, f"m{n}@example.com", GOOD, MESSAGE)[0]
                    except smtplib.SMTPConnectError:
                        time.sleep(0.1)  # 421: every slot taken; try again, as an MTA would
                        continue
                    got_through += code == 250
                    break
            assert got_through == 20, f"{got_through}/20 real replies got through"
        finally:
            stop.set()
            for s in noisy:
                s.close()
    assert listener.refusals["idle"] >= 20  # at least one slot per reply was freed so


# -- a DATA line that never ends ----------------------------------------------------------------


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_an_endless_data_line_keeps_memory_bounded(tmp_path: Path) -> None:
    limit = 10 * MB
    port = free_port()
    config = tmp_path / "mailflow.toml"
    config.write_text(
        f'[service]\ndomain = "{DOMAIN}"\ndata_dir = "data"\n'
        f"[listener]\nport = {port}\nmax_message_bytes = {limit}\n"
    )
    serve = Serve(config, tmp_path / "serve.log")
    try:
        wait_port(port)
        pid = serve.proc.pid
        time.sleep(0.5)  # let start-up settle
        before = rss_kb(pid, "VmRSS")
        client = RawClient(port)
        client.cmd(b"EHLO client.test")
        assert client.cmd(b"MAIL FROM:<member@example.com>").startswith(b"250")
        assert client.cmd(b"RCPT TO:<" + PLAIN.encode() + b">").startswith(b"250")
        assert client.cmd(b"DATA").startswith(b"354")
        chunk = b"x" * MB
        sent = 0
        try:
            for _ in range(50):  # 50 MB, not one newline
                client.sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # closed by the server once past the limit: that is the point
        client.close()
        peak = rss_kb(pid, "VmHWM")
        growth_mb = (peak - before) / 1024
        assert growth_mb < 2 * limit / MB, f"RSS grew {growth_mb:.0f} MB for {sent} bytes"
        # Still serving.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
    finally:
        serve.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log


def test_an_endless_line_in_a_listener_gets_552_and_is_not_kept(bench: Bench) -> None:
    listener = bench.start(max_message_bytes=64 * 1024)
    client = RawClient(bench.port)
    try:
        client.cmd(b"EHLO client.test")
        client.cmd(b"MAIL FROM:<member@example.com>")
        client.cmd(b"RCPT TO:<" + GOOD.encode() + b">")
        assert client.cmd(b"DATA").startswith(b"354")
        with contextlib.suppress(OSError):
            for _ in range(40):
                client.sock.sendall(b"y" * 8192)
        client.sock.settimeout(5)
        said = b""
        with contextlib.suppress(OSError):
            while chunk := client.sock.recv(4096):
                said += chunk
        assert said.startswith(b"552 5.3.4"), said
    finally:
        client.close()
    assert bench.spool.count_pending() == 0
    assert listener.refusals["endless_line"] == 1


# -- strangers ---------------------------------------------------------------------------------


def test_stranger_mail_is_bounded_by_quotas_and_nothing_accepted_is_deleted(
    bench: Bench,
) -> None:
    listener = bench.start(held_per_sender=5, held_max_bytes=12 * MB)
    accepted: dict[str, int] = {}
    refused: dict[str, int] = {}
    with bench.smtp() as smtp:
        # One stranger, small mails: five are held, then 452 (per sender).
        for n in range(8):
            code, text = send(smtp, "spam@strangers.example", PLAIN, message("spam", n))
            bucket = accepted if code == 250 else refused
            bucket["spam"] = bucket.get("spam", 0) + 1
            if code != 250:
                assert (code, text[:5]) == (452, b"4.2.2"), text
        # 50 x 1 MB from fifty strangers: held up to 12 MB in all, then 452 (total).
        for n in range(50):
            sender = f"s{n}@strangers.example"
            code, text = send(smtp, sender, PLAIN, message(sender, n, MB))
            bucket = accepted if code == 250 else refused
            bucket["big"] = bucket.get("big", 0) + 1
            if code != 250:
                assert (code, text[:5]) == (452, b"4.3.1"), text
        # A member's reply to her own reply address is never held back by strangers.
        assert send(smtp, "member@example.com", GOOD, MESSAGE)[0] == 250
    assert accepted["spam"] == 5 and refused["spam"] == 3
    assert 10 <= accepted["big"] <= 12 and accepted["big"] + refused["big"] == 50
    held = bench.spool.held()
    assert held.bytes <= 13 * MB and held.from_sender("spam@strangers.example") == 5
    # Nothing accepted was dropped to make room.
    assert bench.spool.count_pending() == 5 + accepted["big"] + 1
    assert listener.refusals["sender_quota"] == 3
    assert listener.refusals["total_quota"] == refused["big"]
    # Quarantined mail still counts, by sender...
    for entry in bench.spool.pending():
        if entry.mail_from == "spam@strangers.example":
            bench.spool.quarantine(entry.id, "sender unknown")
        else:
            bench.spool.remove(entry.id)  # ...while what was processed and stored does not
    assert bench.spool.held().from_sender("spam@strangers.example") == 5
    with bench.smtp() as smtp:
        assert send(smtp, "spam@strangers.example", PLAIN, message("spam", 98))[0] == 452
        # Once a human drops one (`quarantine drop`), the stranger may write again.
        entry_id, _reason = bench.spool.quarantined()[0]
        (bench.spool.quarantine_dir / entry_id).unlink()
        (bench.spool.quarantine_dir / f"{entry_id}.reason.txt").unlink()
        assert send(smtp, "spam@strangers.example", PLAIN, message("spam", 99))[0] == 250


def test_every_listener_key_reaches_the_listener_options() -> None:
    from mailflow.config import from_mapping
    from mailflow.inbox import options_from_config

    cfg = from_mapping(
        {
            "service": {"domain": "hot.example.com", "min_free_mb": 7},
            "listener": {
                "max_sessions_per_client": 4,
                "trusted_peers": ["10.0.0.25"],
                "quarantine_max_per_sender": 3,
                "quarantine_max_mb": 9,
            },
        }
    )
    o = options_from_config(cfg)
    assert (o.hostname, o.min_free_bytes, o.max_sessions_per_client) == (
        "hot.example.com",
        7 * MB,
        4,
    )
    assert (tuple(o.trusted_peers), o.held_per_sender, o.held_max_bytes) == (
        ("10.0.0.25",),
        3,
        9 * MB,
    )


def test_serve_applies_the_disk_floor_from_the_config(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "mailflow.toml"
    config.write_text(  # a floor no disk reaches: every MAIL gets 452
        f'[service]\ndomain = "{DOMAIN}"\ndata_dir = "data"\nmin_free_mb = 1000000000\n'
        f"[listener]\nport = {port}\n"
    )
    serve = Serve(config, tmp_path / "serve.log")
    try:
        wait_port(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.mail("member@example.com")[0] == 452
            assert smtp.mail("member@example.com")[0] == 452
    finally:
        serve.stop()
    # Counted in status: serve records its listener's refusals (at each tick and as it stops).
    status = json.loads(_mailflow(config, "status", "--json").stdout)
    assert status["refused"]["counts"] == {"disk": 2}
    assert "refused by the listener since" in _mailflow(config, "status").stdout


def _mailflow(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "mailflow"), *now_args(), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
