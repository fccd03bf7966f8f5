"""Hostile input through the whole inbound path: listener -> spool -> ingest -> store.

Everything here is real: aiosmtpd on loopback with `App.rcpt_policy`, the spool and the
TinyDB files under tmp_path, a recording relay for outgoing mail, the CLI in-process. The
clock is fixed (Monday 2026-11-30 09:00 UTC, the check-in moment of period 2026-W49).

- open relay: 1,000 RCPT attempts of eleven kinds, zero accepted;
- SMTP smuggling and bare newlines: never two records from one message, no injected header;
- oversize: 552 and nothing stored; idle sessions cut; the connection cap holds, service lives;
- the shared corpus and a hypothesis-fuzzed set: each message stored or quarantined with a
  reason, none lost, no processing error, spool empty;
- a member's markup reaches the partner's digest escaped; CR/LF can't reach outgoing headers;
- templates are sandboxed; forged senders, replayed and ended tokens are quarantined.
"""

from __future__ import annotations

import base64
import json
import random
import re
import smtplib
import socket
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from clitools import Mailflow
from conftest import SHARED, OnClock, SettableClock, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replytools import SECRET, reply
from smtp_recorder import RecordingSMTPServer, html_of, text_of
from test_e2e_week import DOMAIN
from test_inbox import RawClient

from mailflow import config as config_mod
from mailflow.app import App, build, serve
from mailflow.errors import StartupError
from mailflow.inbox import Listener
from mailflow.spool import MAGIC
from mailflow.tokens import CHECKIN, DIGEST, make_token, reply_address

CHECKIN_AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # Monday: period 2026-W49 starts
PERIOD = "2026-W49"
ADA, GRACE, LINUS, BARBARA = (f"{n}@example.com" for n in ("ada", "grace", "linus", "barbara"))
CORPUS = SHARED / "corpus"
NOT_MAIL = {"LICENSE", "README.md", "MANIFEST.json"}


def encoded_word(text: str) -> str:
    """One RFC 2047 encoded word, unfolded (so the raw header line has no line break)."""
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def token(pid: int, period: str = PERIOD, kind: str = CHECKIN, secret: str = SECRET) -> str:
    return make_token(secret.encode("utf-8"), kind, pid, period)


def address(pid: int, period: str = PERIOD, kind: str = CHECKIN) -> str:
    return reply_address(token(pid, period, kind), DOMAIN)


def on_the_wire(raw: bytes) -> bytes:
    """What a relaying MTA sends: CRLF line ends, lines over 998 bytes folded as Postfix does
    (smtp_line_length_limit: break and continue with a space)."""
    out: list[bytes] = []
    for line in re.split(rb"\r?\n", raw):
        while len(line) > 998:
            out.append(line[:998])
            line = b" " + line[998:]
        out.append(line)
    return b"\r\n".join(out)


@pytest.fixture
def app_settings() -> dict[str, dict[str, object]]:
    return {"listener": {"timeout_seconds": 30}, "schedule": {"digest_delay_minutes": 0}}


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(CHECKIN_AT)


@dataclass
class World(OnClock):
    """The shared app world (conftest) with people and partnerships; listeners on demand."""

    mf: Mailflow
    relay: RecordingSMTPServer
    service: App
    clock: SettableClock
    listeners: list[Listener] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.service.data_dir

    def listen(self, **overrides: object) -> int:
        """Start another listener of the app (on a free port; `overrides`: its options)."""
        options: dict[str, object] = {"host": "127.0.0.1", "port": free_port(), **overrides}
        listener = self.service.listener(self.clock, **options)
        listener.start()
        self.listeners.append(listener)
        return int(listener.options.port)

    def records(self) -> tuple[list, list]:
        """(reports, inbound) of every period."""
        reports, inbound = [], []
        for label in self.service.store.periods():
            view = self.service.store.week(label)
            reports += view.reports()
            inbound += view.inbound()
        return reports, inbound

    def archived(self) -> dict[str, Path]:
        return {p.stem: p for p in (self.data_dir / "mail" / "in").rglob("*.eml")}

    def archived_mail(self) -> list[bytes]:
        """The archived messages as received (the spool's envelope line taken off)."""
        out = []
        for path in self.archived().values():
            data = path.read_bytes()
            assert data.startswith(MAGIC)
            out.append(data.split(b"\n", 1)[1])
        return out

    def quarantined(self) -> dict[str, str]:
        return dict(self.service.spool.quarantined())


@pytest.fixture
def world(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    app: App,
    relay: RecordingSMTPServer,
    config_file: Path,
    environ: dict[str, str],
    clock: SettableClock,
) -> Iterator[World]:
    # Set up the Friday before the first period.
    setup = CHECKIN_AT - timedelta(days=17)
    mf = Mailflow(tmp_path, capsys, now=setup, environ=environ, config=config_file)
    for email, dept in ((ADA, "Eng"), (GRACE, "Sales"), (LINUS, "Ops"), (BARBARA, "Legal")):
        mf.add_person(email, dept)
    for member, partner, skill in ((ADA, GRACE, "public speaking"), (LINUS, BARBARA, "sql")):
        out = mf.ok(
            "partnerships", "add", "--member", member, "--partner", partner,
            "--skill", skill, "--goal", "2027-06-30 Give the all-hands talk",
            "--why", "I want to lead design reviews", "--saddle", "Book the room again",
            "--start", "2026-11-16", "--accepted",
        )  # fmt: skip
        assert out.last_line in ("1", "2")
    w = World(mf, relay, app, clock)
    try:
        yield w
    finally:
        for listener in w.listeners:
            listener.stop()


def transact(smtp: smtplib.SMTP, mail_from: str, rcpts: list[str], raw: bytes) -> tuple[int, str]:
    """MAIL, RCPT, DATA on an open session; the final (code, text). RSET after a refusal."""
    smtp.ehlo_or_helo_if_needed()
    code, resp = smtp.mail(mail_from)
    if code == 250:
        for rcpt in rcpts:
            code, resp = smtp.rcpt(rcpt)
            if code != 250:
                break
        else:
            code, resp = smtp.data(raw)
    if code != 250:
        smtp.rset()
    return code, resp.decode("utf-8", "replace")


def queue_id(text: str) -> str:
    m = re.search(r"Queued as (\S+)", text)
    assert m, text
    return m.group(1)


# -- open relay -------------------------------------------------------------------------------


def hostile_addresses(rng: random.Random) -> dict[str, list[str]]:
    """1,000 recipients none of which may be accepted, by kind."""
    valid = token(1)
    label, tag = valid.rsplit("-", 1)
    b32 = "abcdefghijklmnopqrstuvwxyz234567"

    def rand(n: int, alphabet: str = b32) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    def flip(s: str) -> str:
        i = rng.randrange(len(s))
        return s[:i] + rng.choice(b32.replace(s[i], "")) + s[i + 1 :]

    foreign_hosts = [
        "example.org", "evil.example", f"{DOMAIN}.evil.org", f"sub.{DOMAIN}", f"{DOMAIN}.",
        "[127.0.0.1]", "localhost", "hot-example.com", f"{DOMAIN}x", "com",
    ]  # fmt: skip
    kinds: dict[str, list[str]] = {
        "foreign user": [f"user{i}@{rng.choice(foreign_hosts)}" for i in range(100)],
        "valid token, foreign domain": [
            f"checkin+{token(1 + i % 2)}@{foreign_hosts[i % len(foreign_hosts)]}"
            for i in range(100)
        ],
        "our domain, no token": [
            f"{local}@{DOMAIN}"
            for local in [
                "postmaster",
                "abuse",
                "root",
                "admin",
                "mailflows",  # not "mailflow": that is our From address, taken (issue 13)
                "checkins",
                "checkin+",
                "checkin-" + valid,
                "checkin" + valid,
                "bounce",
                "bounces+x",
                "bounces.",
                "ada",
                "grace",
                "noreply",
                "",
                "+" + valid,
                "checkin++" + valid,
                "checkin+ " + valid,
                "xcheckin+" + valid,
            ]
        ]
        * 5,
        "checkin+garbage": [
            f"checkin+{rand(rng.randrange(1, 80), b32 + string.digits + '-._=')}@{DOMAIN}"
            for _ in range(100)
        ],
        "wrong HMAC (other secret)": [
            f"checkin+{token(rng.randrange(1, 4), PERIOD, rng.choice((CHECKIN, DIGEST)), secret=rand(20))}@{DOMAIN}"  # noqa: E501
            for _ in range(100)
        ],
        "tag altered": [f"checkin+{label}-{flip(tag)}@{DOMAIN}" for _ in range(100)],
        "tag moved to another id or period": [
            f"checkin+c{pid}-{year}w{week:02d}-{tag}@{DOMAIN}"
            for pid, year, week in [
                (rng.randrange(2, 10**6), rng.choice((2025, 2026, 2027)), rng.randrange(1, 54))
                for _ in range(100)
            ]
        ],
        "unknown partnership, bad tag": [
            f"checkin+c{rng.randrange(3, 10**9)}-2026w49-{rand(26)}@{DOMAIN}" for _ in range(100)
        ],
        "other kind letters": [
            f"checkin+{k}1-2026w49-{tag}@{DOMAIN}" for k in "abefghijklmnopqrstuvwxyz" * 3
        ][:50],
        "truncated or extended tag": [
            f"checkin+{label}-{t}@{DOMAIN}"
            for t in [tag[:-1], tag + "a", tag[:13], "", tag[1:], tag + tag] * 9
        ][:50],
        "routing tricks": [
            addr
            for _ in range(20)
            for addr in (
                f"checkin+{valid}%evil.org@{DOMAIN}",
                f"checkin+{valid}@evil.org@{DOMAIN}",
                f'"checkin+{valid}@evil.org"@{DOMAIN}',
                f"@{DOMAIN}:user{rng.randrange(1000)}@evil.org",
                f"evil.org!checkin+{valid}@{DOMAIN}",
            )
        ],
    }
    assert sum(map(len, kinds.values())) == 1000
    return kinds


def test_open_relay_1000_attempts_zero_accepted(world: World) -> None:
    port = world.listen()
    kinds = hostile_addresses(random.Random(5))
    accepted: list[str] = []
    refusals: dict[int, int] = {}
    for kind, addresses in kinds.items():
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            assert smtp.mail("attacker@example.org")[0] == 250
            for addr in addresses:
                code, _ = smtp.docmd("RCPT", f"TO:<{addr}>")
                if code < 400:
                    accepted.append(f"{kind}: {addr}")
                refusals[code] = refusals.get(code, 0) + 1
            assert accepted == []
            # Nothing accepted, so there is nothing to send to.
            assert smtp.docmd("DATA")[0] == 503
    assert sum(refusals.values()) == 1000
    assert set(refusals) <= {550, 553, 501}, refusals  # permanent refusals only
    # The control: the real reply address is accepted on the same listener, any case.
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail(ADA)
        assert smtp.rcpt(address(1))[0] == 250
        assert smtp.rcpt(address(1).upper().replace("CHECKIN+", "checkin+"))[0] == 250
        assert smtp.rcpt(f"bounces@{DOMAIN}")[0] == 250
    assert world.service.spool.count_pending() == 0


# -- smuggling, bare newlines, oversize ---------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<ada@example.com>\r\n"
    b"RCPT TO:<" + address(1).encode() + b">\r\n"
    b"DATA\r\n"
    b"From: Ada <ada@example.com>\r\n"
    b"X-Smuggled: yes\r\n"
    b"Message-ID: <smuggled@example.com>\r\n"
    b"\r\n"
    b"Done: the smuggled report\r\n"
)
TERMINATORS = [b"\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\r.\r", b"\n.\r"]


def raw_session(port: int, rcpt: str, data: bytes) -> list[bytes]:
    """One hand-written transaction (no client-side fix-ups); every reply until close."""
    c = RawClient(port)
    try:
        c.cmd(b"EHLO client.test")
        assert c.cmd(b"MAIL FROM:<ada@example.com>").startswith(b"250")
        assert c.cmd(b"RCPT TO:<" + rcpt.encode() + b">").startswith(b"250")
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(data)
        replies = [c.reply()]
        c.send(b"QUIT\r\n")
        try:
            while True:
                replies.append(c.reply())
        except (ConnectionError, OSError):
            pass
        return replies
    finally:
        c.close()


def test_smuggling_through_the_whole_path(world: World) -> None:
    port = world.listen()
    for n, term in enumerate(TERMINATORS):
        data = (
            b"From: Ada <ada@example.com>\r\n"
            b"To: " + address(1).encode() + b"\r\n"
            b"Subject: progress\r\n"
            b"Message-ID: <outer-" + str(n).encode() + b"@example.com>\r\n"
            b"\r\n"
            b"Done: outer text " + str(n).encode() + term + SMUGGLED + b".\r\n"
        )
        replies = raw_session(port, address(1), data)
        assert sum(r.startswith(b"250 2.0.0 Queued") for r in replies) == 1, (term, replies)
    lines = world.service.ingest(world.now).lines
    reports, inbound = world.records()
    assert inbound == [] and world.quarantined() == {}, lines
    # One record per transaction, none from the smuggled "second message".
    assert sorted(r.message_id for r in reports) == sorted(
        f"<outer-{n}@example.com>" for n in range(len(TERMINATORS))
    )
    assert len(world.archived_mail()) == len(TERMINATORS)
    for stored in world.archived_mail():
        msg = message_from_bytes(stored, policy=policy.default)
        assert msg["X-Smuggled"] is None
        assert msg.get_all("Message-ID") and len(msg.get_all("Message-ID")) == 1
        # What is kept has CRLF line ends only: what we read is what anyone else reads.
        assert b"\n" not in stored.replace(b"\r\n", b"")
        assert b"\r" not in stored.replace(b"\r\n", b"")
    assert world.service.spool.count_pending() == 0


@pytest.mark.parametrize(
    "header",
    [b"Subject: hi\nX-Injected: yes\r\n", b"Subject: hi\rX-Injected: yes\r\n", b"X: 1\n\r\n"],
    ids=["LF", "CR", "LF-before-body"],
)
def test_bare_newline_in_header_refused_and_nothing_stored(world: World, header: bytes) -> None:
    port = world.listen()
    data = (
        b"From: Ada <ada@example.com>\r\nMessage-ID: <bare@example.com>\r\n"
        + header
        + b"\r\nDone: x\r\n.\r\n"
    )
    replies = raw_session(port, address(1), data)
    assert replies[0].startswith(b"550 5.6.0"), replies
    world.service.ingest(world.now)
    assert world.records() == ([], []) and world.quarantined() == {}
    assert world.service.spool.count_pending() == 0


def test_encoded_crlf_in_subject_is_stored_as_one_header(world: World) -> None:
    port = world.listen()
    subject = encoded_word("Re: hi\r\nX-Injected: yes\r\nBcc: evil@example.org")
    raw = (
        f"From: Ada <ada@example.com>\r\nSubject: {subject}\r\n"
        "Message-ID: <enc@example.com>\r\n\r\nDone: one thing\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        assert transact(smtp, ADA, [address(1)], raw)[0] == 250
    world.service.ingest(world.now)
    [report], inbound = world.records()
    assert inbound == [] and report.text.strip() == "Done: one thing"
    [stored] = world.archived_mail()
    msg = message_from_bytes(stored, policy=policy.default)
    assert msg["X-Injected"] is None and msg["Bcc"] is None
    assert msg["Subject"] == "Re: hi\r\nX-Injected: yes\r\nBcc: evil@example.org"  # decoded


def test_oversize_gets_552_and_nothing_is_stored(world: World) -> None:
    limit = 65536
    port = world.listen(max_message_bytes=limit)
    big = reply(ADA, address(1), "Done: " + "x" * 70 + "\n" * 1, "<big@example.com>")
    big = big.replace(b"Done: ", b"Done: " + (b"word " * 20 + b"\r\n") * 800, 1)  # ~80 KB
    assert len(big) > limit
    small = reply(ADA, address(1), "Done: small one", "<small@example.com>")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        code, text = transact(smtp, ADA, [address(1)], big)
        assert code == 552, text
        # The session survives the refusal and takes the next message.
        assert transact(smtp, ADA, [address(1)], small)[0] == 250
    world.service.ingest(world.now)
    reports, inbound = world.records()
    assert [r.message_id for r in reports] == ["<small@example.com>"] and inbound == []
    assert world.quarantined() == {} and world.service.spool.count_pending() == 0


# -- slow, idle and many clients ------------------------------------------------------------------


def closed_by_server(sock: socket.socket, limit: float = 15.0) -> bytes:
    """Read until the server closes; returns what it said. Fails if it never closes."""
    sock.settimeout(limit)
    said = b""
    while True:
        chunk = sock.recv(4096)  # raises socket.timeout after `limit` seconds of silence
        if not chunk:
            return said
        said += chunk


def test_idle_and_stalled_clients_are_cut_off(world: World) -> None:
    port = world.listen(timeout_seconds=1)
    idle = RawClient(port)
    stalled = RawClient(port)
    try:
        idle.cmd(b"EHLO client.test")
        stalled.cmd(b"EHLO client.test")
        stalled.cmd(b"MAIL FROM:<ada@example.com>")
        stalled.cmd(b"RCPT TO:<" + address(1).encode() + b">")
        assert stalled.cmd(b"DATA").startswith(b"354")
        stalled.send(b"From: Ada <ada@example.com>\r\nSubject: half\r\n\r\nDone: half of it\r\n")
        closed_by_server(idle.sock)  # aiosmtpd closes without a word
        closed_by_server(stalled.sock)
    finally:
        idle.close()
        stalled.close()
    # The half message was never acknowledged: nothing kept, nothing half-written.
    assert world.service.spool.count_pending() == 0
    assert list(world.service.spool.tmp_dir.iterdir()) == []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:  # still serving
        assert smtp.noop()[0] == 250


def test_connection_flood_is_capped_and_service_keeps_answering(world: World) -> None:
    cap = 5
    port = world.listen(max_connections=cap)
    for round_no in range(3):
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        try:
            banners = [s.recv(200) for s in socks]
        finally:
            for s in socks:
                s.close()
        assert sum(b.startswith(b"220") for b in banners) == cap, banners
        assert sum(b.startswith(b"421") for b in banners) == 40 - cap
        # Slots are released once the server sees the closes; then real mail gets through.
        deadline = time.monotonic() + 10
        while True:
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except smtplib.SMTPConnectError:
                assert time.monotonic() < deadline, "the cap never freed up"
                time.sleep(0.05)
        with smtp:
            raw = reply(ADA, address(1), f"Done: round {round_no}", f"<flood-{round_no}@x.org>")
            assert transact(smtp, ADA, [address(1)], raw)[0] == 250
    world.service.ingest(world.now)
    reports, _ = world.records()
    assert sorted(r.message_id for r in reports) == [f"<flood-{n}@x.org>" for n in range(3)]


# -- corpus and fuzz: stored or quarantined, never lost -------------------------------------------


def check_fate(world: World, ids: list[str], ingest_lines: list[str]) -> dict[str, int]:
    """Every accepted id is in a record, a known duplicate, or quarantined with a reason."""
    reports, inbound = world.records()
    refs = {Path(r.raw_ref).stem for r in [*reports, *inbound]}
    duplicates = {
        line.split()[1].rstrip(":") for line in ingest_lines if line.startswith("duplicate ")
    }
    archived = world.archived()
    quarantined = world.quarantined()
    fate = {"report": 0, "inbound": 0, "duplicate": 0, "quarantined": 0}
    report_refs = {Path(r.raw_ref).stem for r in reports}
    for entry_id in ids:
        if entry_id in quarantined:
            reason = quarantined[entry_id]
            assert reason and reason != "(no reason recorded)", entry_id
            assert not reason.startswith("processing error"), (entry_id, reason)
            fate["quarantined"] += 1
        elif entry_id in refs:
            assert entry_id in archived
            fate["report" if entry_id in report_refs else "inbound"] += 1
        else:
            assert entry_id in duplicates and entry_id in archived, f"{entry_id} was lost"
            fate["duplicate"] += 1
    assert world.service.spool.count_pending() == 0
    return fate


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"no corpus at {CORPUS}")
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in NOT_MAIL)


def test_corpus_through_listener_and_ingest(world: World) -> None:
    files = corpus_files()
    port = world.listen()
    ids: list[str] = []
    refused: list[tuple[str, int, str]] = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for n, path in enumerate(files):
            # Two doors: every third one goes to the bounce address with the null sender.
            mail_from, rcpt = ("", f"bounces@{DOMAIN}") if n % 3 == 2 else (ADA, address(1))
            code, text = transact(smtp, mail_from, [rcpt], on_the_wire(path.read_bytes()))
            if code == 250:
                ids.append(queue_id(text))
            else:
                refused.append((str(path.relative_to(CORPUS)), code, text))
    # As an MTA relays them (CRLF, long lines folded), every one is accepted.
    assert refused == []
    lines = world.service.ingest(world.now).lines
    fate = check_fate(world, ids, lines)
    assert sum(fate.values()) == len(ids) == len(files) - len(refused)
    assert fate["report"] > 0 and fate["inbound"] > 0 and fate["quarantined"] > 0, fate
    # The database loads and `status` works on what came in.
    status = json.loads(world.mf.ok("status", "--json", "--now", world.now.isoformat()).out)
    assert status["quarantined"] == fate["quarantined"] and status["spooled"] == 0


CHARSETS = [
    "utf-8", "us-ascii", "iso-8859-1", "koi8-r", "iso-2022-jp", "utf-7", "cp1252", "x-unknown",
    "bogus", "", 'utf-8"; x="', "utf-16", "gb2312",
]  # fmt: skip
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary", "b@d", ""]
FROMS = [
    "Ada <ada@example.com>", "ada@example.com", "=?utf-8?b?QWRh?= <ada@example.com>",
    "ADA@EXAMPLE.COM", "mallory@example.org", "", "<>", "Ada <ada@example.com>, eve@x.org",
    '"ada@example.com" <eve@x.org>', "=?x-bogus?q?=FF?= <ada@example.com>", "\x00",
]  # fmt: skip
HEADER_NAMES = [
    "Subject", "X-Junk", "Auto-Submitted", "Precedence", "In-Reply-To", "References",
    "Message-ID", "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "Date",
    "X-Autoreply", "Return-Path", "Content-Disposition",
]  # fmt: skip
header_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=120
) | st.builds(
    lambda cs, enc, payload: f"=?{cs}?{enc}?{payload}?=",
    st.sampled_from(CHARSETS),
    st.sampled_from(["B", "Q", "b", "q", "X"]),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?"), max_size=60
    ),
)
body_bytes = st.binary(max_size=3000) | st.text(max_size=1500).map(
    lambda s: s.encode("utf-8", "surrogateescape")
)


@st.composite
def fuzzed_message(draw: st.DrawFn) -> bytes:
    headers: list[tuple[str, str]] = []
    sender = draw(st.sampled_from(FROMS))
    if sender:
        headers.append(("From", sender))
    headers += draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_text), max_size=8))
    shape = draw(st.sampled_from(["plain", "multipart", "nested", "report", "headers only"]))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS))
    boundary = draw(st.sampled_from(["b1", "", "a b", "--", "x" * 80]))
    parts = draw(st.lists(body_bytes, min_size=1, max_size=3))
    if shape == "plain":
        headers += [("Content-Type", f"text/plain; charset={charset}")]
        headers += [("Content-Transfer-Encoding", cte)]
        body = parts[0]
    elif shape == "headers only":
        body = b""
    else:
        kind = {"multipart": "alternative", "nested": "mixed", "report": "report"}[shape]
        headers.append(
            (
                "Content-Type",
                f'multipart/{kind}; boundary="{boundary}"; report-type=delivery-status',
            )
        )
        chunks = [
            f"--{boundary}\r\nContent-Type: "
            f"{draw(st.sampled_from(['text/plain', 'text/html', 'message/delivery-status', 'message/rfc822', 'multipart/mixed']))}"  # noqa: E501
            f"; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
            + part
            + b"\r\n"
            for part in parts
        ]
        closing = draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b""]))
        body = b"".join(chunks) + closing
    head = b"".join(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape") for k, v in headers)
    return head + b"\r\n" + body


def test_fuzzed_mail_is_stored_or_quarantined_never_lost(world: World) -> None:
    port = world.listen()
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    smtp.ehlo("client.test")
    all_ids: list[str] = []
    seen = {"n": 0}

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(raw=fuzzed_message(), to_bounce=st.booleans())
    def one(raw: bytes, to_bounce: bool) -> None:
        seen["n"] += 1
        wire = on_the_wire(raw)
        # A unique Message-ID first, so each example is its own message (some add another).
        wire = f"Message-ID: <fuzz-{seen['n']}@example.com>\r\n".encode() + wire
        mail_from, rcpt = ("", f"bounces@{DOMAIN}") if to_bounce else (ADA, address(1))
        code, text = transact(smtp, mail_from, [rcpt], wire)
        assert code == 250, (code, text)
        entry_id = queue_id(text)
        all_ids.append(entry_id)
        lines = world.service.ingest(world.now).lines
        check_fate(world, [entry_id], lines)

    try:
        one()
    finally:
        smtp.close()
    assert len(all_ids) >= 100
    # Every record in the store came from one of these messages, once.
    reports, inbound = world.records()
    refs = [Path(r.raw_ref).stem for r in [*reports, *inbound]]
    assert len(refs) == len(set(refs)) and set(refs) <= set(all_ids)


# -- outgoing: escaping, headers, templates -------------------------------------------------------

MARKUP = (
    "Done: <script>alert('x')</script> finished the <b>outline</b>\n"
    'Setback: <img src=x onerror="alert(1)"> missed Thursday & "friends" {{ 7*7 }}\n'
    'Next: <a href="javascript:alert(1)">click</a></td></table><style>*{}</style>'
)


def test_member_markup_is_escaped_in_the_partner_digest(world: World) -> None:
    before = len(world.relay.messages)  # introductions sent by `partnerships add`
    out = world.service.tick(CHECKIN_AT)
    assert any("queued checkin to ada@example.com" in line for line in out.lines), out.lines
    [checkin] = [m for m in world.relay.wait_for(before + 2)[before:] if m.rcpt_tos == (ADA,)]
    reply_to = str(checkin.message["Reply-To"])
    port = world.listen()
    world.now = CHECKIN_AT + timedelta(hours=2)
    subject = encoded_word("Re: check-in\r\nBcc: evil@example.org\r\nX-Injected: yes")
    answer = reply("Ada <ada@example.com>", reply_to, MARKUP, "<markup@example.com>", subject)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        assert transact(smtp, ADA, [reply_to], answer)[0] == 250
    before = len(world.relay.messages)
    out = world.service.tick(world.now + timedelta(minutes=1))
    assert any("report for partnership 1" in line for line in out.lines), out.lines
    assert any("queued digest to grace@example.com" in line for line in out.lines), out.lines
    got = world.relay.wait_for(before + 1)
    [digest] = [m for m in got[before:] if m.rcpt_tos == (GRACE,)]
    html = html_of(digest)
    for raw_markup in ("<script", "<img", '<a href="javascript', "</table><style", 'onerror="'):
        assert raw_markup not in html, raw_markup
    assert "&lt;script&gt;" in html and "&lt;img" in html
    assert "{{ 7*7 }}" in html  # user text is data, never a template
    text = text_of(digest)
    assert "<script>alert('x')</script>" in text  # the plain text shows what she wrote
    # No header of anything we sent was split or added by user data.
    for m in world.relay.messages:
        assert m.message["X-Injected"] is None and m.message["Bcc"] is None
        head = m.raw.split(b"\r\n\r\n", 1)[0]
        assert b"X-Injected" not in head and b"evil@example.org" not in head
        assert len(m.rcpt_tos) == 1 and m.rcpt_tos[0] in (ADA, GRACE, LINUS, BARBARA)


def test_header_injection_through_the_cli_is_refused(world: World) -> None:
    world.mf.bad("people", "add", "eve@example.com", "--name", "Eve\r\nBcc: x@evil.org",
                 "--department", "X")  # fmt: skip
    world.mf.bad(
        "partnerships", "add", "--member", ADA, "--partner", BARBARA,
        "--skill", "sql\nBcc: x@evil.org", "--goal", "2027-01-01 x", "--why", "w", "--saddle", "s",
    )  # fmt: skip


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ ''|attr('__class__') }}",
        "{{ member.__class__.__init__.__globals__ }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    ],
)
def test_templates_are_sandboxed(world: World, payload: str) -> None:
    tpl = world.mf.tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "checkin.txt.j2").write_text(f"Hello\n{payload}\n")
    with world.mf.config.open("a") as f:
        f.write(f'[templates]\ndir = "{tpl}"\n')
    sent_before = len(world.relay.messages)
    result = world.mf("templates", "check")
    assert result.code == 1
    assert f"{tpl / 'checkin.txt.j2'}:2:" in result.out + result.err
    assert "unsafe" in (result.out + result.err) or "undefined" in (result.out + result.err)
    # Nothing is sent with it: tick refuses, serve refuses to start.
    result = world.mf("tick", "--now", CHECKIN_AT.isoformat())
    assert result.code == 1 and len(world.relay.messages) == sent_before
    app = build(config_mod.load(world.mf.config, world.mf.environ))
    with pytest.raises(StartupError, match="templates have errors"):
        serve(app, lambda: CHECKIN_AT, __import__("threading").Event())


# -- forged sender, replayed token, ended partnership -------------------------------------------


def test_wrong_sender_replay_and_ended_are_quarantined_never_counted(world: World) -> None:
    world.mf.ok("partnerships", "end", "2")
    port = world.listen()
    cases: list[tuple[str, str, str, str]] = [
        # (envelope from, header From, recipient, expected reason)
        ("mallory@example.org", "Mallory <mallory@example.org>", address(1), "sender mismatch"),
        (ADA, "Mallory <mallory@example.org>", address(1), "sender mismatch"),
        # Replays of tokens older than the grace for late replies (8 weeks).
        (ADA, "Ada <ada@example.com>", address(1, "2026-W38"), "stale token"),
        (ADA, "Ada <ada@example.com>", address(1, "2025-W49"), "stale token"),
        (LINUS, "Linus <linus@example.com>", address(2), "partnership 2 has ended"),
        (ADA, "Ada <ada@example.com>", address(77), "unknown partnership 77"),
        (ADA, "Ada <ada@example.com>", address(1, kind=DIGEST), "sender mismatch"),
    ]
    world.now = CHECKIN_AT + timedelta(hours=3)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        for n, (mail_from, header_from, rcpt, _) in enumerate(cases):
            raw = reply(header_from, rcpt, f"Done: case {n}", f"<case-{n}@example.com>")
            assert transact(smtp, mail_from, [rcpt], raw)[0] == 250
    world.service.ingest(world.now)
    status = json.loads(world.mf.ok("status", "--json", "--now", world.now.isoformat()).out)
    assert status["quarantined"] == len(cases)
    reasons = [q["reason"] for q in status["quarantine"]]
    for (_, _, _, expected), reason in zip(cases, reasons, strict=True):
        assert reason.startswith(expected) or expected in reason, (expected, reason)
    assert reasons[2].startswith("stale token: it is for 2026-W38")
    assert status["replied"] == 0 and status["setbacks"] == 0
    for pid in (1, 2):
        shown = json.loads(world.mf.ok("partnerships", "show", str(pid), "--json").out)
        assert shown["reports"] == []
    assert world.records() == ([], [])
    # A proper reply still counts afterwards.
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        raw = reply("Ada <ada@example.com>", address(1), "Done: the real one", "<real@x.org>")
        assert transact(smtp, ADA, [address(1)], raw)[0] == 250
    world.service.ingest(world.now)
    status = json.loads(world.mf.ok("status", "--json", "--now", world.now.isoformat()).out)
    assert status["replied"] == 1 and status["quarantined"] == len(cases)
