"""Upgrade: a data directory written by the code before issue 11 still works, unchanged.

`tests/fixtures/upgrade/` holds a data directory made by commit 1909e74 (see its
`make_fixture.py`): people, partnerships in every state, three weeks of check-ins, digests,
receipts and notices, sent and queued outgoing mail, archived and quarantined replies. Each
test copies it to tmp_path and runs today's code on it at the instant it was left (`END`):
- a tick at that instant sends nothing twice and queues nothing (everything due was done);
  the two messages left queued by a relay outage go out once when their retry comes;
- a reply to an old check-in's address, or one that names it only by In-Reply-To, is matched
  to its partnership (tokens, secret.key and Message-IDs are read as they were written);
- `status` reads exactly what the old code read.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from smtp_recorder import RecordingSMTPServer

from mailflow.app import App
from mailflow.wording import count

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "upgrade"
SCENARIO = json.loads((FIXTURE / "scenario.json").read_text())
END = datetime.fromisoformat(SCENARIO["end"])
DOMAIN = SCENARIO["domain"]
ADA = "ada@example.com"


@dataclass
class Upgraded:
    app: App
    relay: RecordingSMTPServer
    data: Path

    def outgoing_mail(self, key: str) -> EmailMessage:
        store = self.app.store
        for period in store.periods():
            o = store.week(period).outgoing(key)
            if o is not None:
                msg = message_from_bytes((self.data / o.path).read_bytes(), policy=policy.default)
                assert isinstance(msg, EmailMessage)
                return msg
        raise KeyError(key)

    def receive(self, rcpt: str, body: str, mid: str, in_reply_to: str | None = None) -> list[str]:
        """Ada's reply, handed to the spool as the listener does, then ingested at END."""
        msg = EmailMessage()
        msg["From"] = f"Ada Lovelace <{ADA}>"
        msg["To"] = rcpt
        msg["Subject"] = "Re: your check-in"
        msg["Date"] = format_datetime(END)
        msg["Message-ID"] = mid
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
        msg.set_content(body)
        raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        self.app.spool.put(raw, mail_from=ADA, rcpt_tos=[rcpt], peer="test", received_at=END)
        return self.app.ingest(END).lines


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The fixture's data directory, copied: what an upgraded install has on disk."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", data)
    return data


@pytest.fixture
def environ() -> dict[str, str]:
    return {}  # the token key is the fixture's data/secret.key


@pytest.fixture
def app_settings() -> dict[str, dict[str, object]]:
    service = {"domain": DOMAIN, "timezone": "Europe/Berlin", "admin_address": SCENARIO["admin"]}
    return {"service": service, "schedule": {"consent_days": 7}}


@pytest.fixture
def upgraded(app: App, relay: RecordingSMTPServer, data_dir: Path) -> Upgraded:
    return Upgraded(app, relay, data_dir)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def test_status_reads_the_same(upgraded: Upgraded) -> None:
    expected = json.loads((FIXTURE / "expected_status.json").read_text())
    got = _json(upgraded.app.status(END))
    # Issue 10 made status name the quarantined senders; the old code's record has the rest.
    # Sidecars written before it name no sender: the envelope's is shown.
    assert got.pop("quarantined_senders") == ["edsger@example.com", "mallory@example.org"]
    senders = []
    for item in got["quarantine"]:
        senders.append(item.pop("sender"))
        assert item.pop("partnership") is None  # not recorded by the old sidecars
    assert senders == ["edsger@example.com", "mallory@example.org"]
    # Issue 15 (self-service): computed from the old data, which has none of either.
    assert got.pop("awaiting_approval") == []
    assert got.pop("program_strangers")["count"] == 0
    # Added since the fixture was made (issue 12): the mail held against the quarantine
    # quotas, computed from the old data as it lies (its two quarantined messages).
    held = got.pop("held")
    assert got.pop("refused") == {}  # no listener has run on it since
    assert got == expected
    quarantined = [f for f in (upgraded.data / "quarantine").iterdir() if "." not in f.name]
    assert held == {
        "messages": len(quarantined),
        "bytes": sum(f.stat().st_size for f in quarantined),
    }


def test_tick_at_the_same_instant_sends_nothing_twice(upgraded: Upgraded) -> None:
    before = {
        o.key: o.status
        for period in upgraded.app.store.periods()
        for o in upgraded.app.store.week(period).outgoings()
    }
    assert upgraded.app.tick(END).lines == []
    assert upgraded.relay.messages == []
    # The relay outage's messages go out once, when their retry is due; nothing else does.
    lines = upgraded.app.tick(END + timedelta(minutes=2)).lines
    assert lines == [f"sent {count(len(SCENARIO['queued']), 'message')}"]
    got = upgraded.relay.wait_for(len(SCENARIO["queued"]))
    assert sorted(str(m.message["Message-ID"]).strip().split(".")[0] for m in got) == [
        "<digest2",
        "<reminder",
    ]
    assert upgraded.app.tick(END + timedelta(minutes=5)).lines == []
    after = {
        o.key: o.status
        for period in upgraded.app.store.periods()
        for o in upgraded.app.store.week(period).outgoings()
    }
    assert set(after) == set(before)
    assert {k for k, v in after.items() if v != before[k]} == set(SCENARIO["queued"])
    assert len(upgraded.relay.messages) == len(SCENARIO["queued"])


def test_reply_to_an_old_checkin_is_matched(upgraded: Upgraded) -> None:
    old = upgraded.outgoing_mail(SCENARIO["old_checkin"]["key"])
    assert str(old["Message-ID"]).strip().startswith("<checkin.c1-2026w45-")
    to = str(old["Reply-To"]).strip()
    lines = upgraded.receive(to, "Done: a late word on week 45.", "<late@x>")
    assert lines == [f"report for partnership 1 2026-W46 from {ADA}"]
    # By reference only, to the plain address: the check-in of partnership 7 is found.
    checkin_7 = upgraded.outgoing_mail("checkin:7:2026-W46")
    lines = upgraded.receive(
        f"checkin@{DOMAIN}",
        "Done: the first toy cipher is broken.",
        "<ref@x>",
        in_reply_to=str(checkin_7["Message-ID"]).strip(),
    )
    assert lines == [f"report for partnership 7 2026-W46 from {ADA}"]
    reports = upgraded.app.store.week("2026-W46").reports()
    assert {(r.partnership_id, r.message_id) for r in reports} >= {(1, "<late@x>"), (7, "<ref@x>")}
