"""Property test: any bytes in, a valid JSON answer out (random and mutated real messages)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow.parse import extract_reply_text, html_to_text, parse_message

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "replies").glob("*.eml"))
SEEDS = [p.read_bytes() for p in FIXTURES]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(raw: bytes) -> None:
    parsed = parse_message(raw)
    out = parsed.to_json_dict()
    assert list(out) == ["kind", "text", "setback", "sections"]
    assert out["kind"] in ("reply", "auto_reply", "bounce")
    assert isinstance(out["text"], str)
    if out["kind"] == "reply":
        assert isinstance(out["setback"], bool)
    else:
        assert out["setback"] is None
    assert list(out["sections"]) == ["done", "setback", "next"]
    assert all(isinstance(v, str) for v in out["sections"].values())
    assert json.loads(json.dumps(out)) == out


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            junk = draw(
                st.sampled_from(
                    [
                        b"\r\n",
                        b"=?utf-8?b?",
                        b"--",
                        b"boundary=",
                        b">",
                        b"\x00",
                        b"\xff\xfe",
                        b"Content-Type: multipart/mixed; boundary=x\n",
                        b"charset=x-bad",
                        b"Content-Transfer-Encoding: base64\n",
                        b"=\n",
                        b"<blockquote>",
                        b"<div>",
                    ]
                )
            )
            data[pos:pos] = junk
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 50))]
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 200))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_messages(raw: bytes) -> None:
    check(raw)


@SETTINGS
@given(st.text(max_size=2000))
def test_text_helpers_never_raise(text: str) -> None:
    assert isinstance(extract_reply_text(text), str)
    assert isinstance(html_to_text(text), str)
