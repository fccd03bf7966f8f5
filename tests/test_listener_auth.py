"""Optional STARTTLS and AUTH on the listener: config keys, their checks, and `serve` using them.

`serve` runs as a subprocess with a self-signed certificate made in the test; the client is
smtplib verifying that certificate. A reply is accepted only after STARTTLS and AUTH; a wrong
password gets 535 (answered, not hung).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port
from replytools import SECRET, address_for, config_with, period_now, reply, show, wait_until
from smtp_recorder import RecordingSMTPServer, make_self_signed_cert
from test_e2e_week import WEEKDAY, Serve, add_partnership, ok, run, setup_people, wait_port

from mailflow.config import ConfigError, ListenerConfig, from_mapping

PASSWORD = "correct horse battery staple"


# -- config keys -------------------------------------------------------------------------------


def test_listener_tls_and_auth_keys_are_read_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "mailflow.toml").write_text(
        '[listener]\ntls_cert = "tls/cert.pem"\ntls_key = "/etc/k.pem"\n'
        'require_starttls = true\nauth_username = "mta"\nauth_password_env = "LISTEN_PW"\n'
    )
    from mailflow.config import load

    cfg = load(tmp_path / "mailflow.toml").listener
    assert cfg.tls_cert == tmp_path / "tls" / "cert.pem"  # relative to the config file
    assert cfg.tls_key == Path("/etc/k.pem")
    assert cfg.require_starttls is True
    assert cfg.auth_users({"LISTEN_PW": "pw"}) == {"mta": "pw"}
    # Off by default; empty strings mean "none".
    assert ListenerConfig().auth_users({}) is None
    off = from_mapping({"listener": {"tls_cert": "", "tls_key": ""}}).listener
    assert off.tls_cert is None and off.tls_key is None


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        ({"tls_cert": "c.pem"}, "listener.tls_key: tls_cert and tls_key go together"),
        ({"tls_key": "k.pem"}, "listener.tls_cert: tls_cert and tls_key go together"),
        ({"require_starttls": True}, "listener.require_starttls: needs listener.tls_cert"),
        ({"auth_username": "mta"}, "listener.auth_username: AUTH needs TLS"),
        (
            {"tls_cert": "c", "tls_key": "k", "auth_username": "a b"},
            "listener.auth_username: must not contain spaces",
        ),
        ({"auth_password_env": "MY-PW"}, "listener.auth_password_env: not an environment"),
        ({"require_starttls": "yes"}, "listener.require_starttls: expected true or false"),
    ],
)
def test_inconsistent_listener_security_is_refused(listener: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({"listener": listener})
    assert str(info.value).startswith(message), str(info.value)


def test_missing_auth_password_is_a_start_error(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    config = config_with(
        tmp_path,
        free_port(),
        free_port(),
        f'tls_cert = "{cert}"\ntls_key = "{key}"\nauth_username = "mta"\n'
        'auth_password_env = "MAILFLOW_TEST_UNSET_PASSWORD"',
    )
    proc = run(config, "serve")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: listener.auth_password_env: environment variable MAILFLOW_TEST_UNSET_PASSWORD"
        " is not set (it holds the AUTH password for listener.auth_username)"
    ]


def test_unreadable_certificate_is_one_error_line(tmp_path: Path) -> None:
    config = config_with(
        tmp_path, free_port(), free_port(), 'tls_cert = "missing.pem"\ntls_key = "missing.key"'
    )
    proc = run(config, "serve")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot start: listener: cannot load")
    assert "internal error" not in proc.stderr


# -- serve with STARTTLS + AUTH ------------------------------------------------------------------


@pytest.fixture
def relay() -> Iterator[RecordingSMTPServer]:
    with RecordingSMTPServer() as server:
        yield server


def test_serve_accepts_a_reply_only_after_starttls_and_auth(
    tmp_path: Path, relay: RecordingSMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILFLOW_SECRET", SECRET)
    monkeypatch.setenv("MAILFLOW_LISTENER_PASSWORD", PASSWORD)
    cert, key = make_self_signed_cert(tmp_path)
    listen = free_port()
    config = config_with(
        tmp_path,
        relay.port,
        listen,
        f'tls_cert = "{cert}"\ntls_key = "{key}"\nrequire_starttls = true\nauth_username = "mta"',
    )
    today = datetime.now(UTC)  # the test's one clock, handed to every command
    setup_people(config, now=today.isoformat())
    pid = add_partnership(
        config,
        relay,
        "ada@example.com",
        "grace@example.com",
        "public speaking",
        "--checkin-day",
        WEEKDAY[today.weekday()],
        "--checkin-time",
        "00:00",
        now=(today - timedelta(days=1)).isoformat(),  # made the day before its check-in
    )
    to = address_for(pid, period_now(config, pid, today))
    raw = reply("Ada <ada@example.com>", to, "Done: spoke at standup", "<tls-1@example.com>")
    trust = ssl.create_default_context(cafile=str(cert))
    serve = Serve(config, tmp_path / "serve.log")
    try:
        wait_port(listen)
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as c:
            c.ehlo()
            assert c.has_extn("starttls")
            assert not c.has_extn("auth")  # never offered in the clear
            assert c.mail("ada@example.com")[0] == 530  # STARTTLS first
            c.starttls(context=trust)  # verifies the certificate and 127.0.0.1
            c.ehlo()
            assert c.has_extn("auth")
            assert c.mail("ada@example.com")[0] == 530  # then AUTH
            with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
                c.login("mta", "wrong password")
            assert wrong.value.smtp_code == 535
            with pytest.raises(smtplib.SMTPAuthenticationError) as unknown:
                c.login("root", PASSWORD)
            assert unknown.value.smtp_code == 535
            c.login("mta", PASSWORD)
            assert c.sendmail("ada@example.com", [to], raw) == {}

        def stored() -> bool:
            return len(show(ok, config, pid)["reports"]) == 1

        wait_until(stored, 20, "the reply to be stored")
        [report] = show(ok, config, pid)["reports"]
        assert report["message_id"] == "<tls-1@example.com>"
        assert "spoke at standup" in report["text"]
    finally:
        serve.stop()
    assert serve.proc.returncode == 0
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log
    assert PASSWORD not in log
