"""`mailflow quarantine list | show | release | drop`, `reply parse` of our own files, and the
quarantine in `status`: the real command line against the shared real-parts world.

Mail reaches the quarantine the way it does in production: sent with smtplib to the real
listener on a free loopback port, ingested by the app into TinyDB files under tmp_path. The
admin's commands run in-process (`mailflow.cli.main`) on the world's clock; a refused one
prints one `error:` line, exits 1 and leaves the database as it was (`clitools.bad`).
"""

from __future__ import annotations

import json
import smtplib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from clitools import Mailflow
from conftest import SettableClock
from smtp_recorder import RecordedMessage, RecordingSMTPServer, text_of

from mailflow.app import App
from mailflow.inbox import Listener
from mailflow.parse import parse_message
from mailflow.spool import raw_message

ADA, GRACE = "ada@example.com", "grace@example.com"
MONDAY = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # 09:00 in Berlin: 2026-W49's check-in


@pytest.fixture
def app_settings() -> dict[str, dict[str, Any]]:
    return {"schedule": {"digest_delay_minutes": 0}}


class Desk:
    """An admin at the command line, and the world the mail comes through."""

    def __init__(
        self,
        app: App,
        listening: Listener,
        relay: RecordingSMTPServer,
        cli: Mailflow,
        clock: SettableClock,
    ) -> None:
        self.app, self.relay, self.cli, self.clock = app, relay, cli, clock
        self.port = listening.options.port
        self.serial = 0

    @property
    def now(self) -> datetime:
        return self.clock.now

    @now.setter
    def now(self, value: datetime) -> None:
        self.clock.now = value
        self.cli.now = value

    def tick(self, when: datetime | None = None) -> list[str]:
        self.now = when or self.now
        return self.app.tick(self.now).lines

    def send(self, sender: str, to: str, body: str, **headers: str) -> None:
        self.serial += 1
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = to
        msg["Subject"] = headers.pop("subject", "Re: your check-in")
        msg["Message-ID"] = f"<q{self.serial}@example.net>"
        for name, value in headers.items():
            msg[name.replace("_", "-")] = value
        msg.set_content(body)
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
            assert smtp.send_message(msg) == {}

    def checkin(self) -> RecordedMessage:
        return [m for m in self.relay.messages if m.rcpt_tos == (ADA,)][-1]

    def quarantined(self) -> list[dict[str, Any]]:
        return json.loads(self.cli.ok("quarantine", "list", "--json").out)

    def show(self) -> dict[str, Any]:
        return json.loads(self.cli.ok("partnerships", "show", "1", "--json").out)


@pytest.fixture
def desk(
    app: App,
    listening: Listener,
    relay: RecordingSMTPServer,
    config_file: Path,
    environ: dict[str, str],
    clock: SettableClock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Desk:
    clock.now = MONDAY - timedelta(days=3)
    cli = Mailflow(tmp_path, capsys, now=clock.now, environ=environ, config=config_file)
    d = Desk(app, listening, relay, cli, clock)
    cli.ok("people", "add", ADA, "--name", "Ada", "--department", "Eng",
           "--timezone", "Europe/Berlin")  # fmt: skip
    cli.ok("people", "add", GRACE, "--name", "Grace", "--department", "Sales",
           "--timezone", "Europe/Berlin")  # fmt: skip
    cli.ok(
        "partnerships", "add", "--member", ADA, "--partner", GRACE, "--skill", "sql",
        "--goal", "2027-06-30 Write the quarterly report query", "--why", "own the numbers",
        "--saddle", "One query at a time.", "--start", "2026-11-30", "--accepted",
    )  # fmt: skip
    d.tick(MONDAY)
    return d


def mismatch(desk: Desk, body: str = "Done: two joins\nSetback: missed Friday") -> str:
    """A reply to Ada's check-in from another address: quarantined; returns its id."""
    desk.now = MONDAY + timedelta(hours=5)
    desk.send("Ada at home <ada@home.example>", str(desk.checkin().message["Reply-To"]), body)
    desk.tick()
    [item] = desk.quarantined()
    return str(item["id"])


# -- list and show ------------------------------------------------------------------------------


def test_list_is_empty_at_first(desk: Desk) -> None:
    assert desk.cli.ok("quarantine", "list").out == "the quarantine is empty\n"
    assert desk.quarantined() == []


def test_list_names_id_received_sender_partnership_and_reason(desk: Desk) -> None:
    qid = mismatch(desk)
    [item] = desk.quarantined()
    assert item == {
        "id": qid,
        "received_at": (MONDAY + timedelta(hours=5)).isoformat(),
        "sender": "ada@home.example",
        "partnership": 1,
        "period": "2026-W49",
        "reason": f"sender mismatch: from ada@home.example, expected the member {ADA}",
        "subject": "Re: your check-in",
    }
    table = desk.cli.ok("quarantine", "list").out.splitlines()
    assert table[0].split() == ["ID", "RECEIVED", "SENDER", "PARTNERSHIP", "REASON"]
    cells = table[1].split()
    assert cells[:6] == [qid, "2026-11-30T13:00+00:00", "ada@home.example", "1", "2026-W49",
                         "sender"]  # fmt: skip


def test_show_gives_the_reason_and_what_the_parser_reads(desk: Desk) -> None:
    qid = mismatch(desk)
    out = desk.cli.ok("quarantine", "show", qid).out
    assert f"id: {qid}\n" in out
    assert "reason: sender mismatch: from ada@home.example" in out
    assert "from: Ada at home <ada@home.example>" in out
    assert "parsed:\n  kind: reply" in out and "  setback: yes" in out
    assert "    Done: two joins" in out  # the text, as `reply parse` prints it
    shown = json.loads(desk.cli.ok("quarantine", "show", qid, "--json").out)
    assert shown["parsed"] == {
        "kind": "reply",
        "text": "Done: two joins\nSetback: missed Friday",
        "setback": True,
        "sections": {"done": "two joins", "setback": "missed Friday", "next": ""},
    }
    assert shown["envelope"]["rcpt_tos"] == [str(desk.checkin().message["Reply-To"])]
    assert shown["headers"]["From"] == "Ada at home <ada@home.example>"


def test_reply_parse_reads_our_spool_quarantine_and_archive_files(desk: Desk) -> None:
    qid = mismatch(desk)
    path = desk.app.data_dir / "quarantine" / qid
    assert path.read_bytes().startswith(b"MFSPOOL1 {")
    got = json.loads(desk.cli.ok("reply", "parse", str(path), "--json").out)
    assert got == parse_message(raw_message(path.read_bytes())).to_json_dict()
    assert got["text"] == "Done: two joins\nSetback: missed Friday"
    # A message still in the spool (nothing ingested yet) reads the same way...
    desk.send(ADA, str(desk.checkin().message["Reply-To"]), "Done: three joins")
    [spooled] = list((desk.app.data_dir / "spool" / "new").iterdir())
    got = json.loads(desk.cli.ok("reply", "parse", str(spooled), "--json").out)
    assert got["text"] == "Done: three joins" and got["kind"] == "reply"
    # ...and so does its archived copy once it is a record.
    desk.tick()
    [archived] = (desk.app.data_dir / "mail" / "in" / "2026-W49").glob("*.eml")
    text = desk.cli.ok("reply", "parse", str(archived)).out
    assert "kind: reply" in text and "  Done: three joins" in text


def test_status_names_the_quarantined_senders(desk: Desk) -> None:
    mismatch(desk)
    desk.send("Mallory <mallory@evil.example>", str(desk.checkin().message["Reply-To"]), "hi")
    desk.tick()
    status = json.loads(desk.cli.ok("status", "--json").out)
    assert status["quarantined"] == 2
    assert status["quarantined_senders"] == ["ada@home.example", "mallory@evil.example"]
    assert [q["sender"] for q in status["quarantine"]] == [
        "ada@home.example",
        "mallory@evil.example",
    ]
    assert {q["partnership"] for q in status["quarantine"]} == {1}
    text = desk.cli.ok("status").out
    assert "quarantined: 2 (from ada@home.example, mallory@evil.example)" in text
    assert "from mallory@evil.example: sender mismatch" in text


# -- drop ---------------------------------------------------------------------------------------


def test_drop_deletes_it_and_a_second_decision_is_refused(desk: Desk) -> None:
    qid = mismatch(desk)
    out = desk.cli.ok("quarantine", "drop", qid).out
    assert out == f"dropped {qid} (from ada@home.example: sender mismatch: from " \
        f"ada@home.example, expected the member {ADA})\n"  # fmt: skip
    assert desk.quarantined() == []
    assert not (desk.app.data_dir / "quarantine" / qid).exists()
    assert desk.show()["reports"] == []  # nothing counted
    sidecar = (desk.app.data_dir / "quarantine" / f"{qid}.reason.txt").read_text()
    assert "\ndropped: 2026-11-30T13:00:00+00:00 by " in sidecar  # the record stays
    for command in ("drop", "release", "show"):
        err = desk.cli.bad("quarantine", command, qid)
        assert err.startswith(f"error: {qid} was already dropped (2026-11-30T13:00:00+00:00 by ")


# -- release, refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "release", "drop"])
@pytest.mark.parametrize("qid", ["20261130T130000000000Z-000001-deadbeef", "../db/core.json", "."])
def test_an_unknown_id_is_refused(desk: Desk, command: str, qid: str) -> None:
    err = desk.cli.bad("quarantine", command, qid)
    assert err == f"error: no quarantined message {qid!r} (see 'mailflow quarantine list')\n"


def test_a_missing_id_is_a_usage_error(desk: Desk) -> None:
    err = desk.cli.bad("quarantine", "release", code=2)
    assert "Missing argument 'ID'" in err


def test_an_empty_reply_is_not_released(desk: Desk) -> None:
    desk.now = MONDAY + timedelta(hours=1)
    checkin = desk.checkin()
    quoted = "\n".join("> " + line for line in text_of(checkin).splitlines())
    desk.send(ADA, str(checkin.message["Reply-To"]), f"On Monday, mailflow wrote:\n{quoted}\n")
    desk.tick()
    [item] = desk.quarantined()
    assert item["reason"] == "empty reply: no new text outside the quoted check-in"
    err = desk.cli.bad("quarantine", "release", item["id"])
    assert err == (
        f"error: {item['id']} stays in the quarantine: "
        "empty reply: no new text outside the quoted check-in\n"
    )
    assert desk.quarantined() == [item]  # still there, unchanged


def test_a_reply_for_an_unknown_partnership_is_not_released(desk: Desk) -> None:
    address = desk.app.svc.keys.address("c", 77, "2026-W49")  # signed, but no such partnership
    desk.send(ADA, address, "Done: everything")
    desk.tick()
    [item] = desk.quarantined()
    # The list names what the (signed) address names, though no such partnership exists.
    assert item["reason"] == "unknown partnership 77" and item["partnership"] == 77
    err = desk.cli.bad("quarantine", "release", item["id"])
    assert err.endswith("stays in the quarantine: unknown partnership 77\n")


def test_an_unreadable_file_can_only_be_dropped(desk: Desk) -> None:
    junk = desk.app.data_dir / "spool" / "new" / "20261130T120000000000Z-000001-00000000"
    junk.write_bytes(b"not a spool file at all\n")
    desk.tick()
    [item] = desk.quarantined()
    assert item["reason"] == "unreadable spool file" and item["received_at"] is None
    err = desk.cli.bad("quarantine", "release", item["id"])
    assert "has no readable envelope" in err and "it can only be dropped" in err
    desk.cli.ok("quarantine", "drop", item["id"])
    assert desk.quarantined() == []


def test_a_yes_from_another_address_is_not_released(desk: Desk, relay: RecordingSMTPServer) -> None:
    desk.cli.ok(
        "partnerships", "add", "--member", GRACE, "--partner", ADA, "--skill", "go",
        "--goal", "2027-06-30 A service in Go", "--why", "w", "--saddle", "s",
    )  # fmt: skip
    intro = [m for m in relay.messages if m.rcpt_tos == (ADA,) and "partner" in text_of(m)][-1]
    desk.send("ada@home.example", str(intro.message["Reply-To"]), "Yes, happy to!")
    desk.tick()
    [item] = desk.quarantined()
    err = desk.cli.bad("quarantine", "release", item["id"])
    assert "a yes or no to the introduction counts only from the partner's own address" in err
    assert json.loads(desk.cli.ok("partnerships", "show", "2", "--json").out)["consent"] == (
        "pending"
    )


def test_commands_only_from_another_address_wait_for_the_members_yes(desk: Desk) -> None:
    """Nothing counts, but the release goes through: the commands are held for Ada's yes to
    a confirmation mail at her stored address, as any command in her name without proof."""
    qid = mismatch(desk, "pause 2 weeks")
    out = desk.cli.ok("quarantine", "release", qid).out
    assert out.startswith(f"released {qid}\nnot run (sent from ada@home.example): pause 2 weeks\n")
    assert "partnership 1: asked ada@example.com to confirm: pause 2 weeks" in out
    assert desk.show()["status"] == "active" and desk.show()["reports"] == []
    [ask] = [m for m in desk.relay.messages if m.rcpt_tos == (ADA,) and "confirm" in
             str(m.message["Subject"]).lower()]  # fmt: skip
    assert "The program admin released a mail from ada@home.example" in " ".join(
        text_of(ask).split()
    )


# -- release, done ------------------------------------------------------------------------------


def test_release_counts_it_runs_no_command_and_sends_the_digest(desk: Desk) -> None:
    qid = mismatch(desk, "Rough week, I fell behind.\nNext week: catch up\n\ngoal 1 done")
    desk.now = MONDAY + timedelta(days=1)
    before = len(desk.relay.messages)
    out = desk.cli.ok("quarantine", "release", qid).out
    assert out.startswith(f"released {qid}\nnot run (sent from ada@home.example): goal 1 done\n")
    assert "queued digest to grace@example.com" in out and "sent 3 messages" in out
    assert "partnership 1: asked ada@example.com to confirm: goal 1 done" in out
    shown = desk.show()
    [report] = shown["reports"]
    assert report["text"] == "Rough week, I fell behind.\nNext week: catch up"
    assert report["setback"] is True and report["period"] == "2026-W49"
    assert shown["goals"][0]["done_on"] is None  # the command did not run
    new = desk.relay.messages[before:]
    [digest] = [m for m in new if m.rcpt_tos == (GRACE,)]
    text = text_of(digest)
    # Nothing she wrote is lost, and no "Setback: none" under the setback banner.
    assert "Rough week, I fell behind." in text and "catch up" in text
    assert "SETBACK" in text and "none" not in text.lower().split("goals:")[0]
    [told] = [m for m in new if "counts after all" in str(m.message["Subject"])]
    [ask] = [m for m in new if "Please confirm" in str(m.message["Subject"])]
    assert told.rcpt_tos == ask.rcpt_tos == (ADA,)  # the command waits for her yes
    # What the release made of it is in the sidecar, next to the reason.
    sidecar = (desk.app.data_dir / "quarantine" / f"{qid}.reason.txt").read_text()
    assert "released: 2026-12-01T08:00:00+00:00 by " in sidecar
    assert "report for partnership 1 2026-W49 (setback); not run: goal 1 done" in sidecar
    # The week is still under way: its scheduled digest does not send the same report again.
    count = len(desk.relay.messages)
    desk.tick(MONDAY + timedelta(days=4))
    assert not [m for m in desk.relay.messages[count:] if m.rcpt_tos == (GRACE,)]


def test_release_of_a_stale_reply_counts_for_its_week_and_runs_her_commands(desk: Desk) -> None:
    old = desk.checkin()
    far = MONDAY + timedelta(weeks=10)  # 2027-W06: the W49 token is 9 weeks old
    desk.now = far
    desk.send(ADA, str(old.message["Reply-To"]), "Done: the window functions\n\ngoal 1 done")
    desk.tick()
    [item] = desk.quarantined()
    assert item["reason"].startswith("stale token: it is for 2026-W49")
    told_not_counted = [m for m in desk.relay.messages if m.rcpt_tos == (ADA,)][-1]
    assert "not counted" in text_of(told_not_counted)
    out = desk.cli.ok("quarantine", "release", item["id"]).out
    assert "not run" not in out
    shown = desk.show()
    assert [r["period"] for r in shown["reports"]] == ["2026-W49"]
    assert shown["goals"][0]["done_on"] == far.date().isoformat()  # her own address: it ran
    digest = [m for m in desk.relay.messages if m.rcpt_tos == (GRACE,)][-1]
    assert "week 49 of 2026" in str(digest.message["Subject"])
    assert "the window functions" in text_of(digest)


def test_a_released_duplicate_is_archived_and_counted_once(desk: Desk) -> None:
    desk.now = MONDAY + timedelta(hours=2)
    to = str(desk.checkin().message["Reply-To"])
    for _ in range(2):  # the same message (same Message-ID) delivered twice from elsewhere
        desk.serial = 100
        desk.send("ada@home.example", to, "Done: the same report")
    desk.tick()
    first, second = desk.quarantined()
    desk.cli.ok("quarantine", "release", first["id"])
    out = desk.cli.ok("quarantine", "release", second["id"]).out
    assert f"duplicate {second['id']}: already stored, ignored" in out
    assert len(desk.show()["reports"]) == 1
    assert desk.quarantined() == []
