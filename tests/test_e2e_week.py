"""The week by email, driven as a user would: the CLI, `serve` on loopback, a real relay.

People and partnerships are created with the CLI; `serve` runs as its own process with its
listener on a free loopback port and a recording SMTP server as its relay. The check-in
arrives at the relay, the member answers it with smtplib at its Reply-To, and the partner's
digest arrives with the setback and the back-in-the-saddle text. Time-travel cases use
`mailflow tick --now`.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import die_with_parent, free_port, now_args
from smtp_recorder import RecordedMessage, RecordingSMTPServer, html_of, text_of

MAILFLOW = str(Path(sys.executable).parent / "mailflow")
DOMAIN = "hot.example.com"
WEEKDAY = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def write_config(tmp_path: Path, relay_port: int, listen_port: int, **schedule: object) -> Path:
    # These tests run at the wall clock's time of day, which may be anyone's night: quiet
    # hours are off here (test_human_hours holds mail for them on a simulated clock).
    sched = {"digest_delay_minutes": 0, "tick_seconds": 1, "quiet_hours": "", **schedule}
    lines = [
        "[service]",
        f'domain = "{DOMAIN}"',
        f'data_dir = "{tmp_path / "data"}"',
        'timezone = "UTC"',
        "[listener]",
        'host = "127.0.0.1"',
        f"port = {listen_port}",
        "[relay]",
        'host = "127.0.0.1"',
        f"port = {relay_port}",
        "timeout_seconds = 5",
        # The mail path under test; the admin site that serve also starts is tested on its
        # own (tests/test_web_*.py), and parallel serves would all ask for its port.
        "[web]",
        "enabled = false",
        "[schedule]",
        *(f"{k} = {json.dumps(v)}" for k, v in sched.items()),
    ]
    path = tmp_path / "mailflow.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(config: Path, *args: str, now: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mailflow --now NOW --config CONFIG ARGS...`; NOW defaults to this test's wall clock."""
    when = now_args(datetime.fromisoformat(now)) if now else now_args()
    proc = subprocess.run(
        [MAILFLOW, *when, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(config: Path, *args: str, now: str | None = None) -> str:
    proc = run(config, *args, now=now)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def setup_people(config: Path, now: str | None = None) -> None:
    ok(config, "people", "add", "ada@example.com", "--name", "Ada", "--department", "Eng", now=now)
    ok(
        config,
        "people",
        "add",
        "grace@example.com",
        "--name",
        "Grace",
        "--department",
        "Sales",
        "--offers",
        "public speaking",
        now=now,
    )
    for email, name, dept in (("linus", "Linus", "Ops"), ("barbara", "Barbara", "Legal")):
        ok(
            config,
            "people",
            "add",
            f"{email}@example.com",
            "--name",
            name,
            "--department",
            dept,
            now=now,
        )


def add_partnership(
    config: Path,
    relay: RecordingSMTPServer,
    member: str,
    partner: str,
    skill: str,
    *extra: str,
    now: str | None = None,
) -> int:
    """Add an accepted partnership as of `now` (default: the test's wall clock), with a goal
    200 days later; its two introductions are checked and cleared."""
    created = datetime.fromisoformat(now) if now else datetime.now(UTC)
    before = len(relay.messages)
    out = ok(
        config,
        "partnerships",
        "add",
        "--member",
        member,
        "--partner",
        partner,
        "--skill",
        skill,
        "--goal",
        f"{(created + timedelta(days=200)).date()} Give the all-hands talk",
        "--why",
        "I want to lead design reviews",
        "--saddle",
        "Book the room again",
        "--accepted",
        *extra,
        now=now,
    )
    intros = relay.wait_for(before + 2)[before:]
    assert sorted(m.rcpt_tos[0] for m in intros) == sorted([member, partner])
    relay.clear()
    return int(out.strip().splitlines()[-1])


def reply_to(msg: RecordedMessage, sender: str, body: str) -> EmailMessage:
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = msg.message["Reply-To"]
    reply["Subject"] = "Re: " + str(msg.message["Subject"])
    reply["Message-ID"] = f"<reply-{time.monotonic_ns()}@example.com>"
    reply["In-Reply-To"] = msg.message["Message-ID"]
    quoted = "\n".join("> " + line for line in text_of(msg).splitlines())
    reply.set_content(f"{body}\n\nOn Monday, mailflow wrote:\n{quoted}\n")
    return reply


@pytest.fixture
def relay() -> Iterator[RecordingSMTPServer]:
    with RecordingSMTPServer() as server:
        yield server


class Serve:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [MAILFLOW, *now_args(), "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            preexec_fn=die_with_parent,
        )

    def stop(self) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=15)
        return time.monotonic() - started


def wait_port(port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def due_now_partnership(config: Path, relay: RecordingSMTPServer) -> int:
    """People, and Ada's partnership with a check-in at 00:00 UTC today: due when serve starts.

    "Today" is the test's wall clock (shifted in CI's guard run), handed to every command. The
    partnership was made a day before (a check-in moment before its creation is not asked)."""
    now = datetime.now(UTC)
    setup_people(config, now=now.isoformat())
    return add_partnership(
        config,
        relay,
        "ada@example.com",
        "grace@example.com",
        "public speaking",
        "--checkin-day",
        WEEKDAY[now.weekday()],
        "--checkin-time",
        "00:00",
        now=(now - timedelta(days=1)).isoformat(),
    )


def test_week_by_email_end_to_end(tmp_path: Path, relay: RecordingSMTPServer) -> None:
    listen = free_port()
    config = write_config(tmp_path, relay.port, listen)
    pid = due_now_partnership(config, relay)
    serve = Serve(config, tmp_path / "serve.log")
    try:
        wait_port(listen)
        [checkin] = relay.wait_for(1, timeout=20)
        assert checkin.rcpt_tos == ("ada@example.com",)
        assert checkin.mail_from == f"bounces@{DOMAIN}"
        headers = checkin.message
        assert str(headers["Reply-To"]).startswith("checkin+")
        assert str(headers["Reply-To"]).endswith(f"@{DOMAIN}")
        assert headers["Auto-Submitted"] == "auto-generated"
        assert headers["X-Auto-Response-Suppress"] == "All"
        assert str(headers["Message-ID"]).endswith(f"@{DOMAIN}>")
        assert "Give the all-hands talk" in text_of(checkin)
        assert "Setback:" in text_of(checkin)

        # The member replies from her mail client to the Reply-To address.
        answer = reply_to(
            checkin,
            "Ada <ada@example.com>",
            "Done: rehearsed twice\nSetback: I missed Thursday's practice\n"
            "Next: book the room for Thursday\n\nSent from my iPhone",
        )
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as smtp:
            refused = smtp.send_message(answer)
        assert refused == {}
        messages = relay.wait_for(2, timeout=20)
        digest = messages[1]
        assert digest.rcpt_tos == ("grace@example.com",)
        text = text_of(digest)
        assert "Book the room again" in text  # the agreed back-in-the-saddle text
        assert "I want to lead design reviews" in text  # the why
        assert "I missed Thursday's practice" in text
        assert "Sent from my iPhone" not in text  # signature stripped
        assert "mailflow wrote" not in text  # quoted history stripped
        assert text.index("Book the room again") < text.index("rehearsed twice")
        assert "Book the room again" in html_of(digest)

        shown = json.loads(ok(config, "partnerships", "show", str(pid), "--json"))
        [stored] = shown["reports"]
        assert stored["setback"] is True
        assert stored["message_id"] == answer["Message-ID"]
        assert "rehearsed twice" in stored["text"]

        # The same message delivered twice is stored once.
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as smtp:
            smtp.send_message(answer)
        time.sleep(1.5)
        shown = json.loads(ok(config, "partnerships", "show", str(pid), "--json"))
        assert len(shown["reports"]) == 1

        # A reply to the right address from someone else is quarantined, never counted.
        forged = reply_to(checkin, "Mallory <mallory@example.com>", "Done: everything")
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as smtp:
            smtp.send_message(forged)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = json.loads(ok(config, "status", "--json"))
            if status["quarantined"]:
                break
            time.sleep(0.2)
        assert status["quarantined"] == 1
        assert "sender mismatch" in status["quarantine"][0]["reason"]
        assert status["replied"] == 1 and status["setbacks"] == 1

        # Mail to anything but our reply addresses is refused: never an open relay.
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("x@example.org")
            code, _ = smtp.rcpt("someone@elsewhere.example.org")
            assert code == 550
            code, _ = smtp.rcpt(f"checkin+forged-token@{DOMAIN}")
            assert code == 550
    finally:
        took = serve.stop()
    assert serve.proc.returncode == 0, (tmp_path / "serve.log").read_text()
    assert took < 5
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log
    assert len(relay.messages) == 2  # nothing else was sent


def test_quarantine_release_while_serve_runs(tmp_path: Path, relay: RecordingSMTPServer) -> None:
    """The admin's commands are separate processes next to a running `serve`: a reply from
    the member's private address is quarantined, listed and released; the partner gets the
    digest once (the release's own send and serve's sender never both send it)."""
    listen = free_port()
    config = write_config(tmp_path, relay.port, listen)
    pid = due_now_partnership(config, relay)
    serve = Serve(config, tmp_path / "serve.log")
    try:
        wait_port(listen)
        [checkin] = relay.wait_for(1, timeout=20)
        answer = reply_to(
            checkin,
            "Ada at home <ada@home.example>",
            "Rough week: I missed Thursday's practice.\n\nNext week: book the room\n\n"
            "pause 2 weeks",
        )
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as smtp:
            assert smtp.send_message(answer) == {}
        deadline = time.monotonic() + 15
        found: list[dict[str, object]] = []
        while not found and time.monotonic() < deadline:
            found = json.loads(ok(config, "quarantine", "list", "--json"))
            time.sleep(0.2)
        [item] = found
        assert item["sender"] == "ada@home.example" and item["partnership"] == pid
        assert str(item["reason"]).startswith("sender mismatch")
        assert "ada@home.example" in ok(config, "status")

        out = ok(config, "quarantine", "release", str(item["id"]))

        assert "not run (sent from ada@home.example): pause 2 weeks" in out
        messages = relay.wait_for(4, timeout=20)
        time.sleep(2.5)  # serve ticks every second: give it two chances to send anything twice
        messages = relay.messages
        to_grace = [m for m in messages if m.rcpt_tos == ("grace@example.com",)]
        # Ada: the note that it counts, and the request to confirm the held pause.
        to_ada = sorted(
            (m for m in messages[1:] if m.rcpt_tos == ("ada@example.com",)),
            key=lambda m: str(m.message["Subject"]).startswith("Please confirm"),
        )
        assert len(to_grace) == 1 and len(to_ada) == 2 and len(messages) == 4
        assert str(to_ada[1].message["Subject"]).startswith("Please confirm: pause 2 weeks")
        assert "I missed Thursday's practice" in text_of(to_grace[0])
        assert "Book the room again" in text_of(to_grace[0])  # the setback banner's text
        assert "pause 2 weeks" in text_of(to_ada[0])  # she hears what was not run
        shown = json.loads(ok(config, "partnerships", "show", str(pid), "--json"))
        assert [r["setback"] for r in shown["reports"]] == [True]
        assert shown["status"] == "active"
        assert json.loads(ok(config, "quarantine", "list", "--json")) == []
    finally:
        took = serve.stop()
    assert serve.proc.returncode == 0 and took < 5
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# The time-travel tests set everything up as of the Friday before their first tick.
FRIDAY_BEFORE = "2026-11-27T12:00:00+00:00"


def test_no_report_digest_and_repeat_tick(tmp_path: Path, relay: RecordingSMTPServer) -> None:
    config = write_config(tmp_path, relay.port, free_port())
    setup_people(config, now=FRIDAY_BEFORE)
    pid = add_partnership(
        config,
        relay,
        "linus@example.com",
        "barbara@example.com",
        "sql",
        "--start",
        "2026-11-30",
        now=FRIDAY_BEFORE,
    )
    monday = "2026-11-30T09:00:00+00:00"
    out = ok(config, "tick", "--now", monday)
    assert f"queued checkin to linus@example.com (checkin:{pid}:2026-W49)" in out
    assert relay.wait_for(1)[0].rcpt_tos == ("linus@example.com",)
    # A restart mid-week (a new process) sends no second check-in.
    assert ok(config, "tick", "--now", "2026-12-01T09:00:00+00:00").strip() == "nothing due"
    out = ok(config, "tick", "--now", "2026-12-02T09:00:00+00:00")
    assert "queued reminder to linus@example.com" in out
    out = ok(config, "tick", "--now", "2026-12-04T09:00:00+00:00")
    assert "queued no_report to barbara@example.com" in out
    messages = relay.wait_for(3)
    no_report = messages[2]
    assert no_report.rcpt_tos == ("barbara@example.com",)
    assert "no report" in text_of(no_report).lower()
    assert "I want to lead design reviews" in text_of(no_report)
    # A repeat tick sends nothing new.
    assert ok(config, "tick", "--now", "2026-12-04T09:05:00+00:00").strip() == "nothing due"
    assert len(relay.messages) == 3
    status = json.loads(ok(config, "status", "--json", "--now", "2026-12-04T10:00:00+00:00"))
    assert status["missing"] == 1 and status["sent"] == 1


def test_relay_down_then_up_nothing_lost_or_doubled(
    tmp_path: Path, relay: RecordingSMTPServer
) -> None:
    config = write_config(tmp_path, relay.port, free_port())
    setup_people(config, now=FRIDAY_BEFORE)
    add_partnership(
        config,
        relay,
        "ada@example.com",
        "grace@example.com",
        "public speaking",
        "--start",
        "2026-11-30",
        now=FRIDAY_BEFORE,
    )
    add_partnership(
        config,
        relay,
        "linus@example.com",
        "barbara@example.com",
        "sql",
        "--start",
        "2026-11-30",
        now=FRIDAY_BEFORE,
    )
    relay.down()
    out = ok(config, "tick", "--now", "2026-11-30T09:00:00+00:00")
    assert "deferred 2 messages" in out
    status = json.loads(ok(config, "status", "--json", "--now", "2026-11-30T09:00:00+00:00"))
    assert status["outgoing_queued"] == 2
    relay.up()
    # Before the backoff has passed nothing is retried.
    out = ok(config, "tick", "--now", "2026-11-30T09:00:10+00:00")
    assert relay.messages == []
    out = ok(config, "tick", "--now", "2026-11-30T09:30:00+00:00")
    assert "sent 2 messages" in out
    got = sorted(m.rcpt_tos[0] for m in relay.wait_for(2))
    assert got == ["ada@example.com", "linus@example.com"]
    ok(config, "tick", "--now", "2026-11-30T10:30:00+00:00")
    time.sleep(0.2)
    assert len(relay.messages) == 2


def test_dst_change_checkins_follow_local_time(tmp_path: Path, relay: RecordingSMTPServer) -> None:
    config = write_config(tmp_path, relay.port, free_port())
    setup = "2026-10-16T12:00:00+00:00"  # the Friday before the first tick
    ok(
        config,
        "people",
        "add",
        "m@example.com",
        "--name",
        "M",
        "--department",
        "A",
        "--timezone",
        "Europe/Berlin",
        now=setup,
    )
    ok(
        config,
        "people",
        "add",
        "p@example.com",
        "--name",
        "P",
        "--department",
        "B",
        "--timezone",
        "America/New_York",
        now=setup,
    )
    add_partnership(
        config, relay, "m@example.com", "p@example.com", "sql", "--start", "2026-10-19", now=setup
    )
    # 09:00 Berlin is 07:00 UTC in summer time (19 Oct) and 08:00 UTC after 25 Oct.
    assert ok(config, "tick", "--now", "2026-10-19T06:59:00+00:00").count("queued") == 0
    assert "queued checkin" in ok(config, "tick", "--now", "2026-10-19T07:00:00+00:00")
    assert "queued checkin" not in ok(config, "tick", "--now", "2026-10-26T07:30:00+00:00")
    assert "queued checkin" in ok(config, "tick", "--now", "2026-10-26T08:00:00+00:00")
    to_member = [m for m in relay.wait_for(2) if m.rcpt_tos == ("m@example.com",)]
    assert len(to_member) == 2


def test_tick_refuses_bad_now(tmp_path: Path, relay: RecordingSMTPServer) -> None:
    config = write_config(tmp_path, relay.port, free_port())
    proc = run(config, "tick", "--now", "next tuesday")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: --now:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_runs_a_week(tmp_path: Path) -> None:
    proc = subprocess.run(
        [MAILFLOW, "demo"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "=== check-in to the member ===" in out
    assert "=== digest to the partner ===" in out
    digest = out.split("=== digest to the partner ===")[1]
    assert "SETBACK" in digest
    assert "Book the room for Thursday" in digest


def test_serve_refuses_to_start_with_a_broken_template(tmp_path: Path) -> None:
    override = tmp_path / "mytemplates"
    override.mkdir()
    (override / "checkin.txt.j2").write_text("Hi {{ member.name }\n")
    config = write_config(tmp_path, free_port(), free_port())
    with config.open("a") as fh:
        fh.write(f'[templates]\ndir = "{override}"\n')
    proc = subprocess.run(
        [MAILFLOW, "--config", str(config), "serve"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: templates have errors")
    assert "checkin.txt.j2:1:" in last
    check = run(config, "templates", "check")
    assert check.returncode == 1
    assert f"{override / 'checkin.txt.j2'}:1:" in check.stderr


def test_serve_with_an_ingest_process(tmp_path: Path, relay: RecordingSMTPServer) -> None:
    """[listener] ingest_process: replies are parsed in a child, which stops with serve."""
    listen = free_port()
    config = write_config(tmp_path, relay.port, listen)
    text = config.read_text().replace("[listener]\n", "[listener]\ningest_process = true\n")
    config.write_text(text)
    pid = due_now_partnership(config, relay)
    serve = Serve(config, tmp_path / "serve.log")
    try:
        wait_port(listen)
        [checkin] = relay.wait_for(1, timeout=20)
        children = Path(f"/proc/{serve.proc.pid}/task/{serve.proc.pid}/children").read_text()
        assert children.split(), "no ingest process"
        answer = reply_to(checkin, "ada@example.com", "Done: practised\nSetback: none")
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as smtp:
            smtp.send_message(answer)
        deadline = time.monotonic() + 20
        reports: list[dict] = []
        while time.monotonic() < deadline and not reports:
            reports = json.loads(ok(config, "partnerships", "show", str(pid), "--json"))["reports"]
            time.sleep(0.2)
        assert [r["message_id"] for r in reports] == [answer["Message-ID"]]
    finally:
        took = serve.stop()
    assert serve.proc.returncode == 0 and took < 10
    # The ingest process (and multiprocessing's resource tracker) end with serve.
    deadline = time.monotonic() + 10
    alive = children.split()
    while alive and time.monotonic() < deadline:
        alive = [c for c in alive if _running(c)]
        time.sleep(0.1)
    assert alive == []


def _running(pid: str) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False
