"""Helpers for the crash, hostile-input and listener tests: configs, tokens and replies.

Builds on test_e2e_week (config file, CLI runner, `serve` subprocess): the config gets extra
`[listener]` keys, and reply addresses are minted the way `serve` does, from the secret in
MAILFLOW_SECRET (set it with monkeypatch so the `serve` subprocess signs with the same key).
"""

from __future__ import annotations

import json
import smtplib
import time
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from conftest import SECRET
from test_e2e_week import DOMAIN, write_config

from mailflow import config as config_mod
from mailflow.schedule import Settings, current_period
from mailflow.store import Store
from mailflow.tokens import CHECKIN, make_token, reply_address


def config_with(
    tmp_path: Path, relay_port: int, listen_port: int, listener: str = "", **schedule: object
) -> Path:
    """test_e2e_week's config, plus raw `key = value` lines in its [listener] table."""
    path = write_config(tmp_path, relay_port, listen_port, **schedule)
    if listener:
        text = path.read_text()
        path.write_text(text.replace("[listener]\n", "[listener]\n" + listener.strip() + "\n", 1))
    return path


def period_now(config_path: Path, pid: int, now: datetime) -> str:
    """The label of partnership `pid`'s current period at `now`, as `serve` computes it."""
    cfg = config_mod.load(config_path)
    core = Store(cfg.service.data_dir).core()
    p = core.partnership(pid)
    assert p is not None, pid
    member = core.person(p.member)
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(member.timezone if member else cfg.service.timezone)
    period = current_period(p, tz, Settings.from_config(cfg.schedule), now)
    assert period is not None, f"partnership {pid} has not started at {now}"
    return period.label


def address_for(pid: int, period: str, kind: str = CHECKIN, secret: str = SECRET) -> str:
    return reply_address(make_token(secret.encode("utf-8"), kind, pid, period), DOMAIN)


def reply(
    sender: str,
    to: str,
    body: str,
    message_id: str,
    subject: str = "Re: your check-in",
    date: datetime | None = None,
) -> bytes:
    """A plain reply as a mail client sends it (CRLF line endings)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    if date is not None:
        msg["Date"] = format_datetime(date)
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def send(port: int, mail_from: str, rcpt: str, raw: bytes, timeout: float = 10) -> None:
    """One message in one session; raises on any refusal."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
        smtp.sendmail(mail_from, [rcpt], raw)


def show(run_ok: object, config: Path, pid: int) -> dict:
    """`partnerships show ID --json` through the given CLI runner (returns stdout)."""
    out = run_ok(config, "partnerships", "show", str(pid), "--json")  # type: ignore[operator]
    return json.loads(out)


def wait_until(check: object, timeout: float, what: str, every: float = 0.1) -> None:
    """Poll `check()` until true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
