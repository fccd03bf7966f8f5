"""International addresses end to end (issue 17): IDN domains, non-ASCII local parts, SMTPUTF8.

Driven as a user would: the CLI, `serve` on loopback with its real listener, and a recording
relay that offers SMTPUTF8 or does not. Fixed dates (a week from Friday 27 November 2026),
handed to every process with `--now`, so nothing depends on today's date.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import die_with_parent, free_port
from smtp_recorder import RecordedMessage, RecordingSMTPServer, text_of

MAILFLOW = str(Path(sys.executable).parent / "mailflow")
DOMAIN = "hot.example.com"
ADMIN = "admin@example.com"
FRIDAY_BEFORE = "2026-11-27T12:00:00+00:00"
MONDAY = "2026-11-30T09:00:00+00:00"
NEXT_MONDAY = "2026-12-07T09:00:00+00:00"
JUERGEN = "jürgen@bücher.example"
WANG = "王芳@例子.example"
KURT = "kurt@bücher.example"
KURT_ASCII = "kurt@xn--bcher-kva.example"
GOAL = "在全员大会上演讲 🎤"
WHY = "أريد أن أقود مراجعات التصميم"
SADDLE = "फिर से कोशिश करें"


def write_config(tmp_path: Path, relay_port: int, listen_port: int, smtputf8: str = "") -> Path:
    lines = [
        "[service]",
        f'domain = "{DOMAIN}"',
        f'admin_address = "{ADMIN}"',
        f'data_dir = "{tmp_path / "data"}"',
        'timezone = "UTC"',
        "[listener]",
        'host = "127.0.0.1"',
        f"port = {listen_port}",
        "[relay]",
        'host = "127.0.0.1"',
        f"port = {relay_port}",
        "timeout_seconds = 5",
        *([f'smtputf8 = "{smtputf8}"'] if smtputf8 else []),
        "[schedule]",
        "digest_delay_minutes = 0",
        "tick_seconds = 1",
    ]
    path = tmp_path / "mailflow.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(config: Path, *args: str, now: str = FRIDAY_BEFORE) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [MAILFLOW, "--now", now, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(config: Path, *args: str, now: str = FRIDAY_BEFORE) -> str:
    proc = run(config, *args, now=now)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def add_person(config: Path, email: str, name: str, dept: str) -> subprocess.CompletedProcess[str]:
    proc = run(config, "people", "add", email, "--name", name, "--department", dept)
    assert proc.returncode == 0, proc.stderr
    return proc


def add_partnership(config: Path, member: str, partner: str) -> tuple[int, str]:
    """An accepted partnership starting Monday 30 November; (its id, the command's output)."""
    out = ok(
        config,
        "partnerships",
        "add",
        "--member",
        member,
        "--partner",
        partner,
        "--skill",
        "public speaking",
        "--goal",
        f"2027-06-01 {GOAL}",
        "--why",
        WHY,
        "--saddle",
        SADDLE,
        "--start",
        "2026-11-30",
        "--accepted",
    )
    return int(out.strip().splitlines()[-1]), out


def header_block(msg: RecordedMessage) -> bytes:
    return msg.raw.split(b"\r\n\r\n", 1)[0]


def reply(to: RecordedMessage, sender: str, body: str) -> EmailMessage:
    answer = EmailMessage(policy=policy.SMTPUTF8)
    answer["From"] = sender
    answer["To"] = to.message["Reply-To"]
    answer["Subject"] = "Re: " + str(to.message["Subject"])
    answer["Message-ID"] = f"<reply-{time.monotonic_ns()}@example.net>"
    answer["In-Reply-To"] = to.message["Message-ID"]
    answer.set_content(f"{body}\n")
    return answer


def send(port: int, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        assert smtp.send_message(msg) == {}


def wait_reports(config: Path, pid: int, n: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        shown = json.loads(ok(config, "partnerships", "show", str(pid), "--json", now=MONDAY))
        if len(shown["reports"]) >= n or time.monotonic() > deadline:
            return shown["reports"]
        time.sleep(0.2)


class Serve:
    """`serve` as of `now` (its clock runs on from there), listening on `port`."""

    def __init__(self, config: Path, log: Path, port: int, now: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [MAILFLOW, "--now", now, "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            preexec_fn=die_with_parent,
        )
        import socket

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"serve did not listen on {port}: {log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        assert "Traceback" not in self.log.read_text(errors="replace")


@pytest.fixture
def utf8_relay() -> Iterator[RecordingSMTPServer]:
    with RecordingSMTPServer() as server:
        yield server


@pytest.fixture
def ascii_relay() -> Iterator[RecordingSMTPServer]:
    with RecordingSMTPServer(smtputf8=False) as server:
        yield server


def test_a_week_between_juergen_and_wang_fang_over_smtputf8(
    tmp_path: Path, utf8_relay: RecordingSMTPServer
) -> None:
    relay, listen = utf8_relay, free_port()
    config = write_config(tmp_path, relay.port, listen)
    add_person(config, JUERGEN, "Jürgen Groß", "Einkauf")
    add_person(config, WANG, "王芳", "销售部")
    # Either spelling of the same address is the same person.
    again = run(
        config, "people", "add", "JÜRGEN@xn--bcher-kva.example", "--name", "J", "--department", "E"
    )
    assert again.returncode != 0 and "already exists" in again.stderr
    pid, _ = add_partnership(config, JUERGEN, WANG)

    intros = relay.wait_for(2)
    assert sorted(m.rcpt_tos for m in intros) == sorted([(JUERGEN,), (WANG,)])
    for m in intros:
        assert "SMTPUTF8" in m.mail_options
        assert m.rcpt_tos[0].encode() in header_block(m)  # RFC 6532: the To in UTF-8
    to_wang = next(m for m in intros if m.rcpt_tos == (WANG,))
    assert "Jürgen Groß" in text_of(to_wang) and GOAL in text_of(to_wang)
    relay.clear()

    serve = Serve(config, tmp_path / "serve.log", listen, MONDAY)
    try:
        [checkin] = relay.wait_for(1, timeout=20)
        assert checkin.rcpt_tos == (JUERGEN,)
        assert "SMTPUTF8" in checkin.mail_options
        assert str(checkin.message["To"]).endswith(f"<{JUERGEN}>")
        assert GOAL in text_of(checkin)
        # He answers from his client, over SMTPUTF8, with his address in UTF-8.
        send(
            listen, reply(checkin, f"Jürgen Groß <{JUERGEN}>", "Done: 练习了两次 🎉\nSetback: none")
        )
        [report] = wait_reports(config, pid, 1)
        assert "练习了两次 🎉" in report["text"] and report["setback"] is False
        digest = relay.wait_for(2, timeout=20)[1]
        assert digest.rcpt_tos == (WANG,)
        assert "SMTPUTF8" in digest.mail_options
        assert "练习了两次 🎉" in text_of(digest)
        assert "Jürgen" in str(digest.message["Subject"]) or "Jürgen" in text_of(digest)
    finally:
        serve.stop()
    assert len(relay.messages) == 2

    # The next week goes on; the export keeps every script.
    out = ok(config, "tick", "--now", NEXT_MONDAY, now=NEXT_MONDAY)
    assert f"queued checkin to {JUERGEN}" in out
    assert relay.wait_for(3)[2].rcpt_tos == (JUERGEN,)
    exported = json.loads(ok(config, "export", "--format", "json", now=NEXT_MONDAY))
    assert "练习了两次 🎉" in json.dumps(exported, ensure_ascii=False)
    csv_text = ok(config, "export", now=NEXT_MONDAY)
    assert "练习了两次 🎉" in csv_text
    people = ok(config, "people", "list", now=NEXT_MONDAY)
    assert JUERGEN in people and WANG in people and "王芳" in people


def test_kurt_at_an_idn_domain_over_a_relay_without_smtputf8(
    tmp_path: Path, ascii_relay: RecordingSMTPServer
) -> None:
    relay, listen = ascii_relay, free_port()
    config = write_config(tmp_path, relay.port, listen)
    add_person(config, KURT, "Kurt Weiß", "Einkauf")
    add_person(config, "ada@example.com", "Ada", "Eng")
    pid, _ = add_partnership(config, KURT, "ada@example.com")

    intros = relay.wait_for(2)
    to_kurt = next(m for m in intros if m.rcpt_tos != ("ada@example.com",))
    # Punycode on the wire, in the envelope and the headers; no SMTPUTF8 asked for.
    assert to_kurt.rcpt_tos == (KURT_ASCII,)
    assert to_kurt.raw.isascii() and "SMTPUTF8" not in to_kurt.mail_options
    assert str(to_kurt.message["To"]).endswith(f"<{KURT_ASCII}>")
    relay.clear()

    serve = Serve(config, tmp_path / "serve.log", listen, MONDAY)
    try:
        [checkin] = relay.wait_for(1, timeout=20)
        assert checkin.rcpt_tos == (KURT_ASCII,) and checkin.raw.isascii()
        # A client that writes the A-label form, and one that writes the Unicode form.
        send(listen, reply(checkin, f"Kurt <{KURT_ASCII}>", "Done: first rehearsal"))
        assert len(wait_reports(config, pid, 1)) == 1
        send(listen, reply(checkin, f"Kurt Weiß <{KURT}>", "Done: second rehearsal"))
        reports = wait_reports(config, pid, 2)
        assert sorted(r["text"].split("\n")[0] for r in reports) == [
            "Done: first rehearsal",
            "Done: second rehearsal",
        ]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            digests = [m for m in relay.messages if m.rcpt_tos == ("ada@example.com",)]
            if any("second rehearsal" in text_of(m) for m in digests):
                break
            time.sleep(0.1)
        assert any("second rehearsal" in text_of(m) for m in digests)
        assert all(m.raw.isascii() for m in relay.messages)
    finally:
        serve.stop()
    status = json.loads(ok(config, "status", "--json", now=MONDAY))
    assert status["quarantined"] == 0


def test_a_non_ascii_local_part_without_smtputf8_fails_once_and_the_admin_is_told(
    tmp_path: Path, ascii_relay: RecordingSMTPServer
) -> None:
    relay = ascii_relay
    config = write_config(tmp_path, relay.port, free_port())
    add_person(config, JUERGEN, "Jürgen Groß", "Einkauf")
    add_person(config, "ada@example.com", "Ada", "Eng")
    pid, out = add_partnership(config, JUERGEN, "ada@example.com")
    assert f"cannot deliver to {JUERGEN}: a non-ASCII local part" in out
    assert f"{JUERGEN} marked bouncing (intro, partnership {pid})" in out  # names the mail
    got = relay.wait_for(2)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(["ada@example.com", ADMIN])
    notice = next(m for m in got if m.rcpt_tos == (ADMIN,))
    assert "SMTPUTF8" in text_of(notice) and KURT_ASCII not in text_of(notice)
    assert JUERGEN in text_of(notice)

    # The week's check-in fails once, without a new notice, a retry or a traceback.
    proc = run(config, "tick", "--now", MONDAY, now=MONDAY)
    assert proc.returncode == 0, proc.stderr
    assert f"failed checkin:{pid}:2026-W49" in proc.stdout
    assert "SMTPUTF8" in proc.stdout
    for later in ("2026-11-30T09:05:00+00:00", "2026-11-30T10:30:00+00:00"):
        assert ok(config, "tick", "--now", later, now=later).strip() == "nothing due"
    time.sleep(0.3)
    assert len(relay.messages) == 2
    status = json.loads(ok(config, "status", "--json", now=MONDAY))
    assert status["bouncing"] == [JUERGEN]


def test_smtputf8_never_warns_up_front_and_sends_idn_domains_as_a_labels(
    tmp_path: Path, utf8_relay: RecordingSMTPServer
) -> None:
    relay = utf8_relay
    config = write_config(tmp_path, relay.port, free_port(), smtputf8="never")
    warned = add_person(config, WANG, "王芳", "销售部")
    assert f"warning: {WANG}: a non-ASCII local part" in warned.stderr
    assert 'smtputf8 = "never"' in warned.stderr
    quiet = add_person(config, KURT, "Kurt Weiß", "Einkauf")
    assert "warning" not in quiet.stderr
    csv = tmp_path / "people.csv"
    csv.write_text(
        "email,name,department\n"
        "jürgen@bücher.example,Jürgen Groß,Einkauf\n"
        "li@例子.example,李,销售\n",
        encoding="utf-8",
    )
    imported = run(config, "people", "import", str(csv))
    assert imported.returncode == 0, imported.stderr
    assert imported.stderr.count("warning:") == 1 and JUERGEN in imported.stderr

    add_partnership(config, KURT, WANG)
    [to_kurt, notice] = sorted(relay.wait_for(2), key=lambda m: m.rcpt_tos != (KURT_ASCII,))
    assert to_kurt.rcpt_tos == (KURT_ASCII,) and to_kurt.raw.isascii()
    assert "SMTPUTF8" not in to_kurt.mail_options  # the relay offers it; "never" wins
    assert notice.rcpt_tos == (ADMIN,) and WANG in text_of(notice)


def test_one_failing_partnership_never_stops_a_tick(
    tmp_path: Path, utf8_relay: RecordingSMTPServer
) -> None:
    relay = utf8_relay
    config = write_config(tmp_path, relay.port, free_port())
    for email, name, dept in (
        ("ada@example.com", "Ada", "Eng"),
        ("grace@example.com", "Grace", "Ops"),
        ("linus@example.com", "Linus", "Eng"),
        ("barbara@example.com", "Barbara", "Ops"),
    ):
        add_person(config, email, name, dept)
    bad, _ = add_partnership(config, "ada@example.com", "grace@example.com")
    good, _ = add_partnership(config, "linus@example.com", "barbara@example.com")
    relay.wait_for(4)
    relay.clear()
    # A record edited by hand: a name with a line break can never be a header.
    shards = [
        path
        for path in (tmp_path / "data" / "db" / "people").glob("*.json")
        if '"Ada"' in path.read_text(encoding="utf-8")
    ]
    assert len(shards) == 1
    text = shards[0].read_text(encoding="utf-8")
    assert text.count('"Ada"') == 1
    shards[0].write_text(text.replace('"Ada"', '"Ada\\r\\nBcc: x@evil.example"'), encoding="utf-8")

    proc = run(config, "tick", "--now", MONDAY, now=MONDAY)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: checkin for partnership ")
    assert f"partnership {bad} " in errors[0] and "control character" in errors[0]
    assert f"queued checkin to linus@example.com (checkin:{good}:2026-W49)" in proc.stdout
    assert [m.rcpt_tos for m in relay.wait_for(1)] == [("linus@example.com",)]
    assert not any(b"evil" in m.raw for m in relay.messages)
