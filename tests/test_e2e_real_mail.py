"""Real clients' replies, end to end over SMTP, and an admin's release of a quarantined one.

The world is the one the client fixtures were made in (`scripts/make_client_fixtures.py`,
`make_checkin`): domain checkin.example.com, the fixtures' `MAILFLOW_SECRET`, Priya
(Europe/Berlin) learning public speaking from Tomasz in partnership 1, started 2026-11-23 and
accepted; its 2026-W49 check-in goes out on Monday 30 November at 09:00 in Berlin. So the
replies mutt and s-nail composed to that check-in (`tests/fixtures/clients/`) are replayed
byte for byte to the address their To names, through the real listener on a free loopback
port (smtplib), into real TinyDB files, and the partner's digest is read off a recording
relay. Only the clock is simulated. Everything an admin does is the real command line.
"""

from __future__ import annotations

import json
import re
import smtplib
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from conftest import OnClock, SettableClock
from smtp_recorder import RecordedMessage, RecordingSMTPServer, html_of, text_of

from mailflow.app import App
from mailflow.cli import main
from mailflow.inbox import Listener

CLIENTS = Path(__file__).parent / "fixtures" / "clients"
SECRET = "client-fixtures-secret-0123456789abcdef"  # the fixtures' tokens are signed with it
DOMAIN = "checkin.example.com"
PRIYA, TOMASZ = "priya@fernhill.example", "tomasz@fernhill.example"
CHECKIN_AT = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # Monday 09:00 in Berlin: 2026-W49
REPLIED_AT = datetime(2026, 11, 30, 21, 48, tzinfo=UTC)  # the fixtures' Date: 22:48 +0100


@pytest.fixture
def environ() -> dict[str, str]:
    return {"MAILFLOW_SECRET": SECRET}


@pytest.fixture
def app_settings() -> dict[str, dict[str, Any]]:
    return {
        "service": {
            "domain": DOMAIN,
            "from_address": f"mailflow@{DOMAIN}",
            "timezone": "Europe/Berlin",
        },
        # The fixtures were answered at 22:48 in Berlin: the digest goes at once, not at 07:00.
        "schedule": {"digest_delay_minutes": 0, "quiet_hours": ""},
    }


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(CHECKIN_AT - timedelta(days=1))


class World(OnClock):
    """The fixtures' world: the CLI, the app's listener, the relay and one settable clock."""

    def __init__(
        self,
        app: App,
        listening: Listener,
        relay: RecordingSMTPServer,
        config_file: Path,
        environ: dict[str, str],
        clock: SettableClock,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.app, self.relay, self.capsys, self.clock = app, relay, capsys, clock
        self.port = listening.options.port
        self.config, self.environ = config_file, environ
        self.cli("people", "add", PRIYA, "--name", "Priya Nandakumar", "--department",
                 "Platform", "--timezone", "Europe/Berlin")  # fmt: skip
        self.cli("people", "add", TOMASZ, "--name", "Tomasz Wrona", "--department", "Sales",
                 "--timezone", "Europe/Berlin", "--offers", "public speaking")  # fmt: skip
        out = self.cli(
            "partnerships", "add", "--member", PRIYA, "--partner", TOMASZ,
            "--skill", "public speaking",
            "--goal", "2026-12-11 Finish the online course on structuring a talk (all 6 modules).",
            "--goal", "2026-12-18 Give a 10-minute talk at the team meeting, without notes.",
            "--why", "I want to present my own team's work at the quarterly review.",
            "--saddle", "One bad week is data, not a verdict.", "--start", "2026-11-23",
            "--accepted", "--allow-past",  # the fixtures answer the week of 23 November
        )  # fmt: skip
        assert out.strip().splitlines()[-1] == "1"  # the fixtures answer partnership 1

    def cli(self, *args: str, code: int = 0) -> str:
        self.capsys.readouterr()
        got = main(
            ["--config", str(self.config), *args], clock=lambda: self.now, environ=self.environ
        )
        out, err = self.capsys.readouterr()
        assert got == code, err
        assert "Traceback" not in out + err
        return out if code == 0 else err

    def tick(self, when: datetime) -> list[str]:
        self.now = when
        return self.app.tick(when).lines

    def deliver(self, raw: bytes, rcpt: str, when: datetime) -> None:
        """`raw` as an MTA hands it over: envelope sender from its From, one recipient."""
        self.now = when
        sender = message_from_bytes(raw, policy=policy.default)["From"].addresses[0].addr_spec
        wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # the files have LF
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
            assert smtp.sendmail(sender, [rcpt], wire) == {}

    def to(self, address: str, subject_part: str = "") -> list[RecordedMessage]:
        return [
            m
            for m in self.relay.messages
            if m.rcpt_tos == (address,) and subject_part in subject(m)
        ]

    def show(self) -> dict[str, Any]:
        return json.loads(self.cli("partnerships", "show", "1", "--json"))

    def quarantine(self) -> list[dict[str, Any]]:
        return json.loads(self.cli("quarantine", "list", "--json"))


@pytest.fixture
def world(
    app: App,
    listening: Listener,
    relay: RecordingSMTPServer,
    config_file: Path,
    environ: dict[str, str],
    clock: SettableClock,
    capsys: pytest.CaptureFixture[str],
) -> World:
    w = World(app, listening, relay, config_file, environ, clock, capsys)
    assert "queued checkin to priya@fernhill.example" in " ".join(w.tick(CHECKIN_AT))
    return w


def subject(message: RecordedMessage) -> str:
    # A long Subject is folded right after "Subject:"; the parser keeps the fold's space.
    return str(message.message["Subject"]).strip()


def fixture(name: str) -> bytes:
    return (CLIENTS / name).read_bytes()


def addressed_to(raw: bytes) -> str:
    return str(message_from_bytes(raw, policy=policy.default)["To"])


def test_our_checkin_carries_the_address_the_fixtures_answer(world: World) -> None:
    """The replay is honest: this world's real check-in is the one the clients replied to."""
    [checkin] = world.to(PRIYA, "check-in")
    recorded = message_from_bytes(fixture("checkin.eml"), policy=policy.default)
    assert (
        checkin.message["Reply-To"]
        == recorded["Reply-To"]
        == addressed_to(fixture("mutt_bottom.eml"))
    )
    assert checkin.message["Message-ID"] == recorded["Message-ID"]
    # Word for word the check-in they quote, which tells her she may answer below it.
    text = text_of(checkin).replace("\r\n", "\n")
    assert text == recorded.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "above or below the quoted check-in" in text


@pytest.mark.parametrize(
    ("name", "setback", "shown"),
    [
        ("mutt_bottom.eml", False, ["module 4 is done", "rehearse the demo twice"]),
        (
            "mutt_setback_bottom.eml",
            True,
            [
                "Rough week, honestly. I missed both rehearsals: the quarterly close took every"
                " evening, and on Thursday I was too tired to go.",
                "I did finish module 4 on Sunday",
                "rehearse the opening twice before Friday",
            ],
        ),
        (
            "mutt_interleaved.eml",
            True,
            [
                "Recorded the 5-minute talk",
                "Missed the Thursday rehearsal, the quarterly close ate the evening.",
                "Book the slot on the team agenda.",
            ],
        ),
        (
            "snail_tabquote_bottom.eml",
            True,
            ["watched my recording back", "skipped the Thursday rehearsal, the release"],
        ),
    ],
)
def test_a_real_clients_reply_reaches_the_partners_digest(
    world: World, name: str, setback: bool, shown: list[str]
) -> None:
    raw = fixture(name)
    world.deliver(raw, addressed_to(raw), REPLIED_AT)
    lines = world.tick(REPLIED_AT + timedelta(minutes=1))
    assert any(line.startswith("report for partnership 1 2026-W49") for line in lines), lines
    assert world.quarantine() == []
    [report] = world.show()["reports"]
    assert report["period"] == "2026-W49" and report["setback"] is setback
    [digest] = world.to(TOMASZ, "report for week 49 of 2026")
    text, html = text_of(digest).replace("\r\n", "\n"), html_of(digest)
    assert subject(digest).startswith("Setback: ") is setback
    assert ("SETBACK: time to get Priya Nandakumar back in the saddle" in text) is setback
    assert ("One bad week is data, not a verdict." in text) is setback
    flat = " ".join(text.split())
    for words in shown:
        assert words in flat and words in html
    # Only what she wrote: none of the quoted check-in, her signature or mutt's attribution.
    for quoted in ("what you did this week", "wrote:", "Platform Team", "+49 30"):
        assert quoted not in text
    assert "Setback: none" not in text and "Setback:\n  none" not in text
    assert ("[setback]" in text) is setback and ("[no setback]" in text) is not setback


EXPECTED = json.loads((CLIENTS / "expected.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_client_fixture_goes_through_the_listener_into_the_digest(
    world: World, name: str
) -> None:
    """Top-posted, bottom-posted and interleaved, mutt and s-nail: each reply the clients
    made counts for 2026-W49 and the partner reads what she wrote, and only that."""
    expected = EXPECTED[name]
    raw = fixture(name)
    world.deliver(raw, addressed_to(raw), REPLIED_AT)
    world.tick(REPLIED_AT + timedelta(minutes=1))
    assert world.quarantine() == []
    [report] = world.show()["reports"]
    assert report["period"] == "2026-W49" and report["setback"] is expected["setback"]
    [digest] = world.to(TOMASZ, "report for week 49 of 2026")
    text = text_of(digest).replace("\r\n", "\n")
    flat, html = " ".join(text.split()), " ".join(html_of(digest).split())
    for words in expected["text_contains"]:
        assert words in flat and words in html, words
    # The digest has its own reply marker; everything else quoted must stay out.
    for words in expected["text_excludes"]:
        if words != "reply above this line":
            assert words not in text, words
    assert subject(digest).startswith("Setback: ") is expected["setback"]
    assert ("[setback]" in text) is expected["setback"]
    assert "Setback: none" not in text


def test_interleaved_answers_fill_their_sections_in_the_digest(world: World) -> None:
    raw = fixture("mutt_interleaved.eml")
    world.deliver(raw, addressed_to(raw), REPLIED_AT)
    world.tick(REPLIED_AT + timedelta(minutes=1))
    text = text_of(world.to(TOMASZ, "report for week 49")[0]).replace("\r\n", "\n")
    at = text.index("[setback]")
    assert text.index("Done:\n  Recorded the 5-minute talk", at)
    assert text.index("Setback:\n  Missed the Thursday rehearsal", at)
    assert text.index("Next:\n  Book the slot on the team agenda.", at)


# -- an admin's release ------------------------------------------------------------------------

OTHER = "priya.nandakumar@gmail.example"  # her private address: not proof of anything


def from_elsewhere(raw: bytes, command: str = "pause 2 weeks") -> bytes:
    """The interleaved reply as if sent from her private address, with a command on top."""
    head, _, body = raw.partition(b"\n\n")
    head = head.replace(f"<{PRIYA}>".encode(), f"<{OTHER}>".encode())
    head = re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <elsewhere.1@gmail.example>", head)
    return head + b"\n\n" + command.encode() + b"\n\n" + body


def test_release_of_a_sender_mismatch_counts_it_and_sends_the_digest_now(world: World) -> None:
    raw = from_elsewhere(fixture("mutt_interleaved.eml"))
    world.deliver(raw, addressed_to(raw), REPLIED_AT)
    world.tick(REPLIED_AT + timedelta(minutes=1))
    # Quarantined, not counted, nobody answered.
    [item] = world.quarantine()
    assert item["sender"] == OTHER and item["partnership"] == 1 and item["period"] == "2026-W49"
    assert item["reason"] == f"sender mismatch: from {OTHER}, expected the member {PRIYA}"
    assert world.show()["reports"] == []
    status = json.loads(world.cli("status", "--json"))
    assert status["quarantined_senders"] == [OTHER]
    assert OTHER in world.cli("status")
    # Nobody looks for two weeks: 2026-W49 has passed, its no-report digest went out.
    world.tick(datetime(2026, 12, 4, 8, 0, tzinfo=UTC))
    assert world.to(TOMASZ, "No report")
    later = datetime(2026, 12, 15, 10, 0, tzinfo=UTC)  # Tuesday of 2026-W51
    world.tick(later)
    before = len(world.relay.messages)
    shown = world.cli("quarantine", "show", item["id"])
    assert "Missed the Thursday rehearsal" in shown and "sender mismatch" in shown

    out = world.cli("quarantine", "release", item["id"])

    assert f"released {item['id']}" in out
    assert "not run (sent from priya.nandakumar@gmail.example): pause 2 weeks" in out
    # It counts for the week it was written for, with its setback...
    shown_json = world.show()
    [report] = shown_json["reports"]
    assert report["period"] == "2026-W49" and report["setback"] is True
    assert "Missed the Thursday rehearsal" in report["text"]
    assert "pause 2 weeks" not in report["text"]
    # ...its command did not run: a From header proves nothing, released or not...
    assert shown_json["status"] == "active" and shown_json["paused_until"] is None
    # ...and the partner gets the digest of that past week now, saying why it is late.
    new = world.relay.messages[before:]
    [digest] = [m for m in new if m.rcpt_tos == (TOMASZ,)]
    assert subject(digest).startswith("Setback: ")
    assert "week 49 of 2026" in subject(digest)
    text = text_of(digest)
    assert "Missed the Thursday rehearsal" in " ".join(text.split())
    assert "released it today" in text and "One bad week is data" in text
    # The member hears it counts, and which command was not run: it waits for her yes to a
    # confirmation mail at her own address (a release is no proof of who wrote it).
    [told] = [m for m in new if "counts after all" in subject(m)]
    [ask] = [m for m in new if subject(m).startswith("Please confirm: pause 2 weeks")]
    assert told.rcpt_tos == ask.rcpt_tos == (PRIYA,)
    assert f"released a mail from {OTHER}" in " ".join(text_of(ask).split())
    told_text = " ".join(text_of(told).split())
    assert "counts as your public speaking report for week 49 of 2026" in told_text
    assert f"It came from {OTHER}, not from {PRIYA}" in told_text
    assert "- pause 2 weeks" in text_of(told)
    # The quarantine is empty; the raw message is archived under its period; status agrees.
    assert world.quarantine() == []
    assert json.loads(world.cli("status", "--json"))["quarantined_senders"] == []
    archived = world.app.data_dir / "mail" / "in" / "2026-W49" / f"{item['id']}.eml"
    assert archived.is_file()
    # A second release is refused with what happened; so is a drop.
    err = world.cli("quarantine", "release", item["id"], code=1)
    assert err.startswith(f"error: {item['id']} was already released (") and err.endswith("\n")
    assert "by " in err and "report for partnership 1 2026-W49" in err
    assert "already released" in world.cli("quarantine", "drop", item["id"], code=1)
    # Nothing is sent twice at the next tick.
    count = len(world.relay.messages)
    world.tick(later + timedelta(hours=1))
    assert not [m for m in world.relay.messages[count:] if m.rcpt_tos == (TOMASZ,)]


def test_release_of_a_stale_reply_runs_her_commands(world: World) -> None:
    """From her own address but to a check-in over 8 weeks old: a replay guard, not a doubt
    about the sender. Released, the report counts for its old week and her commands run."""
    raw = fixture("mutt_bottom.eml")
    raw = re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <late.1@fernhill.example>", raw)
    head, _, body = raw.partition(b"\n\n")
    raw = head + b"\n\ngoal 1 done\n\n" + body
    much_later = datetime(2027, 2, 2, 10, 0, tzinfo=UTC)  # 2027-W05: W49 is 9 weeks back
    world.deliver(raw, addressed_to(raw), much_later)
    world.tick(much_later + timedelta(minutes=1))
    [item] = world.quarantine()
    assert item["reason"].startswith("stale token: it is for 2026-W49")
    assert item["sender"] == PRIYA
    world.cli("quarantine", "release", item["id"])
    shown = world.show()
    assert [r["period"] for r in shown["reports"]] == ["2026-W49"]
    assert shown["goals"][0]["done_on"] == "2027-02-02"  # her command ran
    digests = world.to(TOMASZ, "report for week 49 of 2026")
    assert digests and "module 4 is done" in " ".join(text_of(digests[-1]).split())
