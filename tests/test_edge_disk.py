"""A full disk delays, never duplicates, never stalls (issue 12).

Before: when the relay had taken a check-in and writing "sent" failed (ENOSPC), the sender
thread died and every later tick resent the whole batch (3-4 copies per recipient in 20 s);
the listener kept answering 250 until its spool write failed; 31 acknowledged replies and 60
check-ins stayed stuck until a restart.

One test runs on a real, small tmpfs (when the suite runs as root, as CI does); the others
use the `Disk` fault hook (tests/disktools.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import smtplib
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from clitools import VENV_BIN
from conftest import free_port, now_args
from disktools import FaultyDisk
from replytools import reply
from smtp_recorder import RecordingSMTPServer
from test_edge_outbox import FANOUT_AT, fanout_data

from mailflow.app import App, build
from mailflow.config import load
from mailflow.inbox import Listener, ListenerOptions
from mailflow.models import SENT
from mailflow.tokens import CHECKIN

PERIOD = "2026-W49"
MB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/data as a 24 MB tmpfs of its own (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mnt = tmp_path / "data"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30, check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system holding `folder` has no room left."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (MB, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def tick(config: Path, minutes: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(VENV_BIN / "mailflow"),
            *now_args(FANOUT_AT + timedelta(minutes=minutes)),
            "--config",
            str(config),
            "tick",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_real_full_disk_delays_never_duplicates_and_resumes_by_itself(
    tmp_path: Path, tmpfs: Path
) -> None:
    n = 20
    with RecordingSMTPServer() as relay:
        config = fanout_data(tmp_path, relay, n)
        filled: list[Path] = []
        # The disk fills the moment the relay has taken the first check-in: every "sent"
        # mark of this fan-out then meets a real ENOSPC.
        relay.on_message = lambda _m: filled or filled.append(fill(tmpfs))
        first = tick(config, 0)
        assert "Traceback" not in first.stdout + first.stderr
        assert filled and os.statvfs(tmpfs).f_bavail == 0
        for minutes in (5, 10, 15):  # later ticks, the disk still full: nothing twice
            tick(config, minutes)
        got = Counter(m.rcpt_tos[0] for m in relay.messages)
        assert len(got) == n and set(got.values()) == {1}, got
        relay.on_message = None

        # The listener: 452 before DATA while the disk is full, 250 again once it is not.
        service = build(load(config))
        port = free_port()
        listener = Listener(
            ListenerOptions("127.0.0.1", port, MB, 30, 20, "mailflow.test", min_free_bytes=4 * MB),
            service.spool,
            service.rcpt_policy,
            lambda _id: None,
            lambda: FANOUT_AT + timedelta(minutes=20),
        )
        listener.start()
        try:
            to = service.svc.keys.address(CHECKIN, 1, PERIOD)
            raw = reply("m0@example.com", to, "Done: chapter 3", "<tmpfs-1@example.com>")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.ehlo()
                assert smtp.mail("m0@example.com") == (452, b"4.3.1 Insufficient system storage")
                filled[0].unlink()  # an operator makes room; nothing is restarted
                smtp.rset()
                smtp.sendmail("m0@example.com", [to], raw)
        finally:
            listener.stop()
        service.ingest(FANOUT_AT + timedelta(minutes=21))
        [report] = service.store.week(PERIOD).reports()
        assert report.message_id == "<tmpfs-1@example.com>"

        last = tick(config, 25)  # the marks are written now; still nothing twice
        assert last.returncode == 0, last.stderr
        assert [o.status for o in service.store.week(PERIOD).outgoings()] == [SENT] * n
        assert len(relay.messages) == n


# -- the fault hook ------------------------------------------------------------------------------


def spooled_reply(service: App, body: str, mid: str) -> str:
    to = service.svc.keys.address(CHECKIN, 1, PERIOD)
    return service.spool.put(
        reply("m0@example.com", to, body, mid),
        mail_from="m0@example.com",
        rcpt_tos=[to],
        peer="127.0.0.1:1",
        received_at=FANOUT_AT + timedelta(hours=1),
    )


def test_a_reply_met_by_a_full_disk_waits_in_the_spool_and_is_stored_later(
    tmp_path: Path,
) -> None:
    with RecordingSMTPServer() as relay:
        service = build(load(fanout_data(tmp_path, relay, 2)))
        service.tick(FANOUT_AT)
        disk = FaultyDisk()
        service.store.disk = disk
        disk.full = True
        spooled_reply(service, "Done: chapter 3", "<full-1@example.com>")
        out = service.ingest(FANOUT_AT + timedelta(hours=1))  # said, not raised
        assert any("1 message waits in the spool" in e and "No space left" in e for e in out.errors)
        assert service.spool.count_pending() == 1 and service.spool.quarantined() == []
        disk.full = False
        service.ingest(FANOUT_AT + timedelta(hours=1, minutes=1))
        assert [r.message_id for r in service.store.week(PERIOD).reports()] == [
            "<full-1@example.com>"
        ]
        assert service.spool.count_pending() == 0


def test_a_command_met_by_a_full_disk_is_not_quarantined(tmp_path: Path) -> None:
    with RecordingSMTPServer() as relay:
        service = build(load(fanout_data(tmp_path, relay, 2)))
        service.tick(FANOUT_AT)
        disk = FaultyDisk()
        service.outbox.disk = disk  # the receipt cannot be written
        disk.full = True
        spooled_reply(service, "pause 2 weeks", "<full-2@example.com>")
        with contextlib.suppress(Exception):  # either way, it must stay in the spool
            service.ingest(FANOUT_AT + timedelta(hours=1))
        assert service.spool.quarantined() == []
        disk.full = False
        service.ingest(FANOUT_AT + timedelta(hours=1, minutes=1))
        assert service.store.core().partnership(1).status == "paused"  # type: ignore[union-attr]


def test_status_counts_held_mail(tmp_path: Path) -> None:
    import json

    with RecordingSMTPServer() as relay:
        config = fanout_data(tmp_path, relay, 1)
        service = build(load(config))
        spooled_reply(service, "Done: x", "<held-1@example.com>")
        result = subprocess.run(
            [str(VENV_BIN / "mailflow"), *now_args(FANOUT_AT), "--config", str(config)]
            + ["status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        status = json.loads(result.stdout)
        assert status["held"] == {"messages": 1, "bytes": pytest.approx(400, abs=400)}


def test_a_command_met_by_a_lock_held_too_long_waits_and_runs_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a lock held for over a minute (a long `partnerships import`, a stuck CLI)
    turned a member's `pause 2 weeks` into permanent quarantine. Now it waits in the spool."""
    from filelock import FileLock

    from mailflow import store as store_mod

    monkeypatch.setattr(store_mod, "LOCK_TIMEOUT_SECONDS", 0.2)
    with RecordingSMTPServer() as relay:
        service = build(load(fanout_data(tmp_path, relay, 2)))
        service.tick(FANOUT_AT)
        spooled_reply(service, "pause 2 weeks", "<locked-1@example.com>")
        # As another process holding the core file's lock past the timeout.
        other = FileLock(str(service.store.core_path) + ".lock", thread_local=False)
        with other:
            out = service.ingest(FANOUT_AT + timedelta(hours=1))
        assert any("1 message waits in the spool" in e for e in out.errors), out.errors
        assert service.spool.quarantined() == [] and service.spool.count_pending() == 1
        assert service.store.core().partnership(1).status == "active"  # type: ignore[union-attr]
        service.ingest(FANOUT_AT + timedelta(hours=1, minutes=1))
        assert service.store.core().partnership(1).status == "paused"  # type: ignore[union-attr]
        assert service.spool.count_pending() == 0 and service.spool.quarantined() == []
