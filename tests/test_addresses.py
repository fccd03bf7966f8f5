"""Address forms (addresses.py), UTF-8 headers and their downgrade (mime.py), and the
outbox's choice between SMTPUTF8 and A-labels per `[relay] smtputf8` and the relay's EHLO,
against the real recording relay offering SMTPUTF8 or not."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from smtp_recorder import RecordingSMTPServer

from mailflow.addresses import ascii_form, canonical, needs_smtputf8
from mailflow.config import RelayConfig
from mailflow.errors import DomainError
from mailflow.mime import Rendered, check_header_block, downgrade, message_bytes
from mailflow.mime import needs_smtputf8 as message_needs_smtputf8
from mailflow.models import FAILED, SENT, Outgoing
from mailflow.outbox import Outbox
from mailflow.people import delivery_warning, normalize_email
from mailflow.store import Store

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
PERIOD = "2026-W49"
BOUNCE = "bounces@mf.test"


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [
        ("kurt@xn--bcher-kva.example", "kurt@bücher.example"),
        ("Kurt@BÜCHER.example", "kurt@bücher.example"),
        ("  kurt@bücher.example ", "kurt@bücher.example"),
        ("王芳@xn--fsqu00a.example", "王芳@例子.example"),
        ("Ada@Example.COM", "ada@example.com"),
        ("", ""),
        ("no-at-sign", "no-at-sign"),
        ("x@xn--zz-not-punycode", "x@xn--zz-not-punycode"),  # IDNA refuses: left as it is
    ],
)
def test_canonical_maps_either_spelling_to_the_stored_one(spelled: str, stored: str) -> None:
    assert canonical(spelled) == stored


def test_people_store_the_unicode_form_whatever_was_typed() -> None:
    assert normalize_email("KURT@xn--bcher-kva.example") == "kurt@bücher.example"
    assert normalize_email("王芳@例子.example") == "王芳@例子.example"
    with pytest.raises(DomainError):
        normalize_email("kurt@xn--.example")


def test_ascii_form_exists_only_for_an_ascii_local_part() -> None:
    assert ascii_form("kurt@bücher.example") == "kurt@xn--bcher-kva.example"
    assert ascii_form("ada@example.com") == "ada@example.com"
    assert ascii_form("jürgen@bücher.example") is None
    assert needs_smtputf8("jürgen@bücher.example") and not needs_smtputf8("kurt@bücher.example")


def test_delivery_warning_only_when_the_relay_never_speaks_smtputf8() -> None:
    assert delivery_warning("王芳@例子.example", "auto") is None
    assert delivery_warning("kurt@bücher.example", "never") is None
    why = delivery_warning("王芳@例子.example", "never")
    assert why is not None and "SMTPUTF8" in why and 'smtputf8 = "never"' in why


def wire(to: str, name: str = "王芳", subject: str = "本周签到 🎉") -> bytes:
    rendered = Rendered(subject, f"你好 {name}\nمرحبا — नमस्ते 🙂\n", "<p>你好</p>")
    return message_bytes(
        rendered,
        from_address="mailflow@mf.test",
        from_name="Hot Team",
        to_address=to,
        to_name=name,
        message_id="<mf.1@mf.test>",
        date=NOW,
        reply_to="checkin+abc@mf.test",
    )


def test_an_international_address_is_utf8_in_the_to_line_only() -> None:
    data = wire("王芳@例子.example")
    head = data.split(b"\r\n\r\n")[0].decode("utf-8")
    [to_line] = [line for line in head.split("\r\n") if line.startswith("To:")]
    assert to_line.endswith("<王芳@例子.example>")
    others = head.replace(to_line, "")
    assert others.isascii()  # the name and subject stay encoded words
    assert message_needs_smtputf8(data) and not message_needs_smtputf8(wire("a@b.example"))
    msg = message_from_bytes(data, policy=policy.SMTPUTF8)
    assert str(msg["Subject"]) == "本周签到 🎉"
    assert msg["To"].addresses[0].display_name == "王芳"
    assert "مرحبا — नमस्ते 🙂" in msg.get_body(("plain",)).get_content()


def test_utf8_is_refused_anywhere_but_an_address_field() -> None:
    check_header_block("To: <王芳@例子.example>\r\n", ["To"])
    with pytest.raises(ValueError, match="non-ASCII text in Subject"):
        check_header_block("Subject: 你好\r\n", ["Subject"])
    with pytest.raises(ValueError, match="non-ASCII text in Subject"):
        check_header_block("Subject: =?utf-8?b?eA==?=\r\n 你好\r\n", ["Subject"])
    with pytest.raises(ValueError):
        wire("王芳@例子.example\r\nBcc: x@evil.example")
    with pytest.raises(ValueError):
        wire("王 芳@例子.example")


def test_downgrade_writes_a_labels_or_refuses() -> None:
    original = wire("kurt@bücher.example", name="Kurt Weiß")
    ascii_data = downgrade(original)
    assert ascii_data is not None and ascii_data.isascii()
    msg = message_from_bytes(ascii_data, policy=policy.SMTP)
    assert msg["To"].addresses[0].addr_spec == "kurt@xn--bcher-kva.example"
    assert msg["To"].addresses[0].display_name == "Kurt Weiß"
    assert str(msg["Subject"]) == "本周签到 🎉"
    assert ascii_data.split(b"\r\n\r\n", 1)[1] == original.split(b"\r\n\r\n", 1)[1]
    assert downgrade(wire("王芳@例子.example")) is None
    assert downgrade(b"no header section") is None


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.store = Store(self.data_dir)
        self.store.init()

    def outbox(self, relay: RelayConfig) -> Outbox:
        box = Outbox(self.store, relay, None, BOUNCE, self.data_dir)
        box.init()
        return box

    def queue(self, box: Outbox, to: str) -> str:
        key = f"checkin:{len(self.store.week(PERIOD).outgoings())}:{PERIOD}"
        path = box.write_bytes(key, PERIOD, wire(to), sync=True)
        with self.store.week_tx(PERIOD) as week:
            week.put_outgoing(
                Outgoing(key, "checkin", to, "<mf.1@mf.test>", path, NOW, period=PERIOD)
            )
        return key

    def record(self, key: str) -> Outgoing:
        item = self.store.week(PERIOD).outgoing(key)
        assert item is not None
        return item


def relay_config(relay: RecordingSMTPServer, mode: str) -> RelayConfig:
    return RelayConfig(host=relay.host, port=relay.port, timeout_seconds=5, smtputf8=mode)


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_a_relay_offering_smtputf8_gets_the_unicode_form(tmp_path: Path, mode: str) -> None:
    world = World(tmp_path)
    with RecordingSMTPServer() as relay:
        box = world.outbox(relay_config(relay, mode))
        keys = [world.queue(box, "王芳@例子.example"), world.queue(box, "kurt@bücher.example")]
        result = box.flush(NOW)
        assert (result.sent, result.failed) == (2, 0)
        got = relay.wait_for(2)
        assert [m.rcpt_tos for m in got] == [("王芳@例子.example",), ("kurt@bücher.example",)]
        assert all("SMTPUTF8" in m.mail_options for m in got)
        assert all(world.record(k).status == SENT for k in keys)


def test_auto_without_smtputf8_sends_a_labels_and_fails_the_rest_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    with RecordingSMTPServer(smtputf8=False) as relay:
        box = world.outbox(relay_config(relay, "auto"))
        wang = world.queue(box, "王芳@例子.example")
        kurt = world.queue(box, "kurt@bücher.example")
        plain = world.queue(box, "ada@example.com")
        result = box.flush(NOW)
        assert (result.sent, result.failed, result.deferred) == (2, 1, 0)
        got = relay.wait_for(2)
        assert [m.rcpt_tos for m in got] == [("kurt@xn--bcher-kva.example",), ("ada@example.com",)]
        assert all(m.raw.isascii() and "SMTPUTF8" not in m.mail_options for m in got)
        failed = world.record(wang)
        assert failed.status == FAILED and failed.attempts == 1
        assert "SMTPUTF8" in failed.error and "does not offer it" in failed.error
        assert result.undeliverable == [
            ("王芳@例子.example", failed.error, (failed.message_id.lower(),))
        ]
        assert world.record(kurt).status == SENT and world.record(plain).status == SENT
        # Failed for good: a later flush does not try again.
        assert box.flush(NOW.replace(hour=12)).attempted == 0
        assert len(relay.messages) == 2


def test_always_trusts_the_relay_and_its_refusal_is_a_failure(tmp_path: Path) -> None:
    world = World(tmp_path)
    with RecordingSMTPServer(smtputf8=False) as relay:
        box = world.outbox(relay_config(relay, "always"))
        key = world.queue(box, "王芳@例子.example")
        result = box.flush(NOW)
        assert result.failed == 1 and result.undeliverable == []  # the relay's own answer
        assert world.record(key).error.startswith("5")
        assert not any("王芳@例子.example" in m.rcpt_tos for m in relay.messages)


def test_never_sends_ascii_even_to_a_relay_offering_smtputf8(tmp_path: Path) -> None:
    world = World(tmp_path)
    with RecordingSMTPServer() as relay:
        box = world.outbox(relay_config(relay, "never"))
        kurt = world.queue(box, "kurt@bücher.example")
        wang = world.queue(box, "王芳@例子.example")
        result = box.flush(NOW)
        assert (result.sent, result.failed) == (1, 1)
        [got] = relay.wait_for(1)
        assert got.rcpt_tos == ("kurt@xn--bcher-kva.example",) and got.raw.isascii()
        assert 'smtputf8 = "never"' in world.record(wang).error
        assert world.record(kurt).status == SENT


def test_outbox_files_keep_utf8_unless_never(tmp_path: Path) -> None:
    world = World(tmp_path)
    box = world.outbox(RelayConfig(smtputf8="never"))
    kurt = world.queue(box, "kurt@bücher.example")
    wang = world.queue(box, "王芳@例子.example")
    result = box.flush(NOW)
    assert (result.sent, result.failed) == (1, 1)
    [written] = (world.data_dir / "outbox").glob("*.eml")
    assert written.read_bytes().isascii() and b"kurt@xn--bcher-kva.example" in written.read_bytes()
    assert world.record(kurt).status == SENT and world.record(wang).status == FAILED


# -- either spelling wherever people are compared (the admin site, imports, trust) ----------


def test_web_admins_are_stored_in_the_people_form() -> None:
    from mailflow.config import from_mapping

    cfg = from_mapping({"web": {"admins": ["Kurt@XN--BCHER-KVA.example", "kurt@bücher.example"]}})
    assert cfg.web.admins == ("kurt@bücher.example",)


def test_the_admin_site_finds_an_idn_address_by_either_spelling() -> None:
    from mailflow.webadmin_numbers import _spellings

    assert _spellings("ada@example.com") == "ada@example.com"
    assert _spellings("kurt@bücher.example") == "kurt@bücher.example kurt@xn--bcher-kva.example"
    assert _spellings("王芳@例子.example") == "王芳@例子.example"  # no ASCII form to find


def test_an_import_names_the_bad_row_of_a_manager_spelled_the_other_way() -> None:
    from mailflow.people import import_rows, read_csv

    text = (
        "email,name,department,manager,timezone\n"
        "boss@xn--bcher-kva.example,Boss,Einkauf,,Mars/Base\n"
        "kurt@bücher.example,Kurt,Einkauf,boss@bücher.example,\n"
    )
    rows, problems = read_csv(text)
    assert problems == []
    changes, problems = import_rows(rows, {}, set(), "Europe/Berlin", update=False)
    assert any(p.startswith("2: ") for p in problems)
    assert "3: manager boss@bücher.example is on bad line 2" in problems


@pytest.mark.parametrize(
    ("sender", "header_from", "vouches"),
    [
        ("kurt@bücher.example", "xn--bcher-kva.example", True),
        ("kurt@bücher.example", "bücher.example", True),
        ("kurt@bücher.example", "buecher.example", False),
        ("nobody", "", False),
    ],
)
def test_dmarc_vouches_for_an_idn_domain_in_either_spelling(
    sender: str, header_from: str, vouches: bool
) -> None:
    from mailflow.triage import dmarc_vouches

    raw = (
        f"Authentication-Results: mx.mf.test; dmarc=pass header.from={header_from}\r\n"
        f"From: <{sender}>\r\nSubject: hi\r\n\r\nhello\r\n"
    ).encode()
    assert dmarc_vouches(raw, sender, "mx.mf.test") is vouches
