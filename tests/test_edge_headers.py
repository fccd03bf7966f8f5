"""Header injection through RFC 2047 encoded words (issue 12; CVE-2024-6923 on Python 3.11.7).

The email package of this Python decodes an encoded word in a display name while folding the
header and writes what it decoded, CR/LF included: a name like
`=?utf-8?q?Julie=0D=0AReply-To=3A_evil=40example=2Eorg?=` became a real `Reply-To:` header.
Two layers keep that out:
- input: every header-bound field refuses encoded-word syntax (`people add/update/import`,
  `partnerships add` skill, goals, why, saddle) with an `error:` line naming the field;
- output: our own code writes every header line (the email package never folds user text),
  and the serialised header block is checked: exactly the headers we set, nothing else.
"""

from __future__ import annotations

import base64
import email
import re
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.utils import parseaddr
from pathlib import Path

import pytest
from clitools import Mailflow
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.errors import DomainError
from mailflow.mime import (
    Rendered,
    build_message,
    check_header_block,
    has_encoded_word,
    message_bytes,
)
from mailflow.people import check_text, make_person

WHEN = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 13, 9, 0, tzinfo=UTC)


def q_word(text: str) -> str:
    """One RFC 2047 Q-encoded word, as an HR system would export a name."""
    body = "".join(ch if ch.isalnum() else "".join(f"={b:02X}" for b in ch.encode()) for ch in text)
    return f"=?utf-8?q?{body}?="


def b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


INJECTIONS = [
    q_word("Julie\r\nReply-To: evil@example.org"),
    b_word("Julie\r\nBcc: victim@example.org"),
    q_word("Julie") + " " + q_word("\r\nX-Injected: yes"),
    "Julie " + q_word("\nBcc: victim@example.org") + " Park",
    q_word("Julie\rX-Injected: yes"),
    q_word("Julie\u2028X-Injected: yes"),
    '"' + q_word("Julie\r\nBcc: victim@example.org") + '"',
]
EXPECTED = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "Auto-Submitted",
    "X-Auto-Response-Suppress",
    "MIME-Version",
    "Content-Type",
]


def kwargs(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "from_address": "mailflow@hot.example.com",
        "from_name": "mailflow",
        "to_address": "julie@example.com",
        "to_name": "Julie Park",
        "message_id": "<checkin.abc@hot.example.com>",
        "date": WHEN,
        "reply_to": "checkin+c1-2026w49-abc@hot.example.com",
    }
    base.update(over)
    return base


def display_name(raw: bytes, field: str) -> str:
    """The display name as an RFC 2047 reader sees it.

    RFC 2047 (6.2) drops the white space between two adjacent encoded words; Python's
    address parser keeps it (and does not even read back the email package's own long
    names), so the legacy decoder, which follows the RFC, is the reference here.
    """
    value = email.message_from_bytes(raw, policy=policy.compat32)[field]
    name, _addr = parseaddr(" ".join(value.split()))
    return str(make_header(decode_header(name))) if "=?" in name else name


def top_headers(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=policy.default)
    return list(msg.keys())


def wire(rendered: Rendered, **over: object) -> list[bytes]:
    """The bytes of both builders (the fast path and the email package's)."""
    fast = message_bytes(rendered, **kwargs(**over))  # type: ignore[arg-type]
    msg = build_message(rendered, **kwargs(**over))  # type: ignore[arg-type]
    return [fast, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))]


@pytest.mark.parametrize("hostile", INJECTIONS)
@pytest.mark.parametrize("where", ["to_name", "from_name", "subject"])
def test_hostile_display_names_and_subjects_add_no_header(hostile: str, where: str) -> None:
    subject = hostile if where == "subject" else "Your sql check-in for 2026-W49"
    rendered = Rendered(subject=subject, text="Hello\n", html="<p>Hello</p>\n")
    over = {} if where == "subject" else {where: hostile}
    for raw in wire(rendered, **over):
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert top_headers(raw) == EXPECTED, head.decode()
        for line in head.split(b"\r\n"):
            assert len(line) <= 78 or not line.startswith(b" "), line
        msg = email.message_from_bytes(raw, policy=policy.default)
        # The hostile text arrives as text: shown literally, never decoded into a header.
        if where == "subject":
            assert msg["Subject"] == hostile
        else:
            field = "To" if where == "to_name" else "From"
            assert display_name(raw, field) == hostile
        assert b"evil@example.org" not in head and b"victim@" not in head


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cs")), max_size=60
    ),
    subject=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cs")), min_size=1
    ).filter(lambda s: s.strip()),
    words=st.lists(st.sampled_from(INJECTIONS + ["=?", "?=", "=?x?q?", '"', "\\"]), max_size=3),
)
def test_any_name_and_subject_give_exactly_our_headers(
    name: str, subject: str, words: list[str]
) -> None:
    name = " ".join([name, *words])
    subject = " ".join([subject, *reversed(words)])
    rendered = Rendered(subject=subject, text="x\n", html="<p>x</p>\n")
    fast, slow = wire(rendered, to_name=name, from_name=name)
    assert top_headers(fast) == EXPECTED
    # Byte-equal apart from the random MIME boundary.
    boundary = re.search(rb'boundary="([^"]+)"', fast)
    assert boundary is not None
    msg = build_message(rendered, **kwargs(to_name=name, from_name=name))  # type: ignore[arg-type]
    msg.set_boundary(boundary.group(1).decode())
    assert fast == msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    parsed = email.message_from_bytes(fast, policy=policy.default)
    assert parsed["Subject"] == " ".join(subject.split())
    assert display_name(fast, "To") == " ".join(name.split())
    del slow


def test_header_block_check_refuses_anything_but_our_headers() -> None:
    good = "From: a <a@b.c>\r\nSubject: hi\r\n there\r\n"
    check_header_block(good, ["From", "Subject"])
    for bad in (
        "From: a <a@b.c>\r\nReply-To: x@y.z\r\nSubject: hi\r\n",  # one header too many
        "From: a <a@b.c>\r\nSubject: hi\rBcc: x\r\n",  # bare CR
        "From: a <a@b.c>\r\nSubject: hi\nBcc: x\r\n",  # bare LF
        "From: a <a@b.c>\r\nSubject: " + "x" * 1000 + "\r\n",  # over 998
        "From: a <a@b.c>\r\nSubject: hé\r\n",  # raw 8-bit
        "From: a <a@b.c>\r\n\r\nSubject: hi\r\n",  # an empty line ends the header
    ):
        with pytest.raises(ValueError):
            check_header_block(bad, ["From", "Subject"])


@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?Julie=0D=0AReply-To=3A_x?=",
        "Julie =?UTF-8?B?SnVsaWU=?= Park",
        "=?iso-8859-1?q?J=FClie?=",
        "a =?x?= b",
    ],
)
def test_encoded_word_syntax_is_refused_in_every_header_bound_field(value: str) -> None:
    assert has_encoded_word(value)
    with pytest.raises(DomainError, match=r"^name: .*=\?\.\.\.\?="):
        check_text("name", value)
    for field in ("name", "department"):
        args = {"name": "Julie Park", "department": "Sales", field: value}
        with pytest.raises(DomainError, match=f"^{field}: "):
            make_person(
                "julie@example.com", args["name"], args["department"], None, None, (), "UTC"
            )
    with pytest.raises(DomainError, match="^offers: "):
        make_person("julie@example.com", "Julie", "Sales", None, None, [value], "UTC")
    # Ordinary text with the characters apart is still fine.
    assert check_text("name", "What? = Yes?") == "What? = Yes?"
    assert not has_encoded_word("a=b?c") and not has_encoded_word("=? alone")


def test_encoded_word_names_are_refused_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = Mailflow(tmp_path, capsys, 'domain = "hot.example.com"\n', now=NOW)
    hostile = q_word("Julie\r\nReply-To: evil@example.org")
    err = mf.bad("people", "add", "julie@example.com", "--name", hostile, "--department", "S")
    assert err.startswith("error: name: ") and "=?...?=" in err
    csv = tmp_path / "people.csv"
    csv.write_text(
        f"email,name,department\r\nada@example.com,Ada,Eng\r\njulie@example.com,{hostile},Sales\r\n"
    )
    err = mf.bad("people", "import", str(csv), lines=None)
    assert f"error: {csv}:3: name: " in err
    mf.add_person("ada@example.com", "Eng")
    mf.add_person("grace@example.com", "Sales")
    err = mf.bad("people", "update", "ada@example.com", "--name", hostile)
    assert err.startswith("error: name: ")
    for option, value in (
        ("--skill", "sql " + b_word("\r\nBcc: x@evil.org")),
        ("--goal", "2027-01-01 " + hostile),
        ("--why", hostile),
        ("--saddle", hostile),
    ):
        args = {
            "--skill": "sql",
            "--goal": "2027-01-01 Talk",
            "--why": "w",
            "--saddle": "s",
            option: value,
        }
        flat = [x for k, v in args.items() for x in (k, v)]
        err = mf.bad(
            "partnerships", "add", "--member", "ada@example.com", "--partner",
            "grace@example.com", *flat,
        )  # fmt: skip
        field = {"--skill": "skill", "--goal": "goal"}.get(option, option[2:])
        assert err.startswith(f"error: {field}: "), err
